/**
 * The one matmul generator behind every matmul-shaped kernel: C[M, N] = A[M, KD]·B[KD, N] where A and B are WGSL
 * expressions (fused operands) and the output goes through an epilogue statement. One spec (what to compute) ×
 * one MatmulChoice (how: tile, outputs per thread, BK, workgroup-tiled or direct, vec4) = one kernel; the autotuner
 * (autotune.ts) times the choices an adapter allows and keeps the fastest per matmul.
 *
 * Thread layout: a workgroup computes a tileM × tileN output tile with (tileN / outN) × (tileM / outM) threads;
 * thread (tx, ty) owns the rows m0 + ty + (tileM / outM)·i (strided, i < outM) and the columns in groups of four
 * contiguous ones, n0 + 4·(tx + (tileN / outN)·c) + l (c < outN / 4, l < 4): contiguous for vec4 loads and
 * stores, and neighbouring threads read neighbouring vec4s.
 */

export interface MatmulSpec {
  bindings: string;
  M: string;
  N: string;
  KD: string;
  /** A(gm, gk) given gm < M and gk in range; aKFast: consecutive k are contiguous in memory. */
  loadA: string;
  aKFast: boolean;
  loadB: string;
  bNFast: boolean;
  /** plain: one pass. kSegments: the K loop runs block by block and the epilogue runs after each block (cumulative).
   *  nBlocks / mBlocks: the output column / row j belongs to block q; A or B are read for that q. */
  mode: "plain" | "kSegments" | "nBlocks" | "mBlocks";
  /** Statement run per output (m, nn) with acc value `v` (and `q` in kSegments mode). */
  epilogue: string;
  /** Optional vec4 forms (used by `vec4` choices when N, and for loadA4 KD, are multiples of 4):
   *  loadB4: vec4f of B(gk, gn .. gn + 3) (bNFast specs); loadA4: vec4f of A(gm, gk .. gk + 3) (aKFast, plain mode);
   *  epilogue4: statement per (m, nn .. nn + 3) with `v4: vec4f`. */
  loadB4?: string;
  loadA4?: string;
  epilogue4?: string;
}

/** How a matmul is computed. `direct`: no workgroup memory or barriers (each thread reads its operands from
 *  memory; SwiftShader runs barriers as fiber switches, so this wins there); bk is then unused. */
export interface MatmulChoice {
  tileM: 64 | 128;
  tileN: 64 | 128;
  outM: 4 | 8;
  outN: 4 | 8;
  bk: 8 | 16 | 32;
  direct: boolean;
  vec4: boolean;
}

/** The engine's kernel before the tuner: 64 × 64 tiles, 4 × 4 per thread, BK 16. */
export const DEFAULT_CHOICE: MatmulChoice = { tileM: 64, tileN: 64, outM: 4, outN: 4, bk: 16, direct: false, vec4: false };

export function choiceFor(direct: boolean): MatmulChoice {
  return { ...DEFAULT_CHOICE, direct };
}

/** A short stable name, e.g. "128x64/8x4/k16/tiled/v4". */
export function choiceId(c: MatmulChoice): string {
  return `${c.tileM}x${c.tileN}/${c.outM}x${c.outN}/k${c.bk}/${c.direct ? "direct" : "tiled"}${c.vec4 ? "/v4" : ""}`;
}

export function parseChoiceId(id: string): MatmulChoice | null {
  const m = /^(64|128)x(64|128)\/([48])x([48])\/k(8|16|32)\/(direct|tiled)(\/v4)?$/.exec(id);
  if (!m) return null;
  const c = { tileM: +m[1], tileN: +m[2], outM: +m[3], outN: +m[4], bk: +m[5], direct: m[6] === "direct", vec4: !!m[7] } as MatmulChoice;
  return validChoice(c) ? c : null;
}

export const threadsOf = (c: MatmulChoice) => (c.tileM / c.outM) * (c.tileN / c.outN);
export const workgroupBytes = (c: MatmulChoice) => (c.direct ? 0 : 4 * c.bk * (c.tileM + c.tileN));

/** Whether the generator can build this choice within WebGPU's default limits (256 invocations, 16 KiB). */
export function validChoice(c: MatmulChoice, limits = { invocations: 256, workgroupBytes: 16384 }): boolean {
  const t = threadsOf(c);
  return t >= 32 && t <= limits.invocations && workgroupBytes(c) <= limits.workgroupBytes;
}

/** Every choice the generator builds (tile 64/128 × 64/128, outputs 4×4/8×4/8×8, BK 8/16/32 or direct, ± vec4). */
export function allChoices(limits?: { invocations: number; workgroupBytes: number }): MatmulChoice[] {
  const out: MatmulChoice[] = [];
  const tiles = [[64, 64], [128, 64], [64, 128], [128, 128]] as const;
  const outs = [[4, 4], [8, 4], [8, 8]] as const;
  for (const [tileM, tileN] of tiles)
    for (const [outM, outN] of outs)
      for (const vec4 of [false, true]) {
        for (const bk of [8, 16, 32] as const) out.push({ tileM, tileN, outM, outN, bk, direct: false, vec4 });
        out.push({ tileM, tileN, outM, outN, bk: 16, direct: true, vec4 });
      }
  return out.filter((c) => validChoice(c, limits));
}

/** Whether a choice's vec4 paths apply to this spec (it declares them) at this shape. */
export function vec4Applies(s: MatmulSpec, shape: { N: number; KD: number }): { b: boolean; a: boolean; store: boolean } {
  return {
    b: !!s.loadB4 && s.bNFast && shape.N % 4 === 0,
    a: !!s.loadA4 && s.aKFast && s.mode === "plain" && shape.KD % 4 === 0,
    store: !!s.epilogue4 && shape.N % 4 === 0,
  };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * WGSL for spec `s` computed as `choice` (a boolean is the old interface: direct or tiled, 64 × 64, 4 × 4, BK 16).
 * `header` is prepended (the engine's Dims struct and helpers, which the spec's expressions use). `shape` (N, KD)
 * decides whether vec4 paths apply; without it they are off.
 */
export function matmul(s: MatmulSpec, choice: MatmulChoice | boolean, header: string, shape?: { N: number; KD: number }): string {
  const c = typeof choice === "boolean" ? choiceFor(choice) : choice;
  if (!validChoice(c, { invocations: 1024, workgroupBytes: 65536 })) throw new Error(`matmul: invalid choice ${choiceId(c)}`);
  const v4 = c.vec4 && shape ? vec4Applies(s, shape) : { a: false, b: false, store: false };
  const TX = c.tileN / c.outN; // threads along n
  const TY = c.tileM / c.outM; // threads along m
  const T = TX * TY;
  const CG = c.outN / 4; // column groups of four per thread
  const BK = c.bk;
  const rows = range(c.outM);
  const groups = range(CG);
  const acc = (i: number, g: number) => `acc${i}_${g}`;
  const aMask = s.mode === "mBlocks" ? " && gm >= rLo && gm < rHi" : "";
  const bMask = s.mode === "nBlocks" ? " && gn >= rLo && gn < rHi" : "";
  // substitutes an index variable by an expression, parenthesized ("gk * n" with gk = "k + 1u" is (k + 1u) * n)
  const sub = (expr: string, from: string, to: string) => expr.replace(new RegExp(`\\b${from}\\b`, "g"), `(${to})`);
  const loadA = (gm: string, gk: string) => sub(sub(s.loadA, "gm", gm), "gk", gk);
  const loadB = (gk: string, gn: string) => sub(sub(s.loadB, "gk", gk), "gn", gn);
  const colExpr = (g: number) => `n0 + 4u * (tx + ${TX * g}u)`;
  const rowExpr = (i: number) => `m0 + ty + ${TY * i}u`;

  const fmaRows = (aOf: (i: number) => string, bOf: (g: number) => string) =>
    rows.map((i) => groups.map((g) => `${acc(i, g)} = fma(vec4f(${aOf(i)}), ${bOf(g)}, ${acc(i, g)});`).join(" ")).join("\n          ");

  // Workgroup-tiled: stage A [BK][tileM] and B [BK][tileN] tiles in workgroup memory, then each thread reads its
  // outM A values and outN B values per k from there.
  const tileLoop = (kLo: string, kHi: string) => {
    // loops rather than unrolled copies: the fused load expressions are long, and compile time (SwiftShader's
    // JIT most of all) grows with the code
    const aLoads = [`for (var r = 0u; r < ${(c.tileM * BK) / T}u; r++) { let e = lid + ${T}u * r;
          ${s.aKFast ? `let am = e / ${BK}u; let ak = e % ${BK}u;` : `let am = e % ${c.tileM}u; let ak = e / ${c.tileM}u;`}
          let gm = m0 + am; let gk = k0 + ak;
          var av = 0.0;
          if (gm < M && gk < kHi${aMask}) { av = ${s.loadA}; }
          As[ak * ${c.tileM}u + am] = av; }`];
    let bLoads: string[];
    if (v4.b) {
      // one vec4 per load along n (bNFast, N % 4 == 0): lanes past N or outside the block are masked to 0
      bLoads = [`for (var r = 0u; r < ${Math.ceil((c.tileN * BK) / 4 / T)}u; r++) { let e = lid + ${T}u * r;
          if (e < ${(c.tileN * BK) / 4}u) {
            let bk = e / ${c.tileN / 4}u; let bn = 4u * (e % ${c.tileN / 4}u);
            let gn = n0 + bn; let gk = k0 + bk;
            var bv = vec4f(0.0);
            if (gn < N && gk < kHi) { bv = ${s.loadB4}; }
            ${bMask ? `bv = select(vec4f(0.0), bv, (vec4u(gn) + vec4u(0u, 1u, 2u, 3u) >= vec4u(rLo)) & (vec4u(gn) + vec4u(0u, 1u, 2u, 3u) < vec4u(rHi)));` : ""}
            let o = bk * ${c.tileN}u + bn;
            Bs[o] = bv.x; Bs[o + 1u] = bv.y; Bs[o + 2u] = bv.z; Bs[o + 3u] = bv.w;
          } }`];
    } else {
      bLoads = [`for (var r = 0u; r < ${(c.tileN * BK) / T}u; r++) { let e = lid + ${T}u * r;
          ${s.bNFast ? `let bk = e / ${c.tileN}u; let bn = e % ${c.tileN}u;` : `let bk = e % ${BK}u; let bn = e / ${BK}u;`}
          let gn = n0 + bn; let gk = k0 + bk;
          var bv = 0.0;
          if (gn < N && gk < kHi${bMask}) { bv = ${s.loadB}; }
          Bs[bk * ${c.tileN}u + bn] = bv; }`];
    }
    const bRead = (g: number) => `kk * ${c.tileN}u + 4u * (tx + ${TX * g}u)`;
    return /* wgsl */ `
    {
      let kHi = ${kHi};
      var k0 = ${kLo};
      loop {
        if (k0 >= kHi) { break; }
        ${aLoads.join("\n        ")}
        ${bLoads.join("\n        ")}
        workgroupBarrier();
        for (var kk = 0u; kk < ${BK}u; kk++) {
          ${groups.map((g) => `let bo${g} = ${bRead(g)}; let b${g} = vec4f(Bs[bo${g}], Bs[bo${g} + 1u], Bs[bo${g} + 2u], Bs[bo${g} + 3u]);`).join("\n          ")}
          ${fmaRows((i) => `As[kk * ${c.tileM}u + ty + ${TY * i}u]`, (g) => `b${g}`)}
        }
        workgroupBarrier();
        k0 += ${BK}u;
      }
    }`;
  };

  // Direct: each thread reads its outM A values and outN B values per k straight from memory (no barriers).
  // Out-of-range reads are clamped by WGSL's robust access and then discarded by select: no branches.
  const directLoop = (kLo: string, kHi: string) => {
    const lanes = range(4);
    const bVec = (g: number, k: string) =>
      v4.b
        ? `select(vec4f(0.0), ${sub(sub(s.loadB4!, "gk", k), "gn", `gn${g}`)}, okB${g})`
        : `vec4f(${lanes.map((l) => `select(0.0, ${loadB(k, `gn${g}_${l}`)}, okB${g}[${l}])`).join(", ")})`;
    const step = (k: string) => `{
          ${groups.map((g) => `let b${g} = ${bVec(g, k)};`).join("\n          ")}
          ${fmaRows((i) => `select(0.0, ${loadA(`gm${i}`, k)}, okA${i})`, (g) => `b${g}`)}
        }`;
    // vec4 along k for A (plain mode, aKFast): 4 k per iteration from one load per row
    const stepA4 = (k: string) => `{
          ${rows.map((i) => `let a${i} = select(vec4f(0.0), ${sub(sub(s.loadA4!, "gm", `gm${i}`), "gk", k)}, okA${i});`).join("\n          ")}
          ${range(4)
            .map((u) => `{ ${groups.map((g) => `let b${g} = ${bVec(g, `${k} + ${u}u`)};`).join(" ")}
          ${fmaRows((i) => `a${i}[${u}]`, (g) => `b${g}`)} }`)
            .join("\n          ")}
        }`;
    const okB = (g: number) =>
      v4.b
        ? `let gn${g} = ${colExpr(g)}; let okB${g} = vec4<bool>(${lanes.map((l) => `gn${g} + ${l}u < N${bMask ? ` && gn${g} + ${l}u >= rLo && gn${g} + ${l}u < rHi` : ""}`).join(", ")});`
        : `${lanes.map((l) => `let gn${g}_${l} = ${colExpr(g)} + ${l}u;`).join(" ")} let okB${g} = vec4<bool>(${lanes.map((l) => `gn${g}_${l} < N${sub(bMask, "gn", `gn${g}_${l}`)}`).join(", ")});`;
    return /* wgsl */ `
    {
      let kHi = ${kHi};
      ${rows.map((i) => `let gm${i} = ${rowExpr(i)}; let okA${i} = gm${i} < M${sub(aMask, "gm", `gm${i}`)};`).join("\n      ")}
      ${groups.map(okB).join("\n      ")}
      var gk = ${kLo};
      // four k per iteration while they last (less loop overhead), then one at a time
      for (; gk + 4u <= kHi; gk += 4u) {
        ${v4.a ? stepA4("gk") : range(4).map((u) => step(`gk + ${u}u`)).join("\n        ")}
      }
      for (; gk < kHi; gk++) { ${step("gk")} }
    }`;
  };
  const loop = c.direct ? directLoop : tileLoop;

  const epilogue = /* wgsl */ `
    ${rows
      .map(
        (i) => `{
      let m = ${rowExpr(i)};
      if (m < M) {
        ${groups
          .map((g) =>
            v4.store
              ? `{ let nn = ${colExpr(g)}; if (nn < N) { let v4 = ${acc(i, g)}; ${s.epilogue4} } }`
              : `for (var l = 0u; l < 4u; l++) { let nn = ${colExpr(g)} + l; if (nn < N) { let v = ${acc(i, g)}[l]; ${s.epilogue} } }`,
          )
          .join("\n        ")}
      }
    }`,
      )
      .join("\n    ")}`;
  let body: string;
  if (s.mode === "plain") body = loop("0u", "KD") + epilogue;
  else if (s.mode === "kSegments") body = `for (var q = 0u; q < nPrefixes(sae); q++) { ${loop("bound(sae, q)", "bound(sae, q + 1u)")} ${epilogue} }`;
  else {
    // direct nBlocks: each thread loops over the blocks of its own columns only (no barriers to keep in step), not
    // the whole tile's: Matryoshka's blocks are a few latents wide at the start, so a tile spans up to P of them
    const own = c.direct && s.mode === "nBlocks";
    // (colExpr: the thread's column groups, so the bounds follow the thread layout)
    const first = own ? colExpr(0) : s.mode === "nBlocks" ? "n0" : "m0";
    const last = own
      ? `min(${colExpr(CG - 1)} + 3u, N - 1u)`
      : s.mode === "nBlocks" ? `min(n0 + ${c.tileN - 1}u, N - 1u)` : `min(m0 + ${c.tileM - 1}u, M - 1u)`;
    body = `for (var q = blockOf(sae, ${first}); q <= blockOf(sae, ${last}); q++) {
      let rLo = bound(sae, q); let rHi = bound(sae, q + 1u);
      ${loop("0u", "KD")}
    }
    ${epilogue}`;
  }
  const shared = c.direct ? "" : `var<workgroup> As: array<f32, ${BK * c.tileM}>;\nvar<workgroup> Bs: array<f32, ${BK * c.tileN}>;`;
  return /* wgsl */ `${header}
${s.bindings}
${shared}
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) lxy: vec3u) {
  let sae = wg.z;
  let tx = lxy.x; let ty = lxy.y;
  let m0 = wg.y * ${c.tileM}u; let n0 = wg.x * ${c.tileN}u;
  let M = ${s.M}; let N = ${s.N}; let KD = ${s.KD};
  ${rows.map((i) => groups.map((g) => `var ${acc(i, g)} = vec4f(0.0);`).join(" ")).join("\n  ")}
  ${body}
}`;
}

/** Workgroups to dispatch for an M × N output with this choice (z: the SAEs). */
export function matmulGrid(c: MatmulChoice, M: number, N: number, z: number): [number, number, number] {
  return [Math.ceil(N / c.tileN), Math.ceil(M / c.tileM), z];
}
