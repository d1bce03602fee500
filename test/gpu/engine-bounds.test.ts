/**
 * Every kernel of a whole engine (the step's matmuls, TopK / BatchTopK selection, AuxK, Matryoshka blocks, Adam,
 * the evaluation) stays inside its arrays, through a device that instruments every kernel it compiles
 * (test/helpers/bounds-check.ts: storage bindings, workgroup and thread arrays). With Dawn's robustness off
 * (SAE_SWARM_ROBUSTNESS, the runner's default) nothing clamps an index, so this is what makes `off` safe: the shapes
 * cover the selection kernels on both sides of their per-thread cut (PER_THREAD_MAX_N: a thread per row up to 1024
 * latents, a workgroup per row past it) and of SMALL_K, a production d_sae (4096, odd 4097), partial row chunks and
 * one chunk (BatchTopK's speculative pass), direct (software) and tiled (GPU) matmuls. The matmul choices alone, at
 * more shapes: test/gpu/matmul-bounds.test.ts. Dawn only; the d_sae 4096 engines' selection and AuxK kernels are
 * most of its time (55 s on the 2 shared cores at load 4, 78 s at load 6). A workgroup array indexed past its end in
 * the workgroup-per-row select (seg[tid + 1]) counts 223 at d_sae 4097 and nothing at 144: the wide shapes matter.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_CHOICE, choiceId, parseChoiceId } from "../../shaders/matmul-template";
import { MATMUL_NAMES } from "../../shaders/kernels";
import type { EngineOptions } from "../../shaders/engine";
import type { TrainConfig } from "../../shaders/config";
import { trainConfig } from "../helpers/train-config";
import { dawnUnavailable, openDawn, type GpuBackend } from "../helpers/gpu-backends";

const skip = await dawnUnavailable();
if (skip) console.warn(`skipping: ${skip}`);

describe.skipIf(skip !== null)("an engine's kernels stay inside their arrays (dawn)", () => {
  let gpu: GpuBackend;
  beforeAll(async () => {
    gpu = await openDawn();
  }, 60_000);
  afterAll(async () => gpu?.close());

  // per engine: a ReLU, a JumpReLU + Matryoshka, a TopK and a BatchTopK + Matryoshka SAE, both with AuxK; 20 rows,
  // two steps (AuxK's dead latents from the first: dead_after 1), then an evaluation of 23 rows
  const group = (d_vit: number, exp_factor: number, topk: { k: number; k_aux: number }, batch: { k: number; k_aux: number }) => {
    const sae = (o: object) => ({ d_vit, exp_factor, dead_after: 1, ...o });
    return [
      trainConfig({ sae_batch_size: 20, sae: sae({ kind: "relu", seed: 1 }) }),
      trainConfig({ sae_batch_size: 20, sae: sae({ kind: "jumprelu", seed: 2 }), objective: { kind: "matryoshka", n_prefixes: 3 } }),
      trainConfig({ sae_batch_size: 20, sae: sae({ kind: "topk", ...topk, aux_coeff: 0.5, seed: 3 }) }),
      trainConfig({ sae_batch_size: 20, sae: sae({ kind: "batchtopk", ...batch, aux_coeff: 0.25, seed: 4 }), objective: { kind: "matryoshka", n_prefixes: 3 } }),
    ];
  };
  // d_sae 144: rows under the per-thread cut (PER_THREAD_MAX_N: a thread per row), k and k_aux on both sides of SMALL_K
  const small = group(36, 4, { k: 4, k_aux: 6 }, { k: 3, k_aux: 40 });
  // d_sae 1024: the cut's last per-thread length, TopK's k past SMALL_K (the per-thread radix select)
  const edge = group(8, 128, { k: 40, k_aux: 64 }, { k: 8, k_aux: 20 });
  // d_sae 4097 and 4096 (a production width; batch and d_vit small to stay cheap): a workgroup per row (the radix
  // select, BatchTopK's workgroup ties and apply), odd d_vit and d_sae (no vec4 path, partial column groups)
  const wide = group(17, 241, { k: 40, k_aux: 64 }, { k: 8, k_aux: 20 });
  const wide4 = group(16, 256, { k: 32, k_aux: 256 }, { k: 16, k_aux: 48 });
  const kernels = (id: string) => Object.fromEntries(MATMUL_NAMES.map((m) => [m, parseChoiceId(id)!]));
  const runs: Array<[string, TrainConfig[], EngineOptions]> = [
    ["d_sae 144, the adapter's default kernels, chunks of 8", small, { minRowsPerChunk: 1, maxRowsPerChunk: 8 }],
    ["d_sae 144, 128x64/8x4 direct kernels, one chunk", small, { kernels: kernels("128x64/8x4/k16/direct") }],
    ["d_sae 144, 64x64/8x8 direct vec4 kernels, chunks of 12", small, { kernels: kernels("64x64/8x8/k16/direct/v4"), minRowsPerChunk: 1, maxRowsPerChunk: 12 }],
    ["d_sae 1024, the adapter's default kernels, chunks of 8", edge, { minRowsPerChunk: 1, maxRowsPerChunk: 8 }],
    ["d_sae 4097, d_vit 17, the adapter's default kernels, chunks of 8", wide, { minRowsPerChunk: 1, maxRowsPerChunk: 8 }],
    ["d_sae 4096, d_vit 16, the tiled default (a GPU's untuned kernels), one chunk", wide4, { kernels: kernels(choiceId(DEFAULT_CHOICE)) }],
  ];
  for (const [what, cfgs, options] of runs)
    it(`two steps and an evaluation: ${what}`, async () => {
      expect(await gpu.run<number>("engineBounds", { cfgs, options, steps: 2 })).toBe(0);
    }, 120_000);
});
