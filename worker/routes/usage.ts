/**
 * GET /v1/usage (submitter token): what each sweep keeps, so a person can see what to delete before D1 (10 GB) or
 * R2 fills up: rows per table and bytes (its file, its stored run configs, its checkpoint bodies in R2), and the
 * database's total size as D1 reports it.
 */
import { Hono } from "hono";
import type { Env } from "../env";

export const usageRoutes = new Hono<{ Bindings: Env }>();

interface UsageRow {
  id: string;
  status: string;
  created_at: number;
  groups: number;
  runs: number;
  leases: number;
  metrics: number;
  evals: number;
  checkpoints: number;
  wandb_runs: number;
  spec_bytes: number;
  config_bytes: number;
  checkpoint_bytes: number;
}

usageRoutes.get("/", async (c) => {
  const runsOf = `SELECT id FROM runs WHERE sweep_id = s.id`;
  const r = await c.env.DB.prepare(
    `SELECT s.id, s.status, s.created_at,
       (SELECT count(*) FROM groups WHERE sweep_id = s.id) AS groups,
       (SELECT count(*) FROM runs WHERE sweep_id = s.id) AS runs,
       (SELECT count(*) FROM leases WHERE group_id IN (SELECT id FROM groups WHERE sweep_id = s.id)) AS leases,
       (SELECT count(*) FROM metrics WHERE run_id IN (${runsOf})) AS metrics,
       (SELECT count(*) FROM evals WHERE run_id IN (${runsOf})) AS evals,
       (SELECT count(*) FROM checkpoints WHERE run_id IN (${runsOf})) AS checkpoints,
       (SELECT count(*) FROM wandb_runs WHERE run_id IN (${runsOf})) AS wandb_runs,
       length(CAST(s.spec AS BLOB)) AS spec_bytes,
       length(s.cfg_shared) + coalesce((SELECT sum(length(cfg)) FROM runs WHERE sweep_id = s.id), 0)
         + coalesce((SELECT sum(length(data) + length(key)) FROM groups WHERE sweep_id = s.id), 0) AS config_bytes,
       coalesce((SELECT sum(bytes) FROM checkpoints WHERE run_id IN (${runsOf})), 0) AS checkpoint_bytes
     FROM sweeps s ORDER BY s.created_at DESC`,
  ).all<UsageRow>();
  return c.json({
    // D1's own figure for the whole database (its cap is 10 GB).
    d1_bytes: r.meta.size_after ?? null,
    sweeps: r.results.map((s) => ({
      id: s.id,
      status: s.status,
      created_at: s.created_at,
      rows: { groups: s.groups, runs: s.runs, leases: s.leases, metrics: s.metrics, evals: s.evals, checkpoints: s.checkpoints, wandb_runs: s.wandb_runs },
      bytes: { spec: s.spec_bytes, configs: s.config_bytes, checkpoints_r2: s.checkpoint_bytes },
    })),
  });
});
