/**
 * The runner protocol under a lease (runner token): heartbeat, metrics, evals, checkpoints, complete, fail, release.
 *
 * Every write carries the lease's fencing token and is refused with 409 unless the lease is active and unexpired.
 * The check is repeated inside each write's D1 statement (INSERT … SELECT … WHERE the lease is still valid), so a
 * lease that expires or is taken over between the check and the write stores nothing.
 *
 * D1 runs one query at a time per database, so under load every round trip queues behind the others: each route
 * reads the lease and its runs in one batch, and a heartbeat is one UPDATE when it succeeds.
 */
import { Hono, type Context } from "hono";
import type { CompleteResponse, FailResponse, HeartbeatResponse, ReleaseResponse, WandbMessage, WriteResponse } from "../protocol";
import { CompleteBody, EvalsBody, FailBody, HeartbeatBody, MetricsBody, ReleaseBody, jsonBody } from "../bodies";
import type { Env } from "../env";
import { settings } from "../env";
import { ApiError, badRequest, conflict, notFound } from "../errors";
import { auxOf } from "./views";
import { enqueue, fitEval } from "../queue";
import { CHUNKED, evalArrayInserts, readEvalArrays } from "../eval-store";
import { getDb, newId, refreshGroup, refreshSweep, schema } from "../db";
import { eq } from "drizzle-orm";

export const leaseRoutes = new Hono<{ Bindings: Env }>();

/** The columns of a lease the routes use. */
export interface LeaseRow {
  id: string;
  token: string;
  groupId: string;
  /** JSON string[]. */
  runIds: string;
  status: string;
  expiresAt: number;
}

export type RunRow = { id: string; sweep_id: string; track: number; n_steps: number; d_sae: number };

/** The SQL condition "lease ?L with token ?T is active and unexpired at ?N" (numbered parameters of the caller). */
export const validWhere = (l: number, t: number, n: number) => `id = ?${l} AND token = ?${t} AND status = 'active' AND expires_at > ?${n}`;
export const valid = (l: number, t: number, n: number) => `EXISTS (SELECT 1 FROM leases WHERE ${validWhere(l, t, n)})`;

/** The lease and its runs (by id), in one D1 round trip; 404 when there is no such lease. */
export async function loadLease(c: Context<{ Bindings: Env }>, id: string): Promise<{ lease: LeaseRow; runs: { ids: string[]; byId: Map<string, RunRow> } }> {
  const db = c.env.DB;
  const [l, r] = await db.batch([
    db.prepare(`SELECT id, token, group_id, run_ids, status, expires_at FROM leases WHERE id = ?1`).bind(id),
    db.prepare(`SELECT id, sweep_id, track, n_steps, d_sae FROM runs WHERE id IN (SELECT value FROM json_each((SELECT run_ids FROM leases WHERE id = ?1)))`).bind(id),
  ]);
  const row = l.results[0] as { id: string; token: string; group_id: string; run_ids: string; status: string; expires_at: number } | undefined;
  if (!row) throw notFound(`lease ${id}`, "lease_id");
  const lease: LeaseRow = { id: row.id, token: row.token, groupId: row.group_id, runIds: row.run_ids, status: row.status, expiresAt: row.expires_at };
  const runs = r.results as RunRow[];
  return { lease, runs: { ids: JSON.parse(row.run_ids) as string[], byId: new Map(runs.map((x) => [x.id, x])) } };
}

/** 409 unless `token` is this lease's and the lease is active and unexpired at `now`. */
export function requireValid(lease: LeaseRow, token: string, now: number): void {
  if (token !== lease.token) throw conflict("stale_lease", `the token does not match lease ${lease.id}`, "token");
  if (lease.status !== "active") throw conflict("stale_lease", `lease ${lease.id} is ${lease.status}`, "token");
  if (lease.expiresAt <= now) throw conflict("stale_lease", `lease ${lease.id} expired at ${new Date(lease.expiresAt).toISOString()}`, "token");
}

leaseRoutes.post("/:id/heartbeat", async (c) => {
  const body = await jsonBody(c, HeartbeatBody);
  const id = c.req.param("id");
  const now = Date.now();
  const { leaseTtlMs } = settings(c.env);
  const expiresAt = now + leaseTtlMs;
  // kernels (once, after the runner's engine is built): kept in the lease's adapter report, no column of their own
  const r = await c.env.DB.prepare(
    `UPDATE leases SET expires_at = ?4, heartbeat_at = ?3, progress = ?5, adapter = CASE WHEN ?6 IS NULL THEN adapter ELSE json_set(adapter, '$.kernels', json(?6)) END WHERE ${validWhere(1, 2, 3)}`,
  )
    .bind(id, body.token, now, expiresAt, JSON.stringify(body.progress), body.kernels ? JSON.stringify(body.kernels) : null)
    .run();
  if (r.meta.changes !== 1) {
    // Say why: 404 for no such lease, else which way the token is stale.
    const { lease } = await loadLease(c, id);
    requireValid(lease, body.token, now);
    throw conflict("stale_lease", `lease ${id} is no longer active`, "token");
  }
  return c.json({ id, expires_at: expiresAt, heartbeat_ms: Math.max(1, Math.floor(leaseTtlMs / 3)) } satisfies HeartbeatResponse);
});

leaseRoutes.post("/:id/metrics", async (c) => {
  const body = await jsonBody(c, MetricsBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  const now = Date.now();
  requireValid(lease, body.token, now);
  body.rows.forEach((row, i) => {
    const run = runs.byId.get(row.run_id);
    if (!run) throw badRequest("unknown_run", `run ${row.run_id} is not a run of lease ${lease.id}`, `rows[${i}].run_id`);
    if (row.step >= run.n_steps) throw badRequest("invalid_step", `step ${row.step} is past the run's last step (${run.n_steps - 1})`, `rows[${i}].step`);
  });
  const insert = c.env.DB.prepare(
    `INSERT INTO metrics (run_id, step, lease_id, ts, loss, mse, l0, l1, sparsity, n_patches_seen, learning_rate, sparsity_coeff, aux_loss, n_dead_train)
     SELECT ?4, ?5, ?1, ?3, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15 WHERE ${valid(1, 2, 3)}
     ON CONFLICT (run_id, step) DO NOTHING RETURNING run_id, step`,
  );
  // The batch is one transaction and starts by reading the lease's validity: when it is stale every insert stores
  // nothing and the answer is 409; when it is valid a row not stored is a duplicate.
  const [check, ...results] = await c.env.DB.batch([
    c.env.DB.prepare(`SELECT ${valid(1, 2, 3)} AS ok`).bind(lease.id, body.token, now),
    ...body.rows.map((r) =>
      insert.bind(lease.id, body.token, now, r.run_id, r.step, r.loss, r.mse, r.l0, r.l1, r.sparsity, r["progress/n_patches_seen"], r["progress/learning_rate"], r["progress/sparsity_coeff"], r.aux_loss ?? null, r.n_dead_train ?? null),
    ),
  ]);
  if (!(check.results[0] as { ok: number }).ok) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  const stored = body.rows.filter((_, i) => (results[i].results?.length ?? 0) > 0);
  // W&B: take the rows of this post not yet on the queue (the new ones, and any whose send failed before).
  const tracked = [...new Set(body.rows.map((r) => r.run_id))].filter((id) => runs.byId.get(id)!.track);
  const take = c.env.DB.prepare(
    `UPDATE metrics SET queued = 1 WHERE run_id = ?1 AND queued = 0 AND step IN (SELECT value FROM json_each(?2))
     RETURNING run_id, step, ts, loss, mse, l0, l1, sparsity, n_patches_seen, learning_rate, sparsity_coeff, aux_loss, n_dead_train`,
  );
  const taken = tracked.length
    ? await c.env.DB.batch(tracked.map((id) => take.bind(id, JSON.stringify(body.rows.filter((r) => r.run_id === id).map((r) => r.step)))))
    : [];
  const messages: WandbMessage[] = [];
  tracked.forEach((run_id, i) => {
    const rows = (taken[i].results as MetricDbRow[]).sort((a, b) => a.step - b.step).map(toWandbRow);
    if (rows.length) messages.push({ kind: "metrics", run_id, rows });
  });
  await sendOrRelease(c, messages, (m) =>
    m.kind === "metrics"
      ? c.env.DB.prepare(`UPDATE metrics SET queued = 0 WHERE run_id = ?1 AND step IN (SELECT value FROM json_each(?2))`).bind(m.run_id, JSON.stringify(m.rows.map((r) => r.step)))
      : null,
  );
  return c.json({ stored: stored.length, duplicates: body.rows.length - stored.length } satisfies WriteResponse);
});

type MetricDbRow = {
  run_id: string;
  step: number;
  ts: number;
  loss: number;
  mse: number;
  l0: number;
  l1: number;
  sparsity: number;
  n_patches_seen: number;
  learning_rate: number;
  sparsity_coeff: number;
  aux_loss: number | null;
  n_dead_train: number | null;
};

type EvalDbRow = {
  run_id: string;
  lease_id: string;
  ts: number;
  queued: number;
  l0: number;
  l1: number;
  mse: number;
  fvu: number;
  explained_variance: number;
  n_dead: number;
  n_almost_dead: number;
  n_dense: number;
  n_examples: number;
  freqs: string;
  mean_values: string;
};

const toWandbRow = (r: MetricDbRow): Extract<WandbMessage, { kind: "metrics" }>["rows"][number] => ({
  step: r.step,
  ts: r.ts,
  loss: r.loss,
  mse: r.mse,
  l0: r.l0,
  l1: r.l1,
  sparsity: r.sparsity,
  "progress/n_patches_seen": r.n_patches_seen,
  "progress/learning_rate": r.learning_rate,
  "progress/sparsity_coeff": r.sparsity_coeff,
  ...auxOf(r.aux_loss, r.n_dead_train),
});

/**
 * Sends to WANDB_QUEUE; if that fails, clears the outbox flags of what was taken (so the runner's retry of this
 * post sends them) and fails the request with 503.
 */
export async function sendOrRelease(c: Context<{ Bindings: Env }>, messages: WandbMessage[], release: (m: WandbMessage) => D1PreparedStatement | null) {
  if (!messages.length) return;
  try {
    await enqueue(c.env, messages);
  } catch (err) {
    const undo = messages.map(release).filter((s): s is D1PreparedStatement => s !== null);
    if (undo.length) await c.env.DB.batch(undo);
    console.error("WANDB_QUEUE send failed", err);
    throw new ApiError(503, "queue_unavailable", "stored, but the W&B queue refused the messages; post again to resend them");
  }
}

/**
 * W&B `finish` for every tracked run of the group that has ended (done: exit 0, failed: exit 1) and has not had
 * one yet. Taken with an outbox flag, so a repeated complete or fail resends only what a failed send left.
 */
async function sendFinishes(c: Context<{ Bindings: Env }>, groupId: string) {
  const { results } = await c.env.DB.prepare(
    `UPDATE runs SET finish_queued = 1 WHERE group_id = ?1 AND track = 1 AND finish_queued = 0 AND status IN ('done', 'failed')
     RETURNING id, status, finished_at, idx`,
  )
    .bind(groupId)
    .all<{ id: string; status: string; finished_at: number | null; idx: number }>();
  const messages: WandbMessage[] = results
    .sort((a, b) => a.idx - b.idx)
    .map((r) => ({ kind: "finish", run_id: r.id, ts: r.finished_at ?? Date.now(), exit_code: r.status === "done" ? 0 : 1 }));
  await sendOrRelease(c, messages, (m) => c.env.DB.prepare(`UPDATE runs SET finish_queued = 0 WHERE id = ?1`).bind(m.run_id));
}

leaseRoutes.post("/:id/evals", async (c) => {
  const body = await jsonBody(c, EvalsBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  const now = Date.now();
  requireValid(lease, body.token, now);
  body.evals.forEach((e, i) => {
    const run = runs.byId.get(e.run_id);
    if (!run) throw badRequest("unknown_run", `run ${e.run_id} is not a run of lease ${lease.id}`, `evals[${i}].run_id`);
    if (e.freqs.length !== run.d_sae) throw badRequest("invalid_eval", `has ${e.freqs.length} entries, the run's d_sae is ${run.d_sae}`, `evals[${i}].freqs`);
    if (e.mean_values.length !== run.d_sae)
      throw badRequest("invalid_eval", `has ${e.mean_values.length} entries, the run's d_sae is ${run.d_sae}`, `evals[${i}].mean_values`);
    for (const k of ["n_dead", "n_almost_dead", "n_dense"] as const)
      if (e[k] > run.d_sae) throw badRequest("invalid_eval", `must be <= the run's d_sae (${run.d_sae}), got ${e[k]}`, `evals[${i}].${k}`);
  });
  const insert = c.env.DB.prepare(
    `INSERT INTO evals (run_id, lease_id, ts, l0, l1, mse, fvu, explained_variance, n_dead, n_almost_dead, n_dense, n_examples, freqs, mean_values)
     SELECT ?4, ?1, ?3, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15 WHERE ${valid(1, 2, 3)}
     ON CONFLICT (run_id) DO NOTHING RETURNING run_id`,
  );
  // As for metrics: validity first, in the same transaction as the inserts; the arrays go in chunks (eval-store.ts).
  const rowAt: number[] = [];
  const statements = [c.env.DB.prepare(`SELECT ${valid(1, 2, 3)} AS ok`).bind(lease.id, body.token, now)];
  for (const e of body.evals) {
    rowAt.push(statements.length - 1);
    statements.push(
      insert.bind(lease.id, body.token, now, e.run_id, e.l0, e.l1, e.mse, e.fvu, e.explained_variance, e.n_dead, e.n_almost_dead, e.n_dense, e.n_examples, CHUNKED, CHUNKED),
      ...evalArrayInserts(c.env.DB, e.run_id, lease.id, now, e),
    );
  }
  const [check, ...results] = await c.env.DB.batch(statements);
  if (!(check.results[0] as { ok: number }).ok) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  const stored = body.evals.filter((_, i) => (results[rowAt[i]].results?.length ?? 0) > 0);
  const tracked = [...new Set(body.evals.map((e) => e.run_id))].filter((id) => runs.byId.get(id)!.track);
  const take = c.env.DB.prepare(`UPDATE evals SET queued = 1 WHERE run_id = ?1 AND queued = 0 RETURNING *`);
  const taken = tracked.length ? await c.env.DB.batch(tracked.map((id) => take.bind(id))) : [];
  const messages: WandbMessage[] = [];
  for (const e of taken.flatMap((r) => r.results as EvalDbRow[])) {
    const { run_id, ts, lease_id: _l, queued: _q, freqs, mean_values, ...summary } = e;
    messages.push(fitEval({ kind: "eval", run_id, ts, eval: { ...summary, ...(await readEvalArrays(c.env.DB, run_id, { freqs, mean_values })) } }));
  }
  await sendOrRelease(c, messages, (m) => (m.kind === "eval" ? c.env.DB.prepare(`UPDATE evals SET queued = 0 WHERE run_id = ?1`).bind(m.run_id) : null));
  return c.json({ stored: stored.length, duplicates: body.evals.length - stored.length } satisfies WriteResponse);
});

leaseRoutes.post("/:id/complete", async (c) => {
  const body = await jsonBody(c, CompleteBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  // A repeated complete (the first answer was lost) is fine.
  if (lease.status === "completed" && lease.token === body.token) {
    await sendFinishes(c, lease.groupId);
    return c.json({ id: lease.id, status: "completed", repeated: true } satisfies CompleteResponse);
  }
  const now = Date.now();
  requireValid(lease, body.token, now);
  const { results: have } = await c.env.DB.prepare(
    `SELECT r.value AS id, EXISTS (SELECT 1 FROM evals e WHERE e.run_id = r.value) AS has_eval,
       EXISTS (SELECT 1 FROM checkpoints k WHERE k.run_id = r.value AND k.kind = 'final') AS has_final
     FROM json_each(?1) r`,
  )
    .bind(lease.runIds)
    .all<{ id: string; has_eval: number; has_final: number }>();
  const noEval = have.filter((h) => !h.has_eval).map((h) => h.id);
  const noFinal = have.filter((h) => !h.has_final).map((h) => h.id);
  if (noEval.length) throw conflict("incomplete", `no eval stored for ${noEval.join(", ")}`, "evals");
  if (noFinal.length) throw conflict("incomplete", `no final checkpoint stored for ${noFinal.join(", ")}`, "checkpoints");

  const nonce = newId("end_");
  const mine = `EXISTS (SELECT 1 FROM leases WHERE id = ?1 AND end_nonce = ?2)`;
  const db = c.env.DB;
  const results = await db.batch([
    db.prepare(`UPDATE leases SET status = 'completed', ended_at = ?3, end_nonce = ?4 WHERE ${validWhere(1, 2, 3)}`).bind(lease.id, body.token, now, nonce),
    db.prepare(`UPDATE runs SET status = 'done', finished_at = ?3 WHERE lease_id = ?1 AND status = 'leased' AND ${mine}`).bind(lease.id, nonce, now),
  ]);
  if (results[0].meta.changes !== 1) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  const d = getDb(c.env);
  await c.env.DB.batch([refreshGroup(c.env.DB, lease.groupId, now), refreshSweep(c.env.DB, runs.byId.values().next().value!.sweep_id, now)]);
  await sendFinishes(c, lease.groupId);
  const group = await d.query.groups.findFirst({ where: eq(schema.groups.id, lease.groupId) });
  return c.json({ id: lease.id, status: "completed", group_status: group?.status } satisfies CompleteResponse);
});

/** "Since the group was last re-queued" for leases of group ?G (numbered parameter of the caller). */
export const sinceRetry = (g: number) => `created_at >= (SELECT coalesce(retried_at, 0) FROM groups WHERE id = ?${g})`;

/**
 * The group itself failed under this lease. Counted once per distinct runner since the last retry: one runner with
 * a local fault (its data host unreachable, its GPU out of memory) cannot fail a group by failing it again and again.
 */
leaseRoutes.post("/:id/fail", async (c) => {
  const body = await jsonBody(c, FailBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  const { maxAttempts } = settings(c.env);
  if (lease.status === "failed" && lease.token === body.token) {
    // A repeated fail (the first answer was lost) is answered, and changes nothing.
    await sendFinishes(c, lease.groupId);
    const g = (await getDb(c.env).query.groups.findFirst({ where: eq(schema.groups.id, lease.groupId) }))!;
    return c.json({ id: lease.id, status: "failed", group_status: g.status, failures: g.failures, max_attempts: maxAttempts, repeated: true } satisfies FailResponse);
  }
  const now = Date.now();
  requireValid(lease, body.token, now);
  const nonce = newId("end_");
  const mine = `EXISTS (SELECT 1 FROM leases WHERE id = ?1 AND end_nonce = ?2)`;
  const exhausted = `(SELECT failures FROM groups WHERE id = ?3) >= ?4`;
  const firstOfRunner = `NOT EXISTS (SELECT 1 FROM leases o WHERE o.group_id = ?3 AND o.id <> ?1 AND o.status = 'failed'
    AND o.runner_id = (SELECT runner_id FROM leases WHERE id = ?1) AND o.${sinceRetry(3)})`;
  const db = c.env.DB;
  const results = await db.batch([
    db
      .prepare(`UPDATE leases SET status = 'failed', ended_at = ?3, end_nonce = ?4, error = ?5 WHERE ${validWhere(1, 2, 3)}`)
      .bind(lease.id, body.token, now, nonce, body.error),
    db.prepare(`UPDATE groups SET failures = failures + (${firstOfRunner}), last_error = ?5 WHERE id = ?3 AND ${mine}`).bind(lease.id, nonce, lease.groupId, maxAttempts, body.error),
    // Retries left: this chunk's runs wait for the next claim (which resumes them from their checkpoints).
    db.prepare(`UPDATE runs SET status = 'waiting' WHERE lease_id = ?1 AND status = 'leased' AND ${mine} AND NOT ${exhausted}`).bind(lease.id, nonce, lease.groupId, maxAttempts),
    // None left: the whole group fails with this error, and its other chunks' leases end.
    db.prepare(`UPDATE runs SET status = 'failed', error = ?5, finished_at = ?6 WHERE group_id = ?3 AND status <> 'done' AND ${mine} AND ${exhausted}`).bind(lease.id, nonce, lease.groupId, maxAttempts, body.error, now),
    db.prepare(`UPDATE leases SET status = 'cancelled', ended_at = ?5 WHERE group_id = ?3 AND status = 'active' AND ${mine} AND ${exhausted}`).bind(lease.id, nonce, lease.groupId, maxAttempts, now),
    db.prepare(`UPDATE groups SET status = 'failed', finished_at = ?5 WHERE id = ?3 AND ${mine} AND ${exhausted}`).bind(lease.id, nonce, lease.groupId, maxAttempts, now),
  ]);
  if (results[0].meta.changes !== 1) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  const d = getDb(c.env);
  await c.env.DB.batch([refreshGroup(c.env.DB, lease.groupId, now), refreshSweep(c.env.DB, runs.byId.values().next().value!.sweep_id, now)]);
  const group = (await d.query.groups.findFirst({ where: eq(schema.groups.id, lease.groupId) }))!;
  await sendFinishes(c, group.id);
  return c.json({ id: lease.id, status: "failed", group_status: group.status, failures: group.failures, max_attempts: maxAttempts } satisfies FailResponse);
});

/**
 * The runner gives the group back (it stops, its page crashed, its device was lost): not a failure. The lease ends,
 * its runs wait for the next claim at once, which resumes them from their checkpoints.
 */
leaseRoutes.post("/:id/release", async (c) => {
  const body = await jsonBody(c, ReleaseBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  const groupStatus = async () => (await getDb(c.env).query.groups.findFirst({ where: eq(schema.groups.id, lease.groupId) }))!.status;
  if (lease.status === "released" && lease.token === body.token) {
    return c.json({ id: lease.id, status: "released", group_status: await groupStatus(), repeated: true } satisfies ReleaseResponse);
  }
  const now = Date.now();
  requireValid(lease, body.token, now);
  const nonce = newId("end_");
  const db = c.env.DB;
  const results = await db.batch([
    db
      .prepare(`UPDATE leases SET status = 'released', ended_at = ?3, end_nonce = ?4, error = ?5 WHERE ${validWhere(1, 2, 3)}`)
      .bind(lease.id, body.token, now, nonce, body.reason ?? null),
    db.prepare(`UPDATE runs SET status = 'waiting' WHERE lease_id = ?1 AND status = 'leased' AND EXISTS (SELECT 1 FROM leases WHERE id = ?1 AND end_nonce = ?2)`).bind(lease.id, nonce),
    refreshGroup(db, lease.groupId, now),
    refreshSweep(db, runs.byId.values().next().value!.sweep_id, now),
  ]);
  if (results[0].meta.changes !== 1) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  return c.json({ id: lease.id, status: "released", group_status: await groupStatus() } satisfies ReleaseResponse);
});
