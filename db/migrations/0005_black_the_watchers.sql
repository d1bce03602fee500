CREATE TABLE `eval_arrays` (
	`run_id` text NOT NULL,
	`chunk` integer NOT NULL,
	`freqs` text NOT NULL,
	`mean_values` text NOT NULL,
	PRIMARY KEY(`run_id`, `chunk`),
	FOREIGN KEY (`run_id`) REFERENCES `runs`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `upload_parts` (
	`upload_id` text NOT NULL,
	`part` integer NOT NULL,
	`bytes` integer NOT NULL,
	PRIMARY KEY(`upload_id`, `part`),
	FOREIGN KEY (`upload_id`) REFERENCES `uploads`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `uploads` (
	`id` text PRIMARY KEY NOT NULL,
	`lease_id` text NOT NULL,
	`run_id` text NOT NULL,
	`kind` text NOT NULL,
	`step` integer NOT NULL,
	`key` text NOT NULL,
	`bytes` integer NOT NULL,
	`part_bytes` integer NOT NULL,
	`n_parts` integer NOT NULL,
	`created_at` integer NOT NULL,
	FOREIGN KEY (`run_id`) REFERENCES `runs`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `uploads_by_checkpoint` ON `uploads` (`run_id`,`kind`,`step`);--> statement-breakpoint
CREATE INDEX `uploads_by_lease` ON `uploads` (`lease_id`);