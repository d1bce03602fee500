/**
 * The synthetic dataset (synthetic.ts) as a BatchSource: training batch t is SyntheticDataset.batch(t, B), a pure
 * function of (seed, t), so skip(n) is a counter bump and every runner of a group, fresh or resumed, trains on the
 * same batches. Synthetic data is not normalized (μ = 0, s = 1 go into the checkpoints). Evaluation reads examples
 * 0 .. n−1 in index order. Batches are generated on the calling thread, so there is nothing to prefetch.
 */
import type { SyntheticData } from "../../shaders/config";
import type { Normalization } from "../safetensors";
import type { BatchSource } from "./source";
import { SyntheticDataset } from "./synthetic";

export class SyntheticSource implements BatchSource {
  readonly d_vit: number;
  readonly nExamples: number;
  readonly normalization: Normalization;
  readonly dataset: SyntheticDataset;
  private step = 0;
  private started = false;
  private closed = false;

  constructor(cfg: SyntheticData, private readonly batchSize: number) {
    if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new Error(`synthetic source: batch size must be a positive integer, got ${batchSize}`);
    this.dataset = new SyntheticDataset(cfg);
    this.d_vit = cfg.d_vit;
    this.nExamples = cfg.n_examples;
    this.normalization = { mean: new Float32Array(cfg.d_vit), scale: 1 };
  }

  async next(): Promise<Float32Array> {
    if (this.closed) throw new Error("synthetic source: next() after close()");
    this.started = true;
    return this.dataset.batch(this.step++, this.batchSize);
  }

  skip(nBatches: number): void {
    if (this.started) throw new Error("synthetic source: skip() must come before the first next()");
    if (!(Number.isInteger(nBatches) && nBatches >= 0)) throw new Error(`synthetic source: skip() needs a count ≥ 0, got ${nBatches}`);
    this.step += nBatches;
  }

  async *ordered(batchSize: number, nExamples = 0): AsyncGenerator<Float32Array> {
    const total = nExamples > 0 ? Math.min(nExamples, this.nExamples) : this.nExamples;
    const d = this.d_vit;
    for (let start = 0; start < total; start += batchSize) {
      const rows = Math.min(batchSize, total - start);
      const out = new Float32Array(rows * d);
      for (let r = 0; r < rows; r++) this.dataset.example(start + r, out, r * d);
      yield out;
    }
  }

  close(): void {
    this.closed = true;
  }
}
