/**
 * GPU case of the TopK training test (topk-train.test.ts): trains on synthetic data as the runner does, then
 * evaluates the whole eval set once and each of its first examples alone (an eval of one example gives that
 * example's L0 and, through freqs, which latents fired). JSON in, JSON out (cases.ts).
 */
import { SyntheticDataset } from "../../runner/data/synthetic";
import type { SyntheticData, TrainConfig } from "../../shaders/config";
import { SaeEngine } from "../../shaders/engine";

export const topkTrainCases = {
  async topkTrain(device: GPUDevice, input: { cfgs: TrainConfig[]; steps: number; evalExamples: number; perExample: number }) {
    device.pushErrorScope("validation");
    const cfg0 = input.cfgs[0];
    const data = new SyntheticDataset(cfg0.data as SyntheticData);
    const B = cfg0.sae_batch_size;
    const engine = SaeEngine.create(device, input.cfgs);
    try {
      engine.initBDec(data.head(cfg0.sae.n_reinit_samples));
      const l0s: number[][] = [];
      let next = engine.uploadBatch(data.batch(0, B));
      for (let t = 0; t < input.steps; t++) {
        const pending = engine.step(next);
        if (t + 1 < input.steps) next = engine.uploadBatch(data.batch(t + 1, B)); // prefetch, as the runner does
        const m = await pending;
        if (m) l0s.push(m.map((x) => x.l0));
      }
      const weights = await engine.exportWeights();
      const evalSet = data.slice(0, input.evalExamples);
      const evals = await engine.evaluate([evalSet]);
      const d = cfg0.sae.d_vit;
      const perExample: Array<Array<{ l0: number; active: number[] }>> = input.cfgs.map(() => []);
      for (let i = 0; i < input.perExample; i++) {
        const one = await engine.evaluate([evalSet.slice(i * d, (i + 1) * d)]);
        one.forEach((e, k) => perExample[k].push({ l0: e.l0, active: e.freqs.flatMap((f, j) => (f > 0 ? [j] : [])) }));
      }
      const err = await device.popErrorScope();
      if (err) throw new Error(`WebGPU validation error: ${err.message}`);
      return {
        l0s,
        weights: weights.map((w) => ({ W_enc: Array.from(w.W_enc), b_enc: Array.from(w.b_enc), W_dec: Array.from(w.W_dec), b_dec: Array.from(w.b_dec) })),
        evals: evals.map((e) => ({ l0: e.l0, mse: e.mse, fvu: e.fvu, n_dead: e.n_dead, n_examples: e.n_examples })),
        perExample,
      };
    } finally {
      engine.destroy();
    }
  },
};
