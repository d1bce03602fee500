/**
 * ENGINE INTEGRATION POINT — the only module of the runner that touches the WGSL engine (shaders/engine.ts) and the
 * synthetic dataset (runner/data/synthetic.ts), both written on other branches. Everything else in the loop talks
 * to the GroupEngine and BatchSource interfaces below; wiring the real engine in is a change to this file only:
 *   1. createGroupEngine: `import { SaeGroupEngine } from "../../shaders/engine"` and adapt its calls (below, marked).
 *   2. openBatchSource, synthetic branch: construct the synthetic source (it must implement BatchSource).
 */
import type { DataConfig, EvalMetrics, StepMetrics, TrainConfig } from "../../shaders/config";
import type { AdamState, Normalization, SaeWeights } from "../safetensors";
import { ShardSource, type FetchFn } from "../data/shards";
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
}

export class EngineNotWired extends Error {
  constructor(what: string) {
    super(`${what} is not wired into the runner yet (runner/page/engine-port.ts)`);
    this.name = "EngineNotWired";
  }
}

/** ENGINE INTEGRATION: builds the group's engine on this device. */
export async function createGroupEngine(device: GPUDevice, cfgs: TrainConfig[]): Promise<GroupEngine> {
  void device;
  void cfgs;
  // const engine = await SaeGroupEngine.create(device, cfgs);
  // return { initBDec: (m) => engine.initBDec(m), step: (b) => engine.step(b), get stepsTaken() { return engine.step },
  //          evaluate: (bs) => engine.evaluate(bs), exportWeights: () => engine.exportWeights(),
  //          exportState: () => engine.exportState(), importState: (s) => engine.importState(s), destroy: () => engine.destroy() };
  throw new EngineNotWired("the WGSL engine (shaders/engine.ts)");
}

/** A batch source for the group's data config; shards read over HTTP(S) with `fetch` (the page: through the CLI). */
export async function openBatchSource(data: DataConfig, batchSize: number, normalization?: Normalization, fetch?: FetchFn): Promise<BatchSource> {
  if (data.kind === "shards") return ShardSource.open(data, { batchSize, normalization, fetch });
  // ENGINE INTEGRATION: return new SyntheticSource(data, batchSize) from ../data/synthetic (implements BatchSource).
  throw new EngineNotWired("the synthetic dataset (runner/data/synthetic.ts)");
}
