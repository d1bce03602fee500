/**
 * The float64 reference of SAE.md: one plain loop per formula, no tricks, so it can be read against the spec and
 * checked by finite differences. The engine's kernels are compared with it element by element.
 */
import type { EvalMetrics, SaeKind, TrainConfig } from "../../shaders/config";
import { ALMOST_DEAD_THRESHOLD, DENSE_THRESHOLD } from "../../shaders/config";
import { ADAM, adamScalars, learningRate, prefixBounds, sparsityCoeff } from "../../shaders/schedule";

export interface Params {
  W_enc: Float64Array; // [d, n]
  b_enc: Float64Array; // [n]
  W_dec: Float64Array; // [n, d]
  b_dec: Float64Array; // [d]
  log_threshold: Float64Array; // [n]
}
export type ParamName = keyof Params;
export const PARAM_NAMES: ParamName[] = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"];

export interface Hyper {
  kind: SaeKind;
  /** TopK/BatchTopK (./topk.ts): the kept entries of h [B, n] (1 = kept); f = ReLU(h) there, 0 elsewhere. */
  select?: (h: Float64Array, B: number) => Uint8Array;
  d: number;
  n: number;
  /** Sparsity coefficient in effect this step (after warmup). */
  coeff: number;
  bandwidth: number;
  /** Block boundaries [0, p_1, …, d_sae]; [0, d_sae] for vanilla. */
  bounds: number[];
}

export interface Forward {
  h: Float64Array; // [B, n] pre-activations
  f: Float64Array; // [B, n]
  /** e[p] = x̂_p − x, [P][B, d]. */
  e: Float64Array[];
  mse: number;
  l0: number;
  l1: number;
  sparsity: number;
  loss: number;
}

export const cloneParams = (p: Params): Params => ({
  W_enc: p.W_enc.slice(),
  b_enc: p.b_enc.slice(),
  W_dec: p.W_dec.slice(),
  b_dec: p.b_dec.slice(),
  log_threshold: p.log_threshold.slice(),
});
export const zerosLike = (p: Params): Params => ({
  W_enc: new Float64Array(p.W_enc.length),
  b_enc: new Float64Array(p.b_enc.length),
  W_dec: new Float64Array(p.W_dec.length),
  b_dec: new Float64Array(p.b_dec.length),
  log_threshold: new Float64Array(p.log_threshold.length),
});

function activation(kind: Hyper["kind"], h: number, theta: number): number {
  if (kind === "relu") return h > 0 ? h : 0;
  if (kind === "jumprelu") return h > theta ? h : 0;
  throw new Error(`reference: sae.kind ${kind} needs hp.select (test/reference/topk.ts)`);
}

/** h = (x − b_dec) W_enc + b_enc, [B, n]. */
export function preActivations(p: Params, x: ArrayLike<number>, B: number, d: number, n: number): Float64Array {
  const h = new Float64Array(B * n);
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      let s = p.b_enc[j];
      for (let i = 0; i < d; i++) s += (x[b * d + i] - p.b_dec[i]) * p.W_enc[i * n + j];
      h[b * n + j] = s;
    }
  return h;
}

export function forward(p: Params, x: ArrayLike<number>, B: number, hp: Hyper): Forward {
  const { d, n, bounds } = hp;
  const P = bounds.length - 1;
  const h = preActivations(p, x, B, d, n);
  const f = new Float64Array(B * n);
  if (!hp.select) for (let i = 0; i < B * n; i++) f[i] = activation(hp.kind, h[i], Math.exp(p.log_threshold[i % n]));
  if (hp.select) {
    const kept = hp.select(h, B);
    for (let i = 0; i < B * n; i++) f[i] = kept[i] && h[i] > 0 ? h[i] : 0;
  }
  const e: Float64Array[] = [];
  let sq = 0;
  for (let q = 0; q < P; q++) {
    const eq = new Float64Array(B * d);
    for (let b = 0; b < B; b++)
      for (let c = 0; c < d; c++) {
        let s = p.b_dec[c];
        for (let j = 0; j < bounds[q + 1]; j++) s += f[b * n + j] * p.W_dec[j * d + c];
        eq[b * d + c] = s - x[b * d + c];
        sq += eq[b * d + c] ** 2;
      }
    e.push(eq);
  }
  let l0 = 0;
  let l1 = 0;
  for (let i = 0; i < B * n; i++) {
    if (f[i] > 0) l0++;
    l1 += Math.abs(f[i]);
  }
  l0 /= B;
  l1 /= B;
  const mse = sq / (B * P * d);
  // TopK and BatchTopK select instead of penalizing: no sparsity term.
  const sparsity = hp.kind === "relu" ? hp.coeff * l1 : hp.kind === "jumprelu" ? hp.coeff * l0 : 0;
  return { h, f, e, mse, l0, l1, sparsity, loss: mse + sparsity };
}

/** Gradients of loss (JumpReLU: the pseudo-gradients of SAE.md, rectangle kernel). */
export function backward(p: Params, x: ArrayLike<number>, B: number, hp: Hyper, fw: Forward): Params {
  return backwardDetailed(p, x, B, hp, fw).grads;
}

/**
 * backward, also returning dL/df per example and latent (ReLU: with the L1 term; JumpReLU: without the L0 term) and
 * dL/dh = dL/df·∂f/∂h (what the engine's G holds after its step: LATENT_COLS folds the mask in).
 */
export function backwardDetailed(p: Params, x: ArrayLike<number>, B: number, hp: Hyper, fw: Forward): { grads: Params; gf: Float64Array; gh: Float64Array } {
  const { d, n, bounds } = hp;
  const P = bounds.length - 1;
  const g = zerosLike(p);
  const scale = 2 / (B * P * d);
  // dL/dx̂_q = scale·e_q; latent j of block q feeds every x̂_r with r ≥ q.
  const gf = new Float64Array(B * n);
  const ghAll = new Float64Array(B * n);
  for (let b = 0; b < B; b++)
    for (let q = 0; q < P; q++)
      for (let c = 0; c < d; c++) {
        const ge = scale * fw.e[q][b * d + c];
        g.b_dec[c] += ge;
        for (let j = 0; j < bounds[q + 1]; j++) {
          gf[b * n + j] += ge * p.W_dec[j * d + c];
          g.W_dec[j * d + c] += ge * fw.f[b * n + j];
        }
      }
  const eps = hp.bandwidth;
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      const h = fw.h[b * n + j];
      const theta = Math.exp(p.log_threshold[j]);
      let gh: number;
      if (hp.kind === "relu") {
        gf[b * n + j] += h > 0 ? hp.coeff / B : 0; // d|f|/df = sign(f), 0 at f = 0 as torch
        gh = h > 0 ? gf[b * n + j] : 0;
      } else if (hp.select) {
        gh = fw.f[b * n + j] > 0 ? gf[b * n + j] : 0; // ∂f/∂h = 1 on kept entries with h > 0
      } else {
        const kern = Math.abs((h - theta) / eps) < 0.5 ? 1 : 0;
        gh = h > theta ? gf[b * n + j] : 0;
        const gTheta = gf[b * n + j] * (-(theta / eps) * kern) + (hp.coeff / B) * (-(1 / eps) * kern);
        g.log_threshold[j] += gTheta * theta; // θ = exp(log θ)
      }
      ghAll[b * n + j] = gh;
      g.b_enc[j] += gh;
      for (let i = 0; i < d; i++) {
        g.W_enc[i * n + j] += (x[b * d + i] - p.b_dec[i]) * gh;
        g.b_dec[i] -= p.W_enc[i * n + j] * gh;
      }
    }
  return { grads: g, gf, gh: ghAll };
}

/** Rows row0 … row0 + rows − 1 of x [·, d], transposed: [d, rows] (the engine's xT for that row chunk). */
export function transposeRows(x: ArrayLike<number>, row0: number, rows: number, d: number): Float64Array {
  const out = new Float64Array(d * rows);
  for (let b = 0; b < rows; b++) for (let c = 0; c < d; c++) out[c * rows + b] = x[(row0 + b) * d + c];
  return out;
}

export function normalizeDecoderRows(W_dec: Float64Array, n: number, d: number): void {
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let c = 0; c < d; c++) s += W_dec[j * d + c] ** 2;
    const norm = Math.sqrt(s);
    for (let c = 0; c < d; c++) W_dec[j * d + c] /= norm;
  }
}

export function removeParallelGrads(gW: Float64Array, W: Float64Array, n: number, d: number): void {
  for (let j = 0; j < n; j++) {
    let dot = 0;
    for (let c = 0; c < d; c++) dot += gW[j * d + c] * W[j * d + c];
    for (let c = 0; c < d; c++) gW[j * d + c] -= dot * W[j * d + c];
  }
}

export interface State {
  params: Params;
  m: Params;
  v: Params;
  step: number;
}

export function hyperAt(cfg: TrainConfig, t: number): Hyper {
  const d = cfg.sae.d_vit;
  return { kind: cfg.sae.kind, d, n: d * cfg.sae.exp_factor, coeff: sparsityCoeff(cfg, t), bandwidth: cfg.sae.bandwidth, bounds: prefixBounds(cfg, t) };
}

export interface StepResult {
  forward: Forward;
  /** Gradients as Adam saw them (after the parallel component was removed). */
  grads: Params;
  gf: Float64Array;
  /** dL/dh (dL/df masked by ∂f/∂h). */
  gh: Float64Array;
  hyper: Hyper;
}

/** One training step in saev's order (SAE.md "One step"); mutates state. */
export function trainStep(state: State, cfg: TrainConfig, x: ArrayLike<number>, B: number): StepResult {
  const t = state.step;
  const hp = hyperAt(cfg, t);
  const { n, d } = hp;
  if (cfg.sae.normalize_w_dec) normalizeDecoderRows(state.params.W_dec, n, d);
  const fw = forward(state.params, x, B, hp);
  const { grads: g, gf, gh } = backwardDetailed(state.params, x, B, hp, fw);
  if (cfg.sae.remove_parallel_grads) removeParallelGrads(g.W_dec, state.params.W_dec, n, d);
  adamUpdate(state, cfg, g);
  return { forward: fw, grads: g, gf, gh, hyper: hp };
}

/** torch Adam with the lr of step state.step, then the step advances. θ (log_threshold) trains for JumpReLU only. */
export function adamUpdate(state: State, cfg: TrainConfig, g: Params): void {
  const t = state.step;
  const { stepSize, sqrtBias2 } = adamScalars(learningRate(cfg, t), t);
  for (const name of PARAM_NAMES) {
    if (name === "log_threshold" && cfg.sae.kind !== "jumprelu") continue;
    const w = state.params[name], m = state.m[name], v = state.v[name], gr = g[name];
    for (let i = 0; i < w.length; i++) {
      m[i] = ADAM.beta1 * m[i] + (1 - ADAM.beta1) * gr[i];
      v[i] = ADAM.beta2 * v[i] + (1 - ADAM.beta2) * gr[i] * gr[i];
      w[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / sqrtBias2 + ADAM.eps);
    }
  }
  state.step++;
}

/** evaluate (SAE.md): means over all examples, full reconstruction; `select`: TopK's selection (./topk.ts). */
export function evaluate(p: Params, cfg: TrainConfig, batches: ArrayLike<number>[], B: number, select?: Hyper["select"]): EvalMetrics {
  const d = cfg.sae.d_vit;
  const n = d * cfg.sae.exp_factor;
  const hp: Hyper = { kind: cfg.sae.kind, d, n, coeff: 0, bandwidth: cfg.sae.bandwidth, bounds: [0, n], select };
  const counts = new Float64Array(n);
  const sums = new Float64Array(n);
  let N = 0, sq = 0, l0 = 0, l1 = 0;
  const xs: number[][] = [];
  for (const x of batches) {
    const fw = forward(p, x, B, hp);
    N += B;
    for (let i = 0; i < B * n; i++)
      if (fw.f[i] > 0) {
        counts[i % n]++;
        sums[i % n] += fw.f[i];
        l0++;
        l1 += fw.f[i];
      }
    for (const v of fw.e[0]) sq += v * v;
    for (let b = 0; b < B; b++) xs.push(Array.from({ length: d }, (_, c) => x[b * d + c]));
  }
  const mean = new Float64Array(d);
  for (const r of xs) for (let c = 0; c < d; c++) mean[c] += r[c] / N;
  let tot = 0;
  for (const r of xs) for (let c = 0; c < d; c++) tot += (r[c] - mean[c]) ** 2;
  const freqs = Array.from(counts, (c) => c / N);
  const fvu = sq / tot;
  return {
    l0: l0 / N,
    l1: l1 / N,
    mse: sq / (N * d),
    fvu,
    explained_variance: 1 - fvu,
    n_dead: freqs.filter((f) => f === 0).length,
    n_almost_dead: freqs.filter((f) => f < ALMOST_DEAD_THRESHOLD).length,
    n_dense: freqs.filter((f) => f > DENSE_THRESHOLD).length,
    freqs,
    mean_values: Array.from(sums, (s, j) => (counts[j] > 0 ? s / counts[j] : null)),
    n_examples: N,
  };
}
