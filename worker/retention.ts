/**
 * Retention: deleting a sweep (cancelling it first) and sweeping R2 objects that no D1 row points at.
 *
 * Each call does bounded work: at most MAX_ROUNDS D1 deletes of ROWS_PER_DELETE rows and R2 pages of 1000 keys,
 * so a sweep of millions of metric rows is deleted over several calls (the route answers 202 until it is gone).
 * The order makes a call cut short harmless: leases end first (runners' next write gets 409 and they stop), then
 * child rows, then R2 objects under the sweep's prefix, and the sweep row last, so a repeat finds what is left.
 */
import type { Env } from "./env";

export const ROWS_PER_DELETE = 10_000;
export const MAX_ROUNDS = 40;

/** Every R2 object of a sweep lives under this prefix (checkpoints: `${sweep}/${run}/…`). */
export const sweepPrefix = (sweepId: string) => `${sweepId}/`;

const RUNS_OF = `(SELECT id FROM runs WHERE sweep_id = ?1)`;
/** Child tables in foreign-key order, with the condition selecting a sweep's rows. */
const CHILD_TABLES: Array<[table: string, where: string]> = [
  ["wandb_dead_letters", `run_id IN ${RUNS_OF}`],
  ["wandb_runs", `run_id IN ${RUNS_OF}`],
  ["metrics", `run_id IN ${RUNS_OF}`],
  ["eval_arrays", `run_id IN ${RUNS_OF}`],
  ["evals", `run_id IN ${RUNS_OF}`],
  ["upload_parts", `upload_id IN (SELECT id FROM uploads WHERE run_id IN ${RUNS_OF})`],
  ["uploads", `run_id IN ${RUNS_OF}`],
  ["checkpoints", `run_id IN ${RUNS_OF}`],
  ["leases", `group_id IN (SELECT id FROM groups WHERE sweep_id = ?1)`],
  ["runs", `sweep_id = ?1`],
];

export interface DeleteProgress {
  /** True once the sweep row itself is gone. */
  done: boolean;
  /** Leases this call cancelled. */
  cancelled_leases: number;
  /** Rows this call deleted, per table. */
  rows: Record<string, number>;
  /** R2 objects (and their bytes) this call deleted. */
  objects: number;
  bytes: number;
}

/**
 * Ends the sweep's active leases (status 'cancelled': every later write with their tokens is refused with 409) and
 * fails its unfinished groups, so no runner claims them again. Idempotent.
 */
export async function cancelSweep(d1: D1Database, sweepId: string, now: number, why = "sweep deleted"): Promise<number> {
  const [leases] = await d1.batch([
    d1
      .prepare(`UPDATE leases SET status = 'cancelled', ended_at = ?2, error = ?3 WHERE status = 'active' AND group_id IN (SELECT id FROM groups WHERE sweep_id = ?1)`)
      .bind(sweepId, now, why),
    d1.prepare(`UPDATE groups SET status = 'failed', last_error = ?3, finished_at = coalesce(finished_at, ?2) WHERE sweep_id = ?1 AND status IN ('waiting', 'running')`).bind(sweepId, now, why),
    d1.prepare(`UPDATE runs SET status = 'failed', error = ?3, finished_at = coalesce(finished_at, ?2) WHERE sweep_id = ?1 AND status IN ('waiting', 'leased')`).bind(sweepId, now, why),
    d1.prepare(`UPDATE sweeps SET status = 'failed', finished_at = coalesce(finished_at, ?2) WHERE id = ?1 AND status IN ('waiting', 'running')`).bind(sweepId, now),
  ]);
  return leases.meta.changes ?? 0;
}

/** Deletes what it can of one sweep within MAX_ROUNDS round trips; call again until `done`. */
export async function deleteSweep(env: Env, sweepId: string, now = Date.now()): Promise<DeleteProgress> {
  const d1 = env.DB;
  const out: DeleteProgress = { done: false, cancelled_leases: await cancelSweep(d1, sweepId, now), rows: {}, objects: 0, bytes: 0 };
  let rounds = 0;
  for (const [table, where] of CHILD_TABLES) {
    for (;;) {
      if (++rounds > MAX_ROUNDS) return out;
      const r = await d1.prepare(`DELETE FROM ${table} WHERE rowid IN (SELECT rowid FROM ${table} WHERE ${where} LIMIT ${ROWS_PER_DELETE})`).bind(sweepId).run();
      const n = r.meta.changes ?? 0;
      out.rows[table] = (out.rows[table] ?? 0) + n;
      if (n < ROWS_PER_DELETE) break;
    }
  }
  // R2 by listing the sweep's prefix (whatever keys its writers chose under it), 1000 keys per page.
  for (;;) {
    if (++rounds > MAX_ROUNDS) return out;
    const page = await env.CHECKPOINTS.list({ prefix: sweepPrefix(sweepId), limit: 1000 });
    if (page.objects.length === 0) break;
    await env.CHECKPOINTS.delete(page.objects.map((o) => o.key));
    out.objects += page.objects.length;
    for (const o of page.objects) out.bytes += o.size;
    if (!page.truncated) break;
  }
  const [g, s] = await d1.batch([d1.prepare(`DELETE FROM groups WHERE sweep_id = ?1`).bind(sweepId), d1.prepare(`DELETE FROM sweeps WHERE id = ?1`).bind(sweepId)]);
  out.rows.groups = g.meta.changes ?? 0;
  out.rows.sweeps = s.meta.changes ?? 0;
  out.done = true;
  return out;
}

/** How long an R2 object may go without a D1 row before the cron deletes it (uploads record their row after). */
export const ORPHAN_GRACE_MS = 60 * 60_000;

/** A checkpoint body's key (routes/leases.ts): `${sweep}/${run}/${kind}-${step}-${lease}.safetensors`. */
const CHECKPOINT_KEY = /\.safetensors$/;

/**
 * The cron's R2 sweep: deletes objects older than `graceMs` that no D1 row accounts for: those of a sweep that no
 * longer exists, and checkpoint bodies that no checkpoints row names (a Worker that crashed between its R2 put and
 * its D1 insert, or a refused upload whose cleanup failed). Other objects of a live sweep are left alone: their
 * rows live elsewhere. Resumes from `cursor` (kept by the caller between runs), listing at most `pages` pages.
 */
export async function sweepOrphans(
  env: Env,
  opts: { now?: number; graceMs?: number; cursor?: string; pages?: number } = {},
): Promise<{ listed: number; deleted: string[]; cursor: string | undefined }> {
  const now = opts.now ?? Date.now();
  const graceMs = opts.graceMs ?? ORPHAN_GRACE_MS;
  const deleted: string[] = [];
  let listed = 0;
  let cursor = opts.cursor;
  for (let p = 0; p < (opts.pages ?? 5); p++) {
    const page = await env.CHECKPOINTS.list({ limit: 1000, cursor });
    listed += page.objects.length;
    const old = page.objects.filter((o) => now - o.uploaded.getTime() >= graceMs).map((o) => o.key);
    if (old.length) {
      // One query per page: which of these keys a checkpoints row names, and which of their sweeps still exist.
      const [known, live] = await env.DB.batch<{ v: string }>([
        env.DB.prepare(`SELECT key AS v FROM checkpoints WHERE key IN (SELECT value FROM json_each(?1))`).bind(JSON.stringify(old)),
        env.DB.prepare(`SELECT id AS v FROM sweeps WHERE id IN (SELECT value FROM json_each(?1))`).bind(JSON.stringify([...new Set(old.map(sweepOfKey))])),
      ]);
      const kept = new Set(known.results.map((r) => r.v));
      const liveSweeps = new Set(live.results.map((r) => r.v));
      const orphans = old.filter((k) => !kept.has(k) && (!liveSweeps.has(sweepOfKey(k)) || CHECKPOINT_KEY.test(k)));
      if (orphans.length) {
        await env.CHECKPOINTS.delete(orphans);
        deleted.push(...orphans);
      }
    }
    cursor = page.truncated ? page.cursor : undefined;
    if (!cursor) break;
  }
  return { listed, deleted, cursor };
}

const sweepOfKey = (key: string) => key.split("/")[0];
