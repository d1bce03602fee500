/**
 * The engine with AuxK (shaders/auxk.ts wired into shaders/engine.ts) against the float64 reference
 * (test/reference/topk.ts trainStepSelect), in Chromium and in Dawn, at small shapes: one step element by element
 * after NaN poisoning, over the whole batch (one slab holding every kind) and in row chunks of 8 (one slab per SAE:
 * the forward-only sweep for AuxK's denominator; tiled matmuls in Chromium, direct on Dawn), with dead latents
 * planted through the counters; a mix of TopK and BatchTopK with AuxK (Matryoshka, θ unset and set, clipping after
 * the aux terms), TopK without it and ReLU. Then
 * resume: the counters travel through exportState/importState. The training run on synthetic data that shows AuxK
 * reviving latents is Dawn only (it is a property of training, not of a backend).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StepMetrics, SyntheticData, TrainConfig } from "../../shaders/config";
import { dSae } from "../../shaders/config";
import type { EngineOptions } from "../../shaders/engine";
import { persistentTensors, planMemory, workingTensors, type MemoryPlan, type SaeShape } from "../../shaders/fit";
import { prefixBounds } from "../../shaders/schedule";
import { dawnUnavailable, gpuBackends, openDawn, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";
import { trainConfig } from "../helpers/train-config";
import * as ref from "../reference/sae";
import { deadMask, topkMask, trainStepSelect, type SelectState } from "../reference/topk";
import { arr, F32_TOL, randomParams, relError, slice } from "./compare";
import type { JsonState } from "./engine-cases";

const dawnSkip = await dawnUnavailable();
const backends = await gpuBackends();

const auxOn = (c: TrainConfig) => (c.sae.kind === "topk" || c.sae.kind === "batchtopk") && c.sae.aux_coeff > 0;

const B = 29, D = 12, DEAD_AFTER = 60;
const base = { sae_batch_size: B, lr: 2e-3 };
const sae = (o: Partial<TrainConfig["sae"]>) => ({ d_vit: D, exp_factor: 3, aux_coeff: 0, dead_after: DEAD_AFTER, ...o });
/** TopK with AuxK (k_aux < #dead), BatchTopK with AuxK (Matryoshka, k_aux > #dead, clipped, θ set), ReLU, TopK
 *  without AuxK beside them (left as they were), BatchTopK with AuxK and θ unset. */
const stepCfgs = [
  trainConfig({ ...base, sae: sae({ kind: "topk", k: 4, k_aux: 5, aux_coeff: 0.5, seed: 51 }) }),
  trainConfig({ ...base, max_grad_norm: 0.05, sae: sae({ kind: "batchtopk", k: 3, k_aux: 40, aux_coeff: 0.25, threshold_beta: 0.9, seed: 52 }), objective: { kind: "matryoshka", n_prefixes: 3 } }),
  trainConfig({ ...base, sae: sae({ seed: 53 }), objective: { sparsity_coeff: 2e-2 } }),
  trainConfig({ ...base, sae: sae({ kind: "topk", k: 5, seed: 54 }) }),
  trainConfig({ ...base, sae: sae({ kind: "batchtopk", k: 4, k_aux: 8, aux_coeff: 1, seed: 55 }) }),
];
const stepThetas = [null, 0.3, null, null, null];

/** A random state per SAE at step t, with counters of which about 40 % are at or past dead_after. */
function randomState(rand: () => number, cfgs: TrainConfig[], t: number, thetas: Array<number | null>): { json: JsonState; refs: SelectState[] } {
  const refs: SelectState[] = [];
  const json: JsonState = { step: t, saes: [] };
  cfgs.forEach((cfg, k) => {
    const n = dSae(cfg);
    const { params, m, v } = randomParams(rand, cfg);
    const theta = thetas[k] === null ? null : Math.fround(thetas[k]!);
    const counters = Array.from({ length: n }, () => (rand() < 0.4 ? DEAD_AFTER + Math.floor(rand() * 100) : Math.floor(rand() * DEAD_AFTER)));
    json.saes.push({ params: arr(params), m: arr(m), v: arr(v), theta, ...(auxOn(cfg) ? { counters } : {}) });
    // the engine keeps counters for AuxK SAEs only; the reference's of the others do not matter to their step
    refs.push({ params, m, v, step: t, counters: auxOn(cfg) ? Float64Array.from(counters) : new Float64Array(n), theta });
  });
  return { json, refs };
}

const shapeOf = (cfgs: TrainConfig[]): SaeShape => ({
  d_vit: cfgs[0].sae.d_vit,
  d_sae: dSae(cfgs[0]),
  batch_size: cfgs[0].sae_batch_size,
  n_prefixes: Math.max(...cfgs.map((c) => prefixBounds(c, 0).length - 1)),
  batchtopk: cfgs.some((c) => c.sae.kind === "batchtopk"),
  auxk: cfgs.some(auxOn),
});

/** Row chunks of `rows` rows, one SAE per slab (the binding holds one SAE's largest tensor). */
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
  counters: Array<number[] | null>;
}

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`engine with AuxK on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    for (const chunked of [false, true])
      it(`one step matches the float64 reference${chunked ? " in row chunks of 8, one slab per SAE" : ", one slab of every kind"}: dead latents, aux loss and gradients, counters`, async () => {
        const seed = testSeed();
        const rand = mulberry32(seed);
        const cfgs = stepCfgs;
        const t = 3;
        const { json, refs } = randomState(rand, cfgs, t, stepThetas);
        const n = dSae(cfgs[0]);
        const x = Array.from({ length: B * D }, () => Math.fround(rand() * 2 - 1));
        const options = chunked ? chunkedOptions(cfgs, 8) : undefined;
        const extra = chunked ? [] : ["auxAct"];
        // Chromium: the tiled matmuls (the GPUs' variant), Dawn: the direct ones
        const out = await gpu.run<StepOut>("engineStep", { cfgs, state: json, x, matmul: name === "chrome" ? "tiled" : "direct", options, extra });
        if (chunked) expect([out.plan.rowsPerChunk, out.plan.rowChunks, out.plan.slabs]).toEqual([8, 4, cfgs.length]);
        else expect([out.plan.rowChunks, out.plan.slabs]).toEqual([1, 1]);
        const errors: Record<string, number> = {};
        const note = (label: string, e: number) => (errors[label] = Math.max(errors[label] ?? 0, e));
        const deadBefore = refs.map((r, k) => deadMask(r.counters, cfgs[k].sae.dead_after));
        // the aux term must matter: the same step without it moves the gradients well beyond the tolerance
        const without = cfgs.map((cfg, k) => {
          const copy: SelectState = structuredClone(refs[k]);
          return trainStepSelect(copy, { ...cfg, sae: { ...cfg.sae, aux_coeff: 0 } }, x, B);
        });
        const results = cfgs.map((cfg, k) => trainStepSelect(refs[k], cfg, x, B));
        cfgs.forEach((cfg, k) => {
          const r = results[k];
          const aux = auxOn(cfg);
          if (!chunked) {
            if (aux) {
              // auxAct: ReLU(h) on each row's top min(k_aux, #dead) dead latents of the raw h
              const kept = topkMask(r.forward.h, B, n, cfg.sae.k_aux, deadBefore[k]);
              note("auxAct", relError(slice(out.buffers.auxAct, k, B * n), r.forward.h.map((h, i) => (kept[i] ? Math.max(h, 0) : 0))));
            } else note("G (dL/dh)", relError(slice(out.buffers.G, k, B * n), r.gh));
          }
          for (const p of ref.PARAM_NAMES) {
            const size = r.grads[p].length;
            note(`grad ${p}`, relError(slice(out.buffers[`grad.${p}`], k, size), r.grads[p]));
            note(`Adam m ${p}`, relError(slice(out.buffers[`m.${p}`], k, size), refs[k].m[p]));
            note(`param ${p}`, relError(slice(out.buffers[p], k, size), refs[k].params[p]));
          }
          const m = out.metrics[k];
          note("metric mse", Math.abs(m.mse - r.forward.mse) / r.forward.mse);
          note("metric loss", Math.abs(m.loss - r.loss) / r.loss);
          if (aux) {
            expect(r.n_dead_train, `seed ${seed} sae ${k}: latents dead`).toBeGreaterThan(0);
            expect(m.n_dead_train, `seed ${seed} sae ${k} n_dead_train`).toBe(r.n_dead_train);
            note("metric aux_loss", Math.abs(m.aux_loss! - r.aux_loss) / r.aux_loss);
            expect(out.counters[k], `seed ${seed} sae ${k} counters`).toEqual(Array.from(refs[k].counters));
            expect(relError(Array.from(without[k].grads.W_enc), r.grads.W_enc), `seed ${seed} sae ${k}: the aux gradient matters`).toBeGreaterThan(1e-2);
          } else {
            expect(m.aux_loss, `sae ${k}`).toBeUndefined();
            expect(m.n_dead_train, `sae ${k}`).toBeUndefined();
            expect(out.counters[k]).toBeNull();
          }
        });
        console.log(`[${name}] seed ${seed}${chunked ? " chunked" : ""}: max relative errors`, errors);
        for (const [label, e] of Object.entries(errors)) expect(e, `${label} (seed ${seed})`).toBeLessThanOrEqual(F32_TOL);
      }, 120_000);

    it("resume carries the counters: a + b steps equal a steps, export, import, b steps", async () => {
      const data: Partial<SyntheticData> = { d_vit: 8, n_features: 12, sparsity: 0.1, seed: 5, n_examples: 2048 };
      const s = { d_vit: 8, exp_factor: 4, dead_after: 32, k_aux: 4, aux_coeff: 0.1 };
      const cfgs = [
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { ...s, kind: "topk", k: 2, seed: 9 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { ...s, kind: "batchtopk", k: 2, threshold_beta: 0.8, seed: 10 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { d_vit: 8, exp_factor: 4, seed: 11 } }),
      ];
      const out = await gpu.run<{ maxDiff: number; steps: number[]; counters: Array<Array<number[] | null>> }>("engineResume", { cfgs, a: 3, b: 3 });
      expect(out.steps).toEqual([6, 6]);
      expect(out.maxDiff).toBe(0);
      expect(out.counters[1]).toEqual(out.counters[0]);
      expect(out.counters[0][2]).toBeNull();
      // some latent had not fired for a while (so the counters carried something)
      for (const c of out.counters[0].slice(0, 2)) expect(Math.max(...c!)).toBeGreaterThanOrEqual(32);
    }, 120_000);

    it("resume through real checkpoints (runner/page/engine-port.ts, runner/safetensors.ts): aux_counters [d_sae] carry the dead set", async () => {
      const data: Partial<SyntheticData> = { d_vit: 8, n_features: 12, sparsity: 0.1, seed: 6, n_examples: 2048 };
      const s = { d_vit: 8, exp_factor: 4, dead_after: 32, k_aux: 4, aux_coeff: 0.5 };
      const cfgs = [
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { ...s, kind: "topk", k: 2, seed: 21 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { ...s, kind: "batchtopk", k: 2, threshold_beta: 0.8, seed: 22 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, data, sae: { ...s, kind: "topk", k: 2, aux_coeff: 0, seed: 23 } }),
      ];
      const out = await gpu.run<{ maxDiff: number; resumeCounters: Array<{ shape: number[]; max: number } | null> }>("checkpointResume", { cfgs, a: 3, b: 2 });
      // the same weights after the resumed steps: the aux terms saw the same dead latents as the unbroken run
      expect(out.maxDiff).toBe(0);
      expect(out.resumeCounters.map((c) => c?.shape ?? null)).toEqual([[32], [32], null]);
      for (const c of out.resumeCounters.slice(0, 2)) expect(c!.max, "some latent was dead at the checkpoint").toBeGreaterThanOrEqual(32);
    }, 120_000);
  });
}

describe.skipIf(dawnSkip !== null)("AuxK revives dead latents (Dawn, synthetic data)", () => {
  let gpu: GpuBackend;
  beforeAll(async () => {
    gpu = await openDawn();
  }, 120_000);
  afterAll(async () => gpu?.close());

  it("a TopK run with AuxK ends with fewer dead latents than the same run without it", async () => {
    // tuned on the float64 reference (trainStepSelect): without AuxK about 47 of 64 latents end dead, with it about 18
    const steps = 40, Bt = 32, d = 8;
    const data: Partial<SyntheticData> = { d_vit: d, n_features: 24, sparsity: 0.05, seed: 7, noise: 0.01, n_examples: 20_000 };
    const common = { sae_batch_size: Bt, n_patches: steps * Bt, lr: 1e-2, log_every: 10, data, seed: 3 };
    const s = { d_vit: d, exp_factor: 8, kind: "topk" as const, k: 2, k_aux: 32, dead_after: Bt, n_reinit_samples: 1024, seed: 3 };
    const cfgs = [trainConfig({ ...common, sae: { ...s, aux_coeff: 0 } }), trainConfig({ ...common, sae: { ...s, aux_coeff: 1 } })];
    const out = await gpu.run<{ logs: Array<{ step: number; metrics: StepMetrics[] }>; evals: Array<{ n_dead: number }> }>("engineTrain", { cfgs, steps, evalExamples: 1024 });
    const [without, withAux] = out.evals.map((e) => e.n_dead);
    const deadTrain = out.logs.map((l) => l.metrics[1].n_dead_train);
    console.log(`[dawn] AuxK revival, d_sae ${d * 8}, k 2, ${steps} steps: n_dead at the end (eval on 1024 examples) aux_coeff 0: ${without}, aux_coeff 1: ${withAux}; n_dead_train of the AuxK run per log step: ${deadTrain.join(", ")}`);
    expect(out.logs.every((l) => l.metrics[0].n_dead_train === undefined)).toBe(true);
    expect(without, "the run without AuxK must leave latents dead (else the test shows nothing)").toBeGreaterThan(0);
    expect(deadTrain.every((v) => v! > 0), "the AuxK run has dead latents to revive while it trains").toBe(true);
    expect(withAux).toBeLessThan(without);
  }, 180_000);
});
