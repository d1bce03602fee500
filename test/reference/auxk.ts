/**
 * The float64 reference of shaders/auxk.ts, one function per kernel (one SAE, row-major, plain loops):
 * act = ReLU(h) on each row's top min(k_aux, #dead) dead latents; r = e − ê with ê = act·W_dec (no b_dec);
 * den = Σ‖e − ē‖², num = Σ‖r‖², aux = num/den (0 when nothing is dead or den = 0); with gscale = −2·coeff/den:
 * dL/dh = gscale·r·W_decᵀ where act > 0, dL/dW_dec = gscale·actᵀ·r, dL/dW_enc = (x − b_dec)ᵀ·dL/dh,
 * dL/db_enc = Σ_b dL/dh, dL/db_dec = −W_enc·dL/db_enc. auxkTerms composes them; ./auxk.test.ts checks it against
 * ./topk.ts's auxK/auxKBackward and against finite differences.
 */
import type { Params } from "./sae";
import { topkMask } from "./topk";

/** ReLU(h) on the kept dead latents of each row, 0 elsewhere ([B, n]). */
export function auxAct(h: ArrayLike<number>, dead: ArrayLike<number>, kAux: number, B: number, n: number): Float64Array {
  const kept = topkMask(h, B, n, kAux, dead);
  return Float64Array.from({ length: B * n }, (_, i) => (kept[i] ? Math.max(h[i], 0) : 0));
}

/** r = e − act·W_dec ([B, d]). */
export function auxResid(act: ArrayLike<number>, W_dec: ArrayLike<number>, e: ArrayLike<number>, B: number, n: number, d: number): Float64Array {
  const r = Float64Array.from(e);
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      const a = act[b * n + j];
      if (a !== 0) for (let c = 0; c < d; c++) r[b * d + c] -= a * W_dec[j * d + c];
    }
  return r;
}

/** Σ_b ‖e_b − ē‖² (two passes). */
export function auxDen(e: ArrayLike<number>, B: number, d: number): number {
  let den = 0;
  for (let c = 0; c < d; c++) {
    let mean = 0;
    for (let b = 0; b < B; b++) mean += e[b * d + c] / B;
    for (let b = 0; b < B; b++) den += (e[b * d + c] - mean) ** 2;
  }
  return den;
}

export const sumSquares = (r: ArrayLike<number>): number => Array.from(r).reduce((a, v) => a + v * v, 0);
export const auxGScale = (coeff: number, den: number): number => (den > 0 ? (-2 * coeff) / den : 0);

/** dL/dh = gscale·r·W_decᵀ where act > 0, else 0 ([B, n]). */
export function auxGradH(r: ArrayLike<number>, W_dec: ArrayLike<number>, act: ArrayLike<number>, gs: number, B: number, n: number, d: number): Float64Array {
  const g = new Float64Array(B * n);
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      if (!(act[b * n + j] > 0)) continue;
      let s = 0;
      for (let c = 0; c < d; c++) s += r[b * d + c] * W_dec[j * d + c];
      g[b * n + j] = gs * s;
    }
  return g;
}

/** dL/dW_dec = gscale·actᵀ·r ([n, d]). */
export function auxGradWDec(act: ArrayLike<number>, r: ArrayLike<number>, gs: number, B: number, n: number, d: number): Float64Array {
  const g = new Float64Array(n * d);
  for (let b = 0; b < B; b++)
    for (let j = 0; j < n; j++) {
      const a = act[b * n + j];
      if (a !== 0) for (let c = 0; c < d; c++) g[j * d + c] += gs * a * r[b * d + c];
    }
  return g;
}

/** dL/dW_enc = (x − b_dec)ᵀ·gh ([d, n]). */
export function auxGradWEnc(x: ArrayLike<number>, b_dec: ArrayLike<number>, gh: ArrayLike<number>, B: number, n: number, d: number): Float64Array {
  const g = new Float64Array(d * n);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < d; i++) {
      const xi = x[b * d + i] - b_dec[i];
      for (let j = 0; j < n; j++) g[i * n + j] += xi * gh[b * n + j];
    }
  return g;
}

/** dL/db_enc = Σ_b gh ([n]). */
export function auxGradBEnc(gh: ArrayLike<number>, B: number, n: number): Float64Array {
  const g = new Float64Array(n);
  for (let b = 0; b < B; b++) for (let j = 0; j < n; j++) g[j] += gh[b * n + j];
  return g;
}

export interface AuxTerms {
  act: Float64Array;
  r: Float64Array;
  den: number;
  num: number;
  aux: number;
  gscale: number;
  gh: Float64Array;
  /** coeff·∂aux/∂params (log_threshold: zeros). */
  grads: Params;
}

/** Every AuxK quantity of one SAE for residual e = x − x̂ (a constant) and the dead mask, kernel by kernel. */
export function auxkTerms(p: Params, x: ArrayLike<number>, h: ArrayLike<number>, e: ArrayLike<number>, dead: ArrayLike<number>, kAux: number, coeff: number, B: number, n: number, d: number): AuxTerms {
  const act = auxAct(h, dead, kAux, B, n);
  const r = auxResid(act, p.W_dec, e, B, n, d);
  const den = auxDen(e, B, d);
  const num = sumSquares(r);
  const anyDead = Array.from(dead).some((v) => v);
  const aux = anyDead && den > 0 ? num / den : 0;
  const gs = auxGScale(coeff, den);
  const gh = auxGradH(r, p.W_dec, act, gs, B, n, d);
  const b_enc = auxGradBEnc(gh, B, n);
  const b_dec = new Float64Array(d);
  for (let i = 0; i < d; i++) for (let j = 0; j < n; j++) b_dec[i] -= p.W_enc[i * n + j] * b_enc[j];
  const grads: Params = { W_enc: auxGradWEnc(x, p.b_dec, gh, B, n, d), b_enc, W_dec: auxGradWDec(act, r, gs, B, n, d), b_dec, log_threshold: new Float64Array(n) };
  return { act, r, den, num, aux, gscale: gs, gh, grads };
}
