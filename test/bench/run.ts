/**
 * `npm run bench`: the training step's throughput for K = 1, 2, 4, 8 SAEs at one fixed shape, against the best
 * plain matmul on the same adapter in the same run (the roofline), through Node's `webgpu` package (Dawn).
 * Shape: BENCH_D (d_vit), BENCH_EXP (exp_factor), BENCH_B (batch); defaults by adapter (small on software ones).
 * Timing: wall clock over `reps` queued steps, ended by onSubmittedWorkDone (batches already on the GPU: the
 * runner uploads the next batch while a step runs). Not a test: nothing here asserts a speed.
 */
import { existsSync } from "node:fs";
import { SaeEngine } from "../../shaders/engine";
import { createMatmul, MATMUL_VARIANTS } from "../../shaders/matmul";
import { requestSaeDevice } from "../../shaders/device";
import { trainConfig } from "../helpers/train-config";

const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);
const gpu = create([]);
const { device, report } = await requestSaeDevice(gpu);
device.addEventListener("uncapturederror", (e) => console.error("WebGPU error:", (e as GPUUncapturedErrorEvent).error.message));
const software = report.isFallbackAdapter;
console.log(`adapter: ${report.vendor} ${report.architecture} ${report.description} (${software ? "software" : "GPU"})`);

const env = (k: string, d: number) => (process.env[k] ? Number(process.env[k]) : d);
const d = env("BENCH_D", software ? 64 : 768);
const exp = env("BENCH_EXP", software ? 8 : 16);
const B = env("BENCH_B", software ? 1024 : 4096);
const n = d * exp;
const Ks = (process.env.BENCH_K ?? "1,2,4,8").split(",").map(Number);
const reps = env("BENCH_REPS", software ? 2 : 20);
console.log(`shape: d_vit ${d}, d_sae ${n}, batch ${B}; ${reps} timed steps per K`);

async function timeIt(fn: () => void, repeats: number): Promise<number> {
  fn(); // warm-up (pipeline compilation, first touches)
  await device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  for (let i = 0; i < repeats; i++) fn();
  await device.queue.onSubmittedWorkDone();
  return (performance.now() - t0) / 1000 / repeats;
}

// Roofline: the best of our plain matmuls at the step's dominant shape [B, d] × [d, n].
const rand = (len: number) => Float32Array.from({ length: len }, (_, i) => Math.sin(i * 12.9898) * 0.5);
const roof: Array<{ variant: string; gflops: number }> = [];
for (const variant of MATMUL_VARIANTS) {
  const mm = createMatmul(device, variant, B, n, d, rand(B * d), rand(d * n));
  const perCall = 4;
  const secs = await timeIt(() => {
    const enc = device.createCommandEncoder();
    mm.encode(enc, perCall);
    device.queue.submit([enc.finish()]);
  }, reps);
  const gflops = (2 * B * n * d * perCall) / secs / 1e9;
  roof.push({ variant, gflops });
  console.log(`matmul ${variant}: ${gflops.toFixed(2)} GFLOP/s`);
  mm.destroy();
}
const best = roof.reduce((a, b) => (b.gflops > a.gflops ? b : a));

const rows: string[][] = [];
for (const K of Ks) {
  const cfgs = Array.from({ length: K }, (_, k) =>
    trainConfig({ sae_batch_size: B, log_every: 1_000_000, seed: k, sae: { d_vit: d, exp_factor: exp }, objective: { sparsity_coeff: 4e-4 } }),
  );
  let engine: SaeEngine;
  try {
    engine = SaeEngine.create(device, cfgs, { memoryBudget: software ? 8 * 2 ** 30 : 100 * 2 ** 30 });
  } catch (e) {
    rows.push([String(K), "-", "-", "-", "-", String(e).slice(0, 60)]);
    continue;
  }
  const batch = engine.uploadBatch(rand(B * d));
  const secs = await timeIt(() => void engine.step(batch), reps);
  const flops = 10 * B * d * n * K; // encode, decode, dL/df, dL/dW_enc, dL/dW_dec: 2·B·d·n each
  const gflops = flops / secs / 1e9;
  rows.push([String(K), (secs * 1000).toFixed(1), gflops.toFixed(2), ((K * B) / secs).toFixed(0), `${((100 * gflops) / best.gflops).toFixed(0)} %`, engine.matmulVariant]);
  engine.destroy();
}

console.log(`\nroofline: matmul ${best.variant} ${best.gflops.toFixed(2)} GFLOP/s ([${B}, ${d}] × [${d}, ${n}])`);
const header = ["K", "ms/step", "GFLOP/s", "SAE-samples/s", "of matmul", "variant"];
const table = [header, ...rows];
const widths = header.map((_, i) => Math.max(...table.map((r) => r[i].length)));
for (const r of table) console.log(r.map((c, i) => c.padStart(widths[i])).join("  "));
device.destroy();
