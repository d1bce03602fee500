/**
 * Synthetic activations with known ground-truth features (SAE.md "Synthetic"): `n_features` random unit directions
 * in d_vit; feature f fires in an example with its own probability p_f (the p_f average `sparsity`), with a
 * magnitude drawn per firing from U(0.5, 1.5); optional Gaussian noise of std `noise` on every coordinate.
 *
 * Everything is a pure function of (data.seed, example index) through the counter-based PRNG, so every runner,
 * and a resumed run, sees the same examples. The stream visits the `n_examples` examples in a seeded shuffled
 * order per epoch (a Feistel permutation: no index array, any size).
 *
 *   const data = new SyntheticDataset(cfg.data);
 *   const x = data.batch(step, cfg.sae_batch_size); // Float32Array [batchSize, d_vit], row-major
 */
import type { SyntheticData } from "../../shaders/config";
import { normalAt, permuteIndex, STREAMS, uniformAt } from "../../shaders/prng";

export class SyntheticDataset {
  readonly d_vit: number;
  readonly n_examples: number;
  /** Ground-truth directions, [n_features, d_vit] row-major, each row of unit norm. */
  private readonly directions: Float64Array;
  /** Per-feature firing probability (mean = sparsity, each ≤ 1). */
  readonly probabilities: Float64Array;

  constructor(readonly cfg: SyntheticData) {
    const { d_vit, n_features, sparsity, seed, n_examples } = cfg;
    if (!(d_vit >= 1 && n_features >= 1 && n_examples >= 1)) throw new Error("synthetic data: d_vit, n_features and n_examples must be ≥ 1");
    if (!(sparsity > 0 && sparsity <= 1)) throw new Error("synthetic data: sparsity must be in (0, 1]");
    this.d_vit = d_vit;
    this.n_examples = n_examples;
    this.directions = new Float64Array(n_features * d_vit);
    for (let f = 0; f < n_features; f++) {
      let norm = 0;
      for (let i = 0; i < d_vit; i++) {
        const v = normalAt(seed, STREAMS.DATA_FEATURES, f * d_vit + i);
        this.directions[f * d_vit + i] = v;
        norm += v * v;
      }
      norm = Math.sqrt(norm);
      for (let i = 0; i < d_vit; i++) this.directions[f * d_vit + i] /= norm;
    }
    // Uneven firing rates (weights in [0.2, 1.8], rescaled to mean 1), as real features are uneven.
    const weights = Array.from({ length: n_features }, (_, f) => 0.2 + 1.6 * uniformAt(seed, STREAMS.DATA_PROBS, f));
    const mean = weights.reduce((a, b) => a + b, 0) / n_features;
    this.probabilities = Float64Array.from(weights, (w) => Math.min(1, (sparsity * w) / mean));
  }

  /** The ground-truth feature directions as rows of a [n_features, d_vit] matrix. */
  features(): Float64Array {
    return this.directions.slice();
  }

  /** Writes example `index` (0 ≤ index < n_examples) into out[offset .. offset + d_vit). */
  example(index: number, out: Float32Array = new Float32Array(this.d_vit), offset = 0): Float32Array {
    const { n_features, seed, noise } = this.cfg;
    const d = this.d_vit;
    const acc = new Float64Array(d);
    for (let f = 0; f < n_features; f++) {
      const key = index * n_features + f;
      if (uniformAt(seed, STREAMS.DATA_FIRE, key) >= this.probabilities[f]) continue;
      const magnitude = 0.5 + uniformAt(seed, STREAMS.DATA_MAGNITUDE, key);
      for (let i = 0; i < d; i++) acc[i] += magnitude * this.directions[f * d + i];
    }
    if (noise > 0) for (let i = 0; i < d; i++) acc[i] += noise * normalAt(seed, STREAMS.DATA_NOISE, index * d + i);
    for (let i = 0; i < d; i++) out[offset + i] = acc[i];
    return out;
  }

  /** Which example the stream shows at position `position` (epoch = position / n_examples, shuffled per epoch). */
  indexAt(position: number): number {
    const epoch = Math.floor(position / this.n_examples);
    return permuteIndex(position % this.n_examples, this.n_examples, this.cfg.seed, epoch);
  }

  /** Stream positions [start, start + count) as a [count, d_vit] row-major Float32Array. */
  slice(start: number, count: number): Float32Array {
    const out = new Float32Array(count * this.d_vit);
    for (let r = 0; r < count; r++) this.example(this.indexAt(start + r), out, r * this.d_vit);
    return out;
  }

  /** The batch of training step `step` (0-based): stream positions [step·batchSize, (step+1)·batchSize). */
  batch(step: number, batchSize: number): Float32Array {
    return this.slice(step * batchSize, batchSize);
  }

  /** Examples 0 .. count−1 in index order (count capped by n_examples), e.g. for the b_dec init mean. */
  head(count: number): Float32Array {
    const n = Math.min(count, this.n_examples);
    const out = new Float32Array(n * this.d_vit);
    for (let r = 0; r < n; r++) this.example(r, out, r * this.d_vit);
    return out;
  }
}

/**
 * Feature recovery: the mean, over the true features, of the best cosine similarity with any learned decoder row.
 * `truth` is [nTruth, d] (unit rows, as `features()` gives); `W_dec` is [nRows, d] (any norm).
 */
export function meanMaxCosine(truth: ArrayLike<number>, nTruth: number, W_dec: ArrayLike<number>, nRows: number, d: number): number {
  const norms = new Float64Array(nRows);
  for (let j = 0; j < nRows; j++) {
    let s = 0;
    for (let c = 0; c < d; c++) s += W_dec[j * d + c] ** 2;
    norms[j] = Math.sqrt(s) || 1;
  }
  let total = 0;
  for (let f = 0; f < nTruth; f++) {
    let best = -1;
    for (let j = 0; j < nRows; j++) {
      let dot = 0;
      for (let c = 0; c < d; c++) dot += truth[f * d + c] * W_dec[j * d + c];
      best = Math.max(best, dot / norms[j]);
    }
    total += best;
  }
  return total / nTruth;
}
