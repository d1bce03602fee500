/**
 * AuxK (Gao et al. 2024; ../shared/SAE.md "TopK, BatchTopK, AuxK and the newer schedule") on the GPU: the
 * reconstruction of the residual e = x − x̂ (a constant: stop-gradient) from the top min(k_aux, #dead)
 * pre-activations of the dead latents through ReLU, decoded by their W_dec rows without b_dec; the loss
 * aux = Σ‖e − ê‖² / Σ‖e − ē‖² over the whole batch (0 when nothing is dead); and aux_coeff·∂aux/∂params added to
 * the step's gradients. One explicit kernel per formula (llm.c style). Gathered, not dense: each row keeps at most
 * k_aux dead latents, so the decode and every gradient touch only those entries (rows of W_dec, columns of W_enc,
 * entries of b_enc of dead latents), and the kernels organised by latent loop over the dead list only. The float64 reference is
 * test/reference/auxk.ts (per kernel) and test/reference/topk.ts (auxK, auxKBackward: the whole term).
 *
 * Already in shaders/topk.ts and reused, not repeated here: the dead set's bookkeeping, DEAD_COUNTERS (counters
 * [K, n] of examples since each latent last fired, updated from the step's per-latent count of f > 0; n_dead_train
 * per SAE = #{counter ≥ dead_after} before the update, SAE.md's "has not fired on dead_after consecutive examples"),
 * and the masked per-example select, rowSelectKernel({ kWord: 2, deadOnly: true, inPlace: false, perThread }) =
 * AUX_SELECT (auxSelectKernel).
 *
 * Shapes and indices are the engine's (shaders/kernels.ts): the kernels take kernels.ts's Dims uniform (the
 * engine's `dims#slab/c`: dims.B = rows of this chunk, which is also the row stride of H, G, R and of the buffers
 * here; dims.row0, part0, chunk, S, Pmax, sae0, accumulate) and the group's `meta` (for nPrefixes); workgroup_id.z
 * is the SAE within the slab. Layouts (f32 unless said; K = SAEs of the slab, C = rows of the chunk, S = partials
 * of the whole batch, P = the SAE's prefixes, its full reconstruction being prefix P − 1):
 *   auxMeta [Kall, AUX_META_WORDS] (group-wide, indexed sae0 + sae like meta): [on (u32: TopK/BatchTopK with
 *     aux_coeff > 0 and k_aux > 0), aux_coeff, dead_after (u32), kcap (u32: auxListCap, the same for every SAE)]
 *     (auxMetaWords builds it). SAEs with on = 0 are left alone.
 *   R [K, Pmax, C, d]: the engine's residuals; R[P − 1] = x̂ − x both before and after RESID_COLS (the suffix sum of
 *     the last prefix is itself), so e = −R[P − 1].
 *   auxAct [K, C, n]: AUX_SELECT's output, ReLU(h) on each row's kept dead latents, 0 elsewhere.
 *   deadList [K, n + 1] u32: the step's dead set, [#dead, the dead latents ascending] (AUX_DEAD_LIST).
 *   auxArgs [AUX_ARGS_WORDS] u32 (INDIRECT usage): the slab's indirect dispatch sizes (AUX_ARGS).
 *   auxList [K, C, kcap, 2] u32, auxCnt [K, C] u32: each row's selected dead latents (auxAct > 0) in index order,
 *     (latent, value's f32 bits), and how many (AUX_ROWS).
 *   auxR [K, C, d]: e − ê of the chunk.
 *   auxDenPart [K, S, d, 3]: per partial and column (rows, mean of e, Σ (e − mean)²), merged with Chan's formula,
 *     so the denominator does not cancel when e has a large mean.
 *   auxNumPart [K, S, d]: per partial and column Σ (e − ê)².
 *   auxScal [K, AUX_SCALARS]: [den = Σ‖e − ē‖², gscale = −2·aux_coeff/den (0 when den ≤ 0), aux, num = Σ‖e − ê‖²].
 *   auxBEnc [K, n, 2]: Σ over the batch of dL_aux/dh per dead latent (sum, compensation), accumulated over the
 *     chunks; other latents' entries are stale and never read.
 *   G [K, C, n]: the engine's dL/df; free once the chunk's engine backward has run, then it holds dL_aux/dh at the
 *     chunk's selected entries (auxAct > 0); the rest is left as it was and never read by AuxK.
 *
 * Integration (what the engine's step does for a slab holding AuxK SAEs; shaders/engine.ts follows it):
 *  New buffers: per SAE persistent `counters` [n] u32 (zero at init, saved in resume checkpoints) and per slab
 *  `nDead` [K] u32 (cleared by the step before DEAD_COUNTERS); per SAE of the working set auxAct [C, n], auxCut
 *  [C, 2] u32, auxR [C, d], auxDenPart [S, d, 3], auxNumPart [S, d], auxBEnc [n, 2], deadList [n + 1] u32, auxList
 *  [C, kcap, 2] u32, auxCnt [C] u32, auxScal [4] (fit.ts's workingTensors must count them: auxAct is as large as H);
 *  `auxMeta` [Kall, 4] written once; `auxArgs` [8] u32 (indirect). Order in the step:
 *   0. Prologue (the counters change only in the epilogue): AUX_DEAD_LIST (dispatch (1, 1, K)) → AUX_ARGS (1, 1, 1).
 *   1. The denominator needs the whole batch's e before any chunk's aux backward. With one row chunk it comes from
 *      that chunk's forward; with several, a forward-only sweep first (after BatchTopK's select sweeps): per chunk
 *      encode → the main selection (TopK's row select; BatchTopK's ties/apply/advance, then BATCH_RESTART once
 *      before the training sweep) → decode → AUX_DEN_COLS. Either way, then AUX_DEN_FINISH (dispatch (1, 1, K)).
 *      (The alternative without the extra sweep: keep the aux W_enc/W_dec gradients in buffers of their own and
 *      scale them by 1/den at the end: as much memory as two more gradient tensors per SAE.)
 *   2. Training sweep, per chunk c:
 *      encode (BatchTopK with one chunk: the H its select sweeps left) → AUX_SELECT (topkDims, topkMeta, H,
 *        counters, auxAct, auxCut; indirect at AUX_ARGS_SELECT: no workgroups when nothing in the slab is dead, and
 *        then nothing below reads auxAct): it must read the raw h, so it runs before TopK's in-place row select and
 *        BatchTopK's apply
 *      → the main selection → decode → RESID_COLS (→ AUX_DEN_COLS here when there is one chunk, then AUX_DEN_FINISH)
 *      → AUX_ROWS (auxList, auxCnt) → AUX_DECODE (writes auxR) → AUX_NUM_COLS
 *      → the engine's backward (GRAD_F, LATENT_COLS, GRAD_W_ENC, GRAD_W_DEC)
 *      → AUX_GRAD_H (G ← dL_aux/dh at the selected entries) → AUX_GRAD_W_DEC (adds into grad.W_dec) →
 *        AUX_GRAD_W_ENC (adds into grad.W_enc), both indirect at AUX_ARGS_LATENT → AUX_B_ENC_COLS (auxBEnc; written
 *        on chunk 0, added after, by dims.accumulate).
 *      The adds rely on the engine's gradient kernels having written the chunk first (they do: same chunk, earlier).
 *   3. Epilogue: LATENT_FINISH → AUX_B_ENC_ADD (grad.b_enc += auxBEnc at the dead latents) → GRAD_B_DEC (its −W_enc·gb_enc then carries
 *      the aux term into b_dec, as the reference's b_dec gradient) → REMOVE_PARALLEL (the aux W_dec gradient is
 *      projected too, as in the reference) → max_grad_norm clipping (over the gradients with the aux terms) → Adam;
 *      and DEAD_COUNTERS (topk.ts, with the slab's topkDims {n, K, B}: fired = colStats' first K·n words, the count
 *      of f > 0 per latent) after the last chunk's AUX_SELECT → AUX_LOSS (reads nDead).
 *  Metrics: aux_loss = auxScal[sae·4 + 2], n_dead_train = nDead[sae] (copy both to the staging buffer on log steps);
 *  loss = mse + aux_coeff·aux_loss. Resume checkpoints must carry `counters` (test/reference/topk.ts SelectState).
 *  Cost per chunk (D = #dead, k = min(k_aux, D), C rows): AUX_ROWS and AUX_B_ENC_COLS read C·D entries of auxAct;
 *  AUX_DECODE and AUX_GRAD_H C·k·d multiply-adds each; the two per-latent weight kernels C·D·⌈d/256⌉ auxAct reads
 *  plus C·k·d multiply-adds each. The dense form cost C·n·d each (4 matmuls). With nothing dead the select and the
 *  per-latent kernels dispatch no workgroups and the rest exit at once. What remains: AUX_SELECT itself reads the
 *  whole row (O(n) per row, topk.ts), and auxAct is still [C, n].
 */
import type { TrainConfig } from "./config";
import { usesAuxK } from "./config";
import { KERNEL_HEADER } from "./kernels";
import { DEAD_COUNTERS, ROW_THREADS, rowSelectKernel } from "./topk";

export { DEAD_COUNTERS };
export const AUX_META_WORDS = 4;
export const AUX_SCALARS = 4;
export const AUX_DEN_STATS = 3;

/**
 * AUX_SELECT: the per-example select over the dead latents only (k = min(k_aux, #dead) per row), into auxAct; in
 * the form TopK's own select takes at the same d_sae (perThread = perThreadRows(n): one thread per row on short rows,
 * no barriers, which a software adapter runs as fiber switches; a workgroup per row on long ones). Its indirect
 * size comes from auxArgsKernel(perThread), which must be given the same form.
 */
export const auxSelectKernel = (perThread: boolean): string => rowSelectKernel({ kWord: 2, deadOnly: true, inPlace: false, perThread });

/** Entries per row of auxList: the most any AuxK SAE of the group keeps, min(k_aux, d_sae) (1 when none has AuxK). */
export function auxListCap(cfgs: TrainConfig[]): number {
  return Math.max(1, ...cfgs.filter(usesAuxK).map((c) => Math.min(c.sae.k_aux, c.sae.d_vit * c.sae.exp_factor)));
}

/** auxMeta of a group (see the layout above). */
export function auxMetaWords(cfgs: TrainConfig[]): Uint32Array<ArrayBuffer> {
  const words = new Uint32Array(cfgs.length * AUX_META_WORDS);
  const f = new Float32Array(words.buffer);
  const cap = auxListCap(cfgs);
  cfgs.forEach((c, s) => {
    const on = usesAuxK(c);
    words[s * AUX_META_WORDS] = on ? 1 : 0;
    f[s * AUX_META_WORDS + 1] = on ? c.sae.aux_coeff : 0;
    words[s * AUX_META_WORDS + 2] = on ? Math.min(c.sae.dead_after, 2 ** 32 - 1) : 0;
    words[s * AUX_META_WORDS + 3] = cap;
  });
  return words;
}

const META = `@group(0) @binding(1) var<storage, read> saeMeta: array<u32>;
@group(0) @binding(2) var<storage, read> auxMeta: array<u32>;
fn auxOn(sae: u32) -> bool { return auxMeta[(dims.sae0 + sae) * ${AUX_META_WORDS}u] != 0u; }
fn auxCoeff(sae: u32) -> f32 { return bitcast<f32>(auxMeta[(dims.sae0 + sae) * ${AUX_META_WORDS}u + 1u]); }
fn auxDeadAfter(sae: u32) -> u32 { return auxMeta[(dims.sae0 + sae) * ${AUX_META_WORDS}u + 2u]; }
fn auxKcap(sae: u32) -> u32 { return auxMeta[(dims.sae0 + sae) * ${AUX_META_WORDS}u + 3u]; }
// e = x − x̂ of the full reconstruction (the last prefix) at row b, column c of this chunk
fn residIndex(sae: u32, b: u32, c: u32) -> u32 { return ((sae * dims.Pmax + nPrefixes(sae) - 1u) * dims.B + b) * dims.d + c; }`;

const rw = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read_write> ${name}: array<f32>;`;
const ro = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read> ${name}: array<f32>;`;
const gscale = `fn gscale(sae: u32) -> f32 { return auxScal[sae * ${AUX_SCALARS}u + 1u]; }`;
/** Each thread's count of a contiguous segment in seg; scanSeg (one thread, after a barrier) turns them into
 *  exclusive prefix sums (each thread's first output slot, in index order) and returns the total. */
const SEG_SCAN = `var<workgroup> seg: array<u32, 256>;
fn scanSeg() -> u32 {
  var acc = 0u;
  for (var t = 0u; t < 256u; t++) { let v = seg[t]; seg[t] = acc; acc += v; }
  return acc;
}`;
/** The step's dead list (AUX_DEAD_LIST's layout) bound read-only at binding b, with its accessors. */
const deadListAt = (b: number) => `@group(0) @binding(${b}) var<storage, read> deadList: array<u32>;
fn deadCount(sae: u32) -> u32 { return deadList[sae * (dims.n + 1u)]; }
fn deadLatent(sae: u32, r: u32) -> u32 { return deadList[sae * (dims.n + 1u) + 1u + r]; }`;

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

/**
 * The step's dead set, once per step before any chunk (dispatch (1, 1, K), 256 threads; counters do not change
 * until DEAD_COUNTERS in the epilogue): deadList[sae·(n + 1)] = #dead, then the dead latents' indices ascending
 * (counter ≥ dead_after, the set AUX_SELECT keeps from); 0 for SAEs without AuxK. Bindings: dims, meta, auxMeta,
 * counters (u32), deadList (u32).
 */
export const AUX_DEAD_LIST = /* wgsl */ `${KERNEL_HEADER}
${META}
@group(0) @binding(3) var<storage, read> counters: array<u32>;
@group(0) @binding(4) var<storage, read_write> deadList: array<u32>;
${SEG_SCAN}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let sae = wg.z;
  let n = dims.n;
  let on = auxOn(sae);
  let deadAfter = auxDeadAfter(sae);
  // each thread a contiguous segment, so the list comes out in index order
  let segLen = (n + 255u) / 256u;
  let lo = min(n, tid * segLen);
  let hi = min(n, lo + segLen);
  var c = 0u;
  if (on) { for (var j = lo; j < hi; j++) { if (counters[sae * n + j] >= deadAfter) { c += 1u; } } }
  seg[tid] = c;
  workgroupBarrier();
  if (tid == 0u) {
    deadList[sae * (n + 1u)] = scanSeg();
  }
  workgroupBarrier();
  var o = sae * (n + 1u) + 1u + seg[tid];
  if (on) { for (var j = lo; j < hi; j++) { if (counters[sae * n + j] >= deadAfter) { deadList[o] = j; o += 1u; } } }
}`;

/** Indirect dispatch arguments (u32 words) AUX_ARGS writes: AUX_SELECT's at 0, the per-dead-latent kernels' at 4. */
export const AUX_ARGS_WORDS = 8;
export const AUX_ARGS_SELECT = 0;
export const AUX_ARGS_LATENT = 4;
/** Dead latents per dispatch row of the per-latent kernels (WebGPU's 65 535 workgroups per dimension); they loop. */
const MAX_GROUPS = 65535;
/** Columns per workgroup of the per-latent weight kernels: 64 threads, LATENT_COLS_PER_THREAD columns each. */
export const LATENT_COLS = 256;
const LATENT_COLS_PER_THREAD = 4;

/**
 * AUX_ARGS: the slab's indirect dispatch sizes from its dead sets (dispatch (1, 1, 1), after AUX_DEAD_LIST; dims of
 * chunk 0, whose rows are the most): AUX_SELECT (rows of a chunk, K, 1), or with perThread (⌈rows/ROW_THREADS⌉, K,
 * 1), or nothing when no SAE of the slab has a dead latent, so an AuxK step with nothing dead costs next to nothing;
 * the per-latent kernels (min(most dead, 65 535), ⌈d/LATENT_COLS⌉, K). perThread: the form auxSelectKernel was
 * built in. Bindings: dims, meta, auxMeta, deadList, auxArgs (u32, INDIRECT usage).
 */
export const auxArgsKernel = (perThread: boolean): string => /* wgsl */ `${KERNEL_HEADER}
${META}
${deadListAt(3)}
@group(0) @binding(4) var<storage, read_write> auxArgs: array<u32>;
@compute @workgroup_size(1)
fn main() {
  var most = 0u;
  for (var s = 0u; s < dims.K; s++) { most = max(most, deadCount(s)); }
  auxArgs[${AUX_ARGS_SELECT}u] = select(0u, ${perThread ? `(dims.B + ${ROW_THREADS - 1}u) / ${ROW_THREADS}u` : "dims.B"}, most > 0u);
  auxArgs[${AUX_ARGS_SELECT + 1}u] = dims.K;
  auxArgs[${AUX_ARGS_SELECT + 2}u] = 1u;
  auxArgs[${AUX_ARGS_SELECT + 3}u] = 0u;
  auxArgs[${AUX_ARGS_LATENT}u] = min(most, ${MAX_GROUPS}u);
  auxArgs[${AUX_ARGS_LATENT + 1}u] = (dims.d + ${LATENT_COLS - 1}u) / ${LATENT_COLS}u;
  auxArgs[${AUX_ARGS_LATENT + 2}u] = dims.K;
  auxArgs[${AUX_ARGS_LATENT + 3}u] = 0u;
}`;

/**
 * Per row of the chunk (dispatch (rows, 1, K), 256 threads): the row's selected dead latents (auxAct > 0: the only
 * entries that decode to anything or carry a gradient, ReLU's derivative being 0 elsewhere) gathered in index order
 * into auxList [K, C, kcap, 2] (latent, value's f32 bits) with their count in auxCnt [K, C]; the scan is over the
 * dead list only (cost ∝ #dead, not d_sae). Bindings: dims, meta, auxMeta, deadList, auxAct, auxList, auxCnt.
 */
export const AUX_ROWS = /* wgsl */ `${KERNEL_HEADER}
${META}
${deadListAt(3)}
${ro(4, "auxAct")}
@group(0) @binding(5) var<storage, read_write> auxList: array<u32>;
@group(0) @binding(6) var<storage, read_write> auxCnt: array<u32>;
${SEG_SCAN}
var<workgroup> share: u32;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let b = wg.x; let sae = wg.z;
  if (b >= dims.B) { return; }
  let row = sae * dims.B + b;
  if (tid == 0u) {
    share = select(0u, deadCount(sae), auxOn(sae));
    if (auxOn(sae)) { auxCnt[row] = 0u; }
  }
  let nd = workgroupUniformLoad(&share);
  if (nd == 0u) { return; }
  let kcap = auxKcap(sae);
  let segLen = (nd + 255u) / 256u;
  let lo = min(nd, tid * segLen);
  let hi = min(nd, lo + segLen);
  var c = 0u;
  for (var r = lo; r < hi; r++) { if (auxAct[row * dims.n + deadLatent(sae, r)] > 0.0) { c += 1u; } }
  seg[tid] = c;
  workgroupBarrier();
  if (tid == 0u) {
    auxCnt[row] = min(scanSeg(), kcap); // the total ≤ min(k_aux, #dead) ≤ kcap: the select keeps no more
  }
  workgroupBarrier();
  var o = seg[tid];
  for (var r = lo; r < hi; r++) {
    let j = deadLatent(sae, r);
    let a = auxAct[row * dims.n + j];
    if (a > 0.0) {
      if (o < kcap) {
        auxList[2u * (row * kcap + o)] = j;
        auxList[2u * (row * kcap + o) + 1u] = bitcast<u32>(a);
      }
      o += 1u;
    }
  }
}`;

/**
 * auxR = e − ê, ê_b = Σ over row b's gathered entries of value·W_dec[latent] (no b_dec), e = −R[P − 1]; one thread
 * per column (dispatch (⌈d/64⌉, rows, K)). Bindings: dims, meta, auxMeta, auxList, auxCnt, W_dec, R, auxR.
 */
export const AUX_DECODE = /* wgsl */ `${KERNEL_HEADER}
${META}
@group(0) @binding(3) var<storage, read> auxList: array<u32>;
@group(0) @binding(4) var<storage, read> auxCnt: array<u32>;
${ro(5, "W_dec")}
${ro(6, "R")}
${rw(7, "auxR")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x; let b = gid.y; let sae = gid.z;
  if (c >= dims.d || b >= dims.B || !auxOn(sae)) { return; }
  let row = sae * dims.B + b;
  let kcap = auxKcap(sae);
  let cnt = auxCnt[row];
  var acc = 0.0;
  for (var t = 0u; t < cnt; t++) {
    let o = 2u * (row * kcap + t);
    acc += bitcast<f32>(auxList[o + 1u]) * W_dec[(sae * dims.n + auxList[o]) * dims.d + c];
  }
  auxR[row * dims.d + c] = -R[residIndex(sae, b, c)] - acc;
}`;

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
 * G[b, j] ← dL_aux/dh = gscale·(e − ê)_b·W_dec[j]ᵀ at row b's gathered entries only (one thread per entry, dispatch
 * (⌈kcap/64⌉, rows, K)); G's other entries keep what the engine's backward left (nothing reads them for AuxK: the
 * per-latent kernels read G only where auxAct > 0). Bindings: dims, meta, auxMeta, auxScal, auxList, auxCnt, auxR,
 * W_dec, G.
 */
export const AUX_GRAD_H = /* wgsl */ `${KERNEL_HEADER}
${META}
${gscaleBinding(3)}
@group(0) @binding(4) var<storage, read> auxList: array<u32>;
@group(0) @binding(5) var<storage, read> auxCnt: array<u32>;
${ro(6, "auxR")}
${ro(7, "W_dec")}
${rw(8, "G")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let t = gid.x; let b = gid.y; let sae = gid.z;
  if (b >= dims.B || !auxOn(sae)) { return; }
  let row = sae * dims.B + b;
  if (t >= auxCnt[row]) { return; }
  let j = auxList[2u * (row * auxKcap(sae) + t)];
  var s = 0.0;
  for (var c = 0u; c < dims.d; c++) { s += auxR[row * dims.d + c] * W_dec[(sae * dims.n + j) * dims.d + c]; }
  G[row * dims.n + j] = gscale(sae) * s;
}`;

/**
 * The per-dead-latent loop shared by the weight kernels below (indirect dispatch (min(#dead, 65 535), ⌈d/256⌉, K),
 * 64 threads, 4 columns each): for dead latent j, a pass over the chunk's rows adding, where auxAct[b, j] > 0,
 * TERM(b, col) into acc[u] (column wg.y·256 + tid + 64u). Organised by latent, so each output element has one writer:
 * no atomics, and the sums run in row order (deterministic).
 */
const perDeadLatent = (term: string, write: string) => /* wgsl */ `
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let sae = wg.z;
  if (!auxOn(sae)) { return; }
  let nd = deadCount(sae);
  for (var r = wg.x; r < nd; r += nwg.x) {
    let j = deadLatent(sae, r);
    var acc: array<f32, ${LATENT_COLS_PER_THREAD}>;
    var hit = false;
    for (var b = 0u; b < dims.B; b++) {
      let a = auxAct[(sae * dims.B + b) * dims.n + j];
      if (a > 0.0) {
        hit = true;
        for (var u = 0u; u < ${LATENT_COLS_PER_THREAD}u; u++) {
          let col = wg.y * ${LATENT_COLS}u + tid + 64u * u;
          if (col < dims.d) { acc[u] += ${term}; }
        }
      }
    }
    if (hit) {
      for (var u = 0u; u < ${LATENT_COLS_PER_THREAD}u; u++) {
        let col = wg.y * ${LATENT_COLS}u + tid + 64u * u;
        if (col < dims.d) { ${write} }
      }
    }
  }
}`;

/**
 * grad.W_dec[j] += gscale·Σ_b auxAct[b, j]·(e − ê)_b over this chunk, dead latents j only (the others have
 * auxAct = 0). Bindings: dims, meta, auxMeta, auxScal, deadList, auxAct, auxR, gW_dec.
 */
export const AUX_GRAD_W_DEC = /* wgsl */ `${KERNEL_HEADER}
${META}
${gscaleBinding(3)}
${deadListAt(4)}
${ro(5, "auxAct")}
${ro(6, "auxR")}
${rw(7, "gW_dec")}
${perDeadLatent("a * auxR[(sae * dims.B + b) * dims.d + col]", "let i = (sae * dims.n + j) * dims.d + col; gW_dec[i] = gW_dec[i] + gscale(sae) * acc[u];")}`;

/**
 * grad.W_enc[:, j] += Σ_b (x_b − b_dec)·G[b, j] over this chunk's rows that selected dead latent j (G = dL_aux/dh
 * there, from AUX_GRAD_H). Bindings: dims, meta, auxMeta, deadList, auxAct, G, x, b_dec, gW_enc.
 */
export const AUX_GRAD_W_ENC = /* wgsl */ `${KERNEL_HEADER}
${META}
${deadListAt(3)}
${ro(4, "auxAct")}
${ro(5, "G")}
${ro(6, "x")}
${ro(7, "b_dec")}
${rw(8, "gW_enc")}
${perDeadLatent(
  "G[(sae * dims.B + b) * dims.n + j] * (x[(dims.row0 + b) * dims.d + col] - b_dec[sae * dims.d + col])",
  "let i = (sae * dims.d + col) * dims.n + j; gW_enc[i] = gW_enc[i] + acc[u];",
)}`;

function gscaleBinding(b: number): string {
  return `${ro(b, "auxScal")}\n${gscale}`;
}

/**
 * Per dead latent (dispatch (⌈n/64⌉, 1, K); thread r takes the r-th dead latent j): auxBEnc[j] ←
 * (dims.accumulate ? auxBEnc[j] : 0) + Σ_b G[b, j] over this chunk's rows with auxAct[b, j] > 0, compensated. Only
 * dead latents are written: AUX_B_ENC_ADD reads only those. Bindings: dims, meta, auxMeta, deadList, auxAct, G,
 * auxBEnc.
 */
export const AUX_B_ENC_COLS = /* wgsl */ `${KERNEL_HEADER}
${META}
${deadListAt(3)}
${ro(4, "auxAct")}
${ro(5, "G")}
${rw(6, "auxBEnc")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let r = gid.x; let sae = gid.z;
  if (!auxOn(sae) || r >= deadCount(sae)) { return; }
  let j = deadLatent(sae, r);
  var s = vec2f(0.0);
  for (var b = 0u; b < dims.B; b++) {
    let i = (sae * dims.B + b) * dims.n + j;
    if (auxAct[i] > 0.0) { s = kadd(s, G[i]); }
  }
  let o = 2u * (sae * dims.n + j);
  var acc = vec2f(0.0);
  if (dims.accumulate != 0u) { acc = vec2f(auxBEnc[o], auxBEnc[o + 1u]); }
  acc = kadd(kadd(acc, s.x), s.y);
  auxBEnc[o] = acc.x;
  auxBEnc[o + 1u] = acc.y;
}`;

/** grad.b_enc[j] += auxBEnc[j] for the dead latents (dispatch (⌈n/64⌉, 1, K), after LATENT_FINISH). Bindings: dims,
 *  meta, auxMeta, deadList, auxBEnc, gb_enc. */
export const AUX_B_ENC_ADD = /* wgsl */ `${KERNEL_HEADER}
${META}
${deadListAt(3)}
${ro(4, "auxBEnc")}
${rw(5, "gb_enc")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let r = gid.x; let sae = gid.z;
  if (!auxOn(sae) || r >= deadCount(sae)) { return; }
  let j = deadLatent(sae, r);
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
