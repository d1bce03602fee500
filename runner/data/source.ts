/**
 * What the training loop needs from a dataset, whatever it is (saev shards over HTTP, the synthetic generator):
 * normalized batches [B, d_vit] in a seeded order that every runner of a group reproduces, a way to skip batches
 * already trained (resume), and the normalization that goes into every checkpoint.
 */
import type { Normalization } from "../safetensors";
import type { DataOrigin } from "../../worker/protocol";

export interface BatchSource {
  readonly d_vit: number;
  /** Examples in one pass over the data. */
  readonly nExamples: number;
  /** μ and s applied to every example (μ = 0, s = 1 when the data is not normalized). */
  readonly normalization: Normalization;
  /** The layer and model the activations come from, when the data says (shards); goes into final checkpoints. */
  readonly origin?: DataOrigin;
  /** The next training batch, Float32Array [batchSize, d_vit], row-major; the one after is already being fetched. */
  next(): Promise<Float32Array>;
  /** Advances the order by n batches without reading them (resuming at step n). Call before the first next(). */
  skip(nBatches: number): void;
  /** Evaluation batches in on-disk order over the first `nExamples` examples (0: all); the last may be short. */
  ordered(batchSize: number, nExamples?: number): AsyncGenerator<Float32Array>;
  close(): void;
}

/**
 * Wraps a batch producer so the next batch is fetched while the current one trains (the double buffering of
 * DESIGN.md step 3). `produce` must draw its order synchronously before its first await, so that concurrent
 * calls keep the batch order.
 */
export class Prefetcher {
  private pending: Promise<Float32Array> | null = null;
  constructor(private readonly produce: () => Promise<Float32Array>) {}

  next(): Promise<Float32Array> {
    const current = this.pending ?? this.produce();
    this.pending = this.produce();
    // A failed prefetch is reported by the next call to next(), not as an unhandled rejection now.
    this.pending.catch(() => {});
    return current;
  }

  /** Drops a pending prefetch (after skip() the prefetched batch is no longer the next one). */
  reset(): void {
    this.pending = null;
  }
}
