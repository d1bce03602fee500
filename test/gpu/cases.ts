/**
 * GPU test cases: each takes a device and a JSON-able input and returns a JSON-able output, so the same case runs
 * in the Chrome page (through page.evaluate) and in Node on Dawn. Compare outputs with a reference in the test.
 */
import { runAxpy } from "../../shaders/axpy";
import { checkpointCases } from "./checkpoint-cases";
import { autotuneCases } from "./autotune-cases";
import { engineCases } from "./engine-cases";
import { matmulCases } from "./matmul-cases";
import { topkCases } from "./topk-cases";
import { auxkCases } from "./auxk-cases";
import { topkTrainCases } from "./topk-train-cases";
import { boundsCases } from "./bounds-cases";
import { outOfBoundsRead } from "../helpers/oob-probe";

export type GpuCase = (device: GPUDevice, input: any) => Promise<unknown>;

export const cases: Record<string, GpuCase> = {
  async axpy(device, input: { a: number; x: number[]; y: number[] }) {
    const out = await runAxpy(device, input.a, Float32Array.from(input.x), Float32Array.from(input.y));
    return Array.from(out);
  },
  ...engineCases,
  ...checkpointCases,
  ...autotuneCases,
  ...matmulCases,
  ...topkCases,
  ...auxkCases,
  ...topkTrainCases,
  ...boundsCases,
  outOfBoundsRead: (device) => outOfBoundsRead(device),
};
