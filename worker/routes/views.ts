/** JSON shapes shared by the read routes. */
import type { StepMetrics } from "../../shaders/config";
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

/**
 * The matmul kernels a lease's runner reported (shaders/autotune.ts KernelReport, kept in the lease's adapter JSON),
 * with the runner and its adapter; null when it reported none.
 */
export function kernelsView(l: { id: string; runnerId: string; createdAt: number; adapter: string }) {
  const a = JSON.parse(l.adapter) as { vendor?: string; architecture?: string; description?: string; isFallbackAdapter?: boolean; kernels?: Record<string, unknown> };
  if (!a.kernels) return null;
  return {
    lease_id: l.id,
    runner_id: l.runnerId,
    at: l.createdAt,
    adapter: [a.vendor, a.architecture, a.description].filter(Boolean).join(" ") + (a.isFallbackAdapter ? " (software)" : ""),
    ...a.kernels,
  };
}

/** The latest lease with kernels per group (leases in any order). */
export function latestKernelsByGroup(leases: Array<{ id: string; groupId: string; runnerId: string; createdAt: number; adapter: string }>): Map<string, NonNullable<ReturnType<typeof kernelsView>>> {
  const out = new Map<string, NonNullable<ReturnType<typeof kernelsView>>>();
  for (const l of [...leases].sort((a, b) => a.createdAt - b.createdAt)) {
    const k = kernelsView(l);
    if (k) out.set(l.groupId, k);
  }
  return out;
}

type MetricRow = typeof schema.metrics.$inferSelect;
/** A stored metric row under saev's names. */
export const stepMetrics = (m: MetricRow): { step: number; ts: number } & StepMetrics => ({
  step: m.step,
  ts: m.ts,
  loss: m.loss,
  mse: m.mse,
  l0: m.l0,
  l1: m.l1,
  sparsity: m.sparsity,
  "progress/n_patches_seen": m.nPatchesSeen,
  "progress/learning_rate": m.learningRate,
  "progress/sparsity_coeff": m.sparsityCoeff,
  ...auxOf(m.auxLoss, m.nDeadTrain),
});

/** AuxK's step metrics where the row has them (TopK/BatchTopK runs); other rows carry neither key. */
export const auxOf = (auxLoss: number | null, nDeadTrain: number | null): Pick<StepMetrics, "aux_loss" | "n_dead_train"> => ({
  ...(auxLoss !== null ? { aux_loss: auxLoss } : {}),
  ...(nDeadTrain !== null ? { n_dead_train: nDeadTrain } : {}),
});

/** An eval's scalars (the per-feature arrays are read one run at a time, from GET /v1/runs/:id/eval). */
export const evalSummary = (e: Pick<typeof schema.evals.$inferSelect, "l0" | "l1" | "mse" | "fvu" | "explainedVariance" | "nDead" | "nAlmostDead" | "nDense" | "nExamples">) => ({
  l0: e.l0,
  l1: e.l1,
  mse: e.mse,
  fvu: e.fvu,
  explained_variance: e.explainedVariance,
  n_dead: e.nDead,
  n_almost_dead: e.nAlmostDead,
  n_dense: e.nDense,
  n_examples: e.nExamples,
});
