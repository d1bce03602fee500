/**
 * GPU case of the runner's bridge to the engine (runner/page/engine-port.ts) with real checkpoints: resume through
 * encodeResumeCheckpoint/decodeCheckpoint (θ of BatchTopK as `threshold`, the moments of log θ), and the final
 * checkpoint's threshold. JSON in, JSON out (see cases.ts).
 */
import { SyntheticDataset } from "../../runner/data/synthetic";
import { createGroupEngine } from "../../runner/page/engine-port";
import { decodeCheckpoint, decodeSafetensors, encodeFinalCheckpoint, encodeResumeCheckpoint } from "../../runner/safetensors";
import type { SyntheticData, TrainConfig } from "../../shaders/config";

export const checkpointCases = {
  /**
   * Trains a + b steps in one group engine; and a steps, a resume checkpoint per SAE (encoded and decoded), a fresh
   * group engine importing them, b steps. Returns the largest parameter difference and each final checkpoint's
   * threshold tensor (null where it has none).
   */
  async checkpointResume(device: GPUDevice, input: { cfgs: TrainConfig[]; a: number; b: number }) {
    const cfg0 = input.cfgs[0];
    const data = new SyntheticDataset(cfg0.data as SyntheticData);
    const B = cfg0.sae_batch_size;
    const norm = { mean: new Float32Array(cfg0.sae.d_vit), scale: 1 };
    const one = await createGroupEngine(device, input.cfgs);
    const two = await createGroupEngine(device, input.cfgs);
    try {
      for (let t = 0; t < input.a; t++) await one.step(data.batch(t, B));
      const states = await one.exportState();
      const files = states.map((s, k) => encodeResumeCheckpoint({ run_id: `r${k}`, cfg: input.cfgs[k], step: input.a }, s.weights, norm, s.adam));
      await two.importState(files.map((f) => {
        const c = decodeCheckpoint(f);
        return { weights: c.weights, adam: c.adam! };
      }));
      for (let t = input.a; t < input.a + input.b; t++) {
        await one.step(data.batch(t, B));
        await two.step(data.batch(t, B));
      }
      const [w1, w2] = [await one.exportWeights(), await two.exportWeights()];
      let maxDiff = 0;
      for (let k = 0; k < w1.length; k++)
        for (const p of ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"] as const) {
          const x = w1[k][p], y = w2[k][p];
          if (!x || !y) {
            if (x || y) maxDiff = Infinity;
            continue;
          }
          for (let i = 0; i < x.length; i++) maxDiff = Math.max(maxDiff, Math.abs(x[i] - y[i]));
        }
      const finals = w1.map((w, k) => decodeSafetensors(encodeFinalCheckpoint({ run_id: `r${k}`, cfg: input.cfgs[k], step: input.a + input.b }, w, norm)));
      return {
        maxDiff,
        resumeThresholds: files.map((f) => decodeSafetensors(f).tensors.threshold?.shape ?? null),
        // AuxK's dead counters in the resume checkpoints: shape, and the largest (null where there are none)
        resumeCounters: files.map((f) => {
          const c = decodeSafetensors(f).tensors.aux_counters;
          return c ? { shape: c.shape, max: Math.max(...Array.from(c.data as BigInt64Array, Number)) } : null;
        }),
        thresholds: finals.map((f) => (f.tensors.threshold ? Array.from(f.tensors.threshold.data as Float32Array) : null)),
      };
    } finally {
      one.destroy();
      two.destroy();
    }
  },
};
