// The engine with SAE.md's newer schedule (warmup_cosine, through shaders/schedule.ts) against the float64 reference
// over 50 steps, in Chromium and Dawn; and, until the engine runs AuxK, its clean refusal of aux_coeff > 0 for TopK
// and BatchTopK (a runner must not train them wrongly). With max_grad_norm and BatchTopK: batchtopk-engine.test.ts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StepMetrics, SyntheticData } from "../../shaders/config";
import { learningRate } from "../../shaders/schedule";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { trainConfig } from "../helpers/train-config";
import { trainStepSelect } from "../reference/topk";
import { referenceStart } from "./compare";

const backends = await gpuBackends();

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`engine schedule on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    it("warmup_cosine: 50 steps log the reference's lr, and the loss tracks the reference's", async () => {
      const steps = 50, B = 64, d = 8;
      const data: Partial<SyntheticData> = { d_vit: d, n_features: 12, sparsity: 0.1, seed: 3, noise: 0.01, n_examples: 10_000 };
      const base = { sae_batch_size: B, n_patches: steps * B, lr: 1e-2, n_lr_warmup: 10, log_every: 1, data, sae: { d_vit: d, exp_factor: 2, n_reinit_samples: 1024 } };
      const cfgs = [
        trainConfig({ ...base, seed: 1, lr_schedule: "warmup_cosine", lr_final: 1e-4 }),
        trainConfig({ ...base, seed: 2, lr_schedule: "warmup_cosine", n_lr_warmup: 0, sae: { ...base.sae, kind: "jumprelu", bandwidth: 0.1 } }),
      ];
      const out = await gpu.run<{ logs: Array<{ step: number; metrics: StepMetrics[] }> }>("engineTrain", { cfgs, steps, evalExamples: 256 });
      expect(out.logs.map((l) => l.step)).toEqual(Array.from({ length: steps }, (_, t) => t));

      const { ds, states } = referenceStart(cfgs);
      const gaps: number[] = [];
      for (let t = 0; t < steps; t++) {
        const x = ds.batch(t, B);
        cfgs.forEach((c, k) => {
          const r = trainStepSelect(states[k], c, x, B);
          const m = out.logs[t].metrics[k];
          expect(m["progress/learning_rate"], `step ${t} sae ${k}`).toBeCloseTo(learningRate(c, t), 12);
          expect(r.lr).toBe(learningRate(c, t));
          gaps.push(Math.abs(m.loss - r.loss) / r.loss);
        });
      }
      // The last step decays towards lr_final; the first warms up from 0.
      expect(out.logs[0].metrics[0]["progress/learning_rate"]).toBe(0);
      expect(out.logs[49].metrics[0]["progress/learning_rate"]).toBeLessThan(2e-4);
      console.log(`[${name}] engine vs reference loss over 50 warmup_cosine steps: max relative gap ${Math.max(...gaps).toExponential(1)}`);
      for (const g of gaps) expect(g).toBeLessThan(2e-2);
    }, 300_000);

    it("accepts AuxK (the default aux_coeff 1/32) for TopK and BatchTopK beside ReLU (test/gpu/auxk-engine.test.ts trains it)", async () => {
      for (const over of [{ sae: { kind: "topk", k: 4 } }, { sae: { kind: "batchtopk", k: 4 } }]) {
        const out = await gpu.run<{ error: string | null }>("engineTooBig", { cfgs: [trainConfig(), trainConfig(over as never)] });
        expect(out.error).toBeNull();
      }
    });
  });
}
