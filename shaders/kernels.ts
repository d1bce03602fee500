/**
 * The WGSL kernels of one training step and of evaluate, one explicit kernel per formula of SAE.md (llm.c style).
 * The SAEs of one slab (shaders/fit.ts) are stacked in one buffer per tensor; workgroup_id.z (or .y) is the SAE
 * index within the slab, so one dispatch serves the slab and the batch x is read by all of them from one buffer.
 * A step streams the batch through in row chunks: dims.B rows starting at batch row dims.row0.
 *
 * Layout (all row-major, f32; K = SAEs of the slab, B = rows of the chunk):
 *   x [batch, d] (the whole batch); W_enc [K, d, n]; b_enc [K, n]; W_dec [K, n, d]; b_dec [K, d]; log_threshold [K, n]
 *   H [K, B, n] pre-activations of the chunk (f = act(h) is recomputed where needed, so it is never stored)
 *   G [K, B, n] dL/dh = dL/df·1{h > θ}, which is all GRAD_W_ENC needs: ReLU SAEs' GRAD_F writes it at once (the L1
 *     term included); JumpReLU's writes dL/df (the L0 term reaches θ only), which LATENT_COLS, its last reader as
 *     dL/df (dL/dθ), rewrites in place as dL/dh
 *   R [K, Pmax, B, d]: first e_q = x̂_q − x per prefix q, then, in place, the suffix sums R_q = Σ_{r ≥ q} e_r
 *     (latent j of block q feeds every x̂_r with r ≥ q, so dL/df_j = scale·R_q·W_dec[j])
 *   latentPart, residPart: per partial (dims.chunk rows) of the whole batch, written by the chunk holding it and
 *     summed (compensated) once all chunks ran; the weight gradients accumulate over the chunks (dims.accumulate).
 *   meta (u32): per SAE of the group 16 words [flags, P, coeff, bandwidth, scale, stepSize, sqrtBias2, 1/B, ...],
 *     then the block bounds [Kall, Pmax + 1] (Vanilla: [0, n]); SAE `sae` of the slab is dims.sae0 + sae there.
 *     The normalizations (scale, 1/B) are the whole batch's: the chunks sum to SAE.md's full-batch step.
 */

import { choiceFor, DEFAULT_CHOICE, matmul, type MatmulChoice, type MatmulOptions, type MatmulSpec } from "./matmul-template";

export type { MatmulChoice, MatmulSpec };
export const TILE = 64; // output tile of the matmuls (TILE × TILE, 16 × 16 threads, 4 × 4 outputs per thread)
export const META_WORDS = 16;
export const FLAG_JUMPRELU = 1;
export const FLAG_NORMALIZE = 2;
export const FLAG_REMOVE_PARALLEL = 4;

const HEADER = /* wgsl */ `
// B: rows of this chunk, starting at batch row row0; K: SAEs of this slab, the first being SAE sae0 of Kall;
// S: partials of the whole batch, chunk rows each, the first of this chunk being part0; accumulate: 0 on a step's
// first chunk (the weight gradients are written), 1 after (they are added to).
struct Dims {
  B: u32, d: u32, n: u32, K: u32, Pmax: u32, S: u32, chunk: u32, size: u32,
  row0: u32, part0: u32, sae0: u32, Kall: u32, accumulate: u32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> dims: Dims;
fn metaWord(sae: u32, i: u32) -> u32 { return saeMeta[(dims.sae0 + sae) * ${META_WORDS}u + i]; }
fn flags(sae: u32) -> u32 { return metaWord(sae, 0u); }
fn nPrefixes(sae: u32) -> u32 { return metaWord(sae, 1u); }
fn coeff(sae: u32) -> f32 { return bitcast<f32>(metaWord(sae, 2u)); }
fn bandwidth(sae: u32) -> f32 { return bitcast<f32>(metaWord(sae, 3u)); }
fn lossScale(sae: u32) -> f32 { return bitcast<f32>(metaWord(sae, 4u)); }
fn stepSize(sae: u32) -> f32 { return bitcast<f32>(metaWord(sae, 5u)); }
fn sqrtBias2(sae: u32) -> f32 { return bitcast<f32>(metaWord(sae, 6u)); }
fn invB(sae: u32) -> f32 { return bitcast<f32>(metaWord(sae, 7u)); }
fn isJump(sae: u32) -> bool { return (flags(sae) & ${FLAG_JUMPRELU}u) != 0u; }
fn bound(sae: u32, q: u32) -> u32 { return saeMeta[dims.Kall * ${META_WORDS}u + (dims.sae0 + sae) * (dims.Pmax + 1u) + q]; }
// The block of column j: the bounds past the first at or below j, counted over all P of them. Not a search that
// breaks at j's block: on SwiftShader with Dawn's robustness transform off, of two such searches in a row (a
// thread's first column's block, then its last's; called or written out alike; neighbouring threads leave them at
// different trips), the second gave a stale q, below the first, so the direct matmuls' per-thread block loops ran
// no block (test/bench/robustness-repro.ts). A loop whose trip count is the SAE's, the same for the whole
// workgroup, has no divergent exit to get wrong.
fn blockOf(sae: u32, j: u32) -> u32 {
  var q = 0u;
  let P = nPrefixes(sae);
  for (var i = 1u; i < P; i++) { q += select(0u, 1u, j >= bound(sae, i)); }
  return q;
}
// f = act(h) = h·1{h > θ}: θ = exp(log θ) for JumpReLU and θ = 0 for ReLU (max(h, 0)), from the theta buffer.
fn act(h: f32, theta: f32) -> f32 { return select(0.0, h, h > theta); }
fn act4(h: vec4f, theta: vec4f) -> vec4f { return select(vec4f(0.0), h, h > theta); }
// ∂f/∂h = 1{h > θ} (ReLU: 1{h > 0}; JumpReLU: H(h − θ)).
fn actGrad(h: f32, theta: f32) -> f32 { return select(0.0, 1.0, h > theta); }
// Kahan–Babuška (Neumaier) compensated sum: s.x is the sum, s.y the running compensation. Branchless (both terms, then
// a select: the same operations and roundings as an if/else): SwiftShader runs a branch that splits its SIMD lanes as
// both sides anyway, with masking on top; the select made LATENT_COLS ~40 % faster (BENCHMARKS.md §8).
fn kadd(s: vec2f, v: f32) -> vec2f {
  let t = s.x + v;
  return vec2f(t, s.y + select((v - t) + s.x, (s.x - t) + v, abs(s.x) >= abs(v)));
}
`;

const META = `@group(0) @binding(1) var<storage, read> saeMeta: array<u32>;`;

export { HEADER as KERNEL_HEADER };

const rw = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read_write> ${name}: array<f32>;`;
const ro = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read> ${name}: array<f32>;`;
const ro4 = (b: number, name: string) => `@group(0) @binding(${b}) var<storage, read> ${name}: array<vec4f>;`;
/** vec4 views `<name>_v4` of read-only operands, bound after a kernel's own bindings to the same buffers (read-only
 *  aliases are allowed); the matmuls' vec4 choices read through them. The engine and the tuner bind `<name>_v4` to
 *  `<name>`'s buffer (VEC4_VIEW). */
const views = (first: number, names: string[]) => names.map((name, i) => ro4(first + i, `${name}_v4`));
export const VEC4_VIEW = /_v4$/;

/** h = (x − b_dec) W_enc + b_enc. */
export const ENCODE: MatmulSpec = ({
  bindings: [META, ro(2, "x"), ro(3, "b_dec"), ro(4, "W_enc"), ro(5, "b_enc"), rw(6, "H"), ...views(7, ["x", "b_dec", "W_enc"])].join("\n"),
  M: "dims.B", N: "dims.n", KD: "dims.d",
  loadA: "x[(dims.row0 + gm) * dims.d + gk] - ak", aKFast: true,
  aK: "b_dec[sae * dims.d + gk]",
  loadB: "W_enc[(sae * dims.d + gk) * dims.n + gn]", bNFast: true,
  loadA4: "x_v4[((dims.row0 + gm) * dims.d + gk) / 4u] - ak",
  aK4: "b_dec_v4[(sae * dims.d + gk) / 4u]",
  loadB4: "W_enc_v4[((sae * dims.d + gk) * dims.n + gn) / 4u]",
  mode: "plain",
  epilogue: "H[(sae * dims.B + m) * dims.n + nn] = v + b_enc[sae * dims.n + nn];",
});

/** e_q = b_dec + Σ_{j < p_q} f_j W_dec[j] − x for every prefix q (cumulative over blocks). */
export const DECODE: MatmulSpec = ({
  bindings: [META, ro(2, "x"), ro(3, "b_dec"), ro(4, "W_dec"), ro(5, "H"), ro(6, "theta"), rw(7, "R"), ...views(8, ["W_dec", "H", "theta"])].join("\n"),
  M: "dims.B", N: "dims.d", KD: "dims.n",
  loadA: "act(H[(sae * dims.B + gm) * dims.n + gk], ak)", aKFast: true,
  aK: "theta[sae * dims.n + gk]",
  loadB: "W_dec[(sae * dims.n + gk) * dims.d + gn]", bNFast: true,
  loadA4: "act4(H_v4[((sae * dims.B + gm) * dims.n + gk) / 4u], ak)",
  aK4: "theta_v4[(sae * dims.n + gk) / 4u]",
  loadB4: "W_dec_v4[((sae * dims.n + gk) * dims.d + gn) / 4u]",
  mode: "kSegments",
  epilogue: "R[((sae * dims.Pmax + q) * dims.B + m) * dims.d + nn] = v + b_dec[sae * dims.d + nn] - x[(dims.row0 + m) * dims.d + nn];",
});

/**
 * dL/df_j = scale·R_{block(j)}·W_dec[j] (+ coeff/B where h > 0, ReLU's L1 term). ReLU SAEs store dL/dh = dL/df·1{h > 0}
 * at once (all LATENT_COLS and GRAD_W_ENC need; LATENT_COLS then writes G only for JumpReLU, whose dL/dθ needs dL/df
 * where h ≤ θ too). The per-SAE factors are read once per thread (prologue), and the epilogue is branchless: with them
 * read per output it cost ~25 % of the kernel at K = d_vit = 64 (test/bench/fusion.ts).
 */
export const GRAD_F: MatmulSpec = ({
  bindings: [META, ro(2, "R"), ro(3, "W_dec"), ro(4, "H"), rw(5, "G"), ...views(6, ["R", "W_dec"])].join("\n"),
  M: "dims.B", N: "dims.n", KD: "dims.d",
  loadA: "R[((sae * dims.Pmax + q) * dims.B + gm) * dims.d + gk]", aKFast: true,
  loadB: "W_dec[(sae * dims.n + gn) * dims.d + gk]", bNFast: false,
  loadA4: "R_v4[(((sae * dims.Pmax + q) * dims.B + gm) * dims.d + gk) / 4u]",
  loadBk4: "W_dec_v4[((sae * dims.n + gn) * dims.d + gk) / 4u]",
  mode: "nBlocks",
  prologue: "let gScale = lossScale(sae); let gL1 = coeff(sae) * invB(sae); let gRelu = !isJump(sae);",
  epilogue: /* wgsl */ `let idx = (sae * dims.B + m) * dims.n + nn;
        let g = gScale * v;
        G[idx] = select(g, select(0.0, g + gL1, H[idx] > 0.0), gRelu);`,
});

/** Writes a weight gradient on a step's first chunk and adds the chunk's share to it after. */
const accumulate = (target: string, value: string) => /* wgsl */ `{
        let slot = &${target};
        var g = ${value};
        if (dims.accumulate != 0u) { g += *slot; }
        *slot = g;
      }`;

/**
 * xT [d, B] ← this chunk's rows of x, transposed: GRAD_W_ENC's A operand read along its K (the rows) in consecutive
 * memory (from x, each k is a row d floats further). One thread per element; shared by the slab's SAEs.
 */
export const TRANSPOSE_X = /* wgsl */ `${HEADER}
${META}
${ro(2, "x")}
${rw(3, "xT")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let b = gid.x; let c = gid.y;
  if (b >= dims.B || c >= dims.d) { return; }
  xT[c * dims.B + b] = x[(dims.row0 + b) * dims.d + c];
}`;

/**
 * dL/dW_enc = (x − b_dec)ᵀ · dL/dh, this chunk's rows (G holds dL/dh = dL/df ⊙ act'(h) once LATENT_COLS ran; xT the
 * chunk's x transposed, TRANSPOSE_X).
 */
export const GRAD_W_ENC: MatmulSpec = ({
  bindings: [META, ro(2, "xT"), ro(3, "b_dec"), ro(4, "G"), rw(5, "gW_enc")].join("\n"),
  M: "dims.d", N: "dims.n", KD: "dims.B",
  loadA: "xT[gm * dims.B + gk] - ai", aKFast: true,
  aInv: "b_dec[sae * dims.d + gm]",
  loadB: "G[(sae * dims.B + gk) * dims.n + gn]",
  bNFast: true,
  mode: "plain",
  epilogue: accumulate("gW_enc[(sae * dims.d + m) * dims.n + nn]", "v"),
});

/**
 * dL/dW_dec[j] = scale·Σ_b f_bj R_{block(j)}[b], this chunk's rows, computed as its transpose [d, n] (the latents
 * along N, written back transposed): in nBlocks mode each thread of a direct kernel runs only its own columns'
 * blocks, where along M (mBlocks) a tile runs every block it spans, up to P× the work for Matryoshka.
 */
export const GRAD_W_DEC: MatmulSpec = ({
  bindings: [META, ro(2, "H"), ro(3, "theta"), ro(4, "R"), rw(5, "gW_dec"), ...views(6, ["H", "theta"])].join("\n"),
  M: "dims.d", N: "dims.n", KD: "dims.B",
  loadA: "R[((sae * dims.Pmax + q) * dims.B + gk) * dims.d + gm]", aKFast: false,
  loadB: "act(H[(sae * dims.B + gk) * dims.n + gn], bi)", bNFast: true,
  bInv: "theta[sae * dims.n + gn]",
  loadB4: "act4(H_v4[((sae * dims.B + gk) * dims.n + gn) / 4u], bi)",
  bInv4: "theta_v4[(sae * dims.n + gn) / 4u]",
  mode: "nBlocks",
  epilogue: accumulate("gW_dec[(sae * dims.n + nn) * dims.d + m]", "lossScale(sae) * v"),
});

/** W_dec rows ← row / ‖row‖₂ (SAEs with normalize_w_dec). One thread per row. */
export const NORMALIZE_ROWS = /* wgsl */ `${HEADER}
${META}
${rw(2, "W_dec")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let sae = gid.z; let j = gid.x;
  if (j >= dims.n || (flags(sae) & ${FLAG_NORMALIZE}u) == 0u) { return; }
  let base = (sae * dims.n + j) * dims.d;
  var s = 0.0;
  for (var c = 0u; c < dims.d; c++) { s = fma(W_dec[base + c], W_dec[base + c], s); }
  let inv = 1.0 / sqrt(s);
  for (var c = 0u; c < dims.d; c++) { W_dec[base + c] = W_dec[base + c] * inv; }
}`;

/** θ per latent: exp(log θ) for JumpReLU, 0 for ReLU (so act(h) = h·1{h > θ} serves both without a branch). */
export const THRESHOLDS = /* wgsl */ `${HEADER}
${META}
${ro(2, "log_threshold")}
${rw(3, "theta")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x; let sae = gid.z;
  if (j >= dims.n) { return; }
  theta[sae * dims.n + j] = select(0.0, exp(log_threshold[sae * dims.n + j]), isJump(sae));
}`;

/** In place e_q → R_q = Σ_{r ≥ q} e_r; partial sums per `dims.chunk` rows (partial dims.part0 + gid.y of the batch): Σ e² (mse) and Σ R_0 (for dL/db_dec). */
export const RESID_COLS = /* wgsl */ `${HEADER}
${META}
${rw(2, "R")}
${rw(3, "residPart")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x; let s = gid.y; let sae = gid.z;
  if (c >= dims.d) { return; }
  let P = nPrefixes(sae);
  var sq = vec2f(0.0); var r0 = vec2f(0.0);
  let end = min(dims.B, (s + 1u) * dims.chunk);
  for (var b = s * dims.chunk; b < end; b++) {
    var acc = 0.0;
    for (var q = P; q > 0u; q--) {
      let idx = ((sae * dims.Pmax + q - 1u) * dims.B + b) * dims.d + c;
      let e = R[idx];
      sq = kadd(sq, e * e);
      acc += e;
      R[idx] = acc;
    }
    r0 = kadd(r0, acc);
  }
  let p = dims.part0 + s;
  residPart[(sae * dims.S + p) * dims.d + c] = sq.x + sq.y;
  residPart[((dims.K + sae) * dims.S + p) * dims.d + c] = r0.x + r0.y;
}`;

/**
 * Per latent column and partial (dims.chunk rows) of this chunk: Σ dL/dh (b_enc), Σ dL/dθ (JumpReLU), #{f > 0}, Σ f;
 * and for JumpReLU G ← dL/dh in place once read (GRAD_W_ENC's B operand: one load per element there, not G, H and θ's
 * compare, for every one of a tile's row threads that reads it). ReLU SAEs' G is dL/dh already (GRAD_F): not rewritten.
 */
export const LATENT_COLS = /* wgsl */ `${HEADER}
${META}
${ro(2, "H")}
${ro(3, "theta")}
${rw(4, "G")}
${rw(5, "latentPart")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x; let s = gid.y; let sae = gid.z;
  if (j >= dims.n) { return; }
  let th = theta[sae * dims.n + j];
  let eps = bandwidth(sae);
  let jump = isJump(sae);
  let sparsityGrad = coeff(sae) * invB(sae);
  var gb = vec2f(0.0); var gt = vec2f(0.0); var cnt = 0.0; var l1 = vec2f(0.0);
  let end = min(dims.B, (s + 1u) * dims.chunk);
  for (var b = s * dims.chunk; b < end; b++) {
    let idx = (sae * dims.B + b) * dims.n + j;
    let h = H[idx]; let g = G[idx];
    let f = act(h, th);
    let gh = g * actGrad(h, th);
    gb = kadd(gb, gh);
    if (jump) { G[idx] = gh; }
    if (jump && abs((h - th) / eps) < 0.5) {
      // ∂f/∂θ = −(θ/ε)K, ∂H/∂θ = −(1/ε)K, rectangle kernel K = 1 here.
      gt = kadd(gt, -(g * th + sparsityGrad) / eps);
    }
    if (f > 0.0) { cnt += 1.0; l1 = kadd(l1, f); }
  }
  let p = dims.part0 + s;
  latentPart[(sae * dims.S + p) * dims.n + j] = gb.x + gb.y;
  latentPart[((dims.K + sae) * dims.S + p) * dims.n + j] = gt.x + gt.y;
  latentPart[((2u * dims.K + sae) * dims.S + p) * dims.n + j] = cnt;
  latentPart[((3u * dims.K + sae) * dims.S + p) * dims.n + j] = l1.x + l1.y;
}`;

/** Sums the partials of the whole batch (after the step's last chunk): dL/db_enc, dL/dlog θ = θ·dL/dθ, and the per-column L0 count and L1 sum for the step metrics. */
export const LATENT_FINISH = /* wgsl */ `${HEADER}
${META}
${ro(2, "theta")}
${ro(3, "latentPart")}
${rw(4, "gb_enc")}
${rw(5, "glog_threshold")}
${rw(6, "colStats")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x; let sae = gid.z;
  if (j >= dims.n) { return; }
  var t: array<vec2f, 4>;
  for (var k = 0u; k < 4u; k++) {
    for (var s = 0u; s < dims.S; s++) { t[k] = kadd(t[k], latentPart[((k * dims.K + sae) * dims.S + s) * dims.n + j]); }
  }
  gb_enc[sae * dims.n + j] = t[0].x + t[0].y;
  glog_threshold[sae * dims.n + j] = select(0.0, theta[sae * dims.n + j] * (t[1].x + t[1].y), isJump(sae));
  colStats[sae * dims.n + j] = t[2].x + t[2].y;
  colStats[(dims.K + sae) * dims.n + j] = t[3].x + t[3].y;
}`;

/** dL/db_dec = scale·Σ_b R_0 − W_enc·(dL/db_enc); and the per-column Σ e² for the step metrics. */
export const GRAD_B_DEC = /* wgsl */ `${HEADER}
${META}
${ro(2, "residPart")}
${ro(3, "W_enc")}
${ro(4, "gb_enc")}
${rw(5, "gb_dec")}
${rw(6, "colStats")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x; let sae = gid.z;
  if (c >= dims.d) { return; }
  var sq = vec2f(0.0); var r0 = vec2f(0.0);
  for (var s = 0u; s < dims.S; s++) {
    sq = kadd(sq, residPart[(sae * dims.S + s) * dims.d + c]);
    r0 = kadd(r0, residPart[((dims.K + sae) * dims.S + s) * dims.d + c]);
  }
  var w = vec2f(0.0);
  for (var j = 0u; j < dims.n; j++) { w = kadd(w, W_enc[(sae * dims.d + c) * dims.n + j] * gb_enc[sae * dims.n + j]); }
  gb_dec[sae * dims.d + c] = lossScale(sae) * (r0.x + r0.y) - (w.x + w.y);
  colStats[2u * dims.K * dims.n + sae * dims.d + c] = sq.x + sq.y;
}`;

/** g_j ← g_j − (g_j · w_j) w_j for every W_dec row (SAEs with remove_parallel_grads). */
export const REMOVE_PARALLEL = /* wgsl */ `${HEADER}
${META}
${ro(2, "W_dec")}
${rw(3, "gW_dec")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let sae = gid.z; let j = gid.x;
  if (j >= dims.n || (flags(sae) & ${FLAG_REMOVE_PARALLEL}u) == 0u) { return; }
  let base = (sae * dims.n + j) * dims.d;
  var dot = 0.0;
  for (var c = 0u; c < dims.d; c++) { dot = fma(gW_dec[base + c], W_dec[base + c], dot); }
  for (var c = 0u; c < dims.d; c++) { gW_dec[base + c] = gW_dec[base + c] - dot * W_dec[base + c]; }
}`;

/** torch Adam (bias-corrected, no weight decay) on one stacked tensor of `dims.size` elements per SAE. */
export const ADAM_KERNEL = /* wgsl */ `${HEADER}
${META}
${rw(2, "p")}
${ro(3, "g")}
${rw(4, "m")}
${rw(5, "v")}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 256u;
  let sae = gid.z;
  if (i >= dims.size) { return; }
  let k = sae * dims.size + i;
  let gr = g[k];
  let mk = 0.9 * m[k] + 0.1 * gr;
  let vk = 0.999 * v[k] + 0.001 * gr * gr;
  m[k] = mk; v[k] = vk;
  p[k] = p[k] - stepSize(sae) * mk / (sqrt(vk) / sqrtBias2(sae) + 1e-8);
}`;

/** evaluate, per latent: count of f > 0 (u32, exact) and Σ f (compensated), accumulated over batches. */
export const EVAL_LATENT = /* wgsl */ `${HEADER}
${META}
${ro(2, "H")}
${ro(3, "theta")}
@group(0) @binding(4) var<storage, read_write> evalCount: array<u32>;
${rw(5, "evalSum")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x; let sae = gid.z;
  if (j >= dims.n) { return; }
  let th = theta[sae * dims.n + j];
  let o = sae * dims.n + j;
  var cnt = 0u; var s = vec2f(0.0);
  for (var b = 0u; b < dims.B; b++) {
    let f = act(H[(sae * dims.B + b) * dims.n + j], th);
    if (f > 0.0) { cnt++; s = kadd(s, f); }
  }
  evalCount[o] = evalCount[o] + cnt;
  var acc = vec2f(evalSum[2u * o], evalSum[2u * o + 1u]);
  acc = kadd(acc, s.x); acc = kadd(acc, s.y);
  evalSum[2u * o] = acc.x; evalSum[2u * o + 1u] = acc.y;
}`;

/**
 * evaluate, per input column: Σ e² per SAE, and (once, by the group's SAE 0) Σ (x − μ0) and Σ (x − μ0)², shifted
 * by the first batch's mean μ0 so that Σ‖x − x̄‖² = Σ(x − μ0)² − N‖x̄ − μ0‖² does not cancel.
 * evalResid: [K, d, 2] (sum, compensation); xStats: [d, 4].
 */
export const EVAL_RESID = /* wgsl */ `${HEADER}
${META}
${ro(2, "R")}
${ro(3, "x")}
${ro(4, "mu0")}
${rw(5, "evalResid")}
${rw(6, "xStats")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x; let sae = gid.z;
  if (c >= dims.d) { return; }
  var sq = vec2f(0.0);
  for (var b = 0u; b < dims.B; b++) { let e = R[(sae * dims.Pmax * dims.B + b) * dims.d + c]; sq = kadd(sq, e * e); }
  let o = 2u * (sae * dims.d + c);
  var acc = vec2f(evalResid[o], evalResid[o + 1u]);
  acc = kadd(acc, sq.x); acc = kadd(acc, sq.y);
  evalResid[o] = acc.x; evalResid[o + 1u] = acc.y;
  if (dims.sae0 + sae == 0u) {
    var s1 = vec2f(0.0); var s2 = vec2f(0.0);
    for (var b = 0u; b < dims.B; b++) { let y = x[(dims.row0 + b) * dims.d + c] - mu0[c]; s1 = kadd(s1, y); s2 = kadd(s2, y * y); }
    let xo = 4u * c;
    var a1 = vec2f(xStats[xo], xStats[xo + 1u]); a1 = kadd(a1, s1.x); a1 = kadd(a1, s1.y);
    var a2 = vec2f(xStats[xo + 2u], xStats[xo + 3u]); a2 = kadd(a2, s2.x); a2 = kadd(a2, s2.y);
    xStats[xo] = a1.x; xStats[xo + 1u] = a1.y; xStats[xo + 2u] = a2.x; xStats[xo + 3u] = a2.y;
  }
}`;

/** The five matmul-shaped kernels of a step, by name (the autotuner times each one with its own bindings). */
export const MATMUL_SPECS = { ENCODE, DECODE, GRAD_F, GRAD_W_ENC, GRAD_W_DEC } as const;
export type MatmulName = keyof typeof MATMUL_SPECS;
export const MATMUL_NAMES = Object.keys(MATMUL_SPECS) as MatmulName[];

/**
 * A block-mode spec (kSegments, nBlocks) as one plain pass over block q = 0: what a group without Matryoshka SAEs
 * runs (every SAE one block [0, n), Pmax 1), without the block loop's bounds and the per-load block masks (GRAD_F
 * ~10 % faster at 4 × 4 per thread on SwiftShader: test/bench/fusion.ts, its "blocks" variant against "step").
 */
export function oneBlock(s: MatmulSpec): MatmulSpec {
  if (s.mode === "plain") return s;
  const out: MatmulSpec = { ...s, mode: "plain" };
  for (const key of ["loadA", "loadB", "loadA4", "loadB4", "loadBk4", "epilogue", "epilogue4", "aK", "aK4", "aInv", "bInv", "bInv4", "prologue"] as const)
    if (s[key] !== undefined) out[key] = s[key].replace(/\bq\b/g, "0u");
  return out;
}

/** The spec a step runs for matmul `name`: its block form when the group has Matryoshka SAEs (`blocks`), else oneBlock's. */
export const matmulSpec = (name: MatmulName, blocks: boolean): MatmulSpec => (blocks ? MATMUL_SPECS[name] : oneBlock(MATMUL_SPECS[name]));

/** Output rows, columns and reduction length of each step matmul at a shape (the autotuner's and the grid's sizes). */
export function matmulShape(name: MatmulName, s: { d: number; n: number; B: number }): { M: number; N: number; KD: number } {
  const { d, n, B } = s;
  return { ENCODE: { M: B, N: n, KD: d }, DECODE: { M: B, N: d, KD: n }, GRAD_F: { M: B, N: n, KD: d }, GRAD_W_ENC: { M: d, N: n, KD: B }, GRAD_W_DEC: { M: d, N: n, KD: B } }[name];
}

/** One choice for all five, or a choice per matmul (missing ones take DEFAULT_CHOICE); `direct` is the old boolean. */
export type MatmulChoices = Partial<Record<MatmulName, MatmulChoice>>;

/**
 * The five matmul-shaped kernels of a step. `choices`: true/false (the barrier-free direct variant or the tiled one,
 * 64 × 64, 4 × 4, BK 16, as before the tuner), or a MatmulChoice per matmul (the tuner's). `shape` lets vec4
 * choices use their vec4 paths where the spec has them. `blocks`: whether the group has Matryoshka SAEs (more than one
 * prefix; see matmulSpec).
 */
export function matmulKernels(choices: boolean | MatmulChoices, shape?: { d: number; n: number; B: number }, opts?: MatmulOptions, blocks = true): Record<MatmulName, string> {
  const out = {} as Record<MatmulName, string>;
  for (const name of MATMUL_NAMES) {
    const c = typeof choices === "boolean" ? choiceFor(choices) : (choices[name] ?? DEFAULT_CHOICE);
    out[name] = matmul(matmulSpec(name, blocks), c, HEADER, shape && matmulShape(name, shape), opts);
  }
  return out;
}

/** The step matmuls' MatmulOptions on a device: A read once per quad (`quad`) on software adapters that have
 *  subgroups (SwiftShader: a quad is its 4-lane SIMD group; GPUs run the tiled kernels). The engine and the tuner
 *  both take it, so the tuner times the engine's own kernels. */
export function matmulOptions(device: GPUDevice, software: boolean): MatmulOptions {
  return { quad: software && device.features.has("subgroups") };
}

/** A plain C[M, N] = A[M, K]·B[K, N] from the same generator (dims.B = M, dims.d = K, dims.n = N): a roofline
 *  candidate for the benchmark that shares the step matmuls' code shape. A4 and Bm4 are vec4 views of A and Bm
 *  (bindings 5 and 6; bind the same buffers), used by vec4 choices. */
export const PLAIN_MATMUL: MatmulSpec = {
  bindings: [META, ro(2, "A"), ro(3, "Bm"), rw(4, "C"), ro4(5, "A4"), ro4(6, "Bm4")].join("\n"),
  M: "dims.B", N: "dims.n", KD: "dims.d",
  loadA: "A[gm * dims.d + gk]", aKFast: true,
  loadB: "Bm[gk * dims.n + gn]", bNFast: true,
  mode: "plain",
  epilogue: "C[m * dims.n + nn] = v;",
  loadA4: "A4[(gm * dims.d + gk) / 4u]",
  loadB4: "Bm4[(gk * dims.n + gn) / 4u]",
};

export function plainMatmul(choice: boolean | MatmulChoice, shape?: { N: number; KD: number }, opts?: MatmulOptions): string {
  return matmul(PLAIN_MATMUL, choice, HEADER, shape, opts);
}
