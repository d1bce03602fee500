/**
 * Every index of every step matmul stays inside its binding, for each choice the tuner times on software adapters
 * (the barrier-free direct kernels, ± vec4) and the tiled default, at shapes whose rows and columns are not multiples
 * of the tiles (a batch of 20 or 32 rows in 64- and 128-row tiles) and with Matryoshka blocks. With Dawn's robustness
 * off (SAE_SWARM_ROBUSTNESS, the runner's default) nothing clamps an index: the direct kernels' rows past M once
 * read up to 1.6 MB past H and crashed SwiftShader (the storage e2e test's sweep, d_sae 4096, batch 32). The check is
 * the kernel's own (test/helpers/bounds-check.ts), so it holds in both modes; the last cases run a whole engine (every
 * kernel of a step and an evaluation) through a device that checks all its kernels. Dawn only: compiling is most of its
 * time (~35 s on 2 loaded cores).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TuneShape } from "../../shaders/autotune";
import { SOFTWARE_CANDIDATES } from "../../shaders/autotune";
import { DEFAULT_CHOICE, choiceId, parseChoiceId } from "../../shaders/matmul-template";
import { MATMUL_NAMES } from "../../shaders/kernels";
import type { EngineOptions } from "../../shaders/engine";
import { trainConfig } from "../helpers/train-config";
import { dawnUnavailable, openDawn, type GpuBackend } from "../helpers/gpu-backends";

const skip = await dawnUnavailable();
if (skip) console.warn(`skipping: ${skip}`);

const SOFTWARE = SOFTWARE_CANDIDATES.map(choiceId);
// vec4 paths on (d, n multiples of 4), Matryoshka blocks; 20 rows: M (ENCODE, DECODE, GRAD_F) and KD (the weight
// gradients) short of a tile. Scalar paths (odd d and n: a /v4 choice builds its scalar twin), Vanilla, 32 rows.
// Each choice's WGSL once per path (SwiftShader compiles an 8 × 8 direct kernel in ~10 s): under 40 s in all.
// The last: the scalar software choices with A read once per quad (MatmulOptions.quad, what a software engine with
// subgroups builds), Matryoshka's kSegments decode included.
const CASES: Array<[TuneShape, string[], boolean?]> = [
  [{ d: 36, n: 100, B: 20, K: 2, P: 3 }, [choiceId(DEFAULT_CHOICE), ...SOFTWARE.filter((c) => c.endsWith("/v4") || !c.startsWith("64x64/8x8"))]],
  [{ d: 33, n: 97, B: 32, K: 2, P: 1 }, SOFTWARE.filter((c) => !c.endsWith("/v4"))],
  [{ d: 33, n: 97, B: 20, K: 2, P: 3 }, SOFTWARE.filter((c) => !c.endsWith("/v4")), true],
];

describe.skipIf(skip !== null)("matmul kernels stay inside their bindings (dawn)", () => {
  let gpu: GpuBackend;
  beforeAll(async () => {
    gpu = await openDawn();
  }, 60_000);
  afterAll(async () => gpu?.close());

  for (const [shape, choices, quad] of CASES)
    for (const choice of choices)
      it(`${choice}${quad ? " (quad)" : ""} at d ${shape.d}, n ${shape.n}, B ${shape.B}, P ${shape.P}`, async () => {
        const counts = await gpu.run<Record<string, number>>("matmulBounds", { shape, choice, quad });
        expect(counts).toEqual(Object.fromEntries(Object.keys(counts).map((m) => [m, 0])));
        expect(Object.keys(counts)).toHaveLength(5);
      }, 60_000);

  // the whole step's kernels (selection, AuxK, Matryoshka blocks, Adam, evaluation), through a device that checks
  // every kernel's indices: 20 rows in row chunks of 8 (a partial last chunk), d_sae 144, two steps (AuxK's dead
  // latents from the first)
  const sae = (o: object) => ({ d_vit: 36, exp_factor: 4, dead_after: 1, ...o });
  const cfgs = [
    trainConfig({ sae_batch_size: 20, sae: sae({ kind: "relu", seed: 1 }) }),
    trainConfig({ sae_batch_size: 20, sae: sae({ kind: "jumprelu", seed: 2 }), objective: { kind: "matryoshka", n_prefixes: 3 } }),
    trainConfig({ sae_batch_size: 20, sae: sae({ kind: "topk", k: 4, k_aux: 6, aux_coeff: 0.5, seed: 3 }) }),
    trainConfig({ sae_batch_size: 20, sae: sae({ kind: "batchtopk", k: 3, k_aux: 40, aux_coeff: 0.25, seed: 4 }), objective: { kind: "matryoshka", n_prefixes: 3 } }),
  ];
  const kernels = (id: string) => Object.fromEntries(MATMUL_NAMES.map((m) => [m, parseChoiceId(id)!]));
  const runs: Array<[string, EngineOptions]> = [
    ["the adapter's default kernels", { minRowsPerChunk: 1, maxRowsPerChunk: 8 }],
    ["128x64/8x4 direct kernels, one chunk", { kernels: kernels("128x64/8x4/k16/direct") }],
    ["64x64/8x8 direct vec4 kernels, chunks of 12", { kernels: kernels("64x64/8x8/k16/direct/v4"), minRowsPerChunk: 1, maxRowsPerChunk: 12 }],
  ];
  for (const [what, options] of runs)
    it(`an engine's steps and evaluation stay inside their bindings: ${what}`, async () => {
      expect(await gpu.run<number>("engineBounds", { cfgs, options, steps: 2 })).toBe(0);
    }, 120_000);
});
