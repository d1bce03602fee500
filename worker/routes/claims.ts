/**
 * POST /v1/claims (runner token): lease the oldest claimable chunk of a group to a runner.
 *
 * A run is claimable when it waits, or when the lease holding it is no longer active or has expired. The claim is
 * one D1 batch (one transaction): the new lease is inserted only if every chosen run is still claimable at that
 * moment, and the runs move to it only if that insert happened, so of two claims racing for one group exactly
 * one wins; the loser looks again (and gets another chunk, or 204).
 */
import { Hono } from "hono";
import { maxSaesThatFit } from "../../shaders/fit";
import type { TrainConfig } from "../../shaders/config";
import type { AdapterLimits } from "../../shaders/device";
import type { ClaimResponse, ResumePoint } from "../protocol";
import { ClaimBody, jsonBody } from "../bodies";
import type { Env } from "../env";
import { settings } from "../env";
import { newId } from "../db";

export const claimRoutes = new Hono<{ Bindings: Env }>();

/** SQL for "run r is claimable at ?now" (r: runs, l: its lease, left-joined). */
const CLAIMABLE = `(r.status = 'waiting' OR (r.status = 'leased' AND (l.id IS NULL OR l.status <> 'active' OR l.expires_at <= ?1)))`;

/**
 * Attempts per claim. A claim that lost a race tries again among a widening set of the oldest claimable groups
 * (the oldest, then a random one of the oldest 2, 4, 8, …), so that many runners claiming at once spread over the
 * groups instead of colliding on the oldest one every time (with 16 claims at once and a fixed order, most of them
 * used to lose five races in a row and answer 204 while work waited).
 */
const MAX_TRIES = 8;

claimRoutes.post("/", async (c) => {
  const body = await jsonBody(c, ClaimBody);
  const { leaseTtlMs, checkpointEvery } = settings(c.env);
  const limits = body.adapter.limits as unknown as AdapterLimits;
  const db = c.env.DB;

  for (let attempt = 0; attempt < MAX_TRIES; attempt++) {
    const now = Date.now();
    // Oldest groups first (sweep order, then group order), each with the shape of one claimable run: only the
    // shape, so that a claim reads a few bytes per candidate group rather than whole configs.
    const { results: candidates } = await db
      .prepare(
        `SELECT group_id, sweep_id, shape FROM (
           SELECT g.id AS group_id, g.sweep_id, g.created_at, g.idx,
             (SELECT json_array(json_extract(r.cfg, '$.sae.d_vit'), json_extract(r.cfg, '$.sae.exp_factor'), json_extract(r.cfg, '$.sae_batch_size'))
              FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = g.id AND ${CLAIMABLE} ORDER BY r.idx LIMIT 1) AS shape
           FROM groups g
           WHERE g.status IN ('waiting', 'running'))
         WHERE shape IS NOT NULL
         ORDER BY created_at, sweep_id, idx
         LIMIT 200`,
      )
      .bind(now)
      .all<{ group_id: string; sweep_id: string; shape: string }>();

    const fitting: Array<{ group_id: string; sweep_id: string; k: number }> = [];
    for (const g of candidates) {
      const [d_vit, exp_factor, batch_size] = JSON.parse(g.shape) as number[];
      const k = maxSaesThatFit(limits, { d_vit, d_sae: d_vit * exp_factor, batch_size });
      if (k >= 1) fitting.push({ group_id: g.group_id, sweep_id: g.sweep_id, k }); // else leave it for a bigger runner
    }
    if (!fitting.length) return c.body(null, 204);
    const g = fitting[Math.floor(Math.random() * Math.min(fitting.length, 2 ** attempt))];
    const [runsRead, groupRead] = await db.batch([
      db
        .prepare(`SELECT r.id, r.cfg FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = ?2 AND ${CLAIMABLE} ORDER BY r.idx LIMIT ?3`)
        .bind(now, g.group_id, g.k),
      db.prepare(`SELECT data FROM groups WHERE id = ?1`).bind(g.group_id),
    ]);
    const runs = runsRead.results as Array<{ id: string; cfg: string }>;
    if (!runs.length) continue; // taken meanwhile
    const chosen = {
      group: { group_id: g.group_id, sweep_id: g.sweep_id, data: (groupRead.results[0] as { data: string }).data },
      runIds: runs.map((r) => r.id),
      cfgs: new Map(runs.map((r) => [r.id, JSON.parse(r.cfg) as TrainConfig])),
    };

    const leaseId = newId("ls_");
    const token = newId("tk_", 18);
    // The lease starts when it is written, not when this attempt began (on a busy Worker the reads above take a
    // while, and the runner should get its full TTL).
    const at = Date.now();
    const expiresAt = at + leaseTtlMs;
    const ids = JSON.stringify(chosen.runIds);
    const inChunk = `r.id IN (SELECT value FROM json_each(?2))`;
    const won = `EXISTS (SELECT 1 FROM leases WHERE id = ?3)`;
    const results = await db.batch([
      db
        .prepare(
          `INSERT INTO leases (id, token, group_id, runner_id, adapter, run_ids, status, created_at, expires_at)
           SELECT ?3, ?4, ?5, ?6, ?7, ?2, 'active', ?1, ?8
           WHERE (SELECT count(*) FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE ${inChunk} AND ${CLAIMABLE}) = json_array_length(?2)`,
        )
        .bind(at, ids, leaseId, token, chosen.group.group_id, body.runner_id, JSON.stringify(body.adapter), expiresAt),
      // The leases this chunk takes over are over for good: their tokens are now stale.
      db
        .prepare(
          `UPDATE leases SET status = 'expired', ended_at = ?1
           WHERE status = 'active' AND expires_at <= ?1 AND id IN (SELECT r.lease_id FROM runs r WHERE ${inChunk}) AND ${won}`,
        )
        .bind(at, ids, leaseId),
      db.prepare(`UPDATE runs SET status = 'leased', lease_id = ?3, attempts = attempts + 1 WHERE id IN (SELECT value FROM json_each(?2)) AND ${won}`).bind(at, ids, leaseId),
      db.prepare(`UPDATE groups SET status = 'running' WHERE id = ?2 AND status = 'waiting' AND EXISTS (SELECT 1 FROM leases WHERE id = ?1)`).bind(leaseId, chosen.group.group_id),
      db.prepare(`UPDATE sweeps SET status = 'running' WHERE id = ?2 AND status = 'waiting' AND EXISTS (SELECT 1 FROM leases WHERE id = ?1)`).bind(leaseId, chosen.group.sweep_id),
    ]);
    if (results[0].meta.changes !== 1) continue; // another claim took some of these runs first; look again

    const [ckptRead, attRead] = await db.batch([
      db.prepare(`SELECT run_id, max(step) AS step FROM checkpoints WHERE kind = 'resume' AND run_id IN (SELECT value FROM json_each(?1)) GROUP BY run_id`).bind(ids),
      db.prepare(`SELECT max(attempts) AS a FROM runs WHERE id IN (SELECT value FROM json_each(?1))`).bind(ids),
    ]);
    const ckpts = ckptRead.results as Array<{ run_id: string; step: number }>;
    const att = attRead.results as Array<{ a: number }>;
    const resume: ResumePoint[] = ckpts
      .sort((a, b) => chosen.runIds.indexOf(a.run_id) - chosen.runIds.indexOf(b.run_id))
      .map((r) => ({ run_id: r.run_id, step: r.step, checkpoint_path: `/v1/leases/${leaseId}/checkpoints/${r.run_id}?kind=resume&step=${r.step}` }));

    const response: ClaimResponse = {
      lease: { id: leaseId, token, expires_at: expiresAt, heartbeat_ms: Math.max(1, Math.floor(leaseTtlMs / 3)) },
      group: {
        id: chosen.group.group_id,
        sweep_id: chosen.group.sweep_id,
        cfgs: chosen.runIds.map((run_id) => ({ run_id, cfg: chosen.cfgs.get(run_id)! })),
        data: JSON.parse(chosen.group.data),
        resume,
        checkpoint_every: checkpointEvery,
        attempt: att[0]?.a ?? 1,
      },
    };
    return c.json(response, 200);
  }
  // Lost the race every time: the runner should simply claim again.
  return c.body(null, 204);
});
