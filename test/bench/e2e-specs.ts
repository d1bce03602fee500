/**
 * The grouped and sequential workloads of `npm run bench:e2e` (test/bench/e2e.ts) and its check that they are the same
 * configs, apart from the bench so that test/worker/config-order.test.ts checks the same specs through the Worker's
 * API in `npm test` (the bench runs by hand only, and its check once failed unseen, on a key order).
 */

/** K sweep specs of one run each, and one spec of the same K runs in one group (same seeds, same coefficients). */
export function groupedAndSequential(o: { url: string; k: number; steps: number; batch: number; dVit: number; exp: number; seed: number }) {
  const coeffs = Array.from({ length: o.k }, (_, k) => 4e-4 * 2 ** k);
  const base = {
    data: { kind: "shards", url: o.url, layer: -1, patches: "patches" },
    n_train: o.steps * o.batch,
    batch_size: o.batch,
    lr: 1e-3,
    log_every: 8,
    n_eval: 4096,
    track: false,
    sae: { kind: "relu", d_vit: o.dVit, exp_factor: o.exp },
  };
  return {
    grouped: [{ ...base, seed: o.seed, objective: { sparsity_coeff: coeffs } }],
    // A sweep's runs take seeds seed, seed + 1, …: the k-th run alone gets seed + k.
    sequential: coeffs.map((c, k) => ({ ...base, seed: o.seed + k, objective: { sparsity_coeff: c } })),
  };
}

/**
 * Why the configs the Worker serves for the grouped runs and the sequential runs (each list in run order) are not the
 * same, or null when they are. Compared as JSON text: the very bytes a runner writes into a checkpoint's metadata.
 */
export function configsDiffer(grouped: unknown[], sequential: unknown[], k: number): string | null {
  if (grouped.length !== k || sequential.length !== k) return `expected ${k} runs each, got ${grouped.length} grouped and ${sequential.length} sequential`;
  for (let i = 0; i < k; i++) {
    const g = JSON.stringify(grouped[i]), s = JSON.stringify(sequential[i]);
    if (g !== s) return `run ${i}:\n  grouped    ${g}\n  sequential ${s}`;
  }
  return null;
}
