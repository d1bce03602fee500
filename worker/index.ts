import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { requireToken } from "./auth";
import type { Env } from "./env";
import { ApiError, errorResponse } from "./errors";
import { createMiddleware } from "hono/factory";
import { MAX_EVALS_BYTES, settings } from "./env";
import { checkpointRoutes } from "./routes/checkpoints";
import { claimRoutes } from "./routes/claims";
import { exportRoutes } from "./routes/export";
import { groupRoutes } from "./routes/groups";
import { leaseRoutes } from "./routes/leases";
import { runRoutes } from "./routes/runs";
import { sweepRoutes } from "./routes/sweeps";
import { usageRoutes } from "./routes/usage";
import { sweepOrphans } from "./retention";
import { consumeQueue, heartbeatIdleRuns } from "./wandb/consumer";

export const app = new Hono<{ Bindings: Env }>();

/**
 * Largest bodies accepted, per route kind (413 beyond), each capped by MAX_BODY_BYTES. A checkpoint body (one PUT,
 * or one part of an upload) is held in memory once, so it is at most the part size (settings: ≤ 16 MiB).
 */
export const BODY_LIMITS = {
  sweep: 1 << 20,
  metrics: 4 << 20,
  evals: MAX_EVALS_BYTES,
  small: 64 << 10,
};

/** A body limit of `maxSize` bytes, or the environment's MAX_BODY_BYTES (or part size) where that is lower. */
const limit = (maxSize: number | "part") =>
  createMiddleware<{ Bindings: Env }>((c, next) => {
    const { maxBodyBytes, partBytes } = settings(c.env);
    const max = maxSize === "part" ? partBytes : Math.min(maxSize, maxBodyBytes);
    return bodyLimit({ maxSize: max, onError: (c) => errorResponse(c, new ApiError(413, "too_large", `the body is larger than ${max} bytes`, "body")) })(c, next);
  });

app.get("/health", (c) => c.json({ ok: true }));

app.use("/v1/sweeps", requireToken("submit"));
app.use("/v1/sweeps/*", requireToken("submit"));
app.use("/v1/runs/*", requireToken("submit"));
app.use("/v1/groups/*", requireToken("submit"));
app.use("/v1/usage", requireToken("submit"));
app.use("/v1/claims", requireToken("runner"));
app.use("/v1/leases/*", requireToken("runner"));

app.post("/v1/sweeps", limit(BODY_LIMITS.sweep));
app.post("/v1/claims", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/heartbeat", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/complete", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/fail", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/release", limit(BODY_LIMITS.small));
app.post("/v1/groups/:id/retry", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/metrics", limit(BODY_LIMITS.metrics));
app.post("/v1/leases/:id/evals", limit(BODY_LIMITS.evals));
app.put("/v1/leases/:id/checkpoints/:run_id", limit("part"));
app.put("/v1/leases/:id/uploads/:upload_id/parts/:part", limit("part"));
app.post("/v1/leases/:id/uploads", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/uploads/:upload_id/complete", limit(BODY_LIMITS.small));
app.post("/v1/leases/:id/checkpoints/:run_id/reject", limit(BODY_LIMITS.small));

app.route("/v1/sweeps", sweepRoutes);
app.route("/v1/claims", claimRoutes);
app.route("/v1/leases", leaseRoutes);
app.route("/v1/leases", checkpointRoutes);
app.route("/v1/runs", runRoutes);
app.route("/v1/runs", exportRoutes);
app.route("/v1/groups", groupRoutes);
app.route("/v1/usage", usageRoutes);

app.notFound((c) => errorResponse(c, new ApiError(404, "not_found", `no route ${c.req.method} ${new URL(c.req.url).pathname}`, "path")));
app.onError((err, c) => {
  if (err instanceof ApiError) return errorResponse(c, err);
  if (err instanceof HTTPException) return errorResponse(c, new ApiError(err.status as 400, "http_error", err.message));
  console.error("unhandled", err);
  return errorResponse(c, new ApiError(500, "internal", "internal error"));
});

export default {
  fetch: app.fetch,
  /** sae-swarm-wandb (forward to W&B) and its dead-letter queue sae-swarm-wandb-dlq (record what gave up). */
  queue: (batch, env) => consumeQueue(batch, env),
  /**
   * Cron (wrangler.toml [triggers], every minute): heartbeats for idle live W&B runs, twice 30 s apart, since cron
   * cannot fire more often and W&B's client heartbeats every 30 s (the wait is idle wall time, not CPU); and a few
   * pages of the R2 orphan sweep (objects no D1 row accounts for, past the grace period), resuming where the last
   * run of this isolate stopped.
   */
  scheduled: (_controller, env, ctx) =>
    ctx.waitUntil(
      Promise.all([
        (async () => {
          await heartbeatIdleRuns(env);
          await new Promise((resolve) => setTimeout(resolve, 30_000));
          await heartbeatIdleRuns(env);
        })(),
        sweepOrphans(env, { graceMs: settings(env).orphanGraceMs, cursor: orphanCursor }).then(
          (r) => {
            orphanCursor = r.cursor;
            if (r.deleted.length) console.log(`orphan sweep: deleted ${r.deleted.length} of ${r.listed} R2 objects listed`);
          },
          (e) => console.error("orphan sweep failed", e),
        ),
      ]),
    ),
} satisfies ExportedHandler<Env>;

/** Where the orphan sweep resumes listing R2 (per isolate: a fresh isolate starts over, which is only slower). */
let orphanCursor: string | undefined;
