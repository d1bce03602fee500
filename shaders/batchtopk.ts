/**
 * BatchTopK at evaluation (SAE.md): f = h·1{h > θ}, a JumpReLU whose one threshold θ (the EMA of the smallest kept
 * value, kept on the GPU in shaders/topk.ts's batchState) serves every latent. The engine's activation kernels read
 * a per-latent θ buffer (kernels.ts `act`), so evaluation fills it from batchState after THRESHOLDS wrote the other
 * kinds' θ. The training selection itself is shaders/topk.ts's (batchHistKernel … BATCH_ADVANCE).
 */
import { BATCH_STATE_WORDS, TOPK_META_WORDS } from "./topk";

/**
 * theta[sae, j] ← θ of the SAE for every latent j, for the SAEs with kTotal > 0 (BatchTopK); the others keep what
 * THRESHOLDS wrote (dispatch (⌈n/64⌉, 1, K)). Bindings: dims (shaders/topk.ts's Dims: n), topkMeta, batchState, theta.
 */
export const BATCH_THETA = /* wgsl */ `
struct Dims { rows: u32, rowStride: u32, n: u32, K: u32, B: u32, size: u32, slot: u32, nSlots: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> topkMeta: array<u32>;
@group(0) @binding(2) var<storage, read> batchState: array<u32>;
@group(0) @binding(3) var<storage, read_write> theta: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x;
  let sae = gid.z;
  if (j >= dims.n || topkMeta[sae * ${TOPK_META_WORDS}u + 1u] == 0u) { return; }
  theta[sae * dims.n + j] = bitcast<f32>(batchState[sae * ${BATCH_STATE_WORDS}u + 4u]);
}
`;

/** batchState words of one SAE holding θ: [4] its bits, [5] 1 once θ was set (by the first step, or a resume). */
export function thetaWords(theta: number | null): Uint32Array<ArrayBuffer> {
  const words = new Uint32Array(BATCH_STATE_WORDS);
  new Float32Array(words.buffer)[4] = theta ?? 0;
  words[5] = theta === null ? 0 : 1;
  return words;
}

/** θ of one SAE read back from its batchState words (null while unset). */
export function thetaOf(words: Uint32Array): number | null {
  return words[5] ? new Float32Array(words.buffer, words.byteOffset, words.length)[4] : null;
}
