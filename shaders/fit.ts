/**
 * How many SAEs of one shape fit on an adapter. The Worker chunks groups with it (from the limits a runner
 * reports with its claim) and the engine checks it before allocating, so both agree.
 *
 * The engine stacks the K SAEs of a chunk into one buffer per tensor, so every stacked tensor must fit one
 * storage binding and one buffer; the total must also fit the device memory budget, which WebGPU does not
 * expose, so we take a conservative fraction of what the runner reports (or a default).
 */
import type { AdapterLimits } from "./device";

export interface SaeShape {
  d_vit: number;
  d_sae: number;
  batch_size: number;
}

/** Bytes of the largest single per-SAE tensor the engine stacks (W_enc/W_dec, or the batch × d_sae activations). */
export function largestTensorBytes(s: SaeShape): number {
  return 4 * Math.max(s.d_vit * s.d_sae, s.batch_size * s.d_sae);
}

/** Total bytes one SAE needs: parameters ×4 (weights, grads, Adam m and v) plus the per-batch activations. */
export function bytesPerSae(s: SaeShape): number {
  const params = 2 * s.d_vit * s.d_sae + 2 * s.d_sae + s.d_vit; // W_enc, W_dec, b_enc, threshold, b_dec
  const activations = 3 * s.batch_size * s.d_sae + s.batch_size * s.d_vit; // pre-act, act, grad; reconstruction
  return 4 * (4 * params + activations);
}

/** Default device-memory budget when the runner reports none: 2 GiB, safe on any discrete GPU. */
export const DEFAULT_MEMORY_BUDGET = 2 * 2 ** 30;

export function maxSaesThatFit(
  limits: Pick<AdapterLimits, "maxStorageBufferBindingSize" | "maxBufferSize">,
  s: SaeShape,
  memoryBudget = DEFAULT_MEMORY_BUDGET,
): number {
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const byBinding = Math.floor(binding / largestTensorBytes(s));
  const byMemory = Math.floor((memoryBudget - 4 * s.batch_size * s.d_vit) / bytesPerSae(s));
  return Math.max(0, Math.min(byBinding, byMemory));
}
