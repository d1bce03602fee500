// The TopK/BatchTopK/AuxK reference (./topk.ts) against hand-worked ties, central finite differences (on kept
// entries: a step that changes a selection has no derivative), and the schedule and clipping formulas of SAE.md.
import { describe, expect, it } from "vitest";
import { learningRate } from "../../shaders/schedule";
import { trainConfig } from "../helpers/train-config";
import { mulberry32, testSeed } from "../helpers/random";
import { backwardDetailed, forward, PARAM_NAMES, type Hyper, type Params } from "./sae";
import { auxK, auxKBackward, batchTopkMask, clipGradNorm, deadMask, initialSelectState, selectorFor, thetaUpdate, topkMask, trainStepSelect, updateCounters } from "./topk";

describe("selections and their ties", () => {
  it("TopK keeps the k largest per row, ties to the lower latent index", () => {
    const h = [1, 3, 3, 2, 3, /* row 2 */ 0, 0, 0, -1, 0];
    expect(Array.from(topkMask(h, 2, 5, 2))).toEqual([0, 1, 1, 0, 0, 1, 1, 0, 0, 0]);
    expect(Array.from(topkMask(h, 2, 5, 4))).toEqual([0, 1, 1, 1, 1, 1, 1, 1, 0, 1]);
    // Eligible latents only (AuxK's dead set); fewer eligible than k keeps them all.
    expect(Array.from(topkMask(h, 2, 5, 3, [1, 0, 0, 1, 0]))).toEqual([1, 0, 0, 1, 0, 1, 0, 0, 1, 0]);
  });

  it("BatchTopK keeps the k·B largest of ReLU(h), ties by example then latent; minKept is the smallest kept", () => {
    const h = [2, 1, 5, 1, /* row 2 */ 1, 7, -3, 1];
    const { kept, minKept } = batchTopkMask(h, 2, 4, 4);
    expect(Array.from(kept)).toEqual([1, 1, 1, 0, 0, 1, 0, 0]);
    expect(minKept).toBe(1);
    // Fewer positives than k·B: zeros (negatives after ReLU) fill up by flat index, and minKept = 0.
    const few = batchTopkMask([-1, 2, -5, 0], 2, 2, 3);
    expect(Array.from(few.kept)).toEqual([1, 1, 1, 0]);
    expect(few.minKept).toBe(0);
  });

  it("θ starts at the first min_kept, then θ ← β·θ + (1 − β)·min_kept", () => {
    expect(thetaUpdate(null, 0.5, 0.9)).toBe(0.5);
    expect(thetaUpdate(0.5, 1.5, 0.9)).toBeCloseTo(0.9 * 0.5 + 0.1 * 1.5, 15);
  });

  it("dead counters: examples since a latent last fired; dead at dead_after", () => {
    const c = new Float64Array([0, 5, 9]);
    updateCounters(c, [0, 1, 0, /* */ 0, 0, 0], 2, 3);
    expect(Array.from(c)).toEqual([2, 0, 11]);
    expect(Array.from(deadMask(c, 2))).toEqual([1, 0, 1]);
    expect(Array.from(deadMask(c, 3))).toEqual([0, 0, 1]);
  });
});

function randomCase(rand: () => number, kind: Hyper["kind"], bounds: number[], k: number) {
  const d = 6, n = 14, B = 5;
  const r = (len: number, s: number) => Float64Array.from({ length: len }, () => (rand() * 2 - 1) * s);
  const p: Params = { W_enc: r(d * n, 0.8), b_enc: r(n, 0.2), W_dec: r(n * d, 0.5), b_dec: r(d, 0.3), log_threshold: new Float64Array(n) };
  const x = r(B * d, 1);
  const hp: Hyper = { kind, d, n, coeff: 0, bandwidth: 0, bounds, select: selectorFor(kind, k, n) };
  return { p, x, B, hp, d, n };
}

describe("TopK/BatchTopK + AuxK gradients vs central finite differences (kept entries)", () => {
  for (const kind of ["topk", "batchtopk"] as const)
    for (const bounds of [[0, 14], [0, 3, 8, 14]])
      it(`${kind}, ${bounds.length - 1} prefix block(s), AuxK on 5 dead latents`, () => {
        const seed = testSeed();
        const rand = mulberry32(seed);
        const { p, x, B, hp, d, n } = randomCase(rand, kind, bounds, 4);
        const dead = Uint8Array.from({ length: n }, (_, j) => (j % 3 === 1 ? 1 : 0));
        const kAux = 2, coeff = 0.7;
        const fw0 = forward(p, x, B, hp);
        const e = fw0.e[fw0.e.length - 1].map((v) => -v); // AuxK's residual is a constant (stop-gradient)
        const loss = () => {
          const fw = forward(p, x, B, hp);
          const ak = auxK(p, fw.h, e, dead, kAux, B, n, d);
          return { value: fw.mse + coeff * ak.aux, sel: `${fw.f.map((v) => (v > 0 ? 1 : 0)).join("")}|${ak.kept.join("")}|${fw.h.map((v) => (v > 0 ? 1 : 0)).join("")}` };
        };
        const { grads: g } = backwardDetailed(p, x, B, hp, fw0);
        const ak0 = auxK(p, fw0.h, e, dead, kAux, B, n, d);
        expect(ak0.aux).toBeGreaterThan(0);
        auxKBackward(g, p, x, fw0.h, e, ak0, coeff, B, n, d);
        const step = 1e-6;
        let checked = 0, skipped = 0;
        for (const name of PARAM_NAMES) {
          if (name === "log_threshold") continue;
          for (let i = 0; i < p[name].length; i++) {
            const orig = p[name][i];
            p[name][i] = orig + step;
            const up = loss();
            p[name][i] = orig - step;
            const down = loss();
            p[name][i] = orig;
            if (up.sel !== down.sel) {
              skipped++;
              continue;
            }
            const fd = (up.value - down.value) / (2 * step);
            expect(Math.abs(g[name][i] - fd), `seed ${seed} ${name}[${i}]`).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(fd)));
            checked++;
          }
        }
        expect(checked).toBeGreaterThan(170);
        expect(skipped).toBeLessThan(10);
        // Training L0: TopK ≤ k per example; BatchTopK k on average when enough entries are positive.
        const l0 = fw0.f.filter((v) => v > 0).length / B;
        if (kind === "topk") expect(l0).toBeLessThanOrEqual(4);
        else if (fw0.h.filter((v) => v > 0).length >= 4 * B) expect(l0).toBe(4);
      });
});

describe("warmup_cosine and max_grad_norm", () => {
  it("warmup_cosine follows SAE.md's formula over 50 steps (warmup 10, lr_final 1e-5)", () => {
    const cfg = trainConfig({ lr: 1e-3, n_lr_warmup: 10, lr_schedule: "warmup_cosine", lr_final: 1e-5, n_patches: 50 * 64, sae_batch_size: 64 });
    for (let t = 0; t < 50; t++) {
      const want = t < 10 ? (1e-3 * t) / 10 : 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + Math.cos((Math.PI * (t - 10)) / 40));
      expect(learningRate(cfg, t), `t ${t}`).toBeCloseTo(want, 15);
    }
    expect(learningRate(cfg, 10)).toBe(1e-3);
    expect(learningRate(cfg, 30)).toBeCloseTo((1e-3 + 1e-5) / 2, 15);
    // "warmup" (and configs stored without lr_schedule) keep the linear warmup, then lr.
    expect(learningRate({ ...cfg, lr_schedule: "warmup" }, 49)).toBe(1e-3);
    expect(learningRate({ lr: 1e-3, n_lr_warmup: 10 }, 5)).toBeCloseTo(5e-4, 15);
    // No warmup: the decay starts at lr on step 0.
    expect(learningRate({ ...cfg, n_lr_warmup: 0 }, 0)).toBe(1e-3);
  });

  it("clip_grad_norm_: the norm over every gradient; scaled by max/(norm + 1e-6) only above max", () => {
    const rand = mulberry32(testSeed());
    const g = { W_enc: new Float64Array(12), b_enc: new Float64Array(4), W_dec: new Float64Array(12), b_dec: new Float64Array(3), log_threshold: new Float64Array(4) };
    for (const name of PARAM_NAMES) for (let i = 0; i < g[name].length; i++) g[name][i] = rand() * 2 - 1;
    const all = PARAM_NAMES.flatMap((nm) => Array.from(g[nm]));
    const norm = Math.sqrt(all.reduce((a, v) => a + v * v, 0));
    const over = clipGradNorm(structuredClone(g), norm * 2);
    expect(over).toEqual({ norm, scale: 1 });
    const copy = structuredClone(g);
    const clipped = clipGradNorm(copy, 0.5);
    expect(clipped.norm).toBeCloseTo(norm, 14);
    expect(clipped.scale).toBeCloseTo(0.5 / (norm + 1e-6), 15);
    for (const nm of PARAM_NAMES) for (let i = 0; i < g[nm].length; i++) expect(copy[nm][i]).toBeCloseTo(g[nm][i] * clipped.scale, 15);
  });

  it("50 steps of a TopK SAE with warmup_cosine, clipping and AuxK: lr, clip, L0 ≤ k and dead counts as specified", () => {
    const seed = testSeed();
    const rand = mulberry32(seed);
    const B = 8, d = 6;
    const cfg = trainConfig({
      sae: { d_vit: d, exp_factor: 3, kind: "topk", k: 3, k_aux: 4, dead_after: 16, aux_coeff: 1 / 32 },
      lr: 1e-2, n_lr_warmup: 5, lr_schedule: "warmup_cosine", lr_final: 1e-4, max_grad_norm: 0.05, n_patches: 50 * B, sae_batch_size: B,
    });
    const state = initialSelectState(cfg);
    for (let t = 0; t < 50; t++) {
      const x = Float64Array.from({ length: B * d }, () => rand() * 2 - 1);
      const deadBefore = state.counters.filter((c) => c >= 16).length;
      const r = trainStepSelect(state, cfg, x, B);
      expect(r.n_dead_train).toBe(deadBefore);
      if (deadBefore > 0) expect(r.aux_loss).toBeGreaterThan(0);
      expect(r.lr).toBe(learningRate(cfg, t));
      const after = Math.sqrt(PARAM_NAMES.reduce((a, nm) => a + r.grads[nm].reduce((s, v) => s + v * v, 0), 0));
      expect(after, `seed ${seed} step ${t}`).toBeLessThanOrEqual(0.05 * (1 + 1e-9));
      if (r.gradNorm > 0.05) expect(after).toBeCloseTo((0.05 * r.gradNorm) / (r.gradNorm + 1e-6), 12);
      for (let b = 0; b < B; b++) expect(r.forward.f.slice(b * 18, (b + 1) * 18).filter((v) => v > 0).length).toBeLessThanOrEqual(3);
      if (r.n_dead_train === 0) expect(r.aux_loss).toBe(0);
      expect(r.loss).toBeCloseTo(r.forward.mse + r.aux_loss / 32, 15);
    }
    expect(state.step).toBe(50);
  });
});
