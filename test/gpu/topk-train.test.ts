// TopK SAEs trained by the engine on synthetic data with known features, at the demo's data shape (examples/
// demo.toml: d_vit 32, 48 features, d_sae 128, batch 512, lr 1e-2), on Dawn (cheaper than Chromium here; the
// kernels themselves run on both in topk.test.ts). 128 steps instead of the demo's 256, to keep it short: the float64
// reference (test/reference/topk.ts) reaches a recovery of 0.90 at 96 steps and 0.94 at 128 on this data (the engine:
// 0.952 after 160 steps). The data is the demo's first dataset (examples/demo.toml: sparsity 0.04, seed 1, n_examples
// = its n_train), b_dec from 4096 examples instead of all. Checks SAE.md's TopK contract on the engine's own eval:
// L0 ≤ k for every example, = k wherever at least k pre-activations are positive, so the mean is exactly the
// mean of min(k, #positive); and the SAE recovers the true features (mean over features of the best cosine with a
// decoder row ≥ 0.9).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { meanMaxCosine, SyntheticDataset } from "../../runner/data/synthetic";
import type { SaeConfig, SyntheticData, TrainConfig } from "../../shaders/config";
import { dawnUnavailable, openDawn, type GpuBackend } from "../helpers/gpu-backends";
import { trainConfig } from "../helpers/train-config";

interface Trained {
  l0s: number[][];
  weights: Array<{ W_enc: number[]; b_enc: number[]; W_dec: number[]; b_dec: number[] }>;
  evals: Array<{ l0: number; mse: number; fvu: number; n_dead: number; n_examples: number }>;
  perExample: Array<Array<{ l0: number; active: number[] }>>;
}

/**
 * One SAE per case, all trained in one group (one engine, one data stream). `l0` names the eval check:
 * "per-example" (TopK: ≤ k each, = k where k pre-activations are positive), "mean" (BatchTopK with θ: the eval's
 * mean L0 within 10 % of k).
 */
// aux_coeff 0 unless a case sets its own (AuxK has its own test, test/gpu/auxk-engine.test.ts).
// `recovery`: the bar for the mean max cosine with the true features (issue 13: 0.9).
const CASES: Array<{ name: string; sae: Partial<SaeConfig> & { k: number }; l0: "per-example" | "mean"; recovery: number }> = [
  // k 4, twice the data's mean L0 (48 features at sparsity 0.04: 1.92 per example), so that many examples have fewer
  // than k positive pre-activations and both branches of the per-example check run. TopK's ReLU drops the surplus.
  { name: "topk k=4", sae: { kind: "topk", k: 4 }, l0: "per-example", recovery: 0.9 },
  // BatchTopK as a researcher sets it up on data of known L0: k = the data's mean L0 (1.92 → 2), with AuxK. Unlike
  // TopK, BatchTopK fills its k·B budget whatever the data needs, so at k 4 the surplus (about 2 per example) goes to
  // composite latents (one at freq 0.11 had cosine 0.52 with each of two true features, whose rates are 0.016–0.028),
  // and latents that were never selected stay dead (66 of 128 at eval): the float64 reference, which matches the
  // engine's 0.8716 to four digits, gives 0.87 at 128 steps, 0.905 at 256, 0.92 at 512. At k 2 without AuxK, 0.79–0.91
  // over four seeds (the low one with 93 dead); k 4 with AuxK 0.89–0.92; k 2 with AuxK 0.96–0.97 (seeds 43–46).
  // dead_after: SAE.md's 10⁷ examples is for runs of 10⁹; these 65 536 examples call for a few thousand (8 steps).
  // k_aux 16: dictionary_learning's d_vit / 2 (SAE.md's 512 exceeds these 128 latents); the reference gives the same
  // recovery with either (0.958), dead latents rarely having many positive pre-activations.
  // threshold_beta: θ tracks min_kept by an EMA from the first step's value; 0.999 (the default, for runs of 10⁵ steps)
  // would still hold the early, larger thresholds after these 128 steps.
  { name: "batchtopk k=2", sae: { kind: "batchtopk", k: 2, threshold_beta: 0.9, aux_coeff: 1 / 32, dead_after: 4096, k_aux: 16 }, l0: "mean", recovery: 0.9 },
];

const STEPS = 128;
const B = 512;
const N_EVAL = 2048;
const PER_EXAMPLE = 32;
const data: SyntheticData = { kind: "synthetic", d_vit: 32, n_features: 48, sparsity: 0.04, noise: 0.01, seed: 1, n_examples: 131_072 };
const d = data.d_vit;
const n = d * 4;

const cfgs: TrainConfig[] = CASES.map((c, i) =>
  trainConfig({ seed: 42 + i, sae_batch_size: B, n_patches: STEPS * B, lr: 1e-2, n_lr_warmup: 16, log_every: 8, data, sae: { d_vit: d, exp_factor: 4, n_reinit_samples: 4096, aux_coeff: 0, ...c.sae } }),
);

/** #{j : h_j > 0} of one example, in float64 from the exported weights: h = (x − b_dec) W_enc + b_enc. */
function positives(w: Trained["weights"][number], x: Float32Array, row: number): number {
  let count = 0;
  for (let j = 0; j < n; j++) {
    let h = w.b_enc[j];
    for (let i = 0; i < d; i++) h += (x[row * d + i] - w.b_dec[i]) * w.W_enc[i * n + j];
    if (h > 0) count++;
  }
  return count;
}

const skip = await dawnUnavailable();

describe.skipIf(skip !== null)("TopK training on synthetic data (dawn)", () => {
  let gpu: GpuBackend;
  let out: Trained;
  const ds = new SyntheticDataset(data);
  const evalSet = ds.slice(0, N_EVAL);

  beforeAll(async () => {
    gpu = await openDawn();
    const t0 = performance.now();
    out = await gpu.run<Trained>("topkTrain", { cfgs, steps: STEPS, evalExamples: N_EVAL, perExample: PER_EXAMPLE });
    console.log(`[topk-train] ${CASES.length} SAE(s), ${STEPS} steps of ${B}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }, 900_000); // minutes on an idle 2-core machine; 651 s of training with load 7–10 (AuxK adds kernels to the step)
  afterAll(async () => gpu?.close());

  CASES.forEach((c, s) => {
    const k = c.sae.k;
    if (c.l0 === "per-example")
      it(`${c.name}: eval L0 ≤ k per example, = k where ≥ k pre-activations are positive; the mean is the mean of min(k, #positive)`, () => {
        const w = out.weights[s];
        const pos = Array.from({ length: N_EVAL }, (_, r) => positives(w, evalSet, r));
        // Each of the first examples evaluated alone: its L0, and which latents fired.
        for (const [r, e] of out.perExample[s].entries()) {
          expect(e.l0, `example ${r}`).toBeLessThanOrEqual(k);
          expect(e.active.length, `example ${r}`).toBe(e.l0);
          if (pos[r] >= k) expect(e.l0, `example ${r}: ${pos[r]} positive pre-activations`).toBe(k);
          else expect(e.l0, `example ${r}: ${pos[r]} positive pre-activations`).toBe(pos[r]);
        }
        const full = pos.filter((p) => p >= k).length;
        const expected = pos.reduce((a, p) => a + Math.min(k, p), 0) / N_EVAL;
        console.log(`[topk-train] ${c.name}: eval mean L0 ${out.evals[s].l0.toFixed(4)} (min(k, #positive) gives ${expected.toFixed(4)}; ${full}/${N_EVAL} examples with ≥ k positive), FVU ${out.evals[s].fvu.toFixed(4)}, dead ${out.evals[s].n_dead}`);
        expect(out.evals[s].n_examples).toBe(N_EVAL);
        expect(out.evals[s].l0).toBeLessThanOrEqual(k);
        // float32 on the GPU against float64 here: a pre-activation within rounding of 0 may count differently.
        expect(Math.abs(out.evals[s].l0 - expected)).toBeLessThan(2 / N_EVAL);
        if (full === N_EVAL) expect(out.evals[s].l0).toBe(k);
        // Training: every logged step's mean L0 is at most k.
        for (const step of out.l0s) expect(step[s]).toBeLessThanOrEqual(k + 1e-6);
      });
    else
      it(`${c.name}: eval mean L0 within 10 % of k`, () => {
        console.log(`[topk-train] ${c.name}: eval mean L0 ${out.evals[s].l0.toFixed(4)} (k = ${k}), FVU ${out.evals[s].fvu.toFixed(4)}, dead ${out.evals[s].n_dead}`);
        expect(Math.abs(out.evals[s].l0 - k)).toBeLessThanOrEqual(0.1 * k);
      });

    it(`${c.name}: recovers the true features (mean max cosine ≥ ${c.recovery})`, () => {
      const score = meanMaxCosine(ds.features(), data.n_features, out.weights[s].W_dec, n, d);
      console.log(`[topk-train] ${c.name}: mean max cosine with the ${data.n_features} true features ${score.toFixed(4)}`);
      expect(score).toBeGreaterThanOrEqual(c.recovery);
    });
  });
});
