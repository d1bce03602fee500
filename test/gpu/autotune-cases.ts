/**
 * GPU cases for the autotuner (JSON in, JSON out; see cases.ts).
 */
import type { TrainConfig } from "../../shaders/config";
import { autotune, candidatesFor, type TuneShape } from "../../shaders/autotune";
import { isSoftwareDevice, PARAM_NAMES, SaeEngine, type EngineOptions } from "../../shaders/engine";
import { choiceId, parseChoiceId } from "../../shaders/matmul-template";
import type { MatmulChoices } from "../../shaders/kernels";

export const autotuneCases = {
  /** Tunes at a shape; returns the result and the candidate ids this device was offered. */
  async autotune(device: GPUDevice, input: { shape: TuneShape; budgetMs?: number; software?: boolean }) {
    const software = input.software ?? isSoftwareDevice(device);
    const t0 = performance.now();
    const result = await autotune(device, input.shape, { software, budgetMs: input.budgetMs });
    return {
      result,
      wall_ms: performance.now() - t0,
      candidates: candidatesFor(device, software).map(choiceId),
      timestamps: device.features.has("timestamp-query"),
    };
  },

  /**
   * One step from the seeded init on batch x, by the default engine and by engines with the given kernels (choice
   * ids per matmul), each with every intermediate buffer poisoned with NaN first; returns every engine's buffers.
   */
  async engineKernels(device: GPUDevice, input: { cfgs: TrainConfig[]; x: number[]; kernels: Array<Record<string, string>>; options?: EngineOptions }) {
    const names = ["H", "G", "R", ...PARAM_NAMES.flatMap((p) => [`grad.${p}`, p])];
    const run = async (kernels?: MatmulChoices) => {
      device.pushErrorScope("validation");
      const engine = SaeEngine.create(device, input.cfgs, { ...input.options, kernels });
      try {
        engine.poison();
        await engine.step(Float32Array.from(input.x), { metrics: true });
        const out: Record<string, number[]> = {};
        for (const n of names) out[n] = Array.from(await engine.readBuffer(n));
        const err = await device.popErrorScope();
        if (err) throw new Error(`WebGPU validation error: ${err.message}`);
        return { buffers: out, kernels: Object.fromEntries(Object.entries(engine.kernels).map(([m, c]) => [m, choiceId(c)])) };
      } finally {
        engine.destroy();
      }
    };
    const base = await run();
    const tuned = [];
    for (const k of input.kernels) tuned.push(await run(Object.fromEntries(Object.entries(k).map(([m, id]) => [m, parseChoiceId(id)!])) as MatmulChoices));
    return { base, tuned };
  },
};
