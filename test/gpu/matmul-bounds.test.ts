/**
 * Every index of every step matmul stays inside its binding, for each choice the tuner times: on software adapters
 * (the barrier-free direct kernels, ± vec4) and on GPUs (the workgroup-tiled ones, ± vec4, the default among them),
 * at shapes whose rows and columns are not multiples of the tiles (a batch of 20 or 32 rows in 64- and 128-row
 * tiles) and with Matryoshka blocks. With Dawn's robustness off (SAE_SWARM_ROBUSTNESS, the runner's default) nothing
 * clamps an index: the direct kernels' rows past M once read up to 1.6 MB past H and crashed SwiftShader (the storage
 * e2e test's sweep, d_sae 4096, batch 32: the last case, which counts 6.6e4–1.3e7 per matmul without the clamps). The
 * check is the kernel's own (test/helpers/bounds-check.ts), so it holds in both modes; the first case shows it
 * counts what it should. Whole engines: test/gpu/engine-bounds.test.ts.
 * Dawn only: compiling is most of its time (85 s on the 2 shared cores at load 5, 110 s at load 7; the tiled BK 32
 * and 128 × 128 choices 7–10 s each).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TuneShape } from "../../shaders/autotune";
import { GPU_CANDIDATES, SOFTWARE_CANDIDATES } from "../../shaders/autotune";
import { choiceId } from "../../shaders/matmul-template";
import { dawnUnavailable, openDawn, type GpuBackend } from "../helpers/gpu-backends";

const skip = await dawnUnavailable();
if (skip) console.warn(`skipping: ${skip}`);

const SOFTWARE = SOFTWARE_CANDIDATES.map(choiceId);
// the tuner's workgroup-tiled choices on GPUs (its direct ones are among the software ones)
const TILED = GPU_CANDIDATES.map(choiceId).filter((c) => c.includes("/tiled"));
// vec4 paths on (d, n multiples of 4), Matryoshka blocks; 20 rows: M (ENCODE, DECODE, GRAD_F) and KD (the weight
// gradients) short of a tile. Scalar paths (odd d and n: a /v4 choice builds its scalar twin), Vanilla, 32 rows.
// Each choice's WGSL once per path (SwiftShader compiles an 8 × 8 direct kernel in ~10 s).
const CASES: Array<[TuneShape, string[], boolean?]> = [
  [{ d: 36, n: 100, B: 20, K: 2, P: 3 }, SOFTWARE.filter((c) => c.endsWith("/v4") || !c.startsWith("64x64/8x8"))],
  [{ d: 33, n: 97, B: 32, K: 2, P: 1 }, SOFTWARE.filter((c) => !c.endsWith("/v4"))],
  // the scalar software choices with A read once per quad (MatmulOptions.quad, what a software engine with
  // subgroups builds), Matryoshka's kSegments decode included
  [{ d: 33, n: 97, B: 20, K: 2, P: 3 }, SOFTWARE.filter((c) => !c.endsWith("/v4")), true],
  // every tiled GPU candidate (the default first): the scalar ones at an odd shape with Matryoshka blocks (20 rows
  // short of every tile, d and n of no tile), the /v4 ones where their vec4 loads apply (at an odd n they would
  // build their scalar twin, checked on the line before)
  [{ d: 33, n: 97, B: 20, K: 2, P: 3 }, TILED.filter((c) => !c.endsWith("/v4"))],
  [{ d: 36, n: 100, B: 20, K: 2, P: 3 }, TILED.filter((c) => c.endsWith("/v4"))],
  // the shape and choice that crashed SwiftShader before the direct kernels clamped (storage e2e, robustness off)
  [{ d: 64, n: 4096, B: 32, K: 2, P: 1 }, ["128x64/8x4/k16/direct"]],
];

describe.skipIf(skip !== null)("matmul kernels stay inside their bindings (dawn)", () => {
  let gpu: GpuBackend;
  beforeAll(async () => {
    gpu = await openDawn();
  }, 60_000);
  afterAll(async () => gpu?.close());

  it("the check counts every index past a storage binding, a workgroup array and a thread's array", async () => {
    // one thread indexes each 4-element array at 0..9: 6 past each, none counted twice
    expect(await gpu.run<number>("boundsProbe", {})).toBe(18);
  });

  for (const [shape, choices, quad] of CASES)
    for (const choice of choices)
      it(`${choice}${quad ? " (quad)" : ""} at d ${shape.d}, n ${shape.n}, B ${shape.B}, P ${shape.P}`, async () => {
        const counts = await gpu.run<Record<string, number>>("matmulBounds", { shape, choice, quad });
        expect(counts).toEqual(Object.fromEntries(Object.keys(counts).map((m) => [m, 0])));
        expect(Object.keys(counts)).toHaveLength(5);
      }, 60_000);
});
