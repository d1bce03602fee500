/**
 * Every matmul kernel matmul-template.ts builds within WebGPU's default limits (tile 64/128 × 64/128, 4×4/8×4/8×8
 * (and, direct only, 16×8/8×16/16×16) outputs per thread, BK 8/16/32 or direct, ± vec4) against float64, in Chromium and Dawn: the plain C = A·B at odd
 * sizes and at a vec4 shape, outputs poisoned with NaN first: every choice the autotuner can pick, and a spread of
 * the others. The step's fused matmuls: the default choices in engine.test.ts (against float64), every tuner choice
 * in autotune.test.ts (against the default engine).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TUNER_CHOICES } from "../../shaders/autotune";
import { allChoices, choiceId } from "../../shaders/matmul-template";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";

const backends = await gpuBackends();

// Every choice the autotuner can pick (shaders/autotune.ts TUNER_CHOICES), plus a spread of the rest: each tile
// shape, outputs per thread, BK, tiled and direct, with and without vec4 (the full list, allChoices(), is 54 and
// too slow to compile on SwiftShader).
const ids = [
  ...TUNER_CHOICES.map(choiceId),
  "128x64/8x4/k8/tiled", "64x64/8x8/k32/tiled/v4", "64x128/8x4/k16/tiled/v4", "64x64/4x4/k16/direct/v4",
  "64x128/8x16/k16/direct", "128x64/16x8/k16/direct/v4",
].filter((id, i, all) => all.indexOf(id) === i);
const unknown = ids.filter((id) => !allChoices().some((c) => choiceId(c) === id));
if (unknown.length) throw new Error(`not generator choices: ${unknown.join(", ")}`);

// f32 against float64 over K ≤ 37 products of values in [-1, 1]
const F32_TOL = 1e-5;

/** max |got − want| / max(1, max |want|); a NaN (an output never written) or null is Infinity */
function relError(got: (number | null)[], want: Float64Array): number {
  let scale = 1;
  for (const w of want) scale = Math.max(scale, Math.abs(w));
  let worst = got.length === want.length ? 0 : Infinity;
  want.forEach((w, i) => {
    const g = got[i];
    const e = g === null || Number.isNaN(g) ? Infinity : Math.abs(g - w) / scale;
    worst = Math.max(worst, e);
  });
  return worst;
}

function plainCase(rand: () => number, M: number, N: number, K: number) {
  const a = Array.from({ length: M * K }, () => Math.fround(rand() * 2 - 1));
  const b = Array.from({ length: K * N }, () => Math.fround(rand() * 2 - 1));
  const want = new Float64Array(M * N);
  for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) for (let j = 0; j < N; j++) want[i * N + j] += a[i * K + k] * b[k * N + j];
  return { a, b, want };
}

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`matmul variants on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    for (const [M, N, K, which] of [
      [131, 130, 37, "odd sizes (scalar paths)"],
      [133, 132, 36, "N and K multiples of 4 (vec4 paths)"],
    ] as const)
      it(`the plain C = A·B by a spread of the generator's kernels matches float64: ${M}×${N}×${K}, ${which}`, async () => {
        const seed = testSeed();
        const { a, b, want } = plainCase(mulberry32(seed), M, N, K);
        // at odd sizes a vec4 choice compiles to its scalar twin, which the list holds too; the vec4 shape runs the
        // vec4 choices and the two defaults (autotune.test.ts runs the step's vec4 forms)
        const choices = K % 4 ? ids.filter((id) => !id.endsWith("/v4")) : ids.filter((id) => id.endsWith("/v4") || id === "64x64/4x4/k16/tiled" || id === "64x64/4x4/k16/direct");
        const out = await gpu.run<Array<{ choice: string; c: (number | null)[]; error: string | null }>>("matmulVariants", { M, N, K, a, b, choices });
        expect(out.map((o) => o.choice)).toEqual(choices);
        for (const o of out) {
          expect(o.error, o.choice).toBeNull();
          expect(relError(o.c, want), `${o.choice} (seed ${seed})`).toBeLessThanOrEqual(F32_TOL);
        }
      }, 600_000);
  });
}
