/**
 * The float64 reference of SAE.md "TopK, BatchTopK, AuxK and the newer schedule", built on ./sae.ts: the selections
 * (TopK per example, BatchTopK over the batch, ties exactly as SAE.md says), BatchTopK's θ, AuxK's dead counters,
 * aux loss and gradient, torch's clip_grad_norm_, and one training step of any kind with all of it. Plain loops and
 * sorts, no tricks: shaders/topk.ts is compared with it.
 */
import type { SaeKind, TrainConfig } from "../../shaders/config";
import { isSelectKind } from "../../shaders/config";
import { initWeights, learningRate } from "../../shaders/schedule";
import {
  PARAM_NAMES,
  adamUpdate,
  backwardDetailed,
  forward,
  hyperAt,
  normalizeDecoderRows,
  removeParallelGrads,
  type Forward,
  type Hyper,
  type Params,
  type State,
  zerosLike,
} from "./sae";

/**
 * Per example: 1 for the k largest entries of h among `eligible` latents (all when absent), ties to the lower
 * latent index; min(k, #eligible) entries per row.
 */
export function topkMask(h: ArrayLike<number>, B: number, n: number, k: number, eligible?: ArrayLike<number>): Uint8Array {
  const kept = new Uint8Array(B * n);
  for (let b = 0; b < B; b++) {
    const idx: number[] = [];
    for (let j = 0; j < n; j++) if (!eligible || eligible[j]) idx.push(j);
    idx.sort((i, j) => h[b * n + j] - h[b * n + i] || i - j);
    for (const j of idx.slice(0, k)) kept[b * n + j] = 1;
  }
  return kept;
}

/**
 * Over the whole batch: 1 for the kTotal largest entries of ReLU(h), ties by example then latent index (that is, by
 * flat index). minKept = the smallest kept value of ReLU(h) (0 when fewer than kTotal entries are positive).
 */
export function batchTopkMask(h: ArrayLike<number>, B: number, n: number, kTotal: number): { kept: Uint8Array; minKept: number } {
  const relu = (i: number) => Math.max(h[i], 0);
  const idx = Array.from({ length: B * n }, (_, i) => i);
  idx.sort((i, j) => relu(j) - relu(i) || i - j);
  const kept = new Uint8Array(B * n);
  const take = idx.slice(0, Math.min(kTotal, B * n));
  for (const i of take) kept[i] = 1;
  return { kept, minKept: take.length ? relu(take[take.length - 1]) : 0 };
}

/** BatchTopK's θ after a step whose smallest kept value was minKept (θ = null before the first step). */
export const thetaUpdate = (theta: number | null, minKept: number, beta: number): number =>
  theta === null ? minKept : beta * theta + (1 - beta) * minKept;

/** The selection a step of `kind` trains with ([B, n] kept mask); undefined for ReLU and JumpReLU. */
export function selectorFor(kind: SaeKind, k: number, n: number, onBatch?: (minKept: number) => void): Hyper["select"] {
  if (kind === "topk") return (h, B) => topkMask(h, B, n, k);
  if (kind === "batchtopk")
    return (h, B) => {
      const { kept, minKept } = batchTopkMask(h, B, n, k * B);
      onBatch?.(minKept);
      return kept;
    };
  return undefined;
}

/** Dead latents: those that have not fired on deadAfter (or more) consecutive training examples. */
export const deadMask = (counters: ArrayLike<number>, deadAfter: number): Uint8Array => Uint8Array.from(counters, (c) => (c >= deadAfter ? 1 : 0));

/** After a step of B examples: a latent that fired (f > 0 on some example) restarts at 0, the others add B. */
export function updateCounters(counters: Float64Array, f: ArrayLike<number>, B: number, n: number): void {
  for (let j = 0; j < n; j++) {
    let fired = false;
    for (let b = 0; b < B && !fired; b++) fired = f[b * n + j] > 0;
    counters[j] = fired ? 0 : counters[j] + B;
  }
}

export interface AuxK {
  /** Σ‖e − ê‖² / Σ‖e − ē‖² (0 when nothing is dead). */
  aux: number;
  /** The kept dead latents per example [B, n]. */
  kept: Uint8Array;
  /** ê [B, d]. */
  eHat: Float64Array;
}

/**
 * AuxK's reconstruction of the residual e = x − x̂ (given, a constant: stop-gradient) from the top min(kAux, #dead)
 * pre-activations of the dead latents, through ReLU, decoded by their W_dec rows (no b_dec).
 */
export function auxK(p: Params, h: ArrayLike<number>, e: ArrayLike<number>, dead: ArrayLike<number>, kAux: number, B: number, n: number, d: number): AuxK {
  const kept = topkMask(h, B, n, kAux, dead);
  const eHat = new Float64Array(B * d);
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      const a = kept[b * n + j] ? Math.max(h[b * n + j], 0) : 0;
      if (a) for (let c = 0; c < d; c++) eHat[b * d + c] += a * p.W_dec[j * d + c];
    }
  let nDead = 0;
  for (const v of Array.from(dead)) nDead += v ? 1 : 0;
  if (nDead === 0) return { aux: 0, kept, eHat };
  const mean = new Float64Array(d);
  for (let b = 0; b < B; b++) for (let c = 0; c < d; c++) mean[c] += e[b * d + c] / B;
  let num = 0, den = 0;
  for (let b = 0; b < B; b++)
    for (let c = 0; c < d; c++) {
      num += (e[b * d + c] - eHat[b * d + c]) ** 2;
      den += (e[b * d + c] - mean[c]) ** 2;
    }
  return { aux: den > 0 ? num / den : 0, kept, eHat };
}

/** Adds coeff·∂aux/∂params to g (e and the denominator are constants; the gradient reaches h through ReLU). */
export function auxKBackward(
  g: Params, p: Params, x: ArrayLike<number>, h: ArrayLike<number>, e: ArrayLike<number>, ak: AuxK, coeff: number, B: number, n: number, d: number,
): void {
  if (ak.aux === 0 && !ak.kept.some((v) => v)) return;
  const mean = new Float64Array(d);
  for (let b = 0; b < B; b++) for (let c = 0; c < d; c++) mean[c] += e[b * d + c] / B;
  let den = 0;
  for (let b = 0; b < B; b++) for (let c = 0; c < d; c++) den += (e[b * d + c] - mean[c]) ** 2;
  if (!(den > 0)) return;
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      const hv = h[b * n + j];
      if (!ak.kept[b * n + j] || !(hv > 0)) continue;
      let gh = 0;
      for (let c = 0; c < d; c++) {
        const gEHat = (coeff * -2 * (e[b * d + c] - ak.eHat[b * d + c])) / den;
        g.W_dec[j * d + c] += hv * gEHat;
        gh += gEHat * p.W_dec[j * d + c];
      }
      g.b_enc[j] += gh;
      for (let i = 0; i < d; i++) {
        g.W_enc[i * n + j] += (x[b * d + i] - p.b_dec[i]) * gh;
        g.b_dec[i] -= p.W_enc[i * n + j] * gh;
      }
    }
}

/** torch.nn.utils.clip_grad_norm_: the L2 norm over every gradient; above maxNorm all scale by maxNorm/(norm + 1e-6). */
export function clipGradNorm(g: Params, maxNorm: number | null): { norm: number; scale: number } {
  let sq = 0;
  for (const name of PARAM_NAMES) for (const v of g[name]) sq += v * v;
  const norm = Math.sqrt(sq);
  const scale = maxNorm === null ? 1 : Math.min(1, maxNorm / (norm + 1e-6));
  if (scale !== 1) for (const name of PARAM_NAMES) for (let i = 0; i < g[name].length; i++) g[name][i] *= scale;
  return { norm, scale };
}

/** A training state with what TopK/BatchTopK/AuxK carry across steps. */
export interface SelectState extends State {
  /** Examples since each latent last fired. */
  counters: Float64Array;
  /** BatchTopK's θ (null before the first step). */
  theta: number | null;
}

/** The seeded initial weights of cfg (SAE.md init) in float64, Adam at zero, no latent dead, θ unset. */
export function initialSelectState(cfg: TrainConfig): SelectState {
  const w = initWeights(cfg);
  const params: Params = {
    W_enc: Float64Array.from(w.W_enc), b_enc: Float64Array.from(w.b_enc), W_dec: Float64Array.from(w.W_dec),
    b_dec: Float64Array.from(w.b_dec), log_threshold: Float64Array.from(w.log_threshold),
  };
  return { params, m: zerosLike(params), v: zerosLike(params), step: 0, counters: new Float64Array(w.b_enc.length), theta: null };
}

export interface SelectStepResult {
  forward: Forward;
  /** Gradients as Adam saw them (parallel component removed, clipped). */
  grads: Params;
  /** dL/df of the objective (without AuxK's term), as ./sae.ts's StepResult. */
  gf: Float64Array;
  /** dL/dh of the objective (dL/df masked by ∂f/∂h), as ./sae.ts's StepResult. */
  gh: Float64Array;
  hyper: Hyper;
  aux_loss: number;
  n_dead_train: number;
  /** loss = mse + aux_coeff·aux (TopK/BatchTopK), or ./sae.ts's loss. */
  loss: number;
  gradNorm: number;
  lr: number;
}

/**
 * One step of any kind in saev's order, with SAE.md's additions: the selection, AuxK on the latents dead before
 * this step (then the counters advance), BatchTopK's θ update, clipping after the parallel component is removed,
 * Adam with the scheduled lr. Mutates state.
 */
export function trainStepSelect(state: SelectState, cfg: TrainConfig, x: ArrayLike<number>, B: number): SelectStepResult {
  const t = state.step;
  const base = hyperAt(cfg, t);
  const { n, d } = base;
  const kind = cfg.sae.kind;
  let minKept = 0;
  const hp: Hyper = { ...base, select: selectorFor(kind, cfg.sae.k ?? 0, n, (m) => (minKept = m)) };
  if (cfg.sae.normalize_w_dec) normalizeDecoderRows(state.params.W_dec, n, d);
  const fw = forward(state.params, x, B, hp);
  const { grads: g, gf, gh } = backwardDetailed(state.params, x, B, hp, fw);
  let aux = 0, nDead = 0;
  if (isSelectKind(kind)) {
    const dead = deadMask(state.counters, cfg.sae.dead_after);
    nDead = dead.reduce((a, v) => a + v, 0);
    const P = fw.e.length;
    const e = fw.e[P - 1].map((v) => -v); // x − x̂ of the full reconstruction
    const ak = auxK(state.params, fw.h, e, dead, cfg.sae.k_aux, B, n, d);
    aux = ak.aux;
    auxKBackward(g, state.params, x, fw.h, e, ak, cfg.sae.aux_coeff, B, n, d);
    updateCounters(state.counters, fw.f, B, n);
    if (kind === "batchtopk") state.theta = thetaUpdate(state.theta, minKept, cfg.sae.threshold_beta);
  }
  if (cfg.sae.remove_parallel_grads) removeParallelGrads(g.W_dec, state.params.W_dec, n, d);
  const { norm } = clipGradNorm(g, cfg.max_grad_norm);
  const lr = learningRate(cfg, t);
  adamUpdate(state, cfg, g);
  const loss = isSelectKind(kind) ? fw.mse + cfg.sae.aux_coeff * aux : fw.loss;
  return { forward: fw, grads: g, gf, gh, hyper: hp, aux_loss: aux, n_dead_train: nDead, loss, gradNorm: norm, lr };
}

/** BatchTopK at evaluation: f = h·1{h > θ}, a JumpReLU whose one threshold θ serves every latent (SAELens's layout). */
export function batchTopkEvalParams(p: Params, theta: number): Params {
  return { ...p, log_threshold: new Float64Array(p.b_enc.length).fill(Math.log(theta)) };
}
