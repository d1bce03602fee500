/**
 * The host-side pieces of SAE.md that the engine and the float64 reference share exactly: weight init, the LR and
 * sparsity warmups, Adam's bias corrections, and the Matryoshka prefix draw. All float64, all deterministic.
 */
import type { TrainConfig } from "./config";
import { STREAMS, uniformAt } from "./prng";

export const ADAM = { beta1: 0.9, beta2: 0.999, eps: 1e-8 } as const;

type ScheduleConfig = Pick<TrainConfig, "lr" | "n_lr_warmup"> &
  Partial<Pick<TrainConfig, "lr_schedule" | "lr_final" | "n_patches" | "sae_batch_size">>;

/**
 * lr at step t (0-based). "warmup" (the default, also for configs stored before lr_schedule existed):
 * lr·min(t, n)/n; n = 0 means no warmup (differs from saev, which uses 0 at step 0). "warmup_cosine" (SAE.md):
 * the same warmup while t < n, then lr_final + (lr − lr_final)·(1 + cos(π·(t − n)/(T − n)))/2, T = the run's steps.
 */
export function learningRate(cfg: ScheduleConfig, t: number): number {
  const n = cfg.n_lr_warmup;
  if (cfg.lr_schedule === "warmup_cosine") {
    if (t < n) return (cfg.lr * t) / n;
    const T = Math.ceil((cfg.n_patches ?? 0) / (cfg.sae_batch_size ?? 1));
    if (T <= n) return cfg.lr; // no step of the run reaches the decay
    const lrFinal = cfg.lr_final ?? 0;
    return lrFinal + ((cfg.lr - lrFinal) * (1 + Math.cos((Math.PI * (t - n)) / (T - n)))) / 2;
  }
  return n > 0 ? (cfg.lr * Math.min(t, n)) / n : cfg.lr;
}

/** Sparsity coefficient at step t = coeff·min(t, n)/n (differs: saev only logs it; the loss uses it here). */
export function sparsityCoeff(cfg: Pick<TrainConfig, "objective" | "n_sparsity_warmup">, t: number): number {
  const c = cfg.objective.sparsity_coeff;
  return cfg.n_sparsity_warmup > 0 ? (c * Math.min(t, cfg.n_sparsity_warmup)) / cfg.n_sparsity_warmup : c;
}

/** torch Adam at step t (0-based; torch's step count is t + 1): step size lr/(1 − β1^(t+1)) and √(1 − β2^(t+1)). */
export function adamScalars(lr: number, t: number): { stepSize: number; sqrtBias2: number } {
  const n = t + 1;
  return { stepSize: lr / (1 - ADAM.beta1 ** n), sqrtBias2: Math.sqrt(1 - ADAM.beta2 ** n) };
}

export interface InitialWeights {
  /** [d_vit, d_sae] row-major. */
  W_enc: Float32Array;
  b_enc: Float32Array;
  /** [d_sae, d_vit] row-major; row j is feature j. */
  W_dec: Float32Array;
  b_dec: Float32Array;
  /** log θ per feature (JumpReLU); log(init_threshold) also for ReLU SAEs, where it is unused. */
  log_threshold: Float32Array;
}

/** Kaiming-uniform as torch: W_enc ~ U(±√(6/d_sae)), W_dec ~ U(±√(6/d_vit)); biases 0; seeded by sae.seed. */
export function initWeights(cfg: TrainConfig): InitialWeights {
  const d = cfg.sae.d_vit;
  const n = d * cfg.sae.exp_factor;
  const seed = cfg.sae.seed;
  const be = Math.sqrt(6 / n);
  const bd = Math.sqrt(6 / d);
  const W_enc = new Float32Array(d * n);
  for (let i = 0; i < W_enc.length; i++) W_enc[i] = (2 * uniformAt(seed, STREAMS.W_ENC, i) - 1) * be;
  const W_dec = new Float32Array(n * d);
  for (let i = 0; i < W_dec.length; i++) W_dec[i] = (2 * uniformAt(seed, STREAMS.W_DEC, i) - 1) * bd;
  return {
    W_enc,
    b_enc: new Float32Array(n),
    W_dec,
    b_dec: new Float32Array(d),
    log_threshold: new Float32Array(n).fill(Math.log(cfg.sae.init_threshold)),
  };
}

/**
 * Matryoshka prefix ends for step t: n_prefixes − 1 distinct lengths from {1, …, d_sae − 1} drawn without
 * replacement with probability ∝ CDF(l) − CDF(l − 1), CDF(l) = 1 − l^(−1/2) (length 1 has weight 0), then d_sae
 * appended and sorted. Seeded by (sae.seed, step) so a resumed run draws the same. Vanilla: [d_sae].
 * Returns the block boundaries [0, p_1, …, p_P = d_sae].
 */
export function prefixBounds(cfg: TrainConfig, t: number): number[] {
  const n = cfg.sae.d_vit * cfg.sae.exp_factor;
  if (cfg.objective.kind !== "matryoshka") return [0, n];
  return drawPrefixBounds(n, cfg.objective.n_prefixes, cfg.sae.seed, t);
}

/** prefixBounds' draw for d_sae n and nPrefixes prefixes from (seed, t) (the autotuner times its candidates on these). */
export function drawPrefixBounds(n: number, nPrefixes: number, seed: number, t: number): number[] {
  const cdf = (l: number) => 1 - Math.sqrt(1 / l);
  const weights = new Float64Array(n); // weights[l] for l in 1..n−1
  for (let l = 2; l < n; l++) weights[l] = cdf(l) - cdf(l - 1);
  const draws = Math.min(nPrefixes - 1, n - 2);
  const chosen: number[] = [];
  let total = weights.reduce((a, b) => a + b, 0);
  for (let k = 0; k < draws; k++) {
    const u = uniformAt(seed, STREAMS.MATRYOSHKA, t * 1_048_576 + k) * total;
    let acc = 0;
    let pick = -1;
    for (let l = 2; l < n; l++) {
      if (weights[l] === 0) continue;
      pick = l; // the last positive weight catches rounding at the top end
      acc += weights[l];
      if (u < acc) break;
    }
    chosen.push(pick);
    total -= weights[pick];
    weights[pick] = 0;
  }
  chosen.sort((a, b) => a - b);
  return [0, ...chosen, n];
}
