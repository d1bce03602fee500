/**
 * The autotuner (shaders/autotune.ts) in Chromium and Dawn: it picks, for each step matmul, one of the candidates
 * this device was offered, with measured rates (the winner never slower than the default it was timed against),
 * within its budget; engines running non-default choices (every choice the tuner can pick, spread over the five
 * matmuls of three engines, Matryoshka and JumpReLU at odd sizes) match the default engine element by element on
 * the same inputs and init, every intermediate poisoned first (engine.test.ts checks the default one against
 * float64, matmul-variants.test.ts every choice's plain matmul). The runner's disk cache: test/runner/tune-cache.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dimsAndMeta, TUNER_CHOICES, type TuneResult } from "../../shaders/autotune";
import { MATMUL_NAMES, META_WORDS } from "../../shaders/kernels";
import { choiceId } from "../../shaders/matmul-template";
import { prefixBounds } from "../../shaders/schedule";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";
import { trainConfig } from "../helpers/train-config";

const backends = await gpuBackends();

/** Three engines' kernels that between them run every choice the tuner can pick (each matmul a different one). */
function spread(): Array<Record<string, string>> {
  const ids = TUNER_CHOICES.map(choiceId);
  const out: Array<Record<string, string>> = [];
  for (let e = 0; e * MATMUL_NAMES.length < ids.length; e++)
    out.push(Object.fromEntries(MATMUL_NAMES.map((m, i) => [m, ids[(e * MATMUL_NAMES.length + i) % ids.length]])));
  return out;
}

/**
 * max |got − want| / max(|want|, rms(want)) over every element. An element the default engine leaves unwritten
 * (null: poison; R's rows past a Vanilla SAE's one prefix) must be unwritten in both; any other NaN is Infinity.
 */
function relError(got: (number | null)[], want: (number | null)[]): number {
  if (got.length !== want.length) return Infinity;
  let rms = 0;
  for (const w of want) rms += (w ?? 0) ** 2;
  if (want.every((w) => w === null)) return Infinity;
  rms = Math.sqrt(rms / Math.max(1, want.length)) || 1e-30;
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    if (g === null && w === null) continue;
    if (g === null || w === null || !Number.isFinite(g) || !Number.isFinite(w)) return Infinity;
    worst = Math.max(worst, Math.abs(g - w) / Math.max(Math.abs(w), rms));
  }
  return worst;
}

// no GPU needed: the meta the tuner times its candidates with
it("times Matryoshka candidates on prefix bounds drawn as the step draws them (SAE k seeded k, step 0)", () => {
  for (const [d, exp, K, P] of [[64, 8, 4, 10], [32, 4, 3, 2], [4, 1, 2, 6]]) {
    const n = d * exp;
    const { dims, meta } = dimsAndMeta({ d, n, B: 64, K, P });
    expect(dims[4]).toBe(P);
    for (let k = 0; k < K; k++) {
      const want = prefixBounds(trainConfig({ seed: k, sae: { d_vit: d, exp_factor: exp }, objective: { kind: "matryoshka", n_prefixes: P } }), 0);
      const own = want.length - 1; // < P only where d_sae < P + 1 (d 4: 3 draws at most)
      expect(meta[k * META_WORDS + 1], `P of SAE ${k}`).toBe(own);
      expect([...meta.slice(K * META_WORDS + k * (P + 1), K * META_WORDS + k * (P + 1) + own + 1)], `bounds of SAE ${k} at ${JSON.stringify({ d, n, P })}`).toEqual(want);
    }
  }
  // Vanilla: one block, the whole of d_sae
  const { meta } = dimsAndMeta({ d: 8, n: 32, B: 16, K: 2, P: 1 });
  expect([meta[1], meta[META_WORDS + 1], ...meta.slice(2 * META_WORDS)]).toEqual([1, 1, 0, 32, 0, 32]);
});

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`autotune on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    it("picks one of its candidates for every step matmul, with measured rates; a spent budget leaves the defaults", async () => {
      const shape = { d: 32, n: 128, B: 512, K: 4, P: 2 };
      type Out = { result: TuneResult; wall_ms: number; candidates: string[]; timestamps: boolean };
      const all = await gpu.run<Out>("autotune", { shape, budgetMs: 120_000 });
      const r = all.result;
      console.log(`[${name}] tuned in ${all.wall_ms.toFixed(0)} ms (${r.timing}, ${r.candidates} candidates, shape ${JSON.stringify(r.shape)}):`, JSON.stringify(r.kernels));
      expect(r.timing).toBe(all.timestamps ? "timestamp" : "wall");
      const first = gpu.report.isFallbackAdapter ? "64x64/4x4/k16/direct" : "64x64/4x4/k16/tiled";
      expect(all.candidates[0]).toBe(first);
      for (const id of all.candidates) expect(TUNER_CHOICES.map(choiceId)).toContain(id);
      expect(r.candidates).toBe(all.candidates.length); // the budget never ran out
      for (const m of MATMUL_NAMES) {
        const k = r.kernels[m];
        expect(all.candidates, m).toContain(k.choice);
        expect(Number.isFinite(k.gflops) && k.gflops > 0, `${m} ${k.gflops}`).toBe(true);
        expect(k.gflops, m).toBeGreaterThanOrEqual(k.default_gflops);
      }
      expect(r.shape.d).toBe(32);
      expect(r.shape.B).toBeLessThanOrEqual(512);

      // a budget spent before the first candidate past the default: every matmul keeps the (timed) default
      const none = (await gpu.run<Out>("autotune", { shape, budgetMs: 0 })).result;
      expect(none.candidates).toBe(1);
      for (const m of MATMUL_NAMES) {
        expect(none.kernels[m].choice, m).toBe(first);
        expect(none.kernels[m].gflops).toBe(none.kernels[m].default_gflops);
        expect(none.kernels[m].gflops).toBeGreaterThan(0);
      }
    }, 300_000);

    /** Runs the default engine and engines with `kernels` on one batch; every buffer must match the default's.
     *  `objective` of the first SAE: Matryoshka (the block kernels) or Vanilla (a group without blocks: one-block ones). */
    async function matchDefault(d: number, B: number, kernels: Array<Record<string, string>>, objective: "matryoshka" | "vanilla" = "matryoshka") {
      const seed = testSeed();
      const rand = mulberry32(seed);
      const cfgs = [
        trainConfig({ sae_batch_size: B, seed: seed, sae: { d_vit: d, exp_factor: 3 }, objective: { kind: objective, n_prefixes: 3, sparsity_coeff: 5e-2 } }),
        trainConfig({ sae_batch_size: B, seed: seed + 1, sae: { d_vit: d, exp_factor: 3, kind: "jumprelu", init_threshold: 0.05, bandwidth: 0.1 } }),
      ];
      const x = Array.from({ length: B * d }, () => Math.fround(rand() * 2 - 1));
      const out = await gpu.run<{ base: { buffers: Record<string, (number | null)[]> }; tuned: Array<{ buffers: Record<string, (number | null)[]>; kernels: Record<string, string> }> }>("engineKernels", { cfgs, x, kernels });
      expect(out.tuned.map((t) => t.kernels)).toEqual(kernels);
      for (const [i, t] of out.tuned.entries())
        for (const [buf, want] of Object.entries(out.base.buffers)) {
          // only R holds rows no kernel writes (a Vanilla SAE's prefixes past the first)
          if (buf !== "R") expect(want.every((w) => w !== null && Number.isFinite(w)), `default engine ${buf} fully written (seed ${seed})`).toBe(true);
          expect(relError(t.buffers[buf], want), `engine ${i} (${JSON.stringify(t.kernels)}) ${buf}, seed ${seed}`).toBeLessThanOrEqual(1e-5);
        }
      return out;
    }

    it("engines running every choice the tuner can pick match the default engine on the same inputs", async () => {
      // odd sizes: a /v4 choice runs its scalar paths here (the next test runs its vec4 ones)
      const kernels = spread();
      const out = await matchDefault(17, 37, kernels);
      const ran = new Set(out.tuned.flatMap((t) => Object.values(t.kernels)));
      expect([...ran].sort()).toEqual(TUNER_CHOICES.map(choiceId).sort());
    }, 600_000);

    it("vec4 choices at d_vit and d_sae multiples of 4 (vec4 loads along k and n, Matryoshka's blocks unaligned) match the default engine", async () => {
      // direct: A and W_dec (dL/df) as vec4 along k, B as vec4 along n with θ as vec4 (dL/dW_dec); tiled: B's vec4
      // tile loads. d 16, n 48: prefixes at unaligned bounds exercise the decode's scalar steps up to a multiple of 4
      const all = (id: string) => Object.fromEntries(MATMUL_NAMES.map((m) => [m, id]));
      await matchDefault(16, 36, [all("64x64/8x8/k16/direct/v4"), all("64x64/4x4/k16/tiled/v4")]);
    }, 600_000);

    it("a group without Matryoshka SAEs (one-block kernels: GRAD_F, GRAD_W_DEC and DECODE in one plain pass) matches the default engine", async () => {
      const all = (id: string) => Object.fromEntries(MATMUL_NAMES.map((m) => [m, id]));
      await matchDefault(16, 36, [all("64x64/8x8/k16/direct/v4")], "vanilla");
    }, 600_000);
  });
}
