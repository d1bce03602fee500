/**
 * GPU cases for the SAE engine (JSON in, JSON out, so they run alike in Chrome and Dawn; see cases.ts).
 * Arrays travel as number[]; a NaN left in a poisoned buffer comes back as null and fails the comparison.
 */
import { SyntheticDataset } from "../../runner/data/synthetic";
import type { SyntheticData, TrainConfig } from "../../shaders/config";
import { PARAM_NAMES, SaeEngine, type EngineOptions, type EngineState, type ParamName } from "../../shaders/engine";
import { createMatmul, type MatmulVariant } from "../../shaders/matmul";

type JsonParams = Record<ParamName, number[]>;
export interface JsonState {
  step: number;
  /** theta: BatchTopK's θ (null or absent: unset); counters: AuxK's per-latent counters (absent: zero). */
  saes: Array<{ params: JsonParams; m?: JsonParams; v?: JsonParams; theta?: number | null; counters?: number[] }>;
}

const toF32 = (p: JsonParams) => Object.fromEntries(PARAM_NAMES.map((n) => [n, Float32Array.from(p[n])])) as Record<ParamName, Float32Array>;
const toJson = (p: Record<ParamName, Float32Array>) => Object.fromEntries(PARAM_NAMES.map((n) => [n, Array.from(p[n])])) as JsonParams;

function importJson(engine: SaeEngine, s: JsonState): void {
  const state: EngineState = {
    step: s.step,
    saes: s.saes.map((x) => ({ params: toF32(x.params), m: x.m && toF32(x.m), v: x.v && toF32(x.v), theta: x.theta, counters: x.counters && Uint32Array.from(x.counters) })),
  };
  engine.importState(state);
}

async function gpuErrors<T>(device: GPUDevice, fn: () => Promise<T>): Promise<T> {
  device.pushErrorScope("validation");
  const out = await fn();
  const err = await device.popErrorScope();
  if (err) throw new Error(`WebGPU validation error: ${err.message}`);
  return out;
}

export const engineCases = {
  /** One step from a given state on a given batch, every intermediate buffer poisoned with NaN first. */
  async engineStep(device: GPUDevice, input: { cfgs: TrainConfig[]; state: JsonState; x: number[]; matmul?: "tiled" | "direct"; options?: EngineOptions; extra?: string[] }) {
    return gpuErrors(device, async () => {
      const engine = SaeEngine.create(device, input.cfgs, { ...input.options, matmul: input.matmul });
      try {
        importJson(engine, input.state);
        engine.poison();
        const metrics = await engine.step(Float32Array.from(input.x), { metrics: true });
        const names = ["H", "G", "R", ...PARAM_NAMES.flatMap((p) => [`grad.${p}`, p, `m.${p}`, `v.${p}`]), ...(input.extra ?? [])];
        const buffers: Record<string, number[]> = {};
        for (const name of names) buffers[name] = Array.from(await engine.readBuffer(name));
        const counters = (await engine.counters()).map((c) => (c ? Array.from(c) : null));
        return { metrics, buffers, maxPrefixes: engine.maxPrefixes, variant: engine.matmulVariant, plan: engine.plan, thetas: await engine.thetas(), counters };
      } finally {
        engine.destroy();
      }
    });
  },

  /** evaluate from a given state over given batches. */
  async engineEval(device: GPUDevice, input: { cfgs: TrainConfig[]; state: JsonState; batches: number[][]; options?: EngineOptions }) {
    return gpuErrors(device, async () => {
      const engine = SaeEngine.create(device, input.cfgs, input.options);
      try {
        importJson(engine, input.state);
        return await engine.evaluate(input.batches.map((b) => Float32Array.from(b)));
      } finally {
        engine.destroy();
      }
    });
  },

  /**
   * Trains from the seeded init on synthetic data (b_dec from the mean of the first `n_reinit_samples`
   * examples), through uploadBatch as the runner does; returns the logged metrics, final weights and an eval.
   */
  async engineTrain(device: GPUDevice, input: { cfgs: TrainConfig[]; steps: number; evalExamples: number }) {
    return gpuErrors(device, async () => {
      const cfg0 = input.cfgs[0];
      const data = new SyntheticDataset(cfg0.data as SyntheticData);
      const engine = SaeEngine.create(device, input.cfgs);
      try {
        engine.initBDec(data.head(cfg0.sae.n_reinit_samples));
        const logs: Array<{ step: number; metrics: unknown }> = [];
        let next = engine.uploadBatch(data.batch(0, cfg0.sae_batch_size));
        for (let t = 0; t < input.steps; t++) {
          const current = next;
          const pending = engine.step(current);
          if (t + 1 < input.steps) next = engine.uploadBatch(data.batch(t + 1, cfg0.sae_batch_size)); // prefetch
          const metrics = await pending;
          if (metrics) logs.push({ step: t, metrics });
        }
        const weights = await engine.exportWeights();
        const evals = await engine.evaluate([data.slice(0, input.evalExamples)]);
        return {
          logs,
          thetas: await engine.thetas(),
          thresholds: weights.map((w) => (w.threshold ? Array.from(w.threshold) : null)),
          W_dec: weights.map((w) => Array.from(w.W_dec)),
          evals: evals.map((e) => ({ ...e, freqs: undefined, mean_values: undefined, n_dead: e.n_dead })),
        };
      } finally {
        engine.destroy();
      }
    });
  },

  /**
   * The same training run twice from the same seeded init on the same synthetic batches: once as the engine plans
   * it by default (one row chunk, one slab) and once with `chunked` options (several row chunks and slabs).
   * Returns both runs' logged losses and final parameters and Adam moments.
   */
  async engineChunkedRun(device: GPUDevice, input: { cfgs: TrainConfig[]; steps: number; chunked: EngineOptions }) {
    return gpuErrors(device, async () => {
      const cfg0 = input.cfgs[0];
      const data = new SyntheticDataset(cfg0.data as SyntheticData);
      const B = cfg0.sae_batch_size;
      const runs = [];
      for (const options of [{}, input.chunked]) {
        const engine = SaeEngine.create(device, input.cfgs, options);
        try {
          engine.initBDec(data.head(cfg0.sae.n_reinit_samples));
          const losses: number[][] = [];
          for (let t = 0; t < input.steps; t++) {
            const m = await engine.step(engine.uploadBatch(data.batch(t, B)));
            if (m) losses.push(m.map((x) => x.loss));
          }
          const state = await engine.exportState();
          const evals = await engine.evaluate([data.slice(0, 4 * B + 5)]);
          runs.push({
            plan: engine.plan,
            losses,
            state: state.saes.map((x) => ({ params: toJson(x.params), m: toJson(x.m!), v: toJson(x.v!) })),
            evals: evals.map((e) => ({ mse: e.mse, l0: e.l0, freqs: e.freqs })),
          });
        } finally {
          engine.destroy();
        }
      }
      return { whole: runs[0], chunked: runs[1] };
    });
  },

  /** Trains a+b steps in one engine, and a steps, exportState → a fresh engine → importState → b steps. */
  async engineResume(device: GPUDevice, input: { cfgs: TrainConfig[]; a: number; b: number }) {
    return gpuErrors(device, async () => {
      const cfg0 = input.cfgs[0];
      const data = new SyntheticDataset(cfg0.data as SyntheticData);
      const B = cfg0.sae_batch_size;
      const one = SaeEngine.create(device, input.cfgs);
      const two = SaeEngine.create(device, input.cfgs);
      try {
        for (let t = 0; t < input.a; t++) await one.step(data.batch(t, B));
        two.importState(await one.exportState());
        for (let t = input.a; t < input.a + input.b; t++) {
          await one.step(data.batch(t, B));
          await two.step(data.batch(t, B));
        }
        const [s1, s2] = [await one.exportState(), await two.exportState()];
        let maxDiff = 0;
        for (let k = 0; k < s1.saes.length; k++)
          for (const p of PARAM_NAMES) {
            const x = s1.saes[k].params[p], y = s2.saes[k].params[p];
            for (let i = 0; i < x.length; i++) maxDiff = Math.max(maxDiff, Math.abs(x[i] - y[i]));
          }
        const counters = [s1, s2].map((s) => s.saes.map((x) => (x.counters ? Array.from(x.counters) : null)));
        return { maxDiff, steps: [s1.step, s2.step], thetas: [await one.thetas(), await two.thetas()], counters };
      } finally {
        one.destroy();
        two.destroy();
      }
    });
  },

  /** The benchmark's roofline matmul, C = A·B, poisoned output first. */
  async matmul(device: GPUDevice, input: { variant: MatmulVariant; M: number; N: number; K: number; a: number[]; b: number[] }) {
    return gpuErrors(device, async () => {
      const mm = createMatmul(device, input.variant, input.M, input.N, input.K, Float32Array.from(input.a), Float32Array.from(input.b));
      try {
        const enc = device.createCommandEncoder();
        mm.encode(enc, 1);
        device.queue.submit([enc.finish()]);
        return Array.from(await mm.readC());
      } finally {
        mm.destroy();
      }
    });
  },

  /** A group too large for the device: the engine must refuse it with a clear message before allocating. */
  async engineTooBig(device: GPUDevice, input: { cfgs: TrainConfig[] }) {
    try {
      SaeEngine.create(device, input.cfgs).destroy();
      return { error: null };
    } catch (e) {
      return { error: String(e) };
    }
  },
};
