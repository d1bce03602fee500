/**
 * How many SAEs of one shape fit on an adapter. The Worker chunks groups with it (from the limits a runner
 * reports with its claim) and the engine checks it before allocating, so both agree.
 *
 * The engine (shaders/engine.ts) stacks the K SAEs of a chunk into one buffer per tensor, so every stacked tensor
 * must fit one storage binding and one buffer; the total must also fit the device memory budget, which WebGPU
 * does not expose, so we take a conservative fraction of what the runner reports (or a default).
 * Keep these formulas in step with the buffers `SaeEngine` allocates.
 */
import type { AdapterLimits } from "./device";

export const ROWS_PER_CHUNK = 256; // rows per partial sum of the column reductions (kernels.ts CHUNK)

export interface SaeShape {
  d_vit: number;
  d_sae: number;
  batch_size: number;
  /** Most Matryoshka prefixes of any SAE in the group (1, the default, when all are Vanilla). */
  n_prefixes?: number;
}

const chunks = (s: SaeShape) => Math.ceil(s.batch_size / ROWS_PER_CHUNK);
const prefixes = (s: SaeShape) => Math.max(1, s.n_prefixes ?? 1);

/** Elements of each per-SAE tensor the engine stacks K times (one buffer per name). */
export function perSaeTensors(s: SaeShape): Record<string, number> {
  const { d_vit: d, d_sae: n, batch_size: B } = s;
  const params = { W_enc: d * n, b_enc: n, W_dec: n * d, b_dec: d, log_threshold: n };
  const out: Record<string, number> = {};
  // parameters, their gradients and Adam's two moments
  for (const [name, size] of Object.entries(params)) for (const kind of ["", "grad.", "m.", "v."]) out[kind + name] = size;
  out.theta = n; // exp(log θ), or 0 for ReLU
  out.H = B * n; // pre-activations
  out.G = B * n; // dL/df
  out.R = prefixes(s) * B * d; // per-prefix residuals, then their suffix sums
  out.latentPart = 4 * chunks(s) * n;
  out.residPart = 2 * chunks(s) * d;
  out.colStats = 2 * n + d;
  out.evalCount = n;
  out.evalSum = 2 * n;
  out.evalResid = 2 * d; // (+ 4·d shared)
  return out;
}

/** Bytes of the largest single per-SAE tensor (the stacked K copies must fit one binding). */
export function largestTensorBytes(s: SaeShape): number {
  return 4 * Math.max(...Object.values(perSaeTensors(s)));
}

/** Total bytes one SAE needs. */
export function bytesPerSae(s: SaeShape): number {
  return 4 * Object.values(perSaeTensors(s)).reduce((a, b) => a + b, 0);
}

/** Bytes shared by the whole group: the batch (the working copy and two upload buffers) and the eval x stats. */
export function sharedBytes(s: SaeShape): number {
  return 4 * (3 * s.batch_size * s.d_vit + 5 * s.d_vit);
}

/** Default device-memory budget when the runner reports none: 2 GiB, safe on any discrete GPU. */
export const DEFAULT_MEMORY_BUDGET = 2 * 2 ** 30;

export function maxSaesThatFit(
  limits: Pick<AdapterLimits, "maxStorageBufferBindingSize" | "maxBufferSize">,
  s: SaeShape,
  memoryBudget = DEFAULT_MEMORY_BUDGET,
): number {
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  if (4 * s.batch_size * s.d_vit > binding) return 0;
  const byBinding = Math.floor(binding / largestTensorBytes(s));
  const byMemory = Math.floor((memoryBudget - sharedBytes(s)) / bytesPerSae(s));
  return Math.max(0, Math.min(byBinding, byMemory));
}
