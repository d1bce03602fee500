/**
 * Groups (submitter token): POST /v1/groups/:id/retry re-queues a failed group. Its failed runs wait again and
 * resume from their last checkpoints; failures and expirations count afresh from the retry (groups.retried_at).
 *
 * Also the expiration limit the claim applies: a group whose leases keep expiring (runners that vanish holding it,
 * killed by it or not) fails after MAX_EXPIRATIONS of them, a higher limit than MAX_ATTEMPTS, so that a group that
 * kills every runner it meets still ends.
 */
import { Hono } from "hono";
import type { Env } from "../env";
import type { RetryResponse } from "../protocol";
import { conflict, notFound } from "../errors";
import { refreshGroup, refreshSweep } from "../db";
import { sinceRetry } from "./leases";

export const groupRoutes = new Hono<{ Bindings: Env }>();

groupRoutes.post("/:id/retry", async (c) => {
  const id = c.req.param("id");
  const db = c.env.DB;
  const group = await db.prepare(`SELECT sweep_id, status FROM groups WHERE id = ?1`).bind(id).first<{ sweep_id: string; status: string }>();
  if (!group) throw notFound(`group ${id}`, "id");
  if (group.status !== "failed") throw conflict("not_failed", `group ${id} is ${group.status}; only a failed group can be retried`, "id");
  const now = Date.now();
  const nonce = crypto.randomUUID();
  // The group's statement decides (only one retry of a failed group applies); the others follow it by its nonce.
  const mine = `EXISTS (SELECT 1 FROM groups WHERE id = ?1 AND last_error = ?2)`;
  const [won, requeued] = await db.batch([
    db.prepare(`UPDATE groups SET status = 'waiting', failures = 0, retried_at = ?3, finished_at = NULL, last_error = ?2 WHERE id = ?1 AND status = 'failed'`).bind(id, nonce, now),
    // The W&B finish goes again when the run ends this time.
    db.prepare(`UPDATE runs SET status = 'waiting', error = NULL, finished_at = NULL, finish_queued = 0 WHERE group_id = ?1 AND status = 'failed' AND ${mine}`).bind(id, nonce),
    db.prepare(`UPDATE groups SET last_error = NULL WHERE id = ?1 AND last_error = ?2`).bind(id, nonce),
    db.prepare(`UPDATE sweeps SET finished_at = NULL WHERE id = ?1`).bind(group.sweep_id),
    refreshGroup(db, id, now),
    refreshSweep(db, group.sweep_id, now),
  ]);
  if (won.meta.changes !== 1) throw conflict("not_failed", `group ${id} is no longer failed (retried meanwhile)`, "id");
  const after = await db.prepare(`SELECT status FROM groups WHERE id = ?1`).bind(id).first<{ status: RetryResponse["status"] }>();
  return c.json({ id, status: after!.status, requeued: requeued.meta.changes } satisfies RetryResponse);
});

/** Expired leases of group ?2 at ?1 since its last retry (ended as expired, or still active past their time). */
const expired = `(SELECT count(*) FROM leases x WHERE x.group_id = ?2 AND (x.status = 'expired' OR (x.status = 'active' AND x.expires_at <= ?1)) AND x.${sinceRetry(2)})`;

/**
 * Statements for the claim's batch, before it leases group `groupId`: when the group's expired leases reached
 * `max`, the group fails (its runs no longer claimable, so the claim takes nothing from it) and its leases end.
 */
export function expirationLimit(db: D1Database, at: number, groupId: string, sweepId: string, max: number): D1PreparedStatement[] {
  const error = `${max} leases of this group expired (runners vanished while training it); retry it with 'npx sae-swarm retry ${groupId}'`;
  return [
    db.prepare(`UPDATE runs SET status = 'failed', error = ?3, finished_at = ?1 WHERE group_id = ?2 AND status <> 'done' AND ${expired} >= ?4`).bind(at, groupId, error, max),
    db.prepare(`UPDATE groups SET status = 'failed', last_error = ?3, finished_at = ?1 WHERE id = ?2 AND status <> 'failed' AND ${expired} >= ?4`).bind(at, groupId, error, max),
    db
      .prepare(`UPDATE leases SET status = CASE WHEN expires_at <= ?1 THEN 'expired' ELSE 'cancelled' END, ended_at = ?1 WHERE group_id = ?2 AND status = 'active' AND EXISTS (SELECT 1 FROM groups WHERE id = ?2 AND status = 'failed')`)
      .bind(at, groupId),
    refreshSweep(db, sweepId, at),
  ];
}
