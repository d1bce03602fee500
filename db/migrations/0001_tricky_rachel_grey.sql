CREATE TABLE `wandb_dead_letters` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`run_id` text NOT NULL,
	`kind` text NOT NULL,
	`steps` text DEFAULT '[]' NOT NULL,
	`attempts` integer NOT NULL,
	`error` text,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `wandb_dead_letters_by_run` ON `wandb_dead_letters` (`run_id`,`id`);--> statement-breakpoint
CREATE TABLE `wandb_runs` (
	`run_id` text PRIMARY KEY NOT NULL,
	`name` text NOT NULL,
	`url` text,
	`status` text DEFAULT 'pending' NOT NULL,
	`state` text,
	`version` integer DEFAULT 0 NOT NULL,
	`last_error` text,
	`last_error_at` integer,
	`dead_letters` integer DEFAULT 0 NOT NULL,
	`heartbeat_at` integer,
	`updated_at` integer NOT NULL,
	FOREIGN KEY (`run_id`) REFERENCES `runs`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `wandb_runs_by_status` ON `wandb_runs` (`status`);