/** What the GPU engine tests share: the element-wise comparison with the float64 reference, and its start state. */
import { expect } from "vitest";
import { SyntheticDataset } from "../../runner/data/synthetic";
import type { SyntheticData, TrainConfig } from "../../shaders/config";
import { initialSelectState, type SelectState } from "../reference/topk";

/** Max over elements of |got − want| / max(|want|, rms(want)); NaN (poison left in place) counts as infinite. */
export function relError(got: (number | null)[], want: ArrayLike<number>): number {
  expect(got.length).toBe(want.length);
  let rms = 0;
  for (let i = 0; i < want.length; i++) rms += want[i] * want[i];
  rms = Math.sqrt(rms / Math.max(1, want.length)) || 1e-30;
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    if (g === null || !Number.isFinite(g)) return Infinity;
    worst = Math.max(worst, Math.abs(g - want[i]) / Math.max(Math.abs(want[i]), rms));
  }
  return worst;
}

/**
 * The reference's start of engine-cases' engineTrain: each config's seeded init, with b_dec the mean (rounded to
 * f32, as the engine holds it) of the first n_reinit_samples examples of config 0's synthetic data.
 */
export function referenceStart(cfgs: TrainConfig[]): { ds: SyntheticDataset; states: SelectState[] } {
  const ds = new SyntheticDataset(cfgs[0].data as SyntheticData);
  const d = cfgs[0].sae.d_vit, N = cfgs[0].sae.n_reinit_samples;
  const head = ds.head(N);
  const mean = new Float64Array(d);
  for (let i = 0; i < head.length; i++) mean[i % d] += head[i] / N;
  const states = cfgs.map((c) => {
    const s = initialSelectState(c);
    s.params.b_dec = Float64Array.from(Float32Array.from(mean));
    return s;
  });
  return { ds, states };
}
