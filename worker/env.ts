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
  /** Lease time-to-live in ms without a heartbeat (default 60000); tests set a short one. */
  LEASE_TTL_MS?: string;
  /** Distinct runners whose lease of a group may fail before the group is marked failed (default 3). */
  MAX_ATTEMPTS?: string;
  /** Expired leases (runners that vanished holding it) a group may have before it is marked failed (default 10). */
  MAX_EXPIRATIONS?: string;
  /** Steps between resume checkpoints, sent with each claim (default 1000). */
  CHECKPOINT_EVERY?: string;
  /** Most runs one sweep may expand to (default 4096). */
  MAX_SWEEP_RUNS?: string;
  /** Largest request body the Worker accepts (default 100 MiB, Cloudflare's limit); tests lower it. Checkpoint
   * parts are min(this, 16 MiB), and the runner learns both with each claim (ClaimResponse.limits). */
  MAX_BODY_BYTES?: string;
  /** How long an R2 object may lack its D1 row before the cron deletes it, in ms (default 3600000). */
  ORPHAN_GRACE_MS?: string;
}

/** The numeric knobs above, parsed with their defaults. */
export function settings(env: Env) {
  const num = (v: string | undefined, dflt: number) => {
    const n = Number(v);
    return v !== undefined && v !== "" && Number.isFinite(n) && n > 0 ? n : dflt;
  };
  return {
    leaseTtlMs: num(env.LEASE_TTL_MS, 60_000),
    maxAttempts: num(env.MAX_ATTEMPTS, 3),
    maxExpirations: num(env.MAX_EXPIRATIONS, 10),
    checkpointEvery: num(env.CHECKPOINT_EVERY, 1000),
    maxSweepRuns: num(env.MAX_SWEEP_RUNS, 4096),
    ...uploadLimits(num(env.MAX_BODY_BYTES, 100 << 20)),
    orphanGraceMs: num(env.ORPHAN_GRACE_MS, 3_600_000),
  };
}

/** Checkpoint parts are held in memory once per request: at most 16 MiB, well inside the isolate's 128 MB. */
export const MAX_PART_BYTES = 16 << 20;
/** An evals post is parsed whole: at most 32 MiB. */
export const MAX_EVALS_BYTES = 32 << 20;

/** The body limit and what follows from it: the checkpoint part size and the largest evals post. */
export function uploadLimits(maxBodyBytes: number) {
  const max = Math.floor(maxBodyBytes);
  return { maxBodyBytes: max, partBytes: Math.min(max, MAX_PART_BYTES), evalsBytes: Math.min(max, MAX_EVALS_BYTES) };
}
