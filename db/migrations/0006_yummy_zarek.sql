ALTER TABLE `metrics` ADD `aux_loss` real;--> statement-breakpoint
ALTER TABLE `metrics` ADD `n_dead_train` integer;