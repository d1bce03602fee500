/**
 * The runner's one bridge to the WGSL engine (shaders/engine.ts) and the data sources: the loop talks only to the
 * GroupEngine and BatchSource interfaces below (its protocol tests pass a recording engine instead).
 *
 * Checkpoint names vs engine names: the engine trains log θ (`log_threshold`); checkpoints carry θ = exp(log θ) as
 * `threshold` (SAELens' name), and a resume checkpoint's `adam_m.threshold` / `adam_v.threshold` are the moments of
 * log θ, the parameter Adam actually updates. ReLU SAEs carry no threshold: their log θ has zero gradient and stays
 * at its init, so a resume restores it from the config. BatchTopK's θ (not a parameter: the EMA of the smallest
 * kept value) travels as `threshold` too, one value repeated per latent as SAELens saves it; its Adam moments are
 * those of its unused log θ (zeros). AuxK's per-latent counters travel with the Adam state (`aux_counters`).
 */
import type { DataConfig, EvalMetrics, StepMetrics, TrainConfig } from "../../shaders/config";
import { SaeEngine, type EngineOptions, type SaeParams } from "../../shaders/engine";
import { choicesOf, kernelsFor, type KernelCache, type KernelReport } from "../../shaders/autotune";
import { prefixBounds } from "../../shaders/schedule";
import type { AdamState, Normalization, SaeWeights } from "../safetensors";
import { ShardSource, type FetchFn } from "../data/shards";
import { SyntheticSource } from "../data/synthetic-source";
import type { BatchSource } from "../data/source";

/** The engine as the loop uses it: every SAE of a group in lock-step on one batch. */
export interface GroupEngine {
  /** Sets b_dec of every SAE to this mean of normalized examples [d_vit] (SAE.md "b_dec init"). */
  initBDec(mean: Float32Array): Promise<void>;
  /** One training step on batch [B, d_vit]; per-SAE metrics (in cfg order) on log steps, else null. */
  step(batch: Float32Array): Promise<StepMetrics[] | null>;
  /** Steps taken (restored by importState). */
  readonly stepsTaken: number;
  /** EvalMetrics per SAE over the batches (all of them, as saev). */
  evaluate(batches: AsyncIterable<Float32Array>): Promise<EvalMetrics[]>;
  /** Normalized-W_dec weights per SAE for the final checkpoint. */
  exportWeights(): Promise<SaeWeights[]>;
  /** Weights and Adam state per SAE for a resume checkpoint. */
  exportState(): Promise<Array<{ weights: SaeWeights; adam: AdamState }>>;
  /** Restores weights, Adam moments and the step (all SAEs at the same step). */
  importState(states: Array<{ weights: SaeWeights; adam: AdamState }>): Promise<void>;
  destroy(): void;
  /** The matmul kernels it runs, when they were autotuned (or taken from the tuning cache) for this shape. */
  readonly kernels?: KernelReport;
}

/** Autotuning for createGroupEngine: the cache of tuned shapes, and whether the adapter is a software one. */
export interface TuneContext {
  cache: KernelCache;
  software: boolean;
}

/** Builds the group's engine on this device (every SAE of the group in one SaeEngine, lock-step); `options`:
 *  the memory budget the runner reported with its claim, so the engine plans as the Worker chunked. */
export async function createGroupEngine(device: GPUDevice, cfgs: TrainConfig[], options: EngineOptions = {}, tune?: TuneContext): Promise<GroupEngine> {
  const c0 = cfgs[0];
  // the matmul kernels for this shape on this adapter: cached, else timed now (a few seconds at most)
  const kernels = tune
    ? await kernelsFor(
        device,
        { d_vit: c0.sae.d_vit, d_sae: c0.sae.d_vit * c0.sae.exp_factor, batch: c0.sae_batch_size, prefixes: Math.max(...cfgs.map((c) => prefixBounds(c, 0).length - 1)), saes: cfgs.length },
        tune.cache,
        { software: tune.software, engine: options },
      )
    : undefined;
  const engine = SaeEngine.create(device, cfgs, kernels ? { ...options, kernels: choicesOf(kernels) } : options);
  const jump = cfgs.map((c) => c.sae.kind === "jumprelu");
  const batch = cfgs.map((c) => c.sae.kind === "batchtopk");
  /** `batchTheta`: BatchTopK's θ (weights), or undefined (moments: log θ's, as for JumpReLU). */
  const toWeights = (p: SaeParams, k: number, theta: (v: Float32Array) => Float32Array, batchTheta?: number | null): SaeWeights => ({
    W_enc: p.W_enc,
    b_enc: p.b_enc,
    W_dec: p.W_dec,
    b_dec: p.b_dec,
    ...(jump[k] || (batch[k] && batchTheta === undefined) ? { threshold: theta(p.log_threshold) } : {}),
    ...(batch[k] && batchTheta !== undefined ? { threshold: new Float32Array(p.b_enc.length).fill(batchTheta ?? 0) } : {}),
  });
  const toParams = (w: SaeWeights, k: number, logTheta: (v: Float32Array) => Float32Array, fill: number): SaeParams => {
    if ((jump[k] || batch[k]) && !w.threshold) throw new Error(`resume state of SAE ${k} (${cfgs[k].sae.kind}) has no threshold`);
    const n = w.b_enc.length;
    return { W_enc: w.W_enc, b_enc: w.b_enc, W_dec: w.W_dec, b_dec: w.b_dec, log_threshold: jump[k] ? logTheta(w.threshold!) : new Float32Array(n).fill(fill) };
  };
  const exp = (v: Float32Array) => v.map(Math.exp);
  const same = (v: Float32Array) => v;
  return {
    initBDec: async (mean) => engine.setBDec(mean),
    step: (batch) => engine.step(engine.uploadBatch(batch)),
    get stepsTaken() {
      return engine.stepIndex;
    },
    evaluate: (batches) => engine.evaluate(batches),
    exportWeights: () => engine.exportWeights(),
    exportState: async () => {
      const state = await engine.exportState();
      return state.saes.map((s, k) => ({
        weights: toWeights(s.params, k, exp, batch[k] ? (s.theta ?? null) : undefined),
        adam: { m: toWeights(s.m!, k, same), v: toWeights(s.v!, k, same), step: state.step, ...(s.counters ? { counters: s.counters } : {}) },
      }));
    },
    importState: async (states) => {
      const steps = new Set(states.map((s) => s.adam.step));
      if (steps.size !== 1) throw new Error(`resume states are at different steps (${[...steps].join(", ")}); a group resumes at one step`);
      engine.importState({
        step: states[0].adam.step,
        saes: states.map((s, k) => ({
          params: toParams(s.weights, k, (v) => v.map(Math.log), Math.log(cfgs[k].sae.init_threshold)),
          m: toParams(s.adam.m, k, same, 0),
          v: toParams(s.adam.v, k, same, 0),
          // θ was set by the first step: a checkpoint taken before any step has none yet
          theta: batch[k] && s.adam.step > 0 ? s.weights.threshold![0] : null,
          // AuxK's dead counters (absent: zero, nothing dead yet)
          counters: s.adam.counters,
        })),
      });
    },
    destroy: () => engine.destroy(),
    kernels,
  };
}

/** A batch source for the group's data config; shards read over HTTP(S) with `fetch` (the page: through the CLI). */
export async function openBatchSource(data: DataConfig, batchSize: number, normalization?: Normalization, fetch?: FetchFn): Promise<BatchSource> {
  if (data.kind === "shards") return ShardSource.open(data, { batchSize, normalization, fetch });
  return new SyntheticSource(data, batchSize);
}
