CREATE TABLE `sweeps` (
	`id` text PRIMARY KEY NOT NULL,
	`created_at` integer NOT NULL,
	`spec` text NOT NULL
);
