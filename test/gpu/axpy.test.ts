import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, randomArray, testSeed } from "../helpers/random";

const backends = await gpuBackends();

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`WebGPU rail on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
      console.log(`[${name}] adapter:`, JSON.stringify(gpu.report));
    }, 120_000);
    afterAll(async () => gpu?.close());

    it("reports an adapter with its info and raised limits", () => {
      expect(gpu.report.limits.maxStorageBufferBindingSize).toBeGreaterThan(128 * 1024 * 1024 - 1);
      expect(typeof gpu.report.vendor).toBe("string");
      expect(typeof gpu.report.isFallbackAdapter).toBe("boolean");
    });

    it("axpy matches the float64 reference on fresh random inputs (odd sizes)", async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      for (const n of [1, 63, 64, 65, 1000, 4099]) {
        const a = rand() * 4 - 2;
        const x = randomArray(rand, n, 10);
        const y = randomArray(rand, n, 10);
        const got = await gpu.run<number[]>("axpy", { a, x, y });
        expect(got).toHaveLength(n);
        const f = Math.fround;
        for (let i = 0; i < n; i++) {
          const want = f(a) * f(x[i]) + f(y[i]);
          // f32 inputs, one fused or two rounded ops: relative error within a few ulps.
          expect(Math.abs(got[i] - want), `seed ${seed}, n ${n}, i ${i}`).toBeLessThanOrEqual(1e-6 * (Math.abs(want) + 1));
        }
      }
    });
  });
}
