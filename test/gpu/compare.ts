/**
 * What the GPU engine tests share: the element-wise comparison with the float64 reference
 * and its tolerance, its start state, random SAE parameters, and the slicing of engine buffers and states.
 */
import { expect } from "vitest";
import { SyntheticDataset } from "../../runner/data/synthetic";
import { dSae, type SyntheticData, type TrainConfig } from "../../shaders/config";
import * as ref from "../reference/sae";
import { initialSelectState, type SelectState } from "../reference/topk";
import type { JsonState } from "./engine-cases";

/** Largest relative error allowed of an f32 engine against the float64 reference. */
export const F32_TOL = 1e-4;

/** The k-th of the equal parts of `size` elements of a buffer holding every SAE's tensor (or a state's). */
export const slice = (a: (number | null)[], k: number, size: number) => a.slice(k * size, (k + 1) * size);

/** Reference parameters as a JsonState's (plain arrays, per parameter name). */
export const arr = (p: ref.Params) => Object.fromEntries(ref.PARAM_NAMES.map((k) => [k, Array.from(p[k])])) as JsonState["saes"][0]["params"];

/**
 * Random parameters of one SAE, every value exact in f32: uniform weights and biases, thresholds in [0.1, 0.5), and
 * small Adam moments (so the update is smooth). Only JumpReLU moves log θ: the others' moments of it are zero (the
 * reference skips it for them, so the engine is given nothing to move it with).
 */
export function randomParams(rand: () => number, cfg: TrainConfig): { params: ref.Params; m: ref.Params; v: ref.Params } {
  const d = cfg.sae.d_vit, n = dSae(cfg);
  const f32 = (len: number, f: () => number) => Float64Array.from({ length: len }, () => Math.fround(f()));
  const u = (s: number) => () => (rand() * 2 - 1) * s;
  const jump = cfg.sae.kind === "jumprelu";
  const params: ref.Params = {
    W_enc: f32(d * n, u(0.5)),
    b_enc: f32(n, u(0.1)),
    W_dec: f32(n * d, u(0.5)),
    b_dec: f32(d, u(0.2)),
    log_threshold: f32(n, () => Math.log(0.1 + 0.4 * rand())),
  };
  const moment = (second: boolean): ref.Params => ({
    W_enc: f32(d * n, second ? () => 1e-6 * rand() : u(1e-3)),
    b_enc: f32(n, second ? () => 1e-6 * rand() : u(1e-3)),
    W_dec: f32(n * d, second ? () => 1e-6 * rand() : u(1e-3)),
    b_dec: f32(d, second ? () => 1e-6 * rand() : u(1e-3)),
    log_threshold: jump ? f32(n, second ? () => 1e-6 * rand() : u(1e-3)) : new Float64Array(n),
  });
  const m = moment(false), v = moment(true);
  return { params, m, v };
}

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
