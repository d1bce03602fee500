/**
 * SAE_SWARM_ROBUSTNESS reaches the device on both backends (runner/robustness.ts): Chrome's GPU process through its
 * --enable-dawn-features switch, Dawn through the `webgpu` package's instance flags. Neither refuses a toggle it
 * does not know, so only a read past a binding tells: clamped to the binding's last element with robustness on
 * (Tint's transform, on every driver); past it without. Run it in both modes:
 *   SAE_SWARM_ROBUSTNESS=on npx vitest run -c vitest.config.ts test/gpu/robustness.test.ts   (the default is off)
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { robustness } from "../../runner/robustness";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";

const backends = await gpuBackends();

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`robustness ${robustness()} on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    it("an index past a binding is clamped exactly when robustness is on", async () => {
      const { value, clamped } = await gpu.run<{ value: number; clamped: boolean }>("outOfBoundsRead", {});
      if (robustness() === "on") expect(value).toBe(103);
      // SwiftShader reads the buffer's own element past the binding; a GPU's driver may return 0 or any in-range
      // value (Vulkan's robustBufferAccess), so off is only pinned down on SwiftShader
      else if (/swiftshader/i.test(gpu.report.description + gpu.report.architecture)) expect(value).toBe(110);
      else console.log(`[${name}] robustness off: a[10] of a 4-element binding read ${value} (clamped: ${clamped})`);
    });
  });
}
