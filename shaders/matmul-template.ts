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
  /** Optional vec4 forms (used by `vec4` choices when N, and for loadA4 / loadBk4 KD, are multiples of 4; the
   *  engine's operands are then 16-byte aligned, read through `array<vec4f>` views of the same buffers):
   *  loadB4: vec4f of B(gk, gn .. gn + 3) (bNFast specs); loadA4: vec4f of A(gm, gk .. gk + 3) (aKFast specs, direct
   *  kernels); loadBk4: vec4f of B(gk .. gk + 3, gn) (specs with bNFast false, direct kernels);
   *  epilogue4: statement per (m, nn .. nn + 3) with `v4: vec4f`. */
  loadB4?: string;
  loadA4?: string;
  loadBk4?: string;
  epilogue4?: string;
  /** vec4 forms of aK (at gk .. gk + 3, bound to `ak` in loadA4) and bInv (at gn .. gn + 3, bound to `bi` in
   *  loadB4): a spec with aK / bInv needs them for its loadA4 / loadB4. */
  aK4?: string;
  bInv4?: string;
  /** Optional k-invariant parts of the loads: aInv(gm) is bound to `ai` in loadA, bInv(gn) to `bi` in loadB (e.g. a
   *  bias per row, θ per column). Direct kernels compute them once per row / column before the K loop (SwiftShader
   *  runs every load as four scalar ones, so a load saved per k is time saved); tiled ones inline them. */
  aInv?: string;
  bInv?: string;
  /** Optional per-k part of loadA shared by every row (e.g. b_dec[gk]), bound to `ak`: direct kernels load it once
   *  per k, not once per row. */
  aK?: string;
  /** Optional statements run once per thread before the K loop (`sae` in scope): the epilogue's per-SAE constants
   *  (meta words), read once, not once per output (SwiftShader does not hoist storage loads out of the epilogue). */
  prologue?: string;
}

/** How a matmul is computed. `direct`: no workgroup memory or barriers (each thread reads its operands from
 *  memory; SwiftShader runs barriers as fiber switches, so this wins there); bk is then unused. */
export interface MatmulChoice {
  tileM: 64 | 128;
  tileN: 64 | 128;
  outM: 4 | 8 | 16;
  outN: 4 | 8 | 16;
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
  const m = /^(64|128)x(64|128)\/(4|8|16)x(4|8|16)\/k(8|16|32)\/(direct|tiled)(\/v4)?$/.exec(id);
  if (!m) return null;
  const c = { tileM: +m[1], tileN: +m[2], outM: +m[3], outN: +m[4], bk: +m[5], direct: m[6] === "direct", vec4: !!m[7] } as MatmulChoice;
  return validChoice(c) ? c : null;
}

export const threadsOf = (c: MatmulChoice) => (c.tileM / c.outM) * (c.tileN / c.outN);
export const workgroupBytes = (c: MatmulChoice) => (c.direct ? 0 : 4 * c.bk * (c.tileM + c.tileN));

/** Whether the generator can build this choice within WebGPU's default limits (256 invocations, 16 KiB). 16 × 16
 *  outputs per thread are direct-only (a software adapter's shape: many outputs per load; a GPU's registers would
 *  not hold them). */
export function validChoice(c: MatmulChoice, limits = { invocations: 256, workgroupBytes: 16384 }): boolean {
  const t = threadsOf(c);
  if ((c.outM === 16 || c.outN === 16) && !c.direct) return false;
  return t >= 32 && t <= limits.invocations && workgroupBytes(c) <= limits.workgroupBytes;
}

/** Every choice the generator builds (tile 64/128 × 64/128, outputs 4×4/8×4/8×8, BK 8/16/32 or direct, ± vec4). */
export function allChoices(limits?: { invocations: number; workgroupBytes: number }): MatmulChoice[] {
  const out: MatmulChoice[] = [];
  const tiles = [[64, 64], [128, 64], [64, 128], [128, 128]] as const;
  const outs = [[4, 4], [8, 4], [8, 8], [16, 8], [8, 16], [16, 16]] as const;
  for (const [tileM, tileN] of tiles)
    for (const [outM, outN] of outs)
      for (const vec4 of [false, true]) {
        for (const bk of [8, 16, 32] as const) out.push({ tileM, tileN, outM, outN, bk, direct: false, vec4 });
        out.push({ tileM, tileN, outM, outN, bk: 16, direct: true, vec4 });
      }
  return out.filter((c) => validChoice(c, limits));
}

/** Whether a choice's vec4 paths apply to this spec (it declares them) at this shape. */
export function vec4Applies(s: MatmulSpec, shape: { N: number; KD: number }): { b: boolean; a: boolean; bk: boolean; store: boolean } {
  return {
    b: !!s.loadB4 && s.bNFast && shape.N % 4 === 0,
    a: !!s.loadA4 && s.aKFast && shape.KD % 4 === 0,
    bk: !!s.loadBk4 && !s.bNFast && shape.KD % 4 === 0,
    store: !!s.epilogue4 && shape.N % 4 === 0,
  };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

export interface MatmulOptions {
  /**
   * Direct kernels read A once per quad (WGSL subgroups): lane l of each quad of invocations loads A at k + l for
   * its rows, and quadBroadcast hands the four k to all four lanes, whose rows are the same (TX % 4 == 0: a quad is
   * four neighbouring column threads). On SwiftShader a quad is 4 consecutive invocations, its SIMD width, and every
   * storage load is a 4-lane gather: the A operand (the same address in all four lanes before) costs a quarter of
   * the loads. The four lanes must run the same k loops: a direct nBlocks kernel's block loop then spans the quad's
   * columns, not the thread's (B is masked per column, so a block none of a lane's columns is in adds 0). Not with
   * vec4 loads along k. Needs the device's "subgroups"
   * feature; the engine and the tuner turn it on for software adapters that have it (kernels.ts matmulOptions).
   */
  quad?: boolean;
}

function quadApplies(c: MatmulChoice, v4: { a: boolean; bk: boolean }): boolean {
  return c.direct && !v4.a && !v4.bk && (c.tileN / c.outN) % 4 === 0;
}

/**
 * WGSL for spec `s` computed as `choice` (a boolean is the old interface: direct or tiled, 64 × 64, 4 × 4, BK 16).
 * `header` is prepended (the engine's Dims struct and helpers, which the spec's expressions use). `shape` (N, KD)
 * decides whether vec4 paths apply; without it they are off.
 */
export function matmul(s: MatmulSpec, choice: MatmulChoice | boolean, header: string, shape?: { N: number; KD: number }, opts: MatmulOptions = {}): string {
  const c = typeof choice === "boolean" ? choiceFor(choice) : choice;
  if (!validChoice(c, { invocations: 1024, workgroupBytes: 65536 })) throw new Error(`matmul: invalid choice ${choiceId(c)}`);
  const v4 = c.vec4 && shape ? vec4Applies(s, shape) : { a: false, b: false, bk: false, store: false };
  const quad = !!opts.quad && quadApplies(c, v4);
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
  if (s.aInv && s.loadA4) throw new Error("matmul: aInv does not combine with loadA4");
  if (s.aK && s.loadA4 && !s.aK4) throw new Error("matmul: a spec with aK and loadA4 needs aK4");
  if (s.bInv && s.loadB4 && !s.bInv4) throw new Error("matmul: a spec with bInv and loadB4 needs bInv4");
  if (s.bInv && s.loadBk4) throw new Error("matmul: bInv does not combine with loadBk4");
  // the load expressions with their invariant parts inlined (tiled kernels; direct ones bind ai, bi and ak)
  const inlineA = sub(sub(s.loadA, "ai", s.aInv ?? "ai"), "ak", s.aK ?? "ak");
  const inlineB = sub(s.loadB, "bi", s.bInv ?? "bi");
  const colExpr = (g: number, t = "tx") => `n0 + 4u * (${t} + ${TX * g}u)`;
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
          if (gm < M && gk < kHi${aMask}) { av = ${inlineA}; }
          As[ak * ${c.tileM}u + am] = av; }`];
    let bLoads: string[];
    if (v4.b) {
      // one vec4 per load along n (bNFast, N % 4 == 0): lanes past N or outside the block are masked to 0
      bLoads = [`for (var r = 0u; r < ${Math.ceil((c.tileN * BK) / 4 / T)}u; r++) { let e = lid + ${T}u * r;
          if (e < ${(c.tileN * BK) / 4}u) {
            let bk = e / ${c.tileN / 4}u; let bn = 4u * (e % ${c.tileN / 4}u);
            let gn = n0 + bn; let gk = k0 + bk;
            var bv = vec4f(0.0);
            if (gn < N && gk < kHi) { bv = ${sub(s.loadB4!, "bi", s.bInv4 ?? "bi")}; }
            ${bMask ? `bv = select(vec4f(0.0), bv, (vec4u(gn) + vec4u(0u, 1u, 2u, 3u) >= vec4u(rLo)) & (vec4u(gn) + vec4u(0u, 1u, 2u, 3u) < vec4u(rHi)));` : ""}
            let o = bk * ${c.tileN}u + bn;
            Bs[o] = bv.x; Bs[o + 1u] = bv.y; Bs[o + 2u] = bv.z; Bs[o + 3u] = bv.w;
          } }`];
    } else {
      bLoads = [`for (var r = 0u; r < ${(c.tileN * BK) / T}u; r++) { let e = lid + ${T}u * r;
          ${s.bNFast ? `let bk = e / ${c.tileN}u; let bn = e % ${c.tileN}u;` : `let bk = e % ${BK}u; let bn = e / ${BK}u;`}
          let gn = n0 + bn; let gk = k0 + bk;
          var bv = 0.0;
          if (gn < N && gk < kHi${bMask}) { bv = ${inlineB}; }
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
  // Out-of-range rows and columns (M or N not a multiple of the tile: a batch of 32 rows in a 64-row tile) read the
  // last row / column instead: their accumulators are never stored, and the clamp keeps every read inside its binding
  // without Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=off: past the binding SwiftShader read other buffers'
  // memory, or past the allocation and lost the device). Only a block (mBlocks / nBlocks) masks its operand, by
  // select, on the unclamped index: no branches. The k-invariant parts of the loads (aInv, bInv) are read once before the K loop, the per-k part
  // shared by all rows (aK) once per k.
  const directLoop = (kLo: string, kHi: string) => {
    const lanes = range(4);
    const maskA = s.mode === "mBlocks";
    const maskB = s.mode === "nBlocks";
    const aAt = (i: number, k: string, akName: string) => {
      let e = sub(sub(s.loadA, "gm", `gm${i}`), "gk", k);
      if (s.aInv) e = sub(e, "ai", `ai${i}`);
      if (s.aK) e = sub(e, "ak", akName);
      return maskA ? `select(0.0, ${e}, okA${i})` : e;
    };
    const bAt = (g: number, l: number, k: string) => {
      let e = sub(sub(s.loadB, "gk", k), "gn", `gn${g}_${l}`);
      if (s.bInv) e = sub(e, "bi", `bi${g}_${l}`);
      return maskB ? `select(0.0, ${e}, okB${g}[${l}])` : e;
    };
    const bVec = (g: number, k: string) => {
      if (!v4.b) return `vec4f(${lanes.map((l) => bAt(g, l, k)).join(", ")})`;
      let e = sub(sub(s.loadB4!, "gk", k), "gn", `gn${g}`);
      if (s.bInv4) e = sub(e, "bi", `bi${g}`);
      return maskB ? `select(vec4f(0.0), ${e}, okB${g})` : e;
    };
    const akDecl = (k: string, name: string) => (s.aK ? `let ${name} = ${sub(s.aK, "gk", k)};` : "");
    const step = (k: string, quadU?: number) => `{
          ${quadU === undefined ? akDecl(k, "akv") : ""}
          ${groups.map((g) => `let b${g} = ${bVec(g, k)};`).join("\n          ")}
          ${fmaRows((i) => (quadU === undefined ? aAt(i, k, "akv") : `quadBroadcast(qa${i}, ${quadU}u)`), (g) => `b${g}`)}
        }`;
    // quad (MatmulOptions): lane l of each quad reads A at k + l, then the four k are broadcast across the quad
    const quadLoads = () => `${akDecl("gk + (sgid & 3u)", "akq")} ${rows.map((i) => `let qa${i} = ${aAt(i, "gk + (sgid & 3u)", "akq")};`).join(" ")}`;
    // four k per iteration from vec4 loads along k: A (aKFast: one load per row) and / or B (bNFast false: one load
    // per column); the other operand as in step
    const a4At = (i: number, k: string) => {
      let e = sub(sub(s.loadA4!, "gm", `gm${i}`), "gk", k);
      if (s.aK4) e = sub(e, "ak", "akv4");
      return maskA ? `select(vec4f(0.0), ${e}, okA${i})` : e;
    };
    const bk4At = (g: number, l: number, k: string) => {
      const e = sub(sub(s.loadBk4!, "gk", k), "gn", `gn${g}_${l}`);
      return maskB ? `select(vec4f(0.0), ${e}, okB${g}[${l}])` : e;
    };
    const stepA4 = (k: string) => `{
          ${v4.a ? `${s.aK4 ? `let akv4 = ${sub(s.aK4, "gk", k)};` : ""}
          ${rows.map((i) => `let a${i} = ${a4At(i, k)};`).join("\n          ")}` : ""}
          ${v4.bk ? groups.map((g) => lanes.map((l) => `let bk${g}_${l} = ${bk4At(g, l, k)};`).join(" ")).join("\n          ") : ""}
          ${range(4)
            .map((u) => `{ ${v4.a ? "" : akDecl(`${k} + ${u}u`, "akv")} ${groups
              .map((g) => `let b${g} = ${v4.bk ? `vec4f(${lanes.map((l) => `bk${g}_${l}[${u}]`).join(", ")})` : bVec(g, `${k} + ${u}u`)};`)
              .join(" ")}
          ${fmaRows((i) => (v4.a ? `a${i}[${u}]` : aAt(i, `${k} + ${u}u`, "akv")), (g) => `b${g}`)} }`)
            .join("\n          ")}
        }`;
    // gnG / gnG_L / gmI: the clamped indices every load uses (a vec4 column group: its first column, N % 4 == 0, so
    // N - 4 is the last group's); uG / uG_L / umI: the thread's own, for the block masks
    const colDecl = (g: number) =>
      v4.b
        ? `let ugn${g} = ${colExpr(g)}; let gn${g} = min(ugn${g}, Nlast4);${maskB ? ` let okB${g} = vec4<bool>(${lanes.map((l) => `ugn${g} + ${l}u < N && ugn${g} + ${l}u >= rLo && ugn${g} + ${l}u < rHi`).join(", ")});` : ""}${
            s.bInv4 ? ` let bi${g} = ${sub(s.bInv4, "gn", `gn${g}`)};` : ""
          }`
        : `${lanes.map((l) => `let ugn${g}_${l} = ${colExpr(g)} + ${l}u; let gn${g}_${l} = min(ugn${g}_${l}, Nlast);`).join(" ")}${maskB ? ` let okB${g} = vec4<bool>(${lanes.map((l) => `ugn${g}_${l} < N${sub(bMask, "gn", `ugn${g}_${l}`)}`).join(", ")});` : ""}${
            s.bInv ? ` ${lanes.map((l) => `let bi${g}_${l} = ${sub(s.bInv!, "gn", `gn${g}_${l}`)};`).join(" ")}` : ""
          }`;
    const rowDecl = (i: number) =>
      `let ugm${i} = ${rowExpr(i)}; let gm${i} = min(ugm${i}, Mlast);${maskA ? ` let okA${i} = ugm${i} < M${sub(aMask, "gm", `ugm${i}`)};` : ""}${s.aInv ? ` let ai${i} = ${sub(s.aInv, "gm", `gm${i}`)};` : ""}`;
    return /* wgsl */ `
    {
      let kHi = ${kHi};
      // max(·, 1): M or N of 0 dispatches no workgroup, but the subtraction must not wrap
      let Mlast = max(M, 1u) - 1u; let Nlast = max(N, 1u) - 1u;${v4.b ? " let Nlast4 = max(N, 4u) - 4u;" : ""}
      ${rows.map(rowDecl).join("\n      ")}
      ${groups.map(colDecl).join("\n      ")}
      var gk = ${kLo};
      ${
        // vec4 loads along k need gk % 4 == 0: a block (kSegments) may start anywhere, so one k at a time up to
        // the next multiple of 4
        (v4.a || v4.bk) && s.mode === "kSegments" ? `for (; gk < kHi && (gk & 3u) != 0u; gk++) { ${step("gk")} }` : ""
      }
      // four k per iteration while they last (less loop overhead), then one at a time
      for (; gk + 4u <= kHi; gk += 4u) {
        ${v4.a || v4.bk ? stepA4("gk") : quad ? quadLoads() + range(4).map((u) => step(`gk + ${u}u`, u)).join("\n        ") : range(4).map((u) => step(`gk + ${u}u`)).join("\n        ")}
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
    // quad: the quad's columns (its lanes are tx & ~3 .. tx | 3), so its four lanes run the same blocks
    const first = own ? colExpr(0, quad ? "(tx & ~3u)" : "tx") : s.mode === "nBlocks" ? "n0" : "m0";
    const last = own
      ? `min(${colExpr(CG - 1, quad ? "(tx | 3u)" : "tx")} + 3u, N - 1u)`
      : s.mode === "nBlocks" ? `min(n0 + ${c.tileN - 1}u, N - 1u)` : `min(m0 + ${c.tileM - 1}u, M - 1u)`;
    body = `for (var q = blockOf(sae, ${first}); q <= blockOf(sae, ${last}); q++) {
      let rLo = bound(sae, q); let rHi = bound(sae, q + 1u);
      ${loop("0u", "KD")}
    }
    ${epilogue}`;
  }
  const shared = c.direct ? "" : `var<workgroup> As: array<f32, ${BK * c.tileM}>;\nvar<workgroup> Bs: array<f32, ${BK * c.tileN}>;`;
  // subgroup_uniformity off: a kSegments K loop's bounds come from a storage buffer, which WGSL's uniformity analysis
  // cannot prove uniform; they are the SAE's (wg.z), the same for the whole workgroup
  return /* wgsl */ `${quad ? "enable subgroups;\ndiagnostic(off, subgroup_uniformity);\n" : ""}${header}
${s.bindings}
${shared}
@compute @workgroup_size(${TX}, ${TY})
fn main(${quad ? "@builtin(subgroup_invocation_id) sgid: u32, " : ""}@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) lxy: vec3u) {
  let sae = wg.z;
  let tx = lxy.x; let ty = lxy.y;
  let m0 = wg.y * ${c.tileM}u; let n0 = wg.x * ${c.tileN}u;
  let M = ${s.M}; let N = ${s.N}; let KD = ${s.KD};
  ${s.prologue ?? ""}
  ${rows.map((i) => groups.map((g) => `var ${acc(i, g)} = vec4f(0.0);`).join(" ")).join("\n  ")}
  ${body}
}`;
}

/** Workgroups to dispatch for an M × N output with this choice (z: the SAEs). */
export function matmulGrid(c: MatmulChoice, M: number, N: number, z: number): [number, number, number] {
  return [Math.ceil(N / c.tileN), Math.ceil(M / c.tileM), z];
}
