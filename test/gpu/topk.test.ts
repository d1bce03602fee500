// shaders/topk.ts against the float64 reference (test/reference/topk.ts) in Chromium and on Dawn: fresh random
// inputs with ties planted (few distinct values, −0 beside +0, many negatives), outputs poisoned with NaN.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BATCH_CANDIDATES, BATCH_STATE_WORDS, TOPK_META_WORDS } from "../../shaders/topk";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";
import { batchTopkMask, clipGradNorm, deadMask, thetaUpdate, topkMask } from "../reference/topk";
import type { Params } from "../reference/sae";
import type { BatchInput, RowsInput } from "./topk-cases";

const backends = await gpuBackends();

const bits = new Uint32Array(1);
const asF32 = new Float32Array(bits.buffer);
const toBits = (v: number) => ((asF32[0] = v), bits[0]);
const fromBits = (u: number) => ((bits[0] = u), asF32[0]);
/** NaN as each backend returns it (Dawn's results go through JSON: null). */
const isPoison = (v: number | null) => v === null || Number.isNaN(v);
/** The kernels' order-preserving key (−0 as +0). */
const keyOf = (v: number) => {
  let u = toBits(v);
  if (u === 0x80000000) u = 0;
  return (u & 0x80000000 ? ~u : u | 0x80000000) >>> 0;
};

/** f32 values with ties planted: a third from 7 levels, some ±0, the rest continuous; negatives included. */
function tiedValues(rand: () => number, len: number, negBias = 0): number[] {
  return Array.from({ length: len }, () => {
    const u = rand();
    if (u < 0.05) return -0;
    if (u < 0.1) return 0;
    if (u < 0.45) return Math.fround(Math.floor(rand() * 7 - 3) / 4 - negBias);
    return Math.fround(rand() * 4 - 2 - negBias);
  });
}

interface MetaSpec {
  kRow?: number;
  kTotal?: number;
  kAux?: number;
  beta?: number;
  deadAfter?: number;
  maxNorm?: number;
}
function metaWords(specs: MetaSpec[]): number[] {
  const w = new Uint32Array(specs.length * TOPK_META_WORDS);
  const f = new Float32Array(w.buffer);
  specs.forEach((s, i) => {
    const o = i * TOPK_META_WORDS;
    w[o] = s.kRow ?? 0;
    w[o + 1] = s.kTotal ?? 0;
    w[o + 2] = s.kAux ?? 0;
    f[o + 3] = s.beta ?? 0;
    w[o + 4] = s.deadAfter ?? 0;
    f[o + 5] = s.maxNorm ?? 0;
  });
  return Array.from(w);
}

/** The reference cut of one row: T = the smallest kept key, J = one past the last kept tie with T. */
function refCut(h: ArrayLike<number>, kept: Uint8Array, n: number): [number, number] {
  let T = 0xffffffff, J = 0;
  for (let j = 0; j < n; j++) if (kept[j] && keyOf(h[j]) < T) T = keyOf(h[j]);
  for (let j = 0; j < n; j++) if (kept[j] && keyOf(h[j]) === T) J = j + 1;
  return [T, J];
}

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`TopK kernels on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    /** Runs the row select on K SAEs and checks every row against topkMask; returns the number of ties cut. */
    async function checkRows(seed: number, n: number, rows: number, specs: MetaSpec[], variant: RowsInput["variant"], negBias = 0, gen = tiedValues) {
      const rand = mulberry32(seed);
      const K = specs.length;
      const h = gen(rand, K * rows * n, negBias);
      const counters = variant.deadOnly ? Array.from({ length: K * n }, () => (rand() < 0.3 ? 100 + Math.floor(rand() * 50) : Math.floor(rand() * 100))) : undefined;
      const input: RowsInput = { n, rows, K, meta: metaWords(specs), h: h.map(toBits), counters, variant };
      const got = await gpu.run<{ f: (number | null)[]; cut: (number | null)[] }>("topk.rows", input);
      let tiesCut = 0;
      for (let s = 0; s < K; s++) {
        const k = variant.kWord === 0 ? specs[s].kRow ?? 0 : specs[s].kAux ?? 0;
        const hs = h.slice(s * rows * n, (s + 1) * rows * n);
        const eligible = variant.deadOnly ? deadMask(counters!.slice(s * n, (s + 1) * n), specs[s].deadAfter ?? 0) : undefined;
        const kept = topkMask(hs, rows, n, k, eligible);
        for (let b = 0; b < rows; b++) {
          const rowKept = kept.slice(b * n, (b + 1) * n);
          for (let j = 0; j < n; j++) {
            const i = (s * rows + b) * n + j;
            const hv = hs[b * n + j];
            // k = 0: the SAE is of another kind; in place its rows stay h, else the poison stays.
            const want = k === 0 ? (variant.inPlace ? hv : null) : rowKept[j] && hv > 0 ? hv : 0;
            const ok = want === null ? isPoison(got.f[i]) : got.f[i] === want;
            expect(ok, `seed ${seed} n ${n} k ${k} sae ${s} row ${b} latent ${j}: got ${got.f[i]}, want ${want}`).toBe(true);
          }
          if (k === 0) continue;
          const [T, J] = refCut(hs.slice(b * n, (b + 1) * n), rowKept, n);
          expect([got.cut[2 * (s * rows + b)], got.cut[2 * (s * rows + b) + 1]], `seed ${seed} n ${n} k ${k} sae ${s} row ${b} cut`).toEqual([T, J]);
          let ties = 0;
          for (let j = 0; j < n; j++) if (keyOf(hs[b * n + j]) === T && (!eligible || eligible[j])) ties++;
          const keptTies = rowKept.reduce((a, v, j) => a + (v && keyOf(hs[b * n + j]) === T ? 1 : 0), 0);
          if (ties > keptTies) tiesCut++;
        }
      }
      return tiesCut;
    }

    // Both forms of the row select: a workgroup per row (long rows) and a thread per row (short rows; k ≤ SMALL_K
    // takes its streaming top-k, larger k its radix select), on the same kinds of rows.
    for (const perThread of [false, true]) {
      const form = perThread ? "a thread per row" : "a workgroup per row";
      it(`per-example TopK in place, ${form}: k largest, ties to the lower latent index, other kinds untouched`, async () => {
        const seed = testSeed();
        const v = { kWord: 0, deadOnly: false, inPlace: true, perThread } as const;
        let tiesCut = 0;
        tiesCut += await checkRows(seed, 200, 7, [{ kRow: 5 }, {}, { kRow: 200 }, { kRow: 1 }], v);
        tiesCut += await checkRows(seed + 1, 300, 3, [{ kRow: 17 }, { kRow: 150 }, { kRow: 32 }, { kRow: 33 }], v, 1);
        tiesCut += await checkRows(seed + 2, 33, 70, [{ kRow: 12 }, { kRow: 33 }], v);
        tiesCut += await checkRows(seed + 4, 20, 5, [{ kRow: 20 }, { kRow: 19 }], v);
        // Rows of one repeated value (with −0 beside +0 in the second SAE): exactly the first k indices are kept.
        const flat = (rand: () => number, len: number) => Array.from({ length: len }, (_, i) => (i < len / 2 ? 0.25 : i % 2 ? -0 : 0));
        tiesCut += await checkRows(seed + 3, 40, 2, [{ kRow: 7 }, { kRow: 3 }, { kRow: 30 }], v, 0, flat);
        // Rows sorted ascending: every entry enters the streaming top-k, the worst case of its insertion.
        const rising = (rand: () => number, len: number) => Array.from({ length: len }, (_, i) => Math.fround((i % 64) / 16 - 1 + (rand() < 0.2 ? 0 : 1e-3)));
        tiesCut += await checkRows(seed + 5, 64, 3, [{ kRow: 9 }, { kRow: 31 }], v, 0, rising);
        // The planted ties must actually have been cut somewhere, or the tie rule went untested.
        expect(tiesCut, `seed ${seed}`).toBeGreaterThan(0);
      }, 120_000);

      it(`AuxK's select over the dead latents only (k_aux above and below #dead), into a poisoned buffer, ${form}`, async () => {
        const seed = testSeed();
        const v = { kWord: 2, deadOnly: true, inPlace: false, perThread } as const;
        await checkRows(seed, 150, 4, [{ kAux: 8, deadAfter: 100 }, { kAux: 0 }, { kAux: 500, deadAfter: 100 }, { kAux: 3, deadAfter: 1 << 30 }], v);
        await checkRows(seed + 1, 150, 4, [{ kAux: 40, deadAfter: 100 }, { kAux: 32, deadAfter: 100 }], v);
      }, 120_000);
    }

    it("one production-sized row: d_sae 65 536, k 1024, heavy ties", async () => {
      const seed = testSeed();
      // Per row about 900 values above 1.5 (sd 30: never 1024), 2000 exactly 1.5 (so the 1024th largest is a tie),
      // the rest below. (With 1000 above, one seed in five put ≥ 1024 above the ties and the cut had no tie.)
      const gen = (rand: () => number, len: number) =>
        Array.from({ length: len }, () => {
          const u = rand();
          return u < 900 / 65536 ? Math.fround(1.5 + 0.5 * rand() + 1e-6) : u < 2900 / 65536 ? 1.5 : Math.fround(rand() * 3.4 - 2);
        });
      const tiesCut = await checkRows(seed, 65536, 2, [{ kRow: 1024 }], { kWord: 0, deadOnly: false, inPlace: true }, 0, gen);
      expect(tiesCut, `seed ${seed}`).toBeGreaterThan(0);
    }, 300_000);

    // Both forms of the ties and apply kernels; chunks of more rows than BATCH_ADVANCE's 256 threads too. spec: pass 0
    // keeps candidates (one chunk), with SAE 0's last top bits near its T ("hit": pass 1 from the candidates) or the
    // window flooded by one value beyond BATCH_CANDIDATES ("overflow": pass 1 from H); SAE 2's T is 0 (from H).
    type Spec = "off" | "hit" | "overflow";
    const batchShapes: Array<[boolean, number, number, number, Spec]> = [
      [false, 48, 37, 16, "off"], [true, 48, 37, 16, "off"], [true, 6, 700, 300, "off"], [false, 6, 700, 300, "off"],
      [true, 48, 37, 37, "hit"], [false, 6, 700, 700, "hit"], [true, 48, 700, 700, "overflow"],
    ];
    for (const [perThread, n, B, chunkRows, spec] of batchShapes)
    it(`BatchTopK over row chunks (${perThread ? "a thread" : "a workgroup"} per row, n ${n}, B ${B}, chunks of ${chunkRows}, candidates ${spec}): the k·B largest of ReLU(h), ties by example then latent; θ moves; a second sweep repeats`, async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      // SAE 0: θ unset; SAE 1: ReLU (skipped); SAE 2: θ set, few positives (fewer than k·B: zeros fill up).
      const specs: MetaSpec[] = [{ kTotal: Math.ceil(n / 8) * B, beta: 0.9 }, {}, { kTotal: Math.ceil((20 * n) / 48) * B, beta: 0.99 }];
      const K = specs.length;
      const flood = (len: number) => tiedValues(rand, len).map((v) => (rand() < 0.6 ? 1.5 : v));
      const h = [...(spec === "overflow" ? flood(B * n) : tiedValues(rand, B * n)), ...tiedValues(rand, B * n), ...tiedValues(rand, B * n, 1.9)];
      if (spec === "overflow") expect(h.slice(0, B * n).filter((v) => v === 1.5).length).toBeGreaterThan(BATCH_CANDIDATES);
      const ref = [0, 2].map((s) => batchTopkMask(h.slice(s * B * n, (s + 1) * B * n), B, n, specs[s].kTotal!));
      const state = new Uint32Array(K * BATCH_STATE_WORDS).fill(0x7fc00000);
      for (let s = 0; s < K; s++) {
        state[s * BATCH_STATE_WORDS + 4] = toBits(s === 2 ? 0.5 : 0);
        state[s * BATCH_STATE_WORDS + 5] = s === 2 ? 1 : 0;
      }
      // the last step's top 16 bits of T, within the window of this step's (3 bins above)
      if (spec !== "off") state[0] = (keyOf(ref[0].minKept) >>> 16) + (spec === "hit" ? 3 : 0);
      const input: BatchInput = { n, B, chunkRows, K, meta: metaWords(specs), h: h.map(toBits), state: Array.from(state), sweeps: 2, perThread, spec: spec !== "off" };
      const got = await gpu.run<{ f: (number | null)[]; state: number[]; hist: boolean }>("topk.batch", input);
      expect(got.hist, "the histogram is left cleared").toBe(false);
      for (const s of [0, 2]) {
        const hs = h.slice(s * B * n, (s + 1) * B * n);
        const { kept, minKept } = ref[s === 0 ? 0 : 1];
        for (let i = 0; i < B * n; i++) {
          const want = kept[i] && hs[i] > 0 ? hs[i] : 0;
          expect(got.f[s * B * n + i] === want, `seed ${seed} sae ${s} entry ${i}: got ${got.f[s * B * n + i]}, want ${want}`).toBe(true);
        }
        const o = s * BATCH_STATE_WORDS;
        expect(got.state[o + 2], `seed ${seed} sae ${s} T`).toBe(keyOf(minKept));
        const theta = thetaUpdate(s === 2 ? 0.5 : null, minKept, specs[s].beta!);
        expect(Math.abs(fromBits(got.state[o + 4]) - theta), `seed ${seed} sae ${s} θ`).toBeLessThanOrEqual(1e-6 * (1 + theta));
        expect(got.state[o + 5]).toBe(1);
        // all the ties that had to be kept were kept, over the chunks
        expect(got.state[o + 3], `seed ${seed} sae ${s} ties kept`).toBeGreaterThanOrEqual(got.state[o + 1]);
        // which way pass 1 went: from the candidates only in the hit case's SAE 0
        expect(got.state[o + 6], `seed ${seed} sae ${s} pass 1 from candidates`).toBe(spec === "hit" && s === 0 ? 1 : 0);
      }
      expect(got.f.slice(B * n, 2 * B * n), "the ReLU SAE's rows stay h").toEqual(h.slice(B * n, 2 * B * n).map((v) => v + 0));
      const positives = h.slice(2 * B * n).filter((v) => v > 0).length;
      expect(positives, `seed ${seed}: SAE 2 must have fewer positives than k·B`).toBeLessThan(specs[2].kTotal!);
    }, 120_000);

    it("dead counters: fired latents restart, the others add B (saturating); n_dead counts the dead before", async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      const n = 130, K = 3, B = 64;
      const specs: MetaSpec[] = [{ kRow: 4, deadAfter: 200 }, {}, { kTotal: 64, deadAfter: 1000 }];
      const counters = Array.from({ length: K * n }, () => (rand() < 0.05 ? 0xffffffff - Math.floor(rand() * 100) : Math.floor(rand() * 2000)));
      const fired = Array.from({ length: K * n }, () => (rand() < 0.4 ? Math.floor(rand() * 5) : 0));
      const got = await gpu.run<{ counters: number[]; nDead: number[] }>("topk.deadCounters", { n, K, B, meta: metaWords(specs), fired, counters });
      for (let s = 0; s < K; s++) {
        const c = Float64Array.from(counters.slice(s * n, (s + 1) * n));
        const dead = specs[s].deadAfter ? deadMask(c, specs[s].deadAfter!).reduce((a, v) => a + v, 0) : 0;
        expect(got.nDead[s], `seed ${seed} sae ${s} n_dead`).toBe(dead);
        for (let j = 0; j < n; j++) {
          const i = s * n + j;
          const want = !specs[s].deadAfter ? counters[i] : fired[i] > 0 ? 0 : Math.min(counters[i] + B, 0xffffffff);
          expect(got.counters[i], `seed ${seed} sae ${s} latent ${j}`).toBe(want);
        }
      }
    }, 120_000);

    it("grad norm and clipping per SAE as torch's clip_grad_norm_", async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      const sizes = [1000, 33, 20_000, 7];
      const K = 3;
      const specs: MetaSpec[] = [{ maxNorm: 0.5 }, {}, { maxNorm: 1e6 }];
      const grads = sizes.map((size) => Array.from({ length: K * size }, () => Math.fround((rand() * 2 - 1) * 0.01)));
      const got = await gpu.run<{ norms: number[]; scales: number[]; grads: number[][] }>("topk.gradNorm", { K, sizes, grads, meta: metaWords(specs) });
      for (let s = 0; s < K; s++) {
        // clipGradNorm takes Params: the four tensors stand in as W_enc, b_enc, W_dec, b_dec.
        const slice = (t: number) => Float64Array.from(grads[t].slice(s * sizes[t], (s + 1) * sizes[t]));
        const p: Params = { W_enc: slice(0), b_enc: slice(1), W_dec: slice(2), b_dec: slice(3), log_threshold: new Float64Array(0) };
        const { norm, scale } = clipGradNorm(p, specs[s].maxNorm ?? null);
        expect(Math.abs(got.norms[s] - norm), `seed ${seed} sae ${s} norm`).toBeLessThanOrEqual(1e-5 * norm);
        expect(Math.abs(got.scales[s] - scale), `seed ${seed} sae ${s} scale`).toBeLessThanOrEqual(1e-5 * scale);
        if (s === 0) expect(scale).toBeLessThan(1);
        const names = ["W_enc", "b_enc", "W_dec", "b_dec"] as const;
        sizes.forEach((size, t) => {
          for (let i = 0; i < size; i++) {
            const want = p[names[t]][i];
            expect(Math.abs(got.grads[t][s * size + i] - want), `seed ${seed} sae ${s} tensor ${t} [${i}]`).toBeLessThanOrEqual(1e-5 * Math.abs(want) + 1e-12);
          }
        });
      }
    }, 120_000);
  });
}
