/**
 * The selection kernels of TopK and BatchTopK SAEs, AuxK's dead-latent bookkeeping, and gradient-norm clipping
 * (../shared/SAE.md "TopK, BatchTopK, AuxK and the newer schedule"). K SAEs of one group share each dispatch, as in
 * kernels.ts: workgroup_id.y (or .z) is the SAE, and an SAE whose kind does not use a kernel leaves it at once, so any
 * mix of kinds shares one group. The float64 reference is test/reference/topk.ts.
 *
 * Values are compared through an order-preserving u32 key of their f32 bits (−0 and +0 one key, as they compare
 * equal), so "the k largest" is an exact radix select and ties are resolved by index, never by rounding.
 *
 * Layouts (u32 unless said):
 *   H [K, rowStride, n] f32: pre-activations of the rows at hand (a row chunk); the first `rows` rows are used.
 *   topkMeta [K, TOPK_META_WORDS]: per SAE [kRow (TopK's k, else 0), kTotal (BatchTopK's k·B, else 0), kAux,
 *     β (f32 bits), dead_after, max_grad_norm (f32 bits, 0: none), 0, 0] (topkMetaWords builds it).
 *   cut [K, rowStride, 2]: per row the threshold key T and the tie cut J: entry j is kept when its key is > T, or
 *     == T with j < J (so the lowest latent indices win ties).
 *   counters [K, n]: examples since each latent last fired (saturating).
 *   batchHist [K, BATCH_HIST_WORDS]: BatchTopK's radix histogram, 65 536 bins then 256 group sums and the count of
 *     candidates (zero between uses: batchClearKernel clears them after each resolve), then the candidates' keys.
 *   batchState [K, BATCH_STATE_WORDS]: [top 16 bits of T, still to keep, T, ties kept so far, θ (f32 bits), θ set,
 *     pass 1 from the candidates (1) or from H (0)].
 *   rowTies [K, rowStride]: ties with T per row of the chunk at hand; after BATCH_ADVANCE, the ties kept before each
 *     row over the batch.
 */
import type { TrainConfig } from "./config";

export const TOPK_META_WORDS = 8;
export const BATCH_STATE_WORDS = 8;
export const BATCH_BINS = 65536;
/** Groups of 256 bins each histogram is summed by (batchGroupSumsKernel), so the resolve reads 256 sums, then 256 bins. */
export const BATCH_GROUPS = 256;
/** Keys batchHistKernel(0, spec) keeps for pass 1 (beyond: pass 1 reads H, see batchSpeculates). */
export const BATCH_CANDIDATES = 16384;
/** Words per SAE of batchHist: the 65 536 bins, the BATCH_GROUPS group sums, the count of candidates (then 3 pad
 *  words), the candidates. */
export const BATCH_HIST_WORDS = BATCH_BINS + BATCH_GROUPS + 4 + BATCH_CANDIDATES;
/** Most workgroups per SAE of one gradient tensor's sum of squares (one partial each). */
export const NORM_WORKGROUPS = 64;
/** Workgroups of GRAD_NORM_PARTIAL for a tensor of `size` elements per SAE: one per 256 elements, at most 64 (on
 *  software adapters every idle workgroup still pays for its barriers). */
export const normWorkgroups = (size: number): number => Math.max(1, Math.min(NORM_WORKGROUPS, Math.ceil(size / 256)));

/** The per-SAE words of topkMeta for a group (see the layout above); B = the batch size. */
export function topkMetaWords(cfgs: TrainConfig[], B: number): Uint32Array<ArrayBuffer> {
  const words = new Uint32Array(cfgs.length * TOPK_META_WORDS);
  const f = new Float32Array(words.buffer);
  cfgs.forEach((c, s) => {
    const o = s * TOPK_META_WORDS;
    const k = c.sae.k ?? 0;
    const select = c.sae.kind === "topk" || c.sae.kind === "batchtopk";
    if (c.sae.kind === "topk") words[o] = k;
    if (c.sae.kind === "batchtopk") {
      if (k * B >= 2 ** 32) throw new Error(`topk: k·B = ${k * B} does not fit a u32 count`);
      words[o + 1] = k * B;
    }
    words[o + 2] = select && c.sae.aux_coeff > 0 ? c.sae.k_aux : 0;
    f[o + 3] = c.sae.threshold_beta;
    words[o + 4] = select ? Math.min(c.sae.dead_after, 2 ** 32 - 1) : 0;
    f[o + 5] = c.max_grad_norm ?? 0;
  });
  return words;
}

/** Uniform of every kernel here: [rows, rowStride, n, K, B, size, slot, nSlots] (32 bytes). */
export function topkDims(d: { rows?: number; rowStride?: number; n?: number; K: number; B?: number; size?: number; slot?: number; nSlots?: number }): Uint32Array<ArrayBuffer> {
  return new Uint32Array([d.rows ?? 0, d.rowStride ?? d.rows ?? 0, d.n ?? 0, d.K, d.B ?? 0, d.size ?? 0, d.slot ?? 0, d.nSlots ?? 0]);
}

const HEADER = /* wgsl */ `
struct Dims { rows: u32, rowStride: u32, n: u32, K: u32, B: u32, size: u32, slot: u32, nSlots: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> topkMeta: array<u32>;
const WG = 256u;
fn metaWord(sae: u32, w: u32) -> u32 { return topkMeta[sae * ${TOPK_META_WORDS}u + w]; }
// Order-preserving key of an f32: larger value, larger key; −0 and +0 share one key (they compare equal).
fn keyOf(v: f32) -> u32 {
  var u = bitcast<u32>(v);
  if (u == 0x80000000u) { u = 0u; }
  return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}
fn valueOf(key: u32) -> f32 { return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u)); }
`;

/**
 * WGSL statements run by thread 0 after seg[t] holds the ties (key == T, eligible) of thread t's contiguous segment
 * [t·segLen, (t+1)·segLen): sets `J` to one past the index of the need-th tie in index order (0 when need is 0).
 */
const TIE_CUT = (isTie: string) => /* wgsl */ `
    var J = 0u;
    if (need > 0u) {
      var acc = 0u;
      var s = 0u;
      loop {
        if (s + 1u >= WG || acc + seg[s] >= need) { break; }
        acc += seg[s];
        s += 1u;
      }
      let slo = min(n, s * segLen);
      let shi = min(n, slo + segLen);
      var r = need - acc;
      J = shi;
      for (var j = slo; j < shi; j++) {
        if (${isTie}) {
          r -= 1u;
          if (r == 0u) { J = j + 1u; break; }
        }
      }
    }`;

/** Each thread counts the ties of its contiguous segment into seg[tid] (then a barrier). */
const COUNT_SEGMENT = (isTie: string) => /* wgsl */ `
  let segLen = (n + WG - 1u) / WG;
  {
    let lo = min(n, tid * segLen);
    let hi = min(n, lo + segLen);
    var c = 0u;
    for (var j = lo; j < hi; j++) { if (${isTie}) { c += 1u; } }
    seg[tid] = c;
  }
  workgroupBarrier();`;

export interface RowSelectVariant {
  /** Which topkMeta word holds k: 0 = TopK's k (the forward), 2 = k_aux (AuxK over the dead latents). */
  kWord: 0 | 2;
  /** Only latents with counters ≥ dead_after take part (AuxK); k becomes min(k, #dead). */
  deadOnly: boolean;
  /** Write f into H itself (the forward: the ReLU kernels downstream then compute TopK's f and ∂f/∂h unchanged). */
  inPlace: boolean;
  /** One thread per row (dispatch (⌈rows/64⌉, K)) instead of one workgroup per row (dispatch (rows, K)): see
   *  perThreadRows. Absent: one workgroup per row. */
  perThread?: boolean;
}

/**
 * Rows up to this many latents are selected one thread per row (perThreadRows). On a software adapter (SwiftShader)
 * a kernel with barriers runs every invocation as a fiber, so a 256-thread workgroup per 128-latent row spent seconds
 * per step on fiber switches at the demo's shape (test/bench/topk-kernels.ts); a thread per row has no barrier and
 * no workgroup memory. On a GPU short rows are cheap either way, and long rows need the workgroup (their one thread
 * would read the row a dozen times alone).
 */
export const PER_THREAD_MAX_N = 1024;
export const perThreadRows = (n: number): boolean => n <= PER_THREAD_MAX_N;
/** Workgroup size of the one-thread-per-row kernels. */
export const ROW_THREADS = 64;
/** Up to this k the one-thread-per-row select keeps a streaming top-k in the thread's memory (one pass) instead of
 *  the radix select's nine. */
export const SMALL_K = 32;

/**
 * Per-example top-k (one workgroup per row and SAE; dispatch (rows, K); v.perThread: one thread per row, see
 * rowSelectPerThread): a radix select on the keys, four 8-bit
 * digit histograms in workgroup memory, finds the k-th largest key T of the row; then the first ties in index
 * order fill the k slots. Writes cut = (T, J) and f = ReLU(h) on the kept entries, 0 elsewhere (into H, or `out`).
 * The row stays in global memory (65 536 floats do not fit a workgroup); it is read six times.
 * Bindings: dims, topkMeta, H, [counters], [out], cut.
 */
export function rowSelectKernel(v: RowSelectVariant): string {
  if (v.perThread) return rowSelectPerThread(v);
  let b = 2;
  const bindings = [
    `@group(0) @binding(${b++}) var<storage, ${v.inPlace ? "read_write" : "read"}> H: array<f32>;`,
    v.deadOnly ? `@group(0) @binding(${b++}) var<storage, read> counters: array<u32>;` : "",
    v.inPlace ? "" : `@group(0) @binding(${b++}) var<storage, read_write> out: array<f32>;`,
    `@group(0) @binding(${b++}) var<storage, read_write> cut: array<u32>;`,
  ].join("\n");
  const eligOf = (i: string) => (v.deadOnly ? `counters[sae * n + ${i}] >= deadAfter` : "true");
  const elig = eligOf("j");
  const outName = v.inPlace ? "H" : "out";
  return /* wgsl */ `${HEADER}
${bindings}
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> seg: array<u32, 256>;
var<workgroup> shareA: u32;
var<workgroup> shareB: u32;
var<workgroup> eligible: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let row = wg.x;
  let sae = wg.y;
  if (row >= dims.rows) { return; } // a shorter batch than the dispatch was built for (evaluate's last batch)
  let n = dims.n;
  let base = (sae * dims.rowStride + row) * n;
  let deadAfter = metaWord(sae, 4u);
  // A row of at most WG latents (small d_sae, as the demo's 128): one latent per thread, ranked against the row in
  // global memory: rank = #{eligible i : key_i > key_j, or key_i == key_j and i < j}, kept iff rank < min(k,
  // #eligible); the cut is the key and index + 1 of rank kEff − 1. At most one barrier (in place: every thread has
  // read the row before any overwrites it), where the radix select below costs a dozen barriers and thread 0's serial
  // scans of 256 bins per row, which dominate short rows on a software adapter.
  if (n <= WG) {
    let kRow = metaWord(sae, ${v.kWord}u);
    let j = tid;
    let mine = kRow != 0u && j < n; // kRow 0: not this SAE's kind, H stays as it is
    var h = 0.0;
    var kept = false;
    if (mine) {
      h = H[base + j];
      let key = keyOf(h);
      let el = ${elig};
      var rank = 0u;
      var nElig = 0u;
      // The count stops once rank ≥ k: the latent is not kept (kEff ≤ k), and some k latents are eligible, so
      // kEff = k > 0. Most latents stop within a few dozen reads; only the kept ones read the whole row. An
      // ineligible latent is never kept (thread 0 still counts, for the kEff = 0 cut).
      var whole = el || j == 0u;
      if (whole) {
        for (var i = 0u; i < n; i++) {
          let ki = keyOf(H[base + i]);
          if (${eligOf("i")}) {
            nElig += 1u;
            if (ki > key || (ki == key && i < j)) { rank += 1u; }
          }
          if (rank >= kRow) { whole = false; break; }
        }
      }
      let kEff = min(kRow, nElig);
      kept = el && whole && rank < kEff;
      let c = (sae * dims.rowStride + row) * 2u;
      if (kept && rank + 1u == kEff) {
        cut[c] = key;
        cut[c + 1u] = j + 1u;
      }
      if (whole && kEff == 0u && j == 0u) { // nothing kept: T above every key
        cut[c] = 0xffffffffu;
        cut[c + 1u] = 0u;
      }
    }
    ${v.inPlace ? "workgroupBarrier();" : ""}
    if (mine) { ${outName}[base + j] = select(0.0, max(h, 0.0), kept); }
    return;
  }
  if (tid == 0u) {
    shareA = metaWord(sae, ${v.kWord}u);
    atomicStore(&eligible, 0u);
  }
  let k = workgroupUniformLoad(&shareA);
  if (k == 0u) { return; } // not this SAE's kind: H stays as it is
  {
    var c = 0u;
    for (var j = tid; j < n; j += WG) { if (${elig}) { c += 1u; } }
    atomicAdd(&eligible, c);
  }
  workgroupBarrier();
  if (tid == 0u) { shareA = min(k, atomicLoad(&eligible)); }
  let kEff = workgroupUniformLoad(&shareA);

  // Radix select, most significant digit first: prefix holds the digits of T found so far, remaining how many
  // entries with that prefix are still to be taken.
  var prefix = 0u;
  var remaining = kEff;
  if (kEff > 0u) {
    for (var digit = 0u; digit < 4u; digit++) {
      let shift = 24u - 8u * digit;
      let hiMask = select(0xffffffffu << (32u - 8u * digit), 0u, digit == 0u);
      atomicStore(&hist[tid], 0u);
      workgroupBarrier();
      for (var j = tid; j < n; j += WG) {
        if (${elig}) {
          let key = keyOf(H[base + j]);
          if ((key & hiMask) == prefix) { atomicAdd(&hist[(key >> shift) & 255u], 1u); }
        }
      }
      workgroupBarrier();
      if (tid == 0u) {
        var above = 0u;
        var dg = 255u;
        loop {
          let c = atomicLoad(&hist[dg]);
          if (above + c >= remaining || dg == 0u) { break; }
          above += c;
          dg -= 1u;
        }
        shareA = prefix | (dg << shift);
        shareB = remaining - above;
      }
      prefix = workgroupUniformLoad(&shareA);
      remaining = workgroupUniformLoad(&shareB);
    }
  }
  // kEff = 0 (no dead latent): T above every key, nothing kept.
  let T = select(0xffffffffu, prefix, kEff > 0u);
  let need = select(0u, remaining, kEff > 0u);
${COUNT_SEGMENT(`(${elig}) && keyOf(H[base + j]) == T`)}
  if (tid == 0u) {
${TIE_CUT(`(${elig}) && keyOf(H[base + j]) == T`)}
    shareA = J;
    cut[(sae * dims.rowStride + row) * 2u] = T;
    cut[(sae * dims.rowStride + row) * 2u + 1u] = J;
  }
  let J = workgroupUniformLoad(&shareA);
  for (var j = tid; j < n; j += WG) {
    let h = H[base + j];
    let key = keyOf(h);
    let kept = (${elig}) && (key > T || (key == T && j < J));
    ${outName}[base + j] = select(0.0, max(h, 0.0), kept);
  }
}
`;
}

/**
 * rowSelectKernel's one-thread-per-row form (dispatch (⌈rows/ROW_THREADS⌉, K)): the same radix select, with 4-bit
 * digits so each pass's 16-bin histogram stays in the thread's own memory: eight counting passes over the row, then
 * one pass that takes the first `need` ties in index order while it writes f (so J falls out of it).
 */
function rowSelectPerThread(v: RowSelectVariant): string {
  let b = 2;
  const bindings = [
    `@group(0) @binding(${b++}) var<storage, ${v.inPlace ? "read_write" : "read"}> H: array<f32>;`,
    v.deadOnly ? `@group(0) @binding(${b++}) var<storage, read> counters: array<u32>;` : "",
    v.inPlace ? "" : `@group(0) @binding(${b++}) var<storage, read_write> out: array<f32>;`,
    `@group(0) @binding(${b++}) var<storage, read_write> cut: array<u32>;`,
  ].join("\n");
  const elig = v.deadOnly ? "counters[sae * n + j] >= deadAfter" : "true";
  return /* wgsl */ `${HEADER}
${bindings}

@compute @workgroup_size(${ROW_THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let row = gid.x;
  let sae = wg.y;
  if (row >= dims.rows) { return; }
  let k = metaWord(sae, ${v.kWord}u);
  if (k == 0u) { return; } // not this SAE's kind: H stays as it is
  let n = dims.n;
  let base = (sae * dims.rowStride + row) * n;
  let deadAfter = metaWord(sae, 4u);
  var nElig = n;
  ${v.deadOnly ? `nElig = 0u;
  for (var j = 0u; j < n; j++) { if (${elig}) { nElig += 1u; } }` : ""}
  let kEff = min(k, nElig);
  // Radix select, most significant digit first: prefix holds the digits of T found so far, remaining how many
  // entries with that prefix are still to be taken.
  // Once the chosen digit's bin holds exactly the entries still to take, every entry with that prefix is kept: T is
  // their smallest key and all its ties are kept, found in one pass (most rows stop after a few digits).
  var prefix = 0u;
  var remaining = kEff;
  var allIn = false;
  var mask = 0u;
  if (kEff > 0u && kEff <= ${SMALL_K}u) {
    // Small k (the usual TopK SAE): one pass keeping the best kEff so far in (key descending, index ascending) order,
    // a streaming top-k. A later entry enters only with a key above the last kept one (an equal key has the higher
    // index and loses the tie), which in most rows is rare after the first few dozen entries.
    var keys: array<u32, ${SMALL_K}>;
    var count = 0u;
    var last = 0u; // key of the last kept entry once kEff are kept
    for (var j = 0u; j < n; j++) {
      if (${elig}) {
        let key = keyOf(H[base + j]);
        if (count < kEff || key > last) {
          if (count < kEff) { count += 1u; }
          var q = count - 1u;
          loop {
            if (q == 0u || keys[q - 1u] >= key) { break; }
            keys[q] = keys[q - 1u];
            q -= 1u;
          }
          keys[q] = key;
          last = keys[kEff - 1u];
        }
      }
    }
    // T = the kEff-th key; the ties with T to take = those among the kept (they are the first in index order)
    prefix = keys[kEff - 1u];
    remaining = 0u;
    for (var i = 0u; i < kEff; i++) { if (keys[i] == prefix) { remaining += 1u; } }
  } else if (kEff > 0u) {
    var hist: array<u32, 16>;
    for (var digit = 0u; digit < 8u && !allIn; digit++) {
      let shift = 28u - 4u * digit;
      let hiMask = mask;
      // cleared by hand: a declaration inside the loop was not zeroed again on each iteration on SwiftShader (the
      // counts ran on, and T came out wrong)
      for (var d = 0u; d < 16u; d++) { hist[d] = 0u; }
      for (var j = 0u; j < n; j++) {
        if (${elig}) {
          let key = keyOf(H[base + j]);
          if ((key & hiMask) == prefix) { hist[(key >> shift) & 15u] += 1u; }
        }
      }
      var above = 0u;
      var dg = 15u;
      loop {
        let c = hist[dg];
        if (above + c >= remaining || dg == 0u) { break; }
        above += c;
        dg -= 1u;
      }
      prefix |= dg << shift;
      remaining -= above;
      mask |= 15u << shift;
      allIn = hist[dg] == remaining && digit < 7u;
    }
  }
  if (allIn) {
    var lo = 0xffffffffu;
    var ties = 0u;
    for (var j = 0u; j < n; j++) {
      if (${elig}) {
        let key = keyOf(H[base + j]);
        if ((key & mask) == prefix) {
          if (key < lo) { lo = key; ties = 0u; }
          if (key == lo) { ties += 1u; }
        }
      }
    }
    prefix = lo;
    remaining = ties;
  }
  // kEff = 0 (no dead latent): T above every key, nothing kept.
  let T = select(0xffffffffu, prefix, kEff > 0u);
  let need = select(0u, remaining, kEff > 0u);
  var taken = 0u;
  var J = 0u;
  for (var j = 0u; j < n; j++) {
    let h = H[base + j];
    let key = keyOf(h);
    let el = ${elig};
    var kept = el && key > T;
    if (el && key == T && taken < need) {
      kept = true;
      taken += 1u;
      J = j + 1u;
    }
    ${v.inPlace ? "H" : "out"}[base + j] = select(0.0, max(h, 0.0), kept);
  }
  let c = (sae * dims.rowStride + row) * 2u;
  cut[c] = T;
  cut[c + 1u] = J;
}
`;
}

// ---------------------------------------------------------------------------------------------------------------
// BatchTopK: the k·B largest entries of ReLU(h) over the whole batch, ties by example then latent index.
//
// The batch exists one row chunk at a time, so the threshold is found by a two-digit (16 + 16 bits) radix select
// whose histograms accumulate chunk by chunk, and the ties are taken in (row, latent) order while the chunks are
// applied in order. Per step, for the SAEs with kTotal > 0 (the others return at once):
//   for each chunk: encode → batchHistKernel(0)          (top 16 bits of each key)
//   batchGroupSumsKernel(0) → batchResolveKernel(0) → batchClearKernel(0)   (top 16 bits of T)
//   for each chunk: encode → batchHistKernel(1)          (low 16 bits, keys whose top bits match; one chunk:
//                                                          from pass 0's candidates where they suffice)
//   batchGroupSumsKernel(1) → batchResolveKernel(1) → batchClearKernel(1)   (T, ties to keep; θ update)
//   for each chunk: encode → batchTiesKernel → BATCH_ADVANCE → batchApplyKernel → the ReLU forward/backward
// so H holds f = ReLU(h) on the kept entries (0 elsewhere) when the chunk's decode and backward run.

const BATCH_HEADER = /* wgsl */ `
const ZERO_KEY = 0x80000000u;
fn kTotalOf(sae: u32) -> u32 { return metaWord(sae, 1u); }
fn stateAt(sae: u32, w: u32) -> u32 { return sae * ${BATCH_STATE_WORDS}u + w; }
`;

/** Workgroups of batchHistKernel for a chunk of rows × n entries per SAE: about 8 entries a thread, at most 4096. */
export const batchHistGroups = (rows: number, n: number): number => Math.max(1, Math.min(4096, Math.ceil((rows * n) / 2048)));

/** Top-16-bit bins either side of the last step's that pass 0 keeps the keys of (spec): about ±6% of T's value. */
const SPEC_BINS = 8;
/** Most entries per SAE of a batch whose pass 0 keeps candidates (spec): a small batch in one chunk, where pass 1
 *  reading all of H again is most of its cost on a software adapter (test/bench/topk-kernels.ts). A large batch
 *  keeps more candidates than BATCH_CANDIDATES, and spends an atomic per candidate on one counter. */
export const SPEC_MAX_ENTRIES = 1 << 20;
export const batchSpeculates = (rowChunks: number, rows: number, n: number): boolean => rowChunks === 1 && rows * n <= SPEC_MAX_ENTRIES;

/**
 * One chunk's contribution to BatchTopK's histogram (dispatch (batchHistGroups(rows, n), K); each thread strides over
 * the chunk's rows·n entries, which lie contiguous per SAE, so short rows leave no thread idle). Pass 0 counts the top
 * 16 bits of every key of ReLU(h); pass 1 the low 16 bits of the keys whose top bits are the ones pass 0 chose. Zeros
 * (every h ≤ 0) are counted per thread first: they would otherwise all hit one bin.
 * spec (pass 0, one chunk only, see batchSpeculates): T moves little from step to step, so pass 0 also keeps the keys
 * whose top bits lie within SPEC_BINS of the last step's (still in batchState) as candidates; when T's top bits are
 * among them and every such key was kept (batchResolveKernel(0, true) decides), pass 1 reads the candidates, not H.
 * Pass 1 takes either (batchState's flag); on candidates it counts them once, so with spec a batch is one chunk.
 * Bindings: dims, topkMeta, H, batchHist, batchState.
 */
export function batchHistKernel(pass: 0 | 1, spec = false): string {
  const C = BATCH_BINS + BATCH_GROUPS; // the count of candidates; the candidates follow 4 words on
  return /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read> H: array<f32>;
@group(0) @binding(3) var<storage, read_write> batchHist: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read> batchState: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32, @builtin(num_workgroups) nwg: vec3u) {
  let sae = wg.y;
  if (kTotalOf(sae) == 0u) { return; }
  let size = dims.rows * dims.n;
  let base = sae * dims.rowStride * dims.n;
  let hb = sae * ${BATCH_HIST_WORDS}u;
  let top = batchState[stateAt(sae, 0u)];
  ${pass === 1
    ? `if (batchState[stateAt(sae, 6u)] != 0u) {
    let count = min(atomicLoad(&batchHist[hb + ${C}u]), ${BATCH_CANDIDATES}u);
    for (var i = wg.x * WG + tid; i < count; i += nwg.x * WG) {
      let key = atomicLoad(&batchHist[hb + ${C + 4}u + i]);
      if ((key >> 16u) == top) { atomicAdd(&batchHist[hb + (key & 0xffffu)], 1u); }
    }
    return;
  }`
    : spec
      ? `let lo = top - ${SPEC_BINS}u; // wraps for a T not yet set (poison): then no key is a candidate`
      : ""}
  var zeros = 0u;
  for (var i = wg.x * WG + tid; i < size; i += nwg.x * WG) {
    let key = keyOf(max(H[base + i], 0.0));
    ${pass === 0
      ? `if (key == ZERO_KEY) { zeros += 1u; } else {
      atomicAdd(&batchHist[hb + (key >> 16u)], 1u);${spec
        ? `
      if ((key >> 16u) - lo <= ${2 * SPEC_BINS}u && (key >> 16u) != (ZERO_KEY >> 16u)) {
        let at = atomicAdd(&batchHist[hb + ${C}u], 1u);
        if (at < ${BATCH_CANDIDATES}u) { atomicStore(&batchHist[hb + ${C + 4}u + at], key); }
      }`
        : ""}
    }`
      : "if ((key >> 16u) == top) { if (key == ZERO_KEY) { zeros += 1u; } else { atomicAdd(&batchHist[hb + (key & 0xffffu)], 1u); } }"}
  }
  if (zeros > 0u) { atomicAdd(&batchHist[hb + ${pass === 0 ? "(ZERO_KEY >> 16u)" : "(ZERO_KEY & 0xffffu)"}], zeros); }
}
`;
}

/** Workgroup size of batchGroupSumsKernel and batchClearKernel (dispatch (BATCH_GROUPS / BATCH_GROUP_THREADS, K)). */
export const BATCH_GROUP_THREADS = 64;

// The resolve of one digit is three barrier-free dispatches, not one workgroup with barriers: on a software adapter
// (SwiftShader) every thread of a workgroup with barriers runs as a fiber, and the one-workgroup resolve (256
// threads summing 256 bins each, thread 0 scanning, all clearing 65 536 bins) took 21–90 ms per digit at the demo's
// shape (test/bench/topk-kernels.ts). Now a thread per group sums it, one thread per SAE scans 256 sums and then one
// group's bins, and a thread per group clears its bins only where its sum is not 0 (a pass fills few groups). On a
// GPU each is a few microseconds: the serial thread reads 512 words.

/**
 * Sums each group of 256 bins into batchHist's group sums (dispatch (BATCH_GROUPS / BATCH_GROUP_THREADS, K)).
 * Pass 0's keys are those of ReLU(h) ≥ 0, all ≥ ZERO_KEY, so its groups below ZERO_KEY >> 24 are 0 unread.
 * Bindings: dims, topkMeta, batchHist.
 */
export function batchGroupSumsKernel(pass: 0 | 1): string {
  return /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read_write> batchHist: array<atomic<u32>>;

@compute @workgroup_size(${BATCH_GROUP_THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let sae = wg.y;
  let g = gid.x;
  if (g >= ${BATCH_GROUPS}u || kTotalOf(sae) == 0u) { return; }
  let hb = sae * ${BATCH_HIST_WORDS}u;
  var s = 0u;
  ${pass === 0 ? "if (g >= (ZERO_KEY >> 24u)) {" : "{"}
    for (var i = 0u; i < 256u; i++) { s += atomicLoad(&batchHist[hb + g * 256u + i]); }
  }
  atomicStore(&batchHist[hb + ${BATCH_BINS}u + g], s);
}
`;
}

/**
 * Reads one digit of T off the whole batch's histogram and its group sums (dispatch (1, K), one thread per SAE).
 * Pass 0 starts from kTotal and keeps the top 16 bits; pass 1 completes T, leaves how many ties with T to keep,
 * restarts the tie count, and moves θ: θ ← β·θ + (1 − β)·min_kept (θ ← min_kept on the first step, while "θ set" is
 * 0). spec (pass 0, after batchHistKernel(0, true)): sets batchState's flag for pass 1 to read the candidates.
 * batchClearKernel then clears the histogram. Bindings: dims, topkMeta, batchHist, batchState.
 */
export function batchResolveKernel(pass: 0 | 1, spec = false): string {
  return /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read_write> batchHist: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> batchState: array<u32>;

@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3u) {
  let sae = wg.y;
  let kTotal = kTotalOf(sae);
  if (kTotal == 0u) { return; }
  let hb = sae * ${BATCH_HIST_WORDS}u;
  let remaining = ${pass === 0 ? "kTotal" : "batchState[stateAt(sae, 1u)]"};
  var above = 0u;
  var g = ${BATCH_GROUPS - 1}u;
  loop {
    let c = atomicLoad(&batchHist[hb + ${BATCH_BINS}u + g]);
    if (above + c >= remaining || g == 0u) { break; }
    above += c;
    g -= 1u;
  }
  var b = g * 256u + 255u;
  loop {
    let c = atomicLoad(&batchHist[hb + b]);
    if (above + c >= remaining || b == g * 256u) { break; }
    above += c;
    b -= 1u;
  }
  batchState[stateAt(sae, 1u)] = remaining - above;
  ${pass === 0
    ? `${spec
      ? `// pass 1 from the candidates: T's top bits within the window pass 0 kept (of the last step's top, still word 0),
  // not the zeros' bin (zeros are not candidates), and no candidate dropped
  let inWindow = b - (batchState[stateAt(sae, 0u)] - ${SPEC_BINS}u) <= ${2 * SPEC_BINS}u && b != (ZERO_KEY >> 16u);
  let complete = atomicLoad(&batchHist[hb + ${BATCH_BINS + BATCH_GROUPS}u]) <= ${BATCH_CANDIDATES}u;
  batchState[stateAt(sae, 6u)] = select(0u, 1u, inWindow && complete);`
      : "batchState[stateAt(sae, 6u)] = 0u;"}
  batchState[stateAt(sae, 0u)] = b;`
    : `let T = (batchState[stateAt(sae, 0u)] << 16u) | b;
  batchState[stateAt(sae, 2u)] = T;
  batchState[stateAt(sae, 3u)] = 0u;
  let minKept = valueOf(T);
  let beta = bitcast<f32>(metaWord(sae, 3u));
  let theta = bitcast<f32>(batchState[stateAt(sae, 4u)]);
  let wasSet = batchState[stateAt(sae, 5u)] != 0u;
  batchState[stateAt(sae, 4u)] = bitcast<u32>(select(minKept, beta * theta + (1.0 - beta) * minKept, wasSet));
  batchState[stateAt(sae, 5u)] = 1u;`}
}
`;
}

/**
 * Clears the histogram after a resolve (dispatch (BATCH_GROUPS / BATCH_GROUP_THREADS, K)): a thread per group clears
 * its 256 bins where the group's sum is not 0, then the sum; after pass 1, the count of candidates too (pass 1 may
 * read them). Bindings: dims, topkMeta, batchHist.
 */
export function batchClearKernel(pass: 0 | 1): string {
  return /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read_write> batchHist: array<atomic<u32>>;

@compute @workgroup_size(${BATCH_GROUP_THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let sae = wg.y;
  let g = gid.x;
  if (g >= ${BATCH_GROUPS}u || kTotalOf(sae) == 0u) { return; }
  let hb = sae * ${BATCH_HIST_WORDS}u;
  ${pass === 1 ? `if (g == 0u) { atomicStore(&batchHist[hb + ${BATCH_BINS + BATCH_GROUPS}u], 0u); }` : ""}
  if (atomicLoad(&batchHist[hb + ${BATCH_BINS}u + g]) == 0u) { return; }
  for (var i = 0u; i < 256u; i++) { atomicStore(&batchHist[hb + g * 256u + i], 0u); }
  atomicStore(&batchHist[hb + ${BATCH_BINS}u + g], 0u);
}
`;
}

/**
 * Ties with T (key of ReLU(h) == T) per row of a chunk into rowTies. perThread (short rows, see perThreadRows): one
 * thread per row, dispatch (⌈rows/ROW_THREADS⌉, K); else one workgroup per row, dispatch (rows, K).
 * Bindings: dims, topkMeta, H, batchState, rowTies.
 */
export function batchTiesKernel(perThread: boolean): string {
  const head = /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read> H: array<f32>;
@group(0) @binding(3) var<storage, read> batchState: array<u32>;
@group(0) @binding(4) var<storage, read_write> rowTies: array<u32>;
`;
  if (perThread)
    return /* wgsl */ `${head}
@compute @workgroup_size(${ROW_THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let row = gid.x;
  let sae = wg.y;
  if (row >= dims.rows || kTotalOf(sae) == 0u) { return; }
  let n = dims.n;
  let base = (sae * dims.rowStride + row) * n;
  let T = batchState[stateAt(sae, 2u)];
  var c = 0u;
  for (var j = 0u; j < n; j++) { if (keyOf(max(H[base + j], 0.0)) == T) { c += 1u; } }
  rowTies[sae * dims.rowStride + row] = c;
}
`;
  return /* wgsl */ `${head}
var<workgroup> count: atomic<u32>;
var<workgroup> shareA: u32;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let row = wg.x;
  let sae = wg.y;
  if (tid == 0u) {
    shareA = kTotalOf(sae);
    atomicStore(&count, 0u);
  }
  if (workgroupUniformLoad(&shareA) == 0u) { return; }
  let n = dims.n;
  let base = (sae * dims.rowStride + row) * n;
  let T = batchState[stateAt(sae, 2u)];
  var c = 0u;
  for (var j = tid; j < n; j += WG) { if (keyOf(max(H[base + j], 0.0)) == T) { c += 1u; } }
  atomicAdd(&count, c);
  workgroupBarrier();
  if (tid == 0u) { rowTies[sae * dims.rowStride + row] = atomicLoad(&count); }
}
`;
}

/**
 * After a chunk's ties, before its apply (dispatch (1, K)): each row's count of ties becomes the ties kept before the
 * row over the batch (ties kept by earlier chunks, then an exclusive prefix sum over the chunk's rows), and ties kept
 * so far += the chunk's ties. One workgroup per SAE: each thread sums a contiguous segment of rows, thread 0 scans the
 * segment sums, each thread rewrites its segment.
 * Bindings: dims, topkMeta, batchState, rowTies.
 */
export const BATCH_ADVANCE = /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read_write> batchState: array<u32>;
@group(0) @binding(3) var<storage, read_write> rowTies: array<u32>;
// 64 threads, not 256: on a software adapter each thread of a workgroup with barriers is a fiber to switch to
const SCAN_WG = 64u;
var<workgroup> part: array<u32, SCAN_WG>;
var<workgroup> shareA: u32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let sae = wg.y;
  if (tid == 0u) { shareA = kTotalOf(sae); }
  if (workgroupUniformLoad(&shareA) == 0u) { return; }
  let rows = dims.rows;
  let rb = sae * dims.rowStride;
  let segLen = (rows + SCAN_WG - 1u) / SCAN_WG;
  let lo = min(rows, tid * segLen);
  let hi = min(rows, lo + segLen);
  var s = 0u;
  for (var r = lo; r < hi; r++) { s += rowTies[rb + r]; }
  part[tid] = s;
  workgroupBarrier();
  if (tid == 0u) {
    var acc = batchState[stateAt(sae, 3u)];
    for (var t = 0u; t < SCAN_WG; t++) {
      let v = part[t];
      part[t] = acc;
      acc += v;
    }
    batchState[stateAt(sae, 3u)] = acc;
  }
  workgroupBarrier();
  var before = part[tid];
  for (var r = lo; r < hi; r++) {
    let c = rowTies[rb + r];
    rowTies[rb + r] = before;
    before += c;
  }
}
`;

/**
 * Applies BatchTopK's selection to one chunk in place, after BATCH_ADVANCE: H ← ReLU(h) where key > T, or key == T
 * and the tie is among the first `still to keep` in (row, latent) order over the batch (rowTies: ties kept before the
 * row), else 0. perThread (short rows): one thread per row, dispatch (⌈rows/ROW_THREADS⌉, K), one pass that counts the
 * row's ties as it writes; else one workgroup per row, dispatch (rows, K), the tie cut found by segments.
 * Bindings: dims, topkMeta, H, batchState, rowTies.
 */
export function batchApplyKernel(perThread: boolean): string {
  const head = /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read_write> H: array<f32>;
@group(0) @binding(3) var<storage, read> batchState: array<u32>;
@group(0) @binding(4) var<storage, read> rowTies: array<u32>;
// Ties with T this row may keep: still to keep over the batch, less those kept before the row.
fn needOf(sae: u32, row: u32) -> u32 {
  let before = rowTies[sae * dims.rowStride + row];
  let toKeep = batchState[stateAt(sae, 1u)];
  return select(toKeep - before, 0u, before >= toKeep);
}
`;
  if (perThread)
    return /* wgsl */ `${head}
@compute @workgroup_size(${ROW_THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let row = gid.x;
  let sae = wg.y;
  if (row >= dims.rows || kTotalOf(sae) == 0u) { return; }
  let n = dims.n;
  let base = (sae * dims.rowStride + row) * n;
  let T = batchState[stateAt(sae, 2u)];
  let need = needOf(sae, row);
  var taken = 0u;
  for (var j = 0u; j < n; j++) {
    let f = max(H[base + j], 0.0);
    let key = keyOf(f);
    var kept = key > T;
    if (key == T && taken < need) {
      kept = true;
      taken += 1u;
    }
    H[base + j] = select(0.0, f, kept);
  }
}
`;
  return /* wgsl */ `${head}
var<workgroup> seg: array<u32, 256>;
var<workgroup> shareA: u32;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let row = wg.x;
  let sae = wg.y;
  if (tid == 0u) { shareA = kTotalOf(sae); }
  if (workgroupUniformLoad(&shareA) == 0u) { return; }
  let n = dims.n;
  let base = (sae * dims.rowStride + row) * n;
  let T = batchState[stateAt(sae, 2u)];
  let need = needOf(sae, row);
${COUNT_SEGMENT("keyOf(max(H[base + j], 0.0)) == T")}
  if (tid == 0u) {
${TIE_CUT("keyOf(max(H[base + j], 0.0)) == T")}
    shareA = J;
  }
  let J = workgroupUniformLoad(&shareA);
  for (var j = tid; j < n; j += WG) {
    let f = max(H[base + j], 0.0);
    let key = keyOf(f);
    H[base + j] = select(0.0, f, key > T || (key == T && j < J));
  }
}
`;
}

/**
 * Restarts the count of ties kept (dispatch (1, K)), so the apply sweep can run again over the same batch with the
 * same T (a forward-only sweep first, e.g. for AuxK's denominator, then the training sweep). Bindings: dims,
 * topkMeta, batchState.
 */
export const BATCH_RESTART = /* wgsl */ `${HEADER}${BATCH_HEADER}
@group(0) @binding(2) var<storage, read_write> batchState: array<u32>;

@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3u) {
  if (kTotalOf(wg.y) > 0u) { batchState[stateAt(wg.y, 3u)] = 0u; }
}
`;

// ---------------------------------------------------------------------------------------------------------------
// AuxK bookkeeping

/**
 * Dead counters after a step (dispatch (ceil(n/64), 1, K)): nDead[sae] += the latents dead during the step
 * (counter ≥ dead_after, i.e. AuxK's set; n_dead_train), then a latent that fired (fired > 0: its count of f > 0
 * over the step's examples) restarts at 0 and the others add B (saturating). SAEs of other kinds are skipped.
 * Bindings: dims, topkMeta, fired (f32 [K, n]), counters, nDead (u32 [K], cleared by the caller per step).
 */
export const DEAD_COUNTERS = /* wgsl */ `${HEADER}
@group(0) @binding(2) var<storage, read> fired: array<f32>;
@group(0) @binding(3) var<storage, read_write> counters: array<u32>;
@group(0) @binding(4) var<storage, read_write> nDead: array<atomic<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let j = gid.x;
  let sae = wg.z;
  let deadAfter = metaWord(sae, 4u);
  if (j >= dims.n || deadAfter == 0u) { return; }
  let i = sae * dims.n + j;
  let c = counters[i];
  if (c >= deadAfter) { atomicAdd(&nDead[sae], 1u); }
  let B = dims.B;
  counters[i] = select(select(c + B, 0xffffffffu, c > 0xffffffffu - B), 0u, fired[i] > 0.0);
}
`;

// ---------------------------------------------------------------------------------------------------------------
// Gradient clipping: torch's clip_grad_norm_ per SAE over all of its gradients.

/** Kahan–Babuška (Neumaier) compensated sum, as kernels.ts. */
const KADD = /* wgsl */ `
fn kadd(s: vec2f, v: f32) -> vec2f {
  let t = s.x + v;
  var c = s.y;
  if (abs(s.x) >= abs(v)) { c += (s.x - t) + v; } else { c += (v - t) + s.x; }
  return vec2f(t, c);
}
`;

/**
 * Σ g² of one gradient tensor, NORM_WORKGROUPS partials per SAE (dispatch (normWorkgroups(size), 1, K), at most
 * NORM_WORKGROUPS: a small tensor takes few workgroups, and the first zeroes the partials of those not dispatched;
 * dims.size = the tensor's elements per SAE, dims.slot = its index among the nSlots tensors). Bindings: dims,
 * topkMeta, grad, normPart.
 */
export const GRAD_NORM_PARTIAL = /* wgsl */ `${HEADER}${KADD}
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> normPart: array<f32>;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32, @builtin(num_workgroups) nwg: vec3u) {
  let sae = wg.z;
  let size = dims.size;
  let part = (sae * dims.nSlots + dims.slot) * ${NORM_WORKGROUPS}u;
  if (wg.x == 0u) { for (var w = nwg.x + tid; w < ${NORM_WORKGROUPS}u; w += WG) { normPart[part + w] = 0.0; } }
  var s = vec2f(0.0);
  for (var i = wg.x * WG + tid; i < size; i += nwg.x * WG) {
    let g = grad[sae * size + i];
    s = kadd(s, g * g);
  }
  red[tid] = s.x + s.y;
  workgroupBarrier();
  for (var w = 128u; w > 0u; w >>= 1u) {
    if (tid < w) { red[tid] += red[tid + w]; }
    workgroupBarrier();
  }
  if (tid == 0u) { normPart[part + wg.x] = red[0]; }
}
`;

/**
 * Per SAE (dispatch (1, 1, K)): norm = √Σ partials; scale = min(1, max_grad_norm/(norm + 1e-6)), 1 without a limit.
 * clip[sae] = (norm, scale). Bindings: dims, topkMeta, normPart, clip.
 */
export const GRAD_NORM_FINISH = /* wgsl */ `${HEADER}${KADD}
@group(0) @binding(2) var<storage, read> normPart: array<f32>;
@group(0) @binding(3) var<storage, read_write> clip: array<f32>;
var<workgroup> red: array<vec2f, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let sae = wg.z;
  let count = dims.nSlots * ${NORM_WORKGROUPS}u;
  var s = vec2f(0.0);
  for (var i = tid; i < count; i += WG) { s = kadd(s, normPart[sae * count + i]); }
  red[tid] = s;
  workgroupBarrier();
  if (tid == 0u) {
    var t = vec2f(0.0);
    for (var i = 0u; i < WG; i++) { t = kadd(kadd(t, red[i].x), red[i].y); }
    let norm = sqrt(t.x + t.y);
    let limit = bitcast<f32>(metaWord(sae, 5u));
    clip[sae * 2u] = norm;
    clip[sae * 2u + 1u] = select(1.0, min(1.0, limit / (norm + 1e-6)), limit > 0.0);
  }
}
`;

/** grad ← grad · scale of its SAE (dispatch (min(⌈size/256⌉, 65535), 1, K); grid-stride). Bindings: dims, topkMeta, clip, grad. */
export const GRAD_SCALE = /* wgsl */ `${HEADER}
@group(0) @binding(2) var<storage, read> clip: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32, @builtin(num_workgroups) nwg: vec3u) {
  let sae = wg.z;
  let scale = clip[sae * 2u + 1u];
  if (scale == 1.0) { return; }
  let size = dims.size;
  for (var i = wg.x * WG + tid; i < size; i += nwg.x * WG) { grad[sae * size + i] *= scale; }
}
`;
