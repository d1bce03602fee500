/** drizzle over D1, plus the status roll-ups every state change ends with. */
import { drizzle } from "drizzle-orm/d1";
import * as schema from "../db/schema";
import type { Env } from "./env";

export const getDb = (env: Env) => drizzle(env.DB, { schema });
export type Db = ReturnType<typeof getDb>;
export { schema };

/**
 * Recomputes a group's status from its runs (a failed group stays failed): done when every run is done, running
 * while any run is leased, else waiting. Idempotent, so any batch may end with it.
 * Raw D1 statements, so they can join any batch.
 */
export function refreshGroup(d1: D1Database, groupId: string, now: number): D1PreparedStatement {
  return d1
    .prepare(`UPDATE groups SET
      status = CASE
        WHEN status = 'failed' THEN 'failed'
        WHEN NOT EXISTS (SELECT 1 FROM runs WHERE runs.group_id = groups.id AND runs.status <> 'done') THEN 'done'
        WHEN EXISTS (SELECT 1 FROM runs WHERE runs.group_id = groups.id AND runs.status = 'leased') THEN 'running'
        ELSE 'waiting' END,
      finished_at = CASE
        WHEN finished_at IS NOT NULL THEN finished_at
        WHEN status = 'failed' OR NOT EXISTS (SELECT 1 FROM runs WHERE runs.group_id = groups.id AND runs.status <> 'done') THEN ?2
        ELSE NULL END
    WHERE id = ?1`)
    .bind(groupId, now);
}

/** A sweep is done when all its groups are done, failed when all have finished and one failed. */
export function refreshSweep(d1: D1Database, sweepId: string, now: number): D1PreparedStatement {
  return d1
    .prepare(`UPDATE sweeps SET
      status = CASE
        WHEN NOT EXISTS (SELECT 1 FROM groups WHERE groups.sweep_id = sweeps.id AND groups.status NOT IN ('done', 'failed'))
          THEN CASE WHEN EXISTS (SELECT 1 FROM groups WHERE groups.sweep_id = sweeps.id AND groups.status = 'failed') THEN 'failed' ELSE 'done' END
        WHEN EXISTS (SELECT 1 FROM groups WHERE groups.sweep_id = sweeps.id AND groups.status <> 'waiting') THEN 'running'
        ELSE 'waiting' END,
      finished_at = CASE
        WHEN finished_at IS NOT NULL THEN finished_at
        WHEN NOT EXISTS (SELECT 1 FROM groups WHERE groups.sweep_id = sweeps.id AND groups.status NOT IN ('done', 'failed')) THEN ?2
        ELSE NULL END
    WHERE id = ?1`)
    .bind(sweepId, now);
}

/** Random URL-safe id with a prefix. */
export function newId(prefix: string, bytes = 9): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return prefix + btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
