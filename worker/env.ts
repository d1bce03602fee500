/** The Worker's bindings, as declared in wrangler.toml and .dev.vars (secrets). */
export interface Env {
  DB: D1Database;
  CHECKPOINTS: R2Bucket;
  WANDB_QUEUE: Queue<unknown>;
  ASSETS: Fetcher;
  /** Bearer token for submitting sweeps and reading results. */
  SUBMIT_TOKEN: string;
  /** Bearer token for runners (claims, heartbeats, metric posts). */
  RUNNER_TOKEN: string;
  WANDB_API_KEY?: string;
  WANDB_BASE_URL: string;
}
