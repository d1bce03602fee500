/**
 * Engine step time at the demo's shape (examples/demo.toml: d_vit 32, d_sae 128, batch 512, 12 SAEs per group) on
 * Dawn, for a group of ReLU/JumpReLU SAEs against groups holding TopK or BatchTopK SAEs, so the cost of the
 * row selection on a software adapter is a measured number. Each group trains through the engineTrain GPU case
 * twice, for `a` and `b` steps; the difference over b − a is the time of one step (data, init and eval cancel).
 * Measured here (SwiftShader, 2 shared cores, load 8–13, 16 − 4 steps): before the one-thread-per-row select kernels,
 * ReLU/JumpReLU 399 ms/step, TopK (k 4) 4 184 (10.5×); after, ReLU/JumpReLU 1 509, TopK (k 4) 1 614 (1.07×),
 * BatchTopK (k 4) 1 881 (1.25×); another run: ReLU/JumpReLU 1 894, TopK (k 4) 2 756 (1.46×), TopK (k 8) 1 910 (1.01×),
 * BatchTopK (k 8) 2 045 (1.08×). BatchTopK's histogram and resolve (barrier-free resolve, pass 1 from pass 0's
 * candidates), old and new back to back, 16 − 4 steps, load 5.6–7.7, ReLU/JumpReLU swinging 388–1 984 ms/step with
 * the load: before 1 984 vs 1 970 (0.99×), 748 vs 975 (1.30×); after 1 657 vs 1 259 (0.76×), 389 vs 420 (1.08×);
 * a quieter pair (load 4.4–4.9): before 428 vs 517 (1.21×), after 452 vs 459 (1.02×).
 * Kernel by kernel: test/bench/topk-kernels.ts.
 * Not part of `npm test`:
 *   TOPK_DEMO_STEPS=24 [TOPK_DEMO_FROM=4] [TOPK_DEMO_GROUPS=0,1] npx vitest run -c test/bench/topk-demo.config.ts
 */
import { it } from "vitest";
import type { SaeKind, SyntheticData, TrainConfig } from "../../shaders/config";
import { openDawn } from "../helpers/gpu-backends";
import { trainConfig } from "../helpers/train-config";

const b = Number(process.env.TOPK_DEMO_STEPS ?? 24);
const a = Number(process.env.TOPK_DEMO_FROM ?? 4);
const B = 512;
const data: Partial<SyntheticData> = { d_vit: 32, n_features: 48, sparsity: 0.04, noise: 0.01, seed: 1, n_examples: 131_072 };

function group(kinds: Array<{ kind: SaeKind; k?: number }>): TrainConfig[] {
  return kinds.map((s, i) =>
    trainConfig({ seed: 42 + i, sae_batch_size: B, n_patches: 256 * B, lr: 1e-2, log_every: 8, data, sae: { d_vit: 32, exp_factor: 4, kind: s.kind, k: s.k ?? null, aux_coeff: 0, n_reinit_samples: 4096 } }),
  );
}
const mix = (n: number): Array<{ kind: SaeKind; k?: number }> => Array.from({ length: n }, (_, i) => ({ kind: i % 2 ? "jumprelu" : "relu" }));
const GROUPS: Record<string, TrainConfig[]> = {
  "12 relu/jumprelu (the demo's group)": group(mix(12)),
  "12 topk (k 4)": group(Array.from({ length: 12 }, () => ({ kind: "topk", k: 4 }))),
  "8 relu/jumprelu + 4 topk (k 4)": group([...mix(8), ...Array.from({ length: 4 }, () => ({ kind: "topk" as const, k: 4 }))]),
  "12 batchtopk (k 4)": group(Array.from({ length: 12 }, () => ({ kind: "batchtopk", k: 4 }))),
  "12 topk (k 64: the radix select)": group(Array.from({ length: 12 }, () => ({ kind: "topk", k: 64 }))),
};
// the demo's own TopK/BatchTopK runs (examples/demo.toml: k 8)
GROUPS["12 topk (k 8, as the demo)"] = group(Array.from({ length: 12 }, () => ({ kind: "topk", k: 8 })));
GROUPS["12 batchtopk (k 8, as the demo)"] = group(Array.from({ length: 12 }, () => ({ kind: "batchtopk", k: 8 })));
const only = process.env.TOPK_DEMO_GROUPS?.split(",").map(Number);
for (const [i, name] of Object.keys(GROUPS).entries()) if (only && !only.includes(i)) delete GROUPS[name];

it("engine step time at the demo's shape: ReLU/JumpReLU groups against groups with TopK", async () => {
  const gpu = await openDawn();
  try {
    console.log(`adapter: ${gpu.report.vendor} ${gpu.report.architecture}; ${b} − ${a} steps of batch ${B}`);
    for (const [name, cfgs] of Object.entries(GROUPS)) {
      const time = async (steps: number) => {
        const t0 = performance.now();
        await gpu.run("engineTrain", { cfgs, steps, evalExamples: 512 });
        return performance.now() - t0;
      };
      await time(1); // pipelines compiled
      const ms = ((await time(b)) - (await time(a))) / (b - a);
      console.log(`${name.padEnd(38)} ${ms.toFixed(1)} ms/step  (${((256 * ms) / 1000).toFixed(1)} s per 256-step group)`);
    }
  } finally {
    await gpu.close();
  }
}, 900_000);
