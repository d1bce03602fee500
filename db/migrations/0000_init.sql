CREATE TABLE `checkpoints` (
	`run_id` text NOT NULL,
	`kind` text NOT NULL,
	`step` integer NOT NULL,
	`key` text NOT NULL,
	`bytes` integer NOT NULL,
	`lease_id` text NOT NULL,
	`created_at` integer DEFAULT 0 NOT NULL,
	PRIMARY KEY(`run_id`, `kind`, `step`),
	FOREIGN KEY (`run_id`) REFERENCES `runs`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `evals` (
	`run_id` text PRIMARY KEY NOT NULL,
	`lease_id` text NOT NULL,
	`ts` integer NOT NULL,
	`l0` real NOT NULL,
	`l1` real NOT NULL,
	`mse` real NOT NULL,
	`fvu` real NOT NULL,
	`explained_variance` real NOT NULL,
	`n_dead` integer NOT NULL,
	`n_almost_dead` integer NOT NULL,
	`n_dense` integer NOT NULL,
	`n_examples` integer NOT NULL,
	`freqs` text NOT NULL,
	`mean_values` text NOT NULL,
	`queued` integer DEFAULT false NOT NULL,
	FOREIGN KEY (`run_id`) REFERENCES `runs`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `groups` (
	`id` text PRIMARY KEY NOT NULL,
	`sweep_id` text NOT NULL,
	`idx` integer NOT NULL,
	`created_at` integer NOT NULL,
	`status` text DEFAULT 'waiting' NOT NULL,
	`key` text NOT NULL,
	`data` text NOT NULL,
	`n_runs` integer NOT NULL,
	`failures` integer DEFAULT 0 NOT NULL,
	`last_error` text,
	`finished_at` integer,
	FOREIGN KEY (`sweep_id`) REFERENCES `sweeps`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `groups_by_status` ON `groups` (`status`,`created_at`,`idx`);--> statement-breakpoint
CREATE INDEX `groups_by_sweep` ON `groups` (`sweep_id`,`idx`);--> statement-breakpoint
CREATE TABLE `leases` (
	`id` text PRIMARY KEY NOT NULL,
	`token` text NOT NULL,
	`group_id` text NOT NULL,
	`runner_id` text NOT NULL,
	`adapter` text NOT NULL,
	`run_ids` text NOT NULL,
	`status` text DEFAULT 'active' NOT NULL,
	`created_at` integer NOT NULL,
	`expires_at` integer NOT NULL,
	`heartbeat_at` integer,
	`progress` text,
	`ended_at` integer,
	`end_nonce` text,
	`error` text,
	FOREIGN KEY (`group_id`) REFERENCES `groups`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `leases_by_group` ON `leases` (`group_id`,`status`);--> statement-breakpoint
CREATE TABLE `metrics` (
	`run_id` text NOT NULL,
	`step` integer NOT NULL,
	`lease_id` text NOT NULL,
	`ts` integer NOT NULL,
	`loss` real NOT NULL,
	`mse` real NOT NULL,
	`l0` real NOT NULL,
	`l1` real NOT NULL,
	`sparsity` real NOT NULL,
	`n_patches_seen` real NOT NULL,
	`learning_rate` real NOT NULL,
	`sparsity_coeff` real NOT NULL,
	`queued` integer DEFAULT false NOT NULL,
	PRIMARY KEY(`run_id`, `step`),
	FOREIGN KEY (`run_id`) REFERENCES `runs`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `runs` (
	`id` text PRIMARY KEY NOT NULL,
	`sweep_id` text NOT NULL,
	`group_id` text NOT NULL,
	`idx` integer NOT NULL,
	`cfg` text NOT NULL,
	`track` integer NOT NULL,
	`n_steps` integer NOT NULL,
	`d_sae` integer NOT NULL,
	`status` text DEFAULT 'waiting' NOT NULL,
	`lease_id` text,
	`attempts` integer DEFAULT 0 NOT NULL,
	`error` text,
	`finished_at` integer,
	`finish_queued` integer DEFAULT false NOT NULL,
	FOREIGN KEY (`sweep_id`) REFERENCES `sweeps`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`group_id`) REFERENCES `groups`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `runs_by_group` ON `runs` (`group_id`,`status`,`idx`);--> statement-breakpoint
CREATE INDEX `runs_by_sweep` ON `runs` (`sweep_id`,`idx`);--> statement-breakpoint
CREATE INDEX `runs_by_lease` ON `runs` (`lease_id`);--> statement-breakpoint
CREATE TABLE `sweeps` (
	`id` text PRIMARY KEY NOT NULL,
	`created_at` integer NOT NULL,
	`finished_at` integer,
	`status` text DEFAULT 'waiting' NOT NULL,
	`spec` text NOT NULL,
	`format` text NOT NULL,
	`warnings` text DEFAULT '[]' NOT NULL,
	`n_runs` integer NOT NULL,
	`n_groups` integer NOT NULL
);
