// The counter-based PRNG, the synthetic dataset and the host-side schedules (pure Node, no GPU).
import { describe, expect, it } from "vitest";
import { SyntheticDataset } from "../../runner/data/synthetic";
import { normalAt, permuteIndex, uniformAt } from "../../shaders/prng";
import { adamScalars, initWeights, learningRate, prefixBounds, sparsityCoeff } from "../../shaders/schedule";
import { trainConfig } from "../helpers/train-config";

describe("counter-based PRNG", () => {
  it("draws uniforms in [0, 1) and standard normals, as pure functions of (seed, stream, index)", () => {
    let sum = 0, sq = 0, usum = 0;
    const N = 20000;
    for (let i = 0; i < N; i++) {
      const u = uniformAt(3, 1, i);
      expect(u).toBeGreaterThanOrEqual(0);
      expect(u).toBeLessThan(1);
      usum += u;
      const z = normalAt(3, 1, i);
      sum += z;
      sq += z * z;
    }
    expect(Math.abs(usum / N - 0.5)).toBeLessThan(0.01);
    expect(Math.abs(sum / N)).toBeLessThan(0.03);
    expect(Math.abs(sq / N - 1)).toBeLessThan(0.05);
    expect(uniformAt(3, 1, 77)).toBe(uniformAt(3, 1, 77));
    expect(uniformAt(3, 1, 77)).not.toBe(uniformAt(4, 1, 77));
    expect(uniformAt(3, 1, 77)).not.toBe(uniformAt(3, 2, 77));
  });

  it("permuteIndex is a bijection of [0, n) that changes with the epoch", () => {
    for (const n of [1, 2, 7, 1000, 4097]) {
      const seen = new Set<number>();
      for (let i = 0; i < n; i++) seen.add(permuteIndex(i, n, 5, 0));
      expect(seen.size).toBe(n);
      expect(Math.max(...seen)).toBe(n - 1);
    }
    const a = Array.from({ length: 50 }, (_, i) => permuteIndex(i, 1000, 5, 0));
    const b = Array.from({ length: 50 }, (_, i) => permuteIndex(i, 1000, 5, 1));
    expect(a).not.toEqual(b);
  });
});

describe("synthetic data", () => {
  const cfg = { kind: "synthetic" as const, d_vit: 16, n_features: 40, sparsity: 0.05, seed: 9, noise: 0, n_examples: 5000 };

  it("has unit-norm features and firing rates that average `sparsity`", () => {
    const ds = new SyntheticDataset(cfg);
    const f = ds.features();
    for (let k = 0; k < 40; k++) {
      let norm = 0;
      for (let i = 0; i < 16; i++) norm += f[k * 16 + i] ** 2;
      expect(Math.abs(Math.sqrt(norm) - 1)).toBeLessThan(1e-12);
    }
    const mean = ds.probabilities.reduce((a, b) => a + b, 0) / 40;
    expect(Math.abs(mean - 0.05)).toBeLessThan(1e-12);
    // every example is a sum of features with magnitudes in [0.5, 1.5): its norm is bounded by their count
    const x = ds.head(2000);
    let zero = 0;
    for (let r = 0; r < 2000; r++) if (x.subarray(r * 16, r * 16 + 16).every((v) => v === 0)) zero++;
    // P(no feature fires) = Π(1 − p_f) ≈ e^{−2}
    expect(zero / 2000).toBeGreaterThan(0.08);
    expect(zero / 2000).toBeLessThan(0.2);
  });

  it("is the same on every runner: example i and batch t depend only on (seed, i) / (seed, t)", () => {
    const a = new SyntheticDataset(cfg), b = new SyntheticDataset(cfg);
    expect(Array.from(a.batch(17, 32))).toEqual(Array.from(b.batch(17, 32)));
    expect(Array.from(a.example(123))).toEqual(Array.from(b.example(123)));
    const c = new SyntheticDataset({ ...cfg, seed: 10 });
    expect(Array.from(a.example(123))).not.toEqual(Array.from(c.example(123)));
  });

  it("visits every example once per epoch, in a different order each epoch", () => {
    const ds = new SyntheticDataset({ ...cfg, n_examples: 300 });
    const epoch = (e: number) => Array.from({ length: 300 }, (_, i) => ds.indexAt(e * 300 + i));
    expect(new Set(epoch(0)).size).toBe(300);
    expect(new Set(epoch(1)).size).toBe(300);
    expect(epoch(0)).not.toEqual(epoch(1));
  });
});

describe("schedules, init and Matryoshka prefixes", () => {
  it("warms the learning rate and the sparsity coefficient up linearly (n = 0: no warmup)", () => {
    const cfg = trainConfig({ lr: 1e-3, n_lr_warmup: 10, n_sparsity_warmup: 4, objective: { sparsity_coeff: 8e-4 } });
    expect(learningRate(cfg, 0)).toBe(0);
    expect(learningRate(cfg, 5)).toBeCloseTo(5e-4, 15);
    expect(learningRate(cfg, 50)).toBe(1e-3);
    expect(sparsityCoeff(cfg, 2)).toBeCloseTo(4e-4, 15);
    expect(learningRate({ lr: 1e-3, n_lr_warmup: 0 }, 0)).toBe(1e-3);
    const { stepSize, sqrtBias2 } = adamScalars(1e-3, 0);
    expect(stepSize).toBeCloseTo(1e-3 / 0.1, 12);
    expect(sqrtBias2).toBeCloseTo(Math.sqrt(0.001), 12);
  });

  it("initializes kaiming-uniform from sae.seed", () => {
    const cfg = trainConfig({ sae: { d_vit: 16, exp_factor: 4, seed: 3 } });
    const w = initWeights(cfg);
    expect(Math.max(...w.W_enc.map(Math.abs))).toBeLessThanOrEqual(Math.sqrt(6 / 64));
    expect(Math.max(...w.W_dec.map(Math.abs))).toBeLessThanOrEqual(Math.sqrt(6 / 16));
    expect(Math.max(...w.W_dec.map(Math.abs))).toBeGreaterThan(0.9 * Math.sqrt(6 / 16));
    expect(Array.from(initWeights(cfg).W_enc)).toEqual(Array.from(w.W_enc));
    expect(Array.from(initWeights(trainConfig({ sae: { d_vit: 16, exp_factor: 4, seed: 4 } })).W_enc)).not.toEqual(Array.from(w.W_enc));
  });

  it("draws n_prefixes − 1 distinct sorted lengths in [2, d_sae), seeded by (sae.seed, step)", () => {
    const cfg = trainConfig({ sae: { d_vit: 16, exp_factor: 4 }, objective: { kind: "matryoshka", n_prefixes: 10 } });
    const short = new Map<number, number>();
    for (let t = 0; t < 300; t++) {
      const b = prefixBounds(cfg, t);
      expect(b).toHaveLength(11);
      expect(b[0]).toBe(0);
      expect(b[10]).toBe(64);
      for (let i = 1; i < b.length; i++) expect(b[i]).toBeGreaterThan(b[i - 1]);
      expect(b[1]).toBeGreaterThanOrEqual(2); // length 1 has weight 0
      short.set(b[1], (short.get(b[1]) ?? 0) + 1);
    }
    expect(prefixBounds(cfg, 7)).toEqual(prefixBounds(cfg, 7));
    expect(prefixBounds(cfg, 7)).not.toEqual(prefixBounds(cfg, 8));
    expect(prefixBounds(trainConfig({ sae: { d_vit: 16, exp_factor: 4 } }), 0)).toEqual([0, 64]);
    // the CDF 1 − l^(−1/2) puts most prefixes at short lengths
    expect([...short.keys()].filter((l) => l <= 4).reduce((a, l) => a + short.get(l)!, 0)).toBeGreaterThan(150);
  });
});
