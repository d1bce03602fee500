/**
 * POST /v1/claims (runner token): lease the oldest claimable chunk of a group to a runner.
 *
 * A run is claimable when it waits, or when the lease holding it is no longer active or has expired. The lease is
 * written in one D1 batch (one transaction) that chooses the chunk's runs itself, among those claimable at that
 * moment, and moves them to the new lease, so two claims racing for one group never share a run: the loser finds
 * the group's remaining runs (another chunk), or none and looks at another group (or answers 204).
 */
import { Hono } from "hono";
import { DEFAULT_MEMORY_BUDGET, maxSaesThatFit } from "../../shaders/fit";
import type { AdapterLimits } from "../../shaders/device";
import type { ClaimResponse, ResumePoint } from "../protocol";
import { ClaimBody, jsonBody } from "../bodies";
import type { Env } from "../env";
import { settings } from "../env";
import { newId } from "../db";
import { expirationLimit } from "./groups";
import { RUN_CONFIG_COLUMNS, RUN_CONFIG_JOINS, fullConfig, runConfigValueSql } from "../run-config";

export const claimRoutes = new Hono<{ Bindings: Env }>();

/** SQL for "run r is claimable at ?now" (r: runs, l: its lease, left-joined). */
const CLAIMABLE = `(r.status = 'waiting' OR (r.status = 'leased' AND (l.id IS NULL OR l.status <> 'active' OR l.expires_at <= ?1)))`;

/**
 * Attempts per claim. An attempt picks a candidate group and leases its claimable runs in one D1 batch; it loses
 * only when other claims took every claimable run of that group first. The first attempt takes the oldest group;
 * a claim that lost tries a random one of the next oldest 4, 16, 64, … (re-reading the candidates once when it
 * has tried them all), so that many runners claiming at once spread over the groups instead of colliding on the
 * oldest one every time (with a fixed order and five tries, most of 16 claims at once answered 204 while 200 groups
 * waited).
 */
const MAX_TRIES = 8;

/** Candidate groups read per claim (the oldest with a claimable run). */
const CANDIDATES = 200;

type Candidate = { group_id: string; sweep_id: string; k: number };

claimRoutes.post("/", async (c) => {
  const body = await jsonBody(c, ClaimBody);
  const { leaseTtlMs, checkpointEvery, maxExpirations, evalsBytes, partBytes } = settings(c.env);
  const limits = body.adapter.limits as unknown as AdapterLimits;
  // the runner's engine plans with the same budget and limits (shaders/fit.ts), so the chunk fits its device
  const memoryBudget = body.adapter.memoryBudget ?? DEFAULT_MEMORY_BUDGET;
  const db = c.env.DB;

  /** The oldest groups (sweep order, then group order) with a claimable run that this adapter can hold. */
  const readCandidates = async (): Promise<Candidate[]> => {
    // Only the shape of one claimable run per group (and the most Matryoshka prefixes of its claimable runs, which
    // bounds any chunk's, whether one is BatchTopK, whose select needs buffers of its own, and whether one trains
    // with AuxK, whose dead counters and working set (as large as H) count too), so that a claim reads
    // a few bytes per group, not configs.
    const { results } = await db
      .prepare(
        `SELECT group_id, sweep_id, shape, n_prefixes, batchtopk, auxk FROM (
           SELECT g.id AS group_id, g.sweep_id, g.created_at, g.idx,
             (SELECT json_array(${runConfigValueSql("$.sae.d_vit")}, ${runConfigValueSql("$.sae.exp_factor")}, ${runConfigValueSql("$.sae_batch_size")})
              FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = g.id AND ${CLAIMABLE} ORDER BY r.idx LIMIT 1) AS shape,
             (SELECT max(CASE WHEN ${runConfigValueSql("$.objective.kind")} = 'matryoshka' THEN ${runConfigValueSql("$.objective.n_prefixes")} ELSE 1 END)
              FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = g.id AND ${CLAIMABLE}) AS n_prefixes,
             (SELECT max(CASE WHEN ${runConfigValueSql("$.sae.kind")} = 'batchtopk' THEN 1 ELSE 0 END)
              FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = g.id AND ${CLAIMABLE}) AS batchtopk,
             (SELECT max(CASE WHEN ${runConfigValueSql("$.sae.kind")} IN ('topk', 'batchtopk')
                AND COALESCE(${runConfigValueSql("$.sae.aux_coeff")}, 1) > 0 AND COALESCE(${runConfigValueSql("$.sae.k_aux")}, 1) > 0 THEN 1 ELSE 0 END)
              FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = g.id AND ${CLAIMABLE}) AS auxk
           FROM groups g
           WHERE g.status IN ('waiting', 'running'))
         WHERE shape IS NOT NULL
         ORDER BY created_at, sweep_id, idx
         LIMIT ${CANDIDATES}`,
      )
      .bind(Date.now())
      .all<{ group_id: string; sweep_id: string; shape: string; n_prefixes: number | null; batchtopk: number | null; auxk: number | null }>();
    const out: Candidate[] = [];
    for (const g of results) {
      const [d_vit, exp_factor, batch_size] = JSON.parse(g.shape) as number[];
      const k = maxSaesThatFit(limits, { d_vit, d_sae: d_vit * exp_factor, batch_size, n_prefixes: g.n_prefixes ?? 1, batchtopk: g.batchtopk === 1, auxk: g.auxk === 1 }, memoryBudget);
      if (k >= 1) out.push({ group_id: g.group_id, sweep_id: g.sweep_id, k }); // else leave it for a bigger runner
    }
    return out;
  };

  let candidates = await readCandidates();
  let reread = false;
  for (let attempt = 0; attempt < MAX_TRIES && candidates.length; attempt++) {
    const i = Math.floor(Math.random() * Math.min(candidates.length, 4 ** attempt));
    const g = candidates[i];
    const leaseId = newId("ls_");
    const token = newId("tk_", 18);
    const at = Date.now();
    const expiresAt = at + leaseTtlMs;
    // One batch, one transaction: the lease takes the group's claimable runs as they are at this moment (so it
    // cannot half-succeed or race), the leases it takes runs from are over for good (their tokens now stale), and
    // the answer's rows are read back. Nothing is written when no run of the group is claimable any more.
    const chunk = `SELECT value FROM json_each((SELECT run_ids FROM leases WHERE id = ?3))`;
    const won = `EXISTS (SELECT 1 FROM leases WHERE id = ?3)`;
    // First, a group whose leases expired too often fails here, and the insert below then finds nothing claimable.
    const limited = expirationLimit(db, at, g.group_id, g.sweep_id, maxExpirations);
    const all = await db.batch([
      ...limited,
      db
        .prepare(
          `INSERT INTO leases (id, token, group_id, runner_id, adapter, memory_budget, run_ids, status, created_at, expires_at)
           SELECT ?3, ?4, ?2, ?5, ?6, ?9, ids, 'active', ?1, ?7 FROM (
             SELECT json_group_array(id) AS ids, count(*) AS n FROM (
               SELECT r.id FROM runs r LEFT JOIN leases l ON l.id = r.lease_id WHERE r.group_id = ?2 AND ${CLAIMABLE} ORDER BY r.idx LIMIT ?8))
           WHERE n > 0`,
        )
        .bind(at, g.group_id, leaseId, token, body.runner_id, JSON.stringify(body.adapter), expiresAt, g.k, memoryBudget),
      db
        .prepare(`UPDATE leases SET status = 'expired', ended_at = ?1 WHERE status = 'active' AND expires_at <= ?1 AND id IN (SELECT lease_id FROM runs WHERE id IN (${chunk}))`)
        .bind(at, g.group_id, leaseId),
      db.prepare(`UPDATE runs SET status = 'leased', lease_id = ?3, attempts = attempts + 1 WHERE id IN (${chunk})`).bind(at, g.group_id, leaseId),
      db.prepare(`UPDATE groups SET status = 'running' WHERE id = ?2 AND status = 'waiting' AND ${won}`).bind(at, g.group_id, leaseId),
      db.prepare(`UPDATE sweeps SET status = 'running' WHERE id = ?4 AND status = 'waiting' AND ${won}`).bind(at, g.group_id, leaseId, g.sweep_id),
      db.prepare(`SELECT r.id, r.attempts, ${RUN_CONFIG_COLUMNS} FROM runs r ${RUN_CONFIG_JOINS} WHERE r.id IN (${chunk}) ORDER BY r.idx`).bind(at, g.group_id, leaseId),
      db.prepare(`SELECT data FROM groups WHERE id = ?2 AND ${won}`).bind(at, g.group_id, leaseId),
      db
        .prepare(`SELECT run_id, max(step) AS step FROM checkpoints WHERE kind = 'resume' AND run_id IN (${chunk}) GROUP BY run_id`)
        .bind(at, g.group_id, leaseId),
    ]);
    const r = all.slice(limited.length);
    if (r[0].meta.changes !== 1) {
      // Other claims took this group's runs first: try another group (re-reading the candidates once at the end).
      candidates.splice(i, 1);
      if (!candidates.length && !reread) {
        reread = true;
        candidates = await readCandidates();
      }
      continue;
    }
    const runs = r[5].results as Array<{ id: string; attempts: number; shared: string; cfg: string; data: string }>;
    const data = (r[6].results[0] as { data: string }).data;
    const order = new Map(runs.map((x, j) => [x.id, j]));
    const resume: ResumePoint[] = (r[7].results as Array<{ run_id: string; step: number }>)
      .sort((a, b) => order.get(a.run_id)! - order.get(b.run_id)!)
      .map((x) => ({ run_id: x.run_id, step: x.step, checkpoint_path: `/v1/leases/${leaseId}/checkpoints/${x.run_id}?kind=resume&step=${x.step}` }));

    const response: ClaimResponse = {
      lease: { id: leaseId, token, expires_at: expiresAt, heartbeat_ms: Math.max(1, Math.floor(leaseTtlMs / 3)) },
      limits: { max_body_bytes: evalsBytes, part_bytes: partBytes },
      group: {
        id: g.group_id,
        sweep_id: g.sweep_id,
        cfgs: runs.map((x) => ({ run_id: x.id, cfg: fullConfig(x) })),
        data: JSON.parse(data),
        resume,
        checkpoint_every: checkpointEvery,
        attempt: Math.max(1, ...runs.map((x) => x.attempts)),
      },
    };
    return c.json(response, 200);
  }
  // Nothing claimable this runner can hold, or lost the race every time: the runner should simply claim again.
  return c.body(null, 204);
});
