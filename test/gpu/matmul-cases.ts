/**
 * GPU cases for the matmul generator's variants (JSON in, JSON out; see cases.ts).
 */
import { createMatmul, generatedVariant } from "../../shaders/matmul";
import { allChoices, choiceId, parseChoiceId } from "../../shaders/matmul-template";

export const matmulCases = {
  /** C = A·B by every generated choice the device's limits allow (or those named), output poisoned with NaN first. */
  async matmulVariants(device: GPUDevice, input: { M: number; N: number; K: number; a: number[]; b: number[]; choices?: string[] }) {
    const lim = { invocations: device.limits.maxComputeInvocationsPerWorkgroup, workgroupBytes: device.limits.maxComputeWorkgroupStorageSize };
    const choices = input.choices ? input.choices.map((id) => parseChoiceId(id)!) : allChoices(lim);
    const a = Float32Array.from(input.a), b = Float32Array.from(input.b);
    const out: Array<{ choice: string; c: number[]; error: string | null }> = [];
    for (const c of choices) {
      device.pushErrorScope("validation");
      const mm = createMatmul(device, generatedVariant(c), input.M, input.N, input.K, a, b);
      try {
        mm.poisonC();
        const enc = device.createCommandEncoder();
        mm.encode(enc, 1);
        device.queue.submit([enc.finish()]);
        const got = Array.from(await mm.readC());
        const err = await device.popErrorScope();
        out.push({ choice: choiceId(c), c: got, error: err ? err.message : null });
      } finally {
        mm.destroy();
      }
    }
    return out;
  },
};
