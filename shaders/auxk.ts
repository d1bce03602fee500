/**
 * AuxK (Gao et al. 2024; ../shared/SAE.md "TopK, BatchTopK, AuxK and the newer schedule") on the GPU: the
 * reconstruction of the residual e = x − x̂ (a constant: stop-gradient) from the top min(k_aux, #dead)
 * pre-activations of the dead latents through ReLU, decoded by their W_dec rows without b_dec; the loss
 * aux = Σ‖e − ê‖² / Σ‖e − ē‖² over the whole batch (0 when nothing is dead); and aux_coeff·∂aux/∂params added to
 * the step's gradients. One explicit kernel per formula (llm.c style). The float64 reference is
 * test/reference/auxk.ts (per kernel) and test/reference/topk.ts (auxK, auxKBackward: the whole term).
 *
 * Already in shaders/topk.ts and reused, not repeated here: the dead set's bookkeeping, DEAD_COUNTERS (counters
 * [K, n] of examples since each latent last fired, updated from the step's per-latent count of f > 0; n_dead_train
 * per SAE = #{counter ≥ dead_after} before the update, SAE.md's "has not fired on dead_after consecutive examples"),
 * and the masked per-example select, rowSelectKernel({ kWord: 2, deadOnly: true, inPlace: false }) = AUX_SELECT.
 *
 * Shapes and indices are the engine's (shaders/kernels.ts): the kernels take kernels.ts's Dims uniform (the
 * engine's `dims#slab/c`: dims.B = rows of this chunk, which is also the row stride of H, G, R and of the buffers
 * here; dims.row0, part0, chunk, S, Pmax, sae0, accumulate) and the group's `meta` (for nPrefixes); workgroup_id.z
 * is the SAE within the slab. Layouts (f32 unless said; K = SAEs of the slab, C = rows of the chunk, S = partials
 * of the whole batch, P = the SAE's prefixes, its full reconstruction being prefix P − 1):
 *   auxMeta [Kall, AUX_META_WORDS] (group-wide, indexed sae0 + sae like meta): [on (u32: TopK/BatchTopK with
 *     aux_coeff > 0 and k_aux > 0), aux_coeff, 0, 0] (auxMetaWords builds it). SAEs with on = 0 are left alone.
 *   R [K, Pmax, C, d]: the engine's residuals; R[P − 1] = x̂ − x both before and after RESID_COLS (the suffix sum of
 *     the last prefix is itself), so e = −R[P − 1].
 *   auxAct [K, C, n]: AUX_SELECT's output, ReLU(h) on each row's kept dead latents, 0 elsewhere.
 *   auxR [K, C, d]: e − ê of the chunk.
 *   auxDenPart [K, S, d, 3]: per partial and column (rows, mean of e, Σ (e − mean)²), merged with Chan's formula,
 *     so the denominator does not cancel when e has a large mean.
 *   auxNumPart [K, S, d]: per partial and column Σ (e − ê)².
 *   auxScal [K, AUX_SCALARS]: [den = Σ‖e − ē‖², gscale = −2·aux_coeff/den (0 when den ≤ 0), aux, num = Σ‖e − ê‖²].
 *   auxBEnc [K, n, 2]: Σ over the batch of dL_aux/dh per latent (sum, compensation), accumulated over the chunks.
 *   G [K, C, n]: the engine's dL/df; free once the chunk's engine backward has run, then it holds dL_aux/dh.
 *
 * Integration (what the engine's step does for a slab holding AuxK SAEs; shaders/engine.ts follows it):
 *  New buffers: per SAE persistent `counters` [n] u32 (zero at init, saved in resume checkpoints) and per slab
 *  `nDead` [K] u32 (cleared by the step before DEAD_COUNTERS); per SAE of the working set auxAct [C, n], auxCut
 *  [C, 2] u32, auxR [C, d], auxDenPart [S, d, 3], auxNumPart [S, d], auxBEnc [n, 2], auxScal [4] (fit.ts's
 *  workingTensors must count them: auxAct is as large as H); `auxMeta` [Kall, 4] written once. Order in the step:
 *   1. The denominator needs the whole batch's e before any chunk's aux backward. With one row chunk it comes from
 *      that chunk's forward; with several, a forward-only sweep first (after BatchTopK's select sweeps): per chunk
 *      encode → the main selection (TopK's row select; BatchTopK's ties/apply/advance, then BATCH_RESTART once
 *      before the training sweep) → decode → AUX_DEN_COLS. Either way, then AUX_DEN_FINISH (dispatch (1, 1, K)).
 *      (The alternative without the extra sweep: keep the aux W_enc/W_dec gradients in buffers of their own and
 *      scale them by 1/den at the end: as much memory as two more gradient tensors per SAE.)
 *   2. Training sweep, per chunk c:
 *      encode (BatchTopK with one chunk: the H its select sweeps left) → AUX_SELECT (topkDims, topkMeta, H,
 *        counters, auxAct, auxCut; dispatch (rows, K, 1)): it must read the raw h, so it runs before TopK's
 *        in-place row select and BatchTopK's apply
 *      → the main selection → decode → RESID_COLS (→ AUX_DEN_COLS here when there is one chunk, then AUX_DEN_FINISH)
 *      → AUX_DECODE (writes auxR) → AUX_NUM_COLS
 *      → the engine's backward (GRAD_F, LATENT_COLS, GRAD_W_ENC, GRAD_W_DEC)
 *      → AUX_GRAD_H (G ← dL_aux/dh) → AUX_GRAD_W_DEC (adds into grad.W_dec) → AUX_GRAD_W_ENC (adds into grad.W_enc)
 *        → AUX_B_ENC_COLS (auxBEnc; written on chunk 0, added after, by dims.accumulate).
 *      The adds rely on the engine's gradient kernels having written the chunk first (they do: same chunk, earlier).
 *   3. Epilogue: LATENT_FINISH → AUX_B_ENC_ADD (grad.b_enc += auxBEnc) → GRAD_B_DEC (its −W_enc·gb_enc then carries
 *      the aux term into b_dec, as the reference's b_dec gradient) → REMOVE_PARALLEL (the aux W_dec gradient is
 *      projected too, as in the reference) → max_grad_norm clipping (over the gradients with the aux terms) → Adam;
 *      and DEAD_COUNTERS (topk.ts, with the slab's topkDims {n, K, B}: fired = colStats' first K·n words, the count
 *      of f > 0 per latent) after the last chunk's AUX_SELECT → AUX_LOSS (reads nDead).
 *  Metrics: aux_loss = auxScal[sae·4 + 2], n_dead_train = nDead[sae] (copy both to the staging buffer on log steps);
 *  loss = mse + aux_coeff·aux_loss. Resume checkpoints must carry `counters` (test/reference/topk.ts SelectState).
 *  Cost: AUX_DECODE and the three gradient matmuls are dense over n (as many flops as decode each); auxAct has at
 *  most k_aux non-zeros per row, so a sparse (gathered) form could make them nearly free, a later optimization.
 */
import type { TrainConfig } from "./config";
import { KERNEL_HEADER, type MatmulChoice, type MatmulSpec } from "./kernels";
import { choiceFor, matmul } from "./matmul-template";
import { DEAD_COUNTERS, rowSelectKernel } from "./topk";

export { DEAD_COUNTERS };
export const AUX_META_WORDS = 4;
export const AUX_SCALARS = 4;
export const AUX_DEN_STATS = 3;

/** The per-latent select over the dead latents only (k = min(k_aux, #dead) per row), into auxAct. */
export const AUX_SELECT = rowSelectKernel({ kWord: 2, deadOnly: true, inPlace: false });

/** auxMeta of a group (see the layout above). */
export function auxMetaWords(cfgs: TrainConfig[]): Uint32Array<ArrayBuffer> {
  const words = new Uint32Array(cfgs.length * AUX_META_WORDS);
  const f = new Float32Array(words.buffer);
  cfgs.forEach((c, s) => {
    const select = c.sae.kind === "topk" || c.sae.kind === "batchtopk";
    const on = select && c.sae.aux_coeff > 0 && c.sae.k_aux > 0;
    words[s * AUX_META_WORDS] = on ? 1 : 0;
    f[s * AUX_META_WORDS + 1] = on ? c.sae.aux_coeff : 0;
  });
  return words;
}

const META = `@group(0) @binding(1) var<storage, read> saeMeta: array<u32>;
@group(0) @binding(2) var<storage, read> auxMeta: array<u32>;
fn auxOn(sae: u32) -> bool { return auxMeta[(dims.sae0 + sae) * ${AUX_META_WORDS}u] != 0u; }
fn auxCoeff(sae: u32) -> f32 { return bitcast<f32>(auxMeta[(dims.sae0 + sae) * ${AUX_META_WORDS}u + 1u]); }
// e = x − x̂ of the full reconstruction (the last prefix) at row b, column c of this chunk
fn residIndex(sae: u32, b: u32, c: u32) -> u32 { return ((sae * dims.Pmax + nPrefixes(sae) - 1u) * dims.B + b) * dims.d + c; }`;

const rw = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read_write> ${name}: array<f32>;`;
const ro = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read> ${name}: array<f32>;`;
const gscale = `fn gscale(sae: u32) -> f32 { return auxScal[sae * ${AUX_SCALARS}u + 1u]; }`;

/**
 * Per column and partial of this chunk (dispatch (⌈d/64⌉, partials of the chunk, K)): the rows, mean and
 * Σ (e − mean)² of e = −R[P − 1], two passes over the partial's rows. Bindings: dims, meta, auxMeta, R, auxDenPart.
 */
export const AUX_DEN_COLS = /* wgsl */ `${KERNEL_HEADER}
${META}
${ro(3, "R")}
${rw(4, "auxDenPart")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x; let s = gid.y; let sae = gid.z;
  if (c >= dims.d || !auxOn(sae)) { return; }
  let lo = s * dims.chunk;
  let hi = min(dims.B, lo + dims.chunk);
  var sum = vec2f(0.0);
  for (var b = lo; b < hi; b++) { sum = kadd(sum, -R[residIndex(sae, b, c)]); }
  let rows = f32(hi - lo);
  let mean = (sum.x + sum.y) / rows;
  var m2 = vec2f(0.0);
  for (var b = lo; b < hi; b++) { let dv = -R[residIndex(sae, b, c)] - mean; m2 = kadd(m2, dv * dv); }
  let o = ((sae * dims.S + dims.part0 + s) * dims.d + c) * ${AUX_DEN_STATS}u;
  auxDenPart[o] = rows;
  auxDenPart[o + 1u] = mean;
  auxDenPart[o + 2u] = m2.x + m2.y;
}`;

/**
 * Per SAE (dispatch (1, 1, K), after every chunk's AUX_DEN_COLS): each column's partials merged by Chan's formula
 * (n = nₐ + n_b, δ = mean_b − meanₐ, M2 = M2ₐ + M2_b + δ²·nₐ·n_b/n), den = Σ over columns; gscale = −2·aux_coeff/den
 * (0 when den ≤ 0). Bindings: dims, meta, auxMeta, auxDenPart, auxScal.
 */
export const AUX_DEN_FINISH = /* wgsl */ `${KERNEL_HEADER}
${META}
${ro(3, "auxDenPart")}
${rw(4, "auxScal")}
var<workgroup> red: array<vec2f, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let sae = wg.z;
  var t = vec2f(0.0);
  for (var c = tid; c < dims.d; c += 256u) {
    var n = 0.0; var mean = 0.0; var m2 = vec2f(0.0);
    for (var s = 0u; s < dims.S; s++) {
      let o = ((sae * dims.S + s) * dims.d + c) * ${AUX_DEN_STATS}u;
      let nb = auxDenPart[o];
      if (nb == 0.0) { continue; }
      let delta = auxDenPart[o + 1u] - mean;
      let tot = n + nb;
      m2 = kadd(kadd(m2, auxDenPart[o + 2u]), delta * delta * (n * nb / tot));
      mean += delta * (nb / tot);
      n = tot;
    }
    t = kadd(kadd(t, m2.x), m2.y);
  }
  red[tid] = t;
  workgroupBarrier();
  if (tid == 0u) {
    var s = vec2f(0.0);
    for (var i = 0u; i < 256u; i++) { s = kadd(kadd(s, red[i].x), red[i].y); }
    let den = s.x + s.y;
    if (auxOn(sae)) {
      auxScal[sae * ${AUX_SCALARS}u] = den;
      auxScal[sae * ${AUX_SCALARS}u + 1u] = select(0.0, -2.0 * auxCoeff(sae) / den, den > 0.0);
    }
  }
}`;

/** auxR = e − ê, ê = auxAct · W_dec (no b_dec), e = −R[P − 1]. Bindings: dims, meta, auxMeta, auxAct, W_dec, R, auxR. */
export const AUX_DECODE: MatmulSpec = {
  bindings: [META, ro(3, "auxAct"), ro(4, "W_dec"), ro(5, "R"), rw(6, "auxR")].join("\n"),
  M: "dims.B", N: "dims.d", KD: "dims.n",
  loadA: "auxAct[(sae * dims.B + gm) * dims.n + gk]", aKFast: true,
  loadB: "W_dec[(sae * dims.n + gk) * dims.d + gn]", bNFast: true,
  mode: "plain",
  epilogue: "if (auxOn(sae)) { auxR[(sae * dims.B + m) * dims.d + nn] = -R[residIndex(sae, m, nn)] - v; }",
};

/**
 * Per column and partial of this chunk (dispatch (⌈d/64⌉, partials of the chunk, K)): Σ (e − ê)², the numerator.
 * Bindings: dims, meta, auxMeta, auxR, auxNumPart.
 */
export const AUX_NUM_COLS = /* wgsl */ `${KERNEL_HEADER}
${META}
${ro(3, "auxR")}
${rw(4, "auxNumPart")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x; let s = gid.y; let sae = gid.z;
  if (c >= dims.d || !auxOn(sae)) { return; }
  var sq = vec2f(0.0);
  for (var b = s * dims.chunk; b < min(dims.B, (s + 1u) * dims.chunk); b++) {
    let r = auxR[(sae * dims.B + b) * dims.d + c];
    sq = kadd(sq, r * r);
  }
  auxNumPart[(sae * dims.S + dims.part0 + s) * dims.d + c] = sq.x + sq.y;
}`;

/**
 * G ← dL_aux/dh = gscale·(e − ê)·W_dec[j]ᵀ on the kept dead entries with h > 0 (auxAct > 0: ReLU's derivative), 0
 * elsewhere. Bindings: dims, meta, auxMeta, auxScal, auxR, W_dec, auxAct, G.
 */
export const AUX_GRAD_H: MatmulSpec = {
  bindings: [META, gscaleBinding(3), ro(4, "auxR"), ro(5, "W_dec"), ro(6, "auxAct"), rw(7, "G")].join("\n"),
  M: "dims.B", N: "dims.n", KD: "dims.d",
  loadA: "auxR[(sae * dims.B + gm) * dims.d + gk]", aKFast: true,
  loadB: "W_dec[(sae * dims.n + gn) * dims.d + gk]", bNFast: false,
  mode: "plain",
  epilogue: /* wgsl */ `if (auxOn(sae)) {
          let i = (sae * dims.B + m) * dims.n + nn;
          G[i] = select(0.0, gscale(sae) * v, auxAct[i] > 0.0);
        }`,
};

/** grad.W_dec[j] += gscale·Σ_b auxAct[b, j]·(e − ê)_b over this chunk. Bindings: dims, meta, auxMeta, auxScal, auxAct, auxR, gW_dec. */
export const AUX_GRAD_W_DEC: MatmulSpec = {
  bindings: [META, gscaleBinding(3), ro(4, "auxAct"), ro(5, "auxR"), rw(6, "gW_dec")].join("\n"),
  M: "dims.n", N: "dims.d", KD: "dims.B",
  loadA: "auxAct[(sae * dims.B + gk) * dims.n + gm]", aKFast: false,
  loadB: "auxR[(sae * dims.B + gk) * dims.d + gn]", bNFast: true,
  mode: "plain",
  epilogue: "if (auxOn(sae)) { let i = (sae * dims.n + m) * dims.d + nn; gW_dec[i] = gW_dec[i] + gscale(sae) * v; }",
};

/** grad.W_enc += (x − b_dec)ᵀ·G (G = dL_aux/dh), this chunk's rows. Bindings: dims, meta, auxMeta, x, b_dec, G, gW_enc. */
export const AUX_GRAD_W_ENC: MatmulSpec = {
  bindings: [META, ro(3, "x"), ro(4, "b_dec"), ro(5, "G"), rw(6, "gW_enc")].join("\n"),
  M: "dims.d", N: "dims.n", KD: "dims.B",
  loadA: "x[(dims.row0 + gk) * dims.d + gm] - b_dec[sae * dims.d + gm]", aKFast: false,
  loadB: "G[(sae * dims.B + gk) * dims.n + gn]", bNFast: true,
  mode: "plain",
  epilogue: "if (auxOn(sae)) { let i = (sae * dims.d + m) * dims.n + nn; gW_enc[i] = gW_enc[i] + v; }",
};

function gscaleBinding(b: number): string {
  return `${ro(b, "auxScal")}\n${gscale}`;
}

/**
 * Per latent (dispatch (⌈n/64⌉, 1, K)): auxBEnc ← (dims.accumulate ? auxBEnc : 0) + Σ_b G[b, j] over this chunk,
 * compensated. Bindings: dims, meta, auxMeta, G, auxBEnc.
 */
export const AUX_B_ENC_COLS = /* wgsl */ `${KERNEL_HEADER}
${META}
${ro(3, "G")}
${rw(4, "auxBEnc")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x; let sae = gid.z;
  if (j >= dims.n || !auxOn(sae)) { return; }
  var s = vec2f(0.0);
  for (var b = 0u; b < dims.B; b++) { s = kadd(s, G[(sae * dims.B + b) * dims.n + j]); }
  let o = 2u * (sae * dims.n + j);
  var acc = vec2f(0.0);
  if (dims.accumulate != 0u) { acc = vec2f(auxBEnc[o], auxBEnc[o + 1u]); }
  acc = kadd(kadd(acc, s.x), s.y);
  auxBEnc[o] = acc.x;
  auxBEnc[o + 1u] = acc.y;
}`;

/** grad.b_enc += auxBEnc (dispatch (⌈n/64⌉, 1, K), after LATENT_FINISH). Bindings: dims, meta, auxMeta, auxBEnc, gb_enc. */
export const AUX_B_ENC_ADD = /* wgsl */ `${KERNEL_HEADER}
${META}
${ro(3, "auxBEnc")}
${rw(4, "gb_enc")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x; let sae = gid.z;
  if (j >= dims.n || !auxOn(sae)) { return; }
  let o = 2u * (sae * dims.n + j);
  gb_enc[sae * dims.n + j] = gb_enc[sae * dims.n + j] + (auxBEnc[o] + auxBEnc[o + 1u]);
}`;

/**
 * Per SAE (dispatch (1, 1, K), after the last chunk and DEAD_COUNTERS): num = Σ auxNumPart; aux = num/den, 0 when
 * nothing was dead (nDead = 0) or den ≤ 0. Bindings: dims, meta, auxMeta, auxNumPart, nDead (u32), auxScal.
 */
export const AUX_LOSS = /* wgsl */ `${KERNEL_HEADER}
${META}
${ro(3, "auxNumPart")}
@group(0) @binding(4) var<storage, read> nDead: array<u32>;
${rw(5, "auxScal")}
var<workgroup> red: array<vec2f, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let sae = wg.z;
  let count = dims.S * dims.d;
  var t = vec2f(0.0);
  for (var i = tid; i < count; i += 256u) { t = kadd(t, auxNumPart[sae * count + i]); }
  red[tid] = t;
  workgroupBarrier();
  if (tid == 0u && auxOn(sae)) {
    var s = vec2f(0.0);
    for (var i = 0u; i < 256u; i++) { s = kadd(kadd(s, red[i].x), red[i].y); }
    let num = s.x + s.y;
    let den = auxScal[sae * ${AUX_SCALARS}u];
    auxScal[sae * ${AUX_SCALARS}u + 2u] = select(0.0, num / den, nDead[sae] > 0u && den > 0.0);
    auxScal[sae * ${AUX_SCALARS}u + 3u] = num;
  }
}`;

/** The four matmul-shaped AuxK kernels as WGSL, with one choice (true: direct, false: tiled, or a MatmulChoice). */
export function auxMatmulKernels(choice: boolean | MatmulChoice): Record<"AUX_DECODE" | "AUX_GRAD_H" | "AUX_GRAD_W_DEC" | "AUX_GRAD_W_ENC", string> {
  const c = typeof choice === "boolean" ? choiceFor(choice) : choice;
  return {
    AUX_DECODE: matmul(AUX_DECODE, c, KERNEL_HEADER),
    AUX_GRAD_H: matmul(AUX_GRAD_H, c, KERNEL_HEADER),
    AUX_GRAD_W_DEC: matmul(AUX_GRAD_W_DEC, c, KERNEL_HEADER),
    AUX_GRAD_W_ENC: matmul(AUX_GRAD_W_ENC, c, KERNEL_HEADER),
  };
}
