/** JSON shapes shared by the read routes. */
import type { schema } from "../db";

export function progressOf(counts: Record<string, number> | undefined, total: number) {
  const n = (k: string) => counts?.[k] ?? 0;
  return { n_runs: total, waiting: n("waiting"), leased: n("leased"), done: n("done"), failed: n("failed"), fraction_done: total ? n("done") / total : 0 };
}

/** A lease as readers see it (never its token). */
export function leaseView(l: typeof schema.leases.$inferSelect, now: number) {
  return {
    id: l.id,
    runner_id: l.runnerId,
    status: l.status === "active" && l.expiresAt <= now ? "expired" : l.status,
    created_at: l.createdAt,
    expires_at: l.expiresAt,
    heartbeat_at: l.heartbeatAt,
    progress: l.progress ? JSON.parse(l.progress) : null,
    run_ids: JSON.parse(l.runIds) as string[],
    adapter: JSON.parse(l.adapter),
  };
}
