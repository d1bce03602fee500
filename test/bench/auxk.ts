/**
 * AuxK's share of a TopK training step on Dawn, timed as test/bench/topk-demo.ts times the demo (a bare Node process
 * aborts in SwiftShader's threads here, so it runs under vitest through the engineTrain GPU case). Each SAE trains
 * `a` then `b` steps; the difference over b − a is one step (data, init and eval cancel). Not part of `npm test`:
 *   [AUX_BENCH_SHAPES=64x8x1024,…] [AUX_BENCH_STEPS=6] [AUX_BENCH_FROM=2] npx vitest run -c test/bench/auxk.config.ts
 * Cases per shape (d_vit×exp×batch): TopK k 32 without AuxK; with AuxK (k_aux 512, aux_coeff 1/32) and dead_after
 * = 1 example, so every latent that did not fire on the previous step is dead (the step's n_dead_train is printed);
 * with AuxK and dead_after 10⁹ (nothing ever dead). Nothing here asserts a speed; the same file times an older
 * engine too (it uses only the engineTrain case).
 */
import { it } from "vitest";
import type { StepMetrics, SyntheticData } from "../../shaders/config";
import { openDawn } from "../helpers/gpu-backends";
import { trainConfig } from "../helpers/train-config";

const b = Number(process.env.AUX_BENCH_STEPS ?? 6);
const a = Number(process.env.AUX_BENCH_FROM ?? 2);
const shapes = (process.env.AUX_BENCH_SHAPES ?? "64x8x1024").split(",").map((s) => s.split("x").map(Number));

it("AuxK's share of a TopK step", async () => {
  const gpu = await openDawn();
  const rows: string[] = [];
  try {
    for (const [d, exp, B] of shapes) {
      const data: Partial<SyntheticData> = { d_vit: d, n_features: 2 * d, sparsity: 0.04, noise: 0.01, seed: 1, n_examples: 64 * B };
      const cfg = (aux: boolean, deadAfter: number) => [
        trainConfig({ seed: 7, sae_batch_size: B, n_patches: 64 * B, log_every: 1, data, sae: { d_vit: d, exp_factor: exp, kind: "topk", k: 32, k_aux: 512, aux_coeff: aux ? 1 / 32 : 0, dead_after: deadAfter } }),
      ];
      const cases: Array<[string, ReturnType<typeof cfg>]> = [
        ["no AuxK", cfg(false, 1e9)],
        ["AuxK, nothing dead", cfg(true, 1e9)],
        ["AuxK, dead_after 1", cfg(true, 1)],
      ];
      let base = NaN;
      for (const [label, cfgs] of cases) {
        let dead: number[] = [];
        const time = async (steps: number) => {
          const t0 = performance.now();
          const out = await gpu.run<{ logs: Array<{ metrics: StepMetrics[] }> }>("engineTrain", { cfgs, steps, evalExamples: 256 });
          dead = out.logs.map((l) => (l.metrics[0] as { n_dead_train?: number }).n_dead_train ?? 0);
          return performance.now() - t0;
        };
        await time(1); // pipelines compiled
        const ms = ((await time(b)) - (await time(a))) / (b - a);
        if (label === "no AuxK") base = ms;
        const row = `| ${d} × ${d * exp}, batch ${B} | ${label} | ${dead.slice(1).join(", ") || "-"} | ${ms.toFixed(0)} | ${label === "no AuxK" ? "-" : `${(((ms - base) / base) * 100).toFixed(0)} %`} |`;
        console.log(row);
        rows.push(row);
      }
    }
  } finally {
    await gpu.close();
  }
  console.log(`\n${b} − ${a} steps\n| shape | case | n_dead_train per step | ms/step | vs no AuxK |\n| --- | --- | --- | --: | --: |\n${rows.join("\n")}`);
}, 3_600_000);
