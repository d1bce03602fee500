/** The read API for one run (submitter token): detail, metric history, eval, final checkpoint. */
import { Hono, type Context } from "hono";
import { and, asc, desc, eq, gt, sql } from "drizzle-orm";
import type { EvalMetrics } from "../../shaders/config";
import type { Env } from "../env";
import { ApiError, badRequest, intQuery, notFound } from "../errors";
import { getDb, schema } from "../db";
import { wandbView } from "../wandb/consumer";
import { readEvalArrays } from "../eval-store";
import { runConfig } from "../run-config";
import { evalSummary, latestKernelsByGroup, stepMetrics } from "./views";

export const runRoutes = new Hono<{ Bindings: Env }>();

export async function loadRun(c: Context<{ Bindings: Env }>) {
  const id = c.req.param("id")!;
  const run = await getDb(c.env).query.runs.findFirst({ where: eq(schema.runs.id, id) });
  if (!run) throw notFound(`run ${id}`, "id");
  return run;
}

runRoutes.get("/:id", async (c) => {
  const run = await loadRun(c);
  const db = getDb(c.env);
  const [latest, ev, ckpts, wb, dead, tuned] = await Promise.all([
    db.select().from(schema.metrics).where(eq(schema.metrics.runId, run.id)).orderBy(desc(schema.metrics.step)).limit(1),
    db.select().from(schema.evals).where(eq(schema.evals.runId, run.id)),
    db.select().from(schema.checkpoints).where(eq(schema.checkpoints.runId, run.id)).orderBy(asc(schema.checkpoints.kind), asc(schema.checkpoints.step)),
    db.select().from(schema.wandbRuns).where(eq(schema.wandbRuns.runId, run.id)),
    db.select().from(schema.wandbDeadLetters).where(eq(schema.wandbDeadLetters.runId, run.id)).orderBy(desc(schema.wandbDeadLetters.id)).limit(20),
    db
      .select({ id: schema.leases.id, groupId: schema.leases.groupId, runnerId: schema.leases.runnerId, createdAt: schema.leases.createdAt, adapter: schema.leases.adapter })
      .from(schema.leases)
      .where(sql`${schema.leases.groupId} = ${run.groupId} AND json_extract(${schema.leases.adapter}, '$.kernels') IS NOT NULL`),
  ]);
  const wandb = wandbView(wb[0], run.track, !!c.env.WANDB_API_KEY);
  return c.json({
    run: {
      id: run.id,
      sweep_id: run.sweepId,
      group_id: run.groupId,
      idx: run.idx,
      status: run.status,
      n_steps: run.nSteps,
      attempts: run.attempts,
      error: run.error,
      finished_at: run.finishedAt,
      cfg: await runConfig(c.env.DB, run.id),
      latest: latest[0] ? stepMetrics(latest[0]) : null,
      eval: ev[0] ? evalSummary(ev[0]) : null,
      /** The matmul kernels the latest runner of its group reported (autotuned per adapter and shape). */
      kernels: latestKernelsByGroup(tuned).get(run.groupId) ?? null,
      checkpoints: ckpts.map((k) => ({ kind: k.kind, step: k.step, bytes: k.bytes, created_at: k.createdAt })),
      wandb: wandb && {
        ...wandb,
        // The latest 20 messages that reached the dead-letter queue.
        dead_lettered: dead.map((d) => ({ kind: d.kind, steps: JSON.parse(d.steps) as number[], attempts: d.attempts, error: d.error, at: d.createdAt })),
      },
    },
  });
});

runRoutes.get("/:id/metrics", async (c) => {
  const run = await loadRun(c);
  const since = intQuery(c.req.query("since"), "since", -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, -1);
  const limit = intQuery(c.req.query("limit"), "limit", 1, 100_000, 10_000);
  const rows = await getDb(c.env)
    .select()
    .from(schema.metrics)
    .where(and(eq(schema.metrics.runId, run.id), gt(schema.metrics.step, since)))
    .orderBy(asc(schema.metrics.step))
    .limit(limit);
  return c.json({ run_id: run.id, since, rows: rows.map(stepMetrics) });
});

runRoutes.get("/:id/eval", async (c) => {
  const run = await loadRun(c);
  const [e] = await getDb(c.env).select().from(schema.evals).where(eq(schema.evals.runId, run.id));
  if (!e) throw notFound(`eval of run ${run.id}`, "id");
  const body: { run_id: string } & EvalMetrics = { run_id: run.id, ...evalSummary(e), ...(await readEvalArrays(c.env.DB, run.id, { freqs: e.freqs, mean_values: e.meanValues })) };
  return c.json(body);
});

/** The stored checkpoint of a run: the latest of `kind` (a run has one `final`); 404 when there is none. */
export async function latestCheckpoint(env: Env, runId: string, kind: "final" | "resume") {
  const [k] = await getDb(env)
    .select()
    .from(schema.checkpoints)
    .where(and(eq(schema.checkpoints.runId, runId), eq(schema.checkpoints.kind, kind)))
    .orderBy(desc(schema.checkpoints.step))
    .limit(1);
  if (!k) throw notFound(`${kind} checkpoint of run ${runId}`, "id");
  return k;
}

runRoutes.get("/:id/checkpoint", async (c) => {
  const run = await loadRun(c);
  const kind = c.req.query("kind") ?? "final";
  if (kind !== "final" && kind !== "resume") throw badRequest("invalid_query", 'must be "final" or "resume"', "kind");
  const k = await latestCheckpoint(c.env, run.id, kind);
  const obj = await c.env.CHECKPOINTS.get(k.key);
  if (!obj) throw new ApiError(500, "missing_object", `checkpoint ${k.key} is in D1 but not in R2`);
  return new Response(obj.body, {
    headers: {
      "content-type": "application/octet-stream",
      "content-length": String(obj.size),
      "content-disposition": `attachment; filename="${run.id}-${kind}-${k.step}.safetensors"`,
      "x-checkpoint-step": String(k.step),
    },
  });
});
