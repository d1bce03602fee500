// shaders/auxk.ts against the float64 reference (test/reference/auxk.ts) in Chromium and on Dawn: one step's AuxK
// kernels over three row chunks (the last one short) on fresh random inputs with ties planted among the dead
// latents' pre-activations (few levels, −0 beside +0), outputs poisoned with NaN; four SAEs side by side: AuxK with
// k_aux < #dead, AuxK off (left untouched), Matryoshka with k_aux > #dead and a residual of large mean (the
// denominator's merge), and nothing dead (aux = 0, gradients unchanged). The gathered form is checked on its own
// terms too: the dead list, the indirect sizes, each row's gathered (latent, value) list, and dL_aux/dh written at
// the selected entries only (G elsewhere still poisoned). Both forms of AUX_SELECT: a thread per row on short rows
// (d_sae 70, as the engine runs it up to PER_THREAD_MAX_N) and a workgroup per row (d_sae 300: past the workgroup's
// one-latent-per-thread branch, its radix select, as long rows run it), each with its indirect size.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AUX_ARGS_LATENT, AUX_ARGS_SELECT, AUX_META_WORDS, AUX_SCALARS, LATENT_COLS } from "../../shaders/auxk";
import { ROW_THREADS, TOPK_META_WORDS } from "../../shaders/topk";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";
import { auxAct, auxDen, auxGradBEnc, auxGradH, auxGradWDec, auxGradWEnc, auxGScale, auxResid, sumSquares } from "../reference/auxk";
import { deadMask } from "../reference/topk";
import type { AuxkInput } from "./auxk-cases";

const backends = await gpuBackends();

const bits = new Uint32Array(1);
const asF32 = new Float32Array(bits.buffer);
const toBits = (v: number) => ((asF32[0] = v), bits[0]);
const isPoison = (v: number | null) => v === null || Number.isNaN(v);
const abs = (a: ArrayLike<number>) => Float64Array.from(a, Math.abs);

interface Spec {
  kAux: number;
  coeff: number;
  deadAfter: number;
  P: number;
  /** Mean added to the residual's columns. */
  shift: number;
}

function makeInput(seed: number, perThread: boolean, n: number) {
  const rand = mulberry32(seed);
  const K = 4, d = 20, B = 37, C = 16, rpp = 8, Pmax = 3;
  const specs: Spec[] = [
    // k_aux below #dead, near a fifth of it: the cut often falls inside the planted level 0.75's run of ties
    { kAux: Math.round(n * 0.07), coeff: 1 / 32, deadAfter: 100, P: 1, shift: 0 },
    { kAux: 0, coeff: 0, deadAfter: 0, P: 2, shift: 0 },
    // k_aux above #dead (about 35 % of n)
    { kAux: Math.round((n * 5) / 7), coeff: 0.5, deadAfter: 100, P: 3, shift: 3 },
    { kAux: 8, coeff: 1, deadAfter: 2 ** 30, P: 1, shift: 0 },
  ];
  const f = (s = 1) => Math.fround((rand() * 2 - 1) * s);
  const arr = (len: number, s = 1) => Array.from({ length: len }, () => f(s));
  // ties planted: a third of the entries from 5 levels, some ±0, the rest continuous, negatives included
  const h = Array.from({ length: K * B * n }, () => {
    const u = rand();
    if (u < 0.05) return -0;
    if (u < 0.1) return 0;
    if (u < 0.45) return Math.fround(Math.floor(rand() * 5 - 1) / 4);
    return f(2);
  });
  const topkMeta = new Uint32Array(K * TOPK_META_WORDS);
  const auxMeta = new Uint32Array(K * AUX_META_WORDS);
  const auxF = new Float32Array(auxMeta.buffer);
  const cap = Math.min(n, Math.max(...specs.map((s) => s.kAux)));
  specs.forEach((s, i) => {
    topkMeta[i * TOPK_META_WORDS + 2] = s.kAux;
    topkMeta[i * TOPK_META_WORDS + 4] = s.deadAfter;
    auxMeta[i * AUX_META_WORDS] = s.kAux > 0 ? 1 : 0;
    auxF[i * AUX_META_WORDS + 1] = s.coeff;
    auxMeta[i * AUX_META_WORDS + 2] = s.kAux > 0 ? s.deadAfter : 0;
    auxMeta[i * AUX_META_WORDS + 3] = cap;
  });
  const counters = Array.from({ length: K * n }, () => (rand() < 0.35 ? 100 + Math.floor(rand() * 50) : Math.floor(rand() * 100)));
  const resid = Array.from({ length: K * B * d }, (_, i) => Math.fround(f(0.8) + specs[Math.floor(i / (B * d))].shift * (1 + ((i % d) % 3))));
  const input: AuxkInput = {
    perThread, K, d, n, B, C, rowsPerPartial: rpp, Pmax, P: specs.map((s) => s.P),
    topkMeta: Array.from(topkMeta), auxMeta: Array.from(auxMeta),
    x: arr(B * d), b_dec: arr(K * d, 0.3), W_dec: arr(K * n * d, 0.5), h: h.map(toBits), resid, counters,
    fired: Array.from({ length: K * n }, () => (rand() < 0.5 ? Math.floor(rand() * 4) : 0)),
    gW_enc: arr(K * d * n, 0.1), gW_dec: arr(K * n * d, 0.1), gb_enc: arr(K * n, 0.1),
  };
  return { input, specs, h, cap };
}

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`AuxK kernels on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    for (const [perThread, nLatents] of [[true, 70], [false, 300]] as const) {
      const form = perThread ? "a thread per row" : "a workgroup per row";
      it(`one step over row chunks (gathered), AUX_SELECT ${form}: dead list, selection, e − ê, loss, gradients, counters`, async () => {
        const seed = testSeed();
        const { input, specs, h, cap } = makeInput(seed, perThread, nLatents);
        const { K, d, n, B, C } = input;
        type Out = Record<"act" | "auxR" | "G" | "gW_enc" | "gW_dec" | "gb_enc" | "scal", (number | null)[]> &
          Record<"counters" | "nDead" | "list" | "cnt" | "deadList" | "args", number[]>;
        const got = await gpu.run<Out>("auxk.step", input);
        /** got[i] within tol of want, or (want null) still poisoned. */
        const near = (label: string, g: number | null, want: number | null, tol = 0) => {
          const ok = want === null ? isPoison(g) : g !== null && Math.abs(g - want) <= tol;
          if (!ok) expect.fail(`seed ${seed} ${label}: got ${g}, want ${want} ± ${tol}`);
        };
        const EPS = 3e-5; // relative to the sum of the magnitudes of the terms (f32 over dot products of ≤ ~130 terms)
        let tiesCut = 0;
        for (let s = 0; s < K; s++) {
          const sp = specs[s];
          const sl = <T>(a: T[], len: number) => a.slice(s * len, (s + 1) * len);
          const hs = sl(h, B * n);
          const W = Float64Array.from(sl(input.W_dec, n * d));
          const bd = sl(input.b_dec, d);
          const e = Float64Array.from(sl(input.resid, B * d), (v) => -v);
          const cnt = sl(input.counters, n);
          const dead = sp.deadAfter ? deadMask(cnt, sp.deadAfter) : new Uint8Array(n);
          const nDead = dead.reduce((a, v) => a + v, 0);
          // the counters (topk.ts's DEAD_COUNTERS, as the step runs it) and n_dead_train
          expect(got.nDead[s], `seed ${seed} sae ${s} n_dead`).toBe(nDead);
          for (let j = 0; j < n; j++) {
            const c0 = cnt[j], fired = input.fired[s * n + j];
            expect(got.counters[s * n + j], `seed ${seed} sae ${s} counter ${j}`).toBe(!sp.deadAfter ? c0 : fired > 0 ? 0 : c0 + B);
          }
          const off = sp.kAux === 0;
          // the step's dead list (AuxK off: empty), in index order
          const list = Array.from({ length: n }, (_, j) => j).filter((j) => !off && dead[j]);
          expect(got.deadList.slice(s * (n + 1), s * (n + 1) + 1 + list.length), `seed ${seed} sae ${s} dead list`).toEqual([list.length, ...list]);
          const act = auxAct(hs, dead, sp.kAux, B, n);
          // each row's gathered selection: the latents with act > 0 in index order, their values
          for (let b = 0; b < B && !off; b++) {
            const want = list.filter((j) => act[b * n + j] > 0);
            expect(got.cnt[s * B + b], `seed ${seed} sae ${s} row ${b} count`).toBe(want.length);
            want.forEach((j, t) => {
              const o = 2 * ((s * B + b) * cap + t);
              expect(got.list[o], `seed ${seed} sae ${s} row ${b} entry ${t}`).toBe(j);
              expect(got.list[o + 1], `seed ${seed} sae ${s} row ${b} value ${t}`).toBe(toBits(act[b * n + j]));
            });
          }
          const r = auxResid(act, W, e, B, n, d);
          const den = auxDen(e, B, d), num = sumSquares(r);
          const gs = auxGScale(sp.coeff, den);
          const gh = auxGradH(r, W, act, gs, B, n, d);
          // magnitudes: the same formulas on absolute values bound each result's rounding
          const rMag = auxResid(act, abs(W).map((v) => -v), abs(e), B, n, d);
          const ghMag = auxGradH(rMag, abs(W), act, Math.abs(gs), B, n, d);
          const xs = Float64Array.from({ length: B * d }, (_, i) => Math.abs(input.x[i] - bd[i % d]));
          const wDec = { want: auxGradWDec(act, r, gs, B, n, d), mag: auxGradWDec(act, rMag, Math.abs(gs), B, n, d) };
          const wEnc = { want: auxGradWEnc(input.x, bd, gh, B, n, d), mag: auxGradWEnc(xs, new Float64Array(d), ghMag, B, n, d) };
          const bEnc = { want: auxGradBEnc(gh, B, n), mag: auxGradBEnc(ghMag, B, n) };
          for (let i = 0; i < B * n; i++) {
            near(`sae ${s} act[${i}]`, got.act[s * B * n + i], off ? null : act[i]);
            // dL_aux/dh at the selected entries only; G elsewhere keeps what was there (here: the poison)
            near(`sae ${s} G[${i}]`, got.G[s * B * n + i], off || !(act[i] > 0) ? null : gh[i], EPS * ghMag[i] + 1e-30);
          }
          for (let i = 0; i < B * d; i++) near(`sae ${s} e − ê [${i}]`, got.auxR[s * B * d + i], off ? null : r[i], EPS * rMag[i]);
          const terms: Array<[string, ArrayLike<number>, { want: Float64Array; mag: Float64Array }]> = [
            ["gW_dec", input.gW_dec, wDec],
            ["gW_enc", input.gW_enc, wEnc],
            ["gb_enc", input.gb_enc, bEnc],
          ];
          for (const [label, g0, { want, mag }] of terms) {
            const len = want.length;
            for (let i = 0; i < len; i++) {
              const before = g0[s * len + i];
              // AuxK off or nothing selected: the engine's gradient is left exactly as it was
              if (off || nDead === 0) expect(got[label as "gW_dec"][s * len + i], `seed ${seed} sae ${s} ${label}[${i}]`).toBe(before);
              else near(`sae ${s} ${label}[${i}]`, got[label as "gW_dec"][s * len + i], before + want[i], EPS * mag[i] + 1e-7 * Math.abs(before));
            }
          }
          const sc = got.scal.slice(s * AUX_SCALARS, (s + 1) * AUX_SCALARS);
          if (off) {
            for (const v of sc) expect(isPoison(v), `seed ${seed} sae ${s}: auxScal left alone`).toBe(true);
            continue;
          }
          near(`sae ${s} den`, sc[0], den, 1e-5 * den);
          near(`sae ${s} gscale`, sc[1], gs, 1e-5 * Math.abs(gs));
          const aux = nDead > 0 ? num / den : 0;
          near(`sae ${s} aux`, sc[2], aux, 2e-5 * aux);
          near(`sae ${s} num`, sc[3], num, 2e-5 * num);
          if (s === 0) {
            expect(nDead, `seed ${seed}: SAE 0 must have more dead latents than k_aux`).toBeGreaterThan(sp.kAux);
            expect(aux).toBeGreaterThan(0);
          }
          if (s === 2) expect(nDead, `seed ${seed}: SAE 2 must have fewer dead latents than k_aux`).toBeLessThan(sp.kAux);
          if (s === 3) expect([nDead, aux]).toEqual([0, 0]);
          // planted ties among the dead: a row whose kept set stops inside a run of equal values
          for (let b = 0; b < B && sp.kAux < nDead; b++) {
            const deadVals = hs.slice(b * n, (b + 1) * n).map((v, j) => (dead[j] ? v : -Infinity)).sort((a, c) => c - a);
            if (deadVals[sp.kAux - 1] === deadVals[sp.kAux]) tiesCut++;
          }
        }
        expect(tiesCut, `seed ${seed}: the planted ties must have been cut somewhere`).toBeGreaterThan(0);
        // indirect sizes: the select over a chunk's rows (something is dead), the per-latent kernels over the most dead
        const most = Math.max(...got.deadList.filter((_, i) => i % (n + 1) === 0));
        expect(got.args.slice(AUX_ARGS_SELECT, AUX_ARGS_SELECT + 3)).toEqual([perThread ? Math.ceil(C / ROW_THREADS) : C, K, 1]);
        expect(got.args.slice(AUX_ARGS_LATENT, AUX_ARGS_LATENT + 3)).toEqual([most, Math.ceil(d / LATENT_COLS), K]);
      }, 120_000);
    }
  });
}
