/** POST /v1/sweeps (submit), GET /v1/sweeps, GET /v1/sweeps/:id (read), DELETE /v1/sweeps/:id. Submitter token. */
import { Hono } from "hono";
import { asc, desc, eq, sql } from "drizzle-orm";
import type { SubmitResponse } from "../protocol";
import type { Env } from "../env";
import { intQuery, notFound } from "../errors";
import { wandbView } from "../wandb/consumer";
import { getDb, newId, schema } from "../db";
import { checkSweepContentType } from "../sweep";
import { planSweep } from "./sweeps-plan";
import { utf8Body } from "../bodies";
import { fullConfig } from "../run-config";
import { evalSummary, latestKernelsByGroup, leaseView, progressOf, stepMetrics } from "./views";
import { deleteSweep } from "../retention";

export const sweepRoutes = new Hono<{ Bindings: Env }>();

sweepRoutes.post("/", async (c) => {
  checkSweepContentType(c.req.header("content-type"));
  // Decoded by hand (strict UTF-8): workerd warns when .text() reads a body whose type (application/toml) it does
  // not know as text.
  const text = await utf8Body(c);
  const p = planSweep(text, c.req.header("content-type"), newId("sw_"), Date.now(), c.env);
  // One batch: D1 runs it as one transaction, so a failure leaves nothing. Rows travel as JSON arrays expanded by
  // json_each, a few statements per sweep, well under D1's limits on bound parameters and queries per request.
  const d1 = c.env.DB;
  const stmts: D1PreparedStatement[] = [
    d1
      .prepare(`INSERT INTO sweeps (id, created_at, status, spec, format, warnings, n_runs, n_groups, cfg_shared) VALUES (?1, ?2, 'waiting', ?3, ?4, ?5, ?6, ?7, ?8)`)
      .bind(p.id, p.now, text, p.format, JSON.stringify(p.warnings), p.nRuns, p.groups.length, p.shared),
  ];
  for (const part of p.groupChunks) {
    stmts.push(
      d1
        .prepare(
          `INSERT INTO groups (id, sweep_id, idx, created_at, status, key, data, n_runs, failures)
           SELECT ?2 || '-g' || (value ->> 0), ?2, value ->> 0, ?3, 'waiting', value -> 1, value -> 2, value ->> 3, 0
           FROM json_each(?1)`,
        )
        .bind(part, p.id, p.now),
    );
  }
  for (const part of p.runChunks) {
    stmts.push(
      d1
        .prepare(
          `INSERT INTO runs (id, sweep_id, group_id, idx, cfg, track, n_steps, d_sae, status, attempts)
           SELECT ?2 || '-r' || (value ->> 0), ?2, ?2 || '-g' || (value ->> 1), value ->> 0, value -> 2, value ->> 3, value ->> 4, value ->> 5, 'waiting', 0
           FROM json_each(?1)`,
        )
        .bind(part, p.id),
    );
  }
  await d1.batch(stmts);
  return c.json({ id: p.id, n_runs: p.nRuns, n_groups: p.groups.length, groups: p.groups, warnings: p.warnings } satisfies SubmitResponse, 201);
});

/** Run counts per status, for progress. */
async function runCounts(c: { env: Env }, where: ReturnType<typeof eq> | undefined, by: typeof schema.runs.sweepId | typeof schema.runs.groupId) {
  const db = getDb(c.env);
  const rows = await db
    .select({ key: by, status: schema.runs.status, n: sql<number>`count(*)` })
    .from(schema.runs)
    .where(where)
    .groupBy(by, schema.runs.status);
  const out = new Map<string, Record<string, number>>();
  for (const r of rows) {
    const m = out.get(r.key) ?? {};
    m[r.status] = r.n;
    out.set(r.key, m);
  }
  return out;
}

function sweepView(s: typeof schema.sweeps.$inferSelect, counts: Record<string, number> | undefined) {
  return {
    id: s.id,
    status: s.status,
    created_at: s.createdAt,
    finished_at: s.finishedAt,
    n_runs: s.nRuns,
    n_groups: s.nGroups,
    progress: progressOf(counts, s.nRuns),
    warnings: JSON.parse(s.warnings) as string[],
  };
}

sweepRoutes.get("/", async (c) => {
  const db = getDb(c.env);
  const limit = intQuery(c.req.query("limit"), "limit", 1, 1000, 100);
  const rows = await db.select().from(schema.sweeps).orderBy(desc(schema.sweeps.createdAt)).limit(limit);
  const counts = await runCounts(c, undefined, schema.runs.sweepId);
  return c.json({ sweeps: rows.map((s) => sweepView(s, counts.get(s.id))) });
});

sweepRoutes.get("/:id", async (c) => {
  const id = c.req.param("id");
  const db = getDb(c.env);
  const s = await db.query.sweeps.findFirst({ where: eq(schema.sweeps.id, id) });
  if (!s) throw notFound(`sweep ${id}`, "id");
  // The dashboard's one read per refresh: each run comes with its latest metric row and its eval's scalars, in
  // a constant number of queries (a max(step) per run through the (run_id, step) key), not one request per run.
  const runsOf = sql`(SELECT id FROM runs WHERE sweep_id = ${id})`;
  const [groups, runs, leases, counts, wandbRows, latest, evals, tuned] = await Promise.all([
    db.select().from(schema.groups).where(eq(schema.groups.sweepId, id)).orderBy(asc(schema.groups.idx)),
    db.select().from(schema.runs).where(eq(schema.runs.sweepId, id)).orderBy(asc(schema.runs.idx)),
    db
      .select()
      .from(schema.leases)
      .innerJoin(schema.groups, eq(schema.leases.groupId, schema.groups.id))
      .where(sql`${schema.groups.sweepId} = ${id} AND ${schema.leases.status} = 'active'`),
    runCounts(c, eq(schema.runs.sweepId, id), schema.runs.groupId),
    db
      .select({ w: schema.wandbRuns })
      .from(schema.wandbRuns)
      .innerJoin(schema.runs, eq(schema.wandbRuns.runId, schema.runs.id))
      .where(eq(schema.runs.sweepId, id)),
    db
      .select({ m: schema.metrics })
      .from(schema.runs)
      .innerJoin(schema.metrics, sql`${schema.metrics.runId} = ${schema.runs.id} AND ${schema.metrics.step} = (SELECT max(step) FROM metrics WHERE run_id = ${schema.runs.id})`)
      .where(eq(schema.runs.sweepId, id)),
    db
      .select({
        runId: schema.evals.runId,
        l0: schema.evals.l0,
        l1: schema.evals.l1,
        mse: schema.evals.mse,
        fvu: schema.evals.fvu,
        explainedVariance: schema.evals.explainedVariance,
        nDead: schema.evals.nDead,
        nAlmostDead: schema.evals.nAlmostDead,
        nDense: schema.evals.nDense,
        nExamples: schema.evals.nExamples,
      })
      .from(schema.evals)
      .where(sql`${schema.evals.runId} IN ${runsOf}`),
    // the matmul kernels each group's runners reported (any lease, ended ones too: the latest per group is shown)
    db
      .select({ id: schema.leases.id, groupId: schema.leases.groupId, runnerId: schema.leases.runnerId, createdAt: schema.leases.createdAt, adapter: schema.leases.adapter })
      .from(schema.leases)
      .innerJoin(schema.groups, eq(schema.leases.groupId, schema.groups.id))
      .where(sql`${schema.groups.sweepId} = ${id} AND json_extract(${schema.leases.adapter}, '$.kernels') IS NOT NULL`),
  ]);
  const kernelsByGroup = latestKernelsByGroup(tuned);
  const latestByRun = new Map(latest.map((r) => [r.m.runId, stepMetrics(r.m)]));
  const evalByRun = new Map(evals.map((e) => [e.runId, evalSummary(e)]));
  const wandbByRun = new Map(wandbRows.map((r) => [r.w.runId, r.w]));
  const dataOf = new Map(groups.map((g) => [g.id, g.data]));
  const hasKey = !!c.env.WANDB_API_KEY;
  const now = Date.now();
  const sweepCounts: Record<string, number> = {};
  for (const m of counts.values()) for (const [k, n] of Object.entries(m)) sweepCounts[k] = (sweepCounts[k] ?? 0) + n;
  return c.json({
    sweep: { ...sweepView(s, sweepCounts), spec: s.spec, format: s.format },
    groups: groups.map((g) => ({
      id: g.id,
      idx: g.idx,
      status: g.status,
      n_runs: g.nRuns,
      failures: g.failures,
      last_error: g.lastError,
      finished_at: g.finishedAt,
      progress: progressOf(counts.get(g.id), g.nRuns),
      leases: leases.filter((l) => l.leases.groupId === g.id).map((l) => leaseView(l.leases, now)),
      kernels: kernelsByGroup.get(g.id) ?? null,
    })),
    runs: runs.map((r) => ({ id: r.id, idx: r.idx, group_id: r.groupId, status: r.status, n_steps: r.nSteps, error: r.error, cfg: fullConfig({ shared: s.cfgShared, cfg: r.cfg, data: dataOf.get(r.groupId)! }),
      latest: latestByRun.get(r.id) ?? null,
      eval: evalByRun.get(r.id) ?? null,
      wandb: wandbView(wandbByRun.get(r.id), r.track, hasKey),
    })),
  });
});

/**
 * Deletes a sweep: cancels it (its leases end; runners stop at their next write, refused with 409), then removes
 * its D1 rows and its R2 objects. Bounded work per call: 200 once the sweep is gone, 202 when there is more to
 * delete (call again; `npx sae-swarm delete` does).
 */
sweepRoutes.delete("/:id", async (c) => {
  const id = c.req.param("id");
  const exists = await c.env.DB.prepare(`SELECT 1 FROM sweeps WHERE id = ?1`).bind(id).first();
  if (!exists) throw notFound(`sweep ${id}`, "id");
  const progress = await deleteSweep(c.env, id);
  return c.json({ id, ...progress }, progress.done ? 200 : 202);
});
