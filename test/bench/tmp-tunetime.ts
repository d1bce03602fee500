import { existsSync } from "node:fs";
import { autotune } from "../../shaders/autotune";
import { requestSaeDevice } from "../../shaders/device";
const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD)) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);
const gpu = create(["disable-dawn-features=timestamp_quantization"]);
const { device } = await requestSaeDevice(gpu);
console.log("device ok");
for (const [K, B] of [[12, 512], [12, 512]]) {
  const t0 = performance.now();
  const r = await autotune(device, { d: 32, n: 128, B, K, P: 1 }, { software: true, budgetMs: process.env.BUDGET ? Number(process.env.BUDGET) : undefined });
  console.log(K, B, (performance.now() - t0).toFixed(0), JSON.stringify(Object.fromEntries(Object.entries(r.kernels).map(([m, k]) => [m, [k.choice, k.gflops.toFixed(2), k.default_gflops.toFixed(2)]]))), JSON.stringify(r.shape));
}
device.destroy();
