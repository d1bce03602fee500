/**
 * The engine with BatchTopK SAEs and max_grad_norm against the float64 reference (test/reference/topk.ts
 * trainStepSelect), in Chromium and in Dawn, at small shapes: one step element by element after NaN poisoning (whole
 * batch, and row chunks over one slab per SAE: the threshold is the whole batch's), with ties planted at the cut
 * (duplicated encoder columns, odd k·B) and clipping engaged; evaluation with θ; 50 steps of warmup_cosine with
 * max_grad_norm; resume with θ. (Kept apart from engine.test.ts, which is slow already.)
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EvalMetrics, StepMetrics, SyntheticData, TrainConfig } from "../../shaders/config";
import { dSae } from "../../shaders/config";
import type { EngineOptions } from "../../shaders/engine";
import { persistentTensors, planMemory, workingTensors, type MemoryPlan, type SaeShape } from "../../shaders/fit";
import { learningRate, prefixBounds } from "../../shaders/schedule";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";
import { trainConfig } from "../helpers/train-config";
import * as ref from "../reference/sae";
import { batchTopkEvalParams, batchTopkMask, trainStepSelect, type SelectState } from "../reference/topk";
import { arr, F32_TOL, randomParams, referenceStart, relError, slice } from "./compare";
import type { JsonState } from "./engine-cases";

const backends = await gpuBackends();

/**
 * A random state per SAE at step t: weights, small Adam moments, θ as given. BatchTopK SAEs get their encoder columns
 * (and b_enc) in equal pairs, so every value of h appears twice in its row, and with k·B odd the cut splits a pair:
 * the tie rule (lower latent index first) decides.
 */
function randomState(rand: () => number, cfgs: TrainConfig[], t: number, thetas: Array<number | null>): { json: JsonState; refs: SelectState[] } {
  const refs: SelectState[] = [];
  const json: JsonState = { step: t, saes: [] };
  cfgs.forEach((cfg, k) => {
    const d = cfg.sae.d_vit, n = dSae(cfg);
    const { params, m, v } = randomParams(rand, cfg);
    if (cfg.sae.kind === "batchtopk")
      for (let j = 1; j < n; j += 2) {
        params.b_enc[j] = params.b_enc[j - 1];
        for (let i = 0; i < d; i++) params.W_enc[i * n + j] = params.W_enc[i * n + j - 1];
      }
    const theta = thetas[k] === null ? null : Math.fround(thetas[k]!);
    json.saes.push({ params: arr(params), m: arr(m), v: arr(v), theta });
    refs.push({ params, m, v, step: t, counters: new Float64Array(n), theta });
  });
  return { json, refs };
}

const shapeOf = (cfgs: TrainConfig[]): SaeShape => ({
  d_vit: cfgs[0].sae.d_vit,
  d_sae: dSae(cfgs[0]),
  batch_size: cfgs[0].sae_batch_size,
  n_prefixes: Math.max(...cfgs.map((c) => prefixBounds(c, 0).length - 1)),
  batchtopk: cfgs.some((c) => c.sae.kind === "batchtopk"),
});

/** Row chunks of `rows` rows (maxRowsPerChunk), one SAE per slab (the binding holds one SAE's largest tensor). */
function chunkedOptions(cfgs: TrainConfig[], rows: number): EngineOptions {
  const shape = shapeOf(cfgs);
  const maxBindingSize = 4 * Math.max(shape.batch_size * shape.d_vit, ...Object.values(persistentTensors(shape)), ...Object.values(workingTensors(shape, rows)));
  const limits = { maxStorageBufferBindingSize: maxBindingSize, maxBufferSize: maxBindingSize };
  const memoryBudget = planMemory(limits, shape, { saes: cfgs.length, minRowsPerChunk: 1, maxRowsPerChunk: rows, memoryBudget: 2 ** 40 }).totalBytes;
  return { maxBindingSize, memoryBudget, minRowsPerChunk: 1, maxRowsPerChunk: rows };
}

interface StepOut {
  metrics: StepMetrics[];
  buffers: Record<string, (number | null)[]>;
  plan: MemoryPlan;
  thetas: Array<number | null>;
}

const B = 29, D = 12;
const base = { sae_batch_size: B, lr: 2e-3 };
const sae = (o: Partial<TrainConfig["sae"]>) => ({ d_vit: D, exp_factor: 3, aux_coeff: 0, ...o });
/** BatchTopK with θ unset and with θ set; ReLU, TopK and BatchTopK clipped (the limit is below their norms). */
const stepCfgs = [
  trainConfig({ ...base, sae: sae({ kind: "batchtopk", k: 5, threshold_beta: 0.9, seed: 41 }), objective: { sparsity_coeff: 3e-2 } }),
  trainConfig({ ...base, max_grad_norm: 0.05, sae: sae({ seed: 42 }), objective: { kind: "matryoshka", n_prefixes: 3, sparsity_coeff: 2e-2 } }),
  trainConfig({ ...base, max_grad_norm: 0.05, n_lr_warmup: 10, sae: sae({ kind: "batchtopk", k: 3, threshold_beta: 0.99, seed: 43 }), objective: { kind: "matryoshka", n_prefixes: 4 } }),
  trainConfig({ ...base, max_grad_norm: 0.05, sae: sae({ kind: "topk", k: 4, seed: 44 }) }),
];
const stepThetas = [null, null, 0.3, null];

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`engine with BatchTopK and max_grad_norm on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    for (const chunked of [false, true])
      it(`one step matches the float64 reference${chunked ? " in row chunks of 8 over one slab per SAE" : ""}: ties at the cut, θ, clipping`, async () => {
        const seed = testSeed();
        const rand = mulberry32(seed);
        const cfgs = stepCfgs;
        const t = 3;
        const { json, refs } = randomState(rand, cfgs, t, stepThetas);
        const n = dSae(cfgs[0]);
        const x = Array.from({ length: B * D }, () => Math.fround(rand() * 2 - 1));
        const options = chunked ? chunkedOptions(cfgs, 8) : undefined;
        const out = await gpu.run<StepOut>("engineStep", { cfgs, state: json, x, matmul: "direct", options });
        if (chunked) expect([out.plan.rowsPerChunk, out.plan.rowChunks, out.plan.slabs]).toEqual([8, 4, cfgs.length]);
        else expect([out.plan.rowChunks, out.plan.slabs]).toEqual([1, 1]);
        const errors: Record<string, number> = {};
        const note = (label: string, e: number) => (errors[label] = Math.max(errors[label] ?? 0, e));
        const thetasBefore = refs.map((r) => r.theta);
        const results = cfgs.map((cfg, k) => trainStepSelect(refs[k], cfg, x, B));
        cfgs.forEach((cfg, k) => {
          const r = results[k];
          const selects = cfg.sae.kind === "topk" || cfg.sae.kind === "batchtopk";
          if (!chunked) {
            // H holds f for the selecting kinds (the selection runs in place), h for the others
            note("H", relError(slice(out.buffers.H, k, B * n), selects ? r.forward.f : r.forward.h));
            note("G (dL/dh)", relError(slice(out.buffers.G, k, B * n), r.gh));
          }
          for (const p of ref.PARAM_NAMES) {
            const size = r.grads[p].length;
            note(`grad ${p} (clipped)`, relError(slice(out.buffers[`grad.${p}`], k, size), r.grads[p]));
            note(`Adam m ${p}`, relError(slice(out.buffers[`m.${p}`], k, size), refs[k].m[p]));
            note(`Adam v ${p}`, relError(slice(out.buffers[`v.${p}`], k, size), refs[k].v[p]));
            note(`param ${p}`, relError(slice(out.buffers[p], k, size), refs[k].params[p]));
          }
          const m = out.metrics[k];
          for (const key of ["mse", "l0", "l1", "sparsity"] as const) note(`metric ${key}`, Math.abs(m[key] - r.forward[key]) / (Math.abs(r.forward[key]) || 1));
          note("metric loss", Math.abs(m.loss - r.loss) / r.loss);
          if (cfg.max_grad_norm !== null) expect(r.gradNorm, `seed ${seed} sae ${k}: clipping must engage`).toBeGreaterThan(cfg.max_grad_norm);
          if (cfg.sae.kind === "batchtopk") {
            // training's mean L0 is k exactly; θ moved as the reference's
            expect(m.l0, `seed ${seed} sae ${k}`).toBe(cfg.sae.k);
            expect([m.sparsity, m["progress/sparsity_coeff"]]).toEqual([0, 0]);
            note("θ", Math.abs(out.thetas[k]! - refs[k].theta!) / refs[k].theta!);
            // the planted ties: the cut split a pair of equal values (so the tie rule was exercised)
            const h = r.forward.h;
            const { kept } = batchTopkMask(h, B, n, cfg.sae.k! * B);
            let split = 0;
            for (let i = 0; i < B * n; i += 2) if (h[i] === h[i + 1] && kept[i] !== kept[i + 1]) split++;
            expect(split, `seed ${seed} sae ${k}: a tie at the cut`).toBeGreaterThan(0);
            expect(thetasBefore[k] === null || refs[k].theta !== thetasBefore[k]).toBe(true);
          } else expect(out.thetas[k]).toBeNull();
        });
        console.log(`[${name}] seed ${seed}${chunked ? " chunked" : ""}: max relative errors`, errors);
        for (const [label, e] of Object.entries(errors)) expect(e, `${label} (seed ${seed})`).toBeLessThanOrEqual(F32_TOL);
      }, 120_000);

    it("evaluate uses θ: f = h·1{h > θ} for BatchTopK (whole batch and row chunks), as the reference's JumpReLU", async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      const cfgs = [stepCfgs[0], stepCfgs[1], stepCfgs[2]];
      const thetas = [0.2, null, 0.45];
      const { json, refs } = randomState(rand, cfgs, 5, thetas);
      const batches = [0, 1, 2].map(() => Array.from({ length: B * D }, () => Math.fround(rand() * 2 - 1)));
      for (const options of [undefined, chunkedOptions(cfgs, 8)]) {
        const got = await gpu.run<EvalMetrics[]>("engineEval", { cfgs, state: json, batches, options });
        cfgs.forEach((cfg, k) => {
          const batch = cfg.sae.kind === "batchtopk";
          const p = batch ? batchTopkEvalParams(refs[k].params, Math.fround(thetas[k]!)) : refs[k].params;
          const want = ref.evaluate(p, batch ? { ...cfg, sae: { ...cfg.sae, kind: "jumprelu" } } : cfg, batches, B);
          for (const key of ["l0", "l1", "mse", "fvu"] as const)
            expect(Math.abs(got[k][key] - want[key]), `seed ${seed} sae ${k} ${key}`).toBeLessThanOrEqual(1e-4 * Math.abs(want[key]) + 1e-9);
          expect(got[k].freqs, `seed ${seed} sae ${k} freqs`).toEqual(want.freqs);
        });
        // θ matters: without it (ReLU) BatchTopK's first SAE would fire more
        const relu = ref.evaluate(refs[0].params, { ...cfgs[0], sae: { ...cfgs[0].sae, kind: "relu" } }, batches, B);
        expect(got[0].l0).toBeLessThan(relu.l0);
      }
    }, 120_000);

    it("50 steps of warmup_cosine with max_grad_norm (ReLU, BatchTopK) track the reference: loss, lr, L0 = k, θ", async () => {
      const steps = 50, Bt = 32, d = 8;
      const data: Partial<SyntheticData> = { d_vit: d, n_features: 12, sparsity: 0.1, seed: 3, noise: 0.01, n_examples: 10_000 };
      const common = { sae_batch_size: Bt, n_patches: steps * Bt, lr: 1e-2, n_lr_warmup: 10, log_every: 1, lr_schedule: "warmup_cosine" as const, lr_final: 1e-4, data };
      const s = { d_vit: d, exp_factor: 2, n_reinit_samples: 1024, aux_coeff: 0 };
      const cfgs = [
        trainConfig({ ...common, seed: 1, max_grad_norm: 0.02, sae: s }),
        trainConfig({ ...common, seed: 2, max_grad_norm: 0.02, sae: { ...s, kind: "batchtopk", k: 4, threshold_beta: 0.9 } }),
      ];
      const out = await gpu.run<{ logs: Array<{ step: number; metrics: StepMetrics[] }>; thetas: Array<number | null>; thresholds: Array<number[] | null> }>("engineTrain", {
        cfgs,
        steps,
        evalExamples: 256,
      });
      expect(out.logs.map((l) => l.step)).toEqual(Array.from({ length: steps }, (_, t) => t));
      const { ds, states } = referenceStart(cfgs);
      const gaps: number[] = [];
      const clipped = [0, 0];
      for (let t = 0; t < steps; t++) {
        const x = ds.batch(t, Bt);
        cfgs.forEach((c, k) => {
          const r = trainStepSelect(states[k], c, x, Bt);
          const m = out.logs[t].metrics[k];
          expect(m["progress/learning_rate"], `step ${t} sae ${k}`).toBeCloseTo(learningRate(c, t), 12);
          if (r.gradNorm > c.max_grad_norm!) clipped[k]++;
          if (c.sae.kind === "batchtopk" && r.forward.l0 === c.sae.k) expect(m.l0, `step ${t}`).toBe(c.sae.k);
          gaps.push(Math.abs(m.loss - r.loss) / r.loss);
        });
      }
      const thetaGap = Math.abs(out.thetas[1]! - states[1].theta!) / states[1].theta!;
      console.log(`[${name}] 50 warmup_cosine + max_grad_norm steps: max relative loss gap ${Math.max(...gaps).toExponential(1)}, θ gap ${thetaGap.toExponential(1)}, clipped steps ${clipped}`);
      for (const c of clipped) expect(c, "clipping must engage on some steps").toBeGreaterThan(0);
      for (const g of gaps) expect(g).toBeLessThan(2e-2);
      expect(thetaGap).toBeLessThan(2e-2);
      // the final checkpoint's threshold: θ for every latent (BatchTopK), none for ReLU
      expect(out.thresholds[0]).toBeNull();
      expect(out.thresholds[1]).toEqual(new Array(dSae(cfgs[1])).fill(out.thetas[1]));
    }, 300_000);

    it("resume carries θ and the clipping: a + b steps equal a steps, export, import, b steps", async () => {
      const data: Partial<SyntheticData> = { d_vit: 8, n_features: 12, sparsity: 0.1, seed: 5, n_examples: 2048 };
      const cfgs = [
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { d_vit: 8, exp_factor: 2, kind: "batchtopk", k: 3, aux_coeff: 0, threshold_beta: 0.8, seed: 9 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, max_grad_norm: 0.01, sae: { d_vit: 8, exp_factor: 2, seed: 10 } }),
      ];
      const out = await gpu.run<{ maxDiff: number; steps: number[]; thetas: Array<Array<number | null>> }>("engineResume", { cfgs, a: 3, b: 3 });
      expect(out.steps).toEqual([6, 6]);
      expect(out.maxDiff).toBe(0);
      expect(out.thetas[0][0]).toBeGreaterThan(0);
      expect(out.thetas[1]).toEqual(out.thetas[0]);
    }, 120_000);

    it("resume through real checkpoints (runner/page/engine-port.ts): θ travels as threshold [d_sae]; the final one has it", async () => {
      const data: Partial<SyntheticData> = { d_vit: 8, n_features: 12, sparsity: 0.1, seed: 6, n_examples: 2048 };
      const cfgs = [
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { d_vit: 8, exp_factor: 2, kind: "batchtopk", k: 3, aux_coeff: 0, threshold_beta: 0.8, seed: 11 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, max_grad_norm: 0.01, sae: { d_vit: 8, exp_factor: 2, kind: "jumprelu", bandwidth: 0.1, init_threshold: 0.05, seed: 12 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { d_vit: 8, exp_factor: 2, seed: 13 } }),
      ];
      const out = await gpu.run<{ maxDiff: number; resumeThresholds: Array<number[] | null>; thresholds: Array<number[] | null> }>("checkpointResume", { cfgs, a: 3, b: 2 });
      expect(out.maxDiff).toBe(0);
      expect(out.resumeThresholds).toEqual([[16], [16], null]);
      const theta = out.thresholds[0]!;
      expect(theta[0]).toBeGreaterThan(0);
      expect(theta).toEqual(new Array(16).fill(theta[0]));
      expect(out.thresholds[1]!.length).toBe(16);
      expect(out.thresholds[2]).toBeNull();
    }, 120_000);
  });
}
