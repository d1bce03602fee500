/**
 * Dawn's robustness transform, A/B (issue 12): Tint clamps every storage-buffer index to the binding's length unless
 * the device has the `disable_robustness` toggle. Two Dawn instances in this process (one per flag set: Node's
 * `webgpu` takes toggles per instance), each with its own device and engine of the same configs, their whole step
 * timed with timestamp queries round by round in turn, so both see the same load (2 cores shared):
 *   node --import tsx test/bench/robustness.ts      (STEPS_SHAPE=bench|demo, ROBUST_REPS=7, ROBUST_MATMUL=tiled|direct,
 *                                                    ROBUST_OFF_ENGINE=DIR)
 * First it checks that the toggle took effect (Dawn ignores an unknown toggle silently): an index past a 4-element
 * binding of a larger buffer reads the clamped last element with robustness, the buffer's element beyond without.
 */
import { existsSync, readFileSync } from "node:fs";
import { SaeEngine } from "../../shaders/engine";
import type { TrainConfig } from "../../shaders/config";
import { requestSaeDevice } from "../../shaders/device";
import { expandSweep, parseSweepText } from "../../worker/sweep";
import { trainConfig } from "../helpers/train-config";
import { outOfBoundsRead } from "../helpers/oob-probe";

const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);

const reps = Number(process.env.ROBUST_REPS ?? 7);
let cfgs: TrainConfig[];
if (process.env.STEPS_SHAPE === "demo") {
  // the demo's first group, as the Worker expands examples/demo.toml (as test/bench/steps.ts)
  const { raw } = parseSweepText(readFileSync(new URL("../../examples/demo.toml", import.meta.url), "utf8"), "application/toml");
  const all = expandSweep(raw).configs.map((c) => c.cfg);
  cfgs = all.filter((c) => c.data.kind === "synthetic" && c.data.seed === (all[0].data as { seed: number }).seed).map((c) => ({ ...c, log_every: 1_000_000 }));
} else {
  cfgs = Array.from({ length: 8 }, (_, k) => trainConfig({ sae_batch_size: 1024, log_every: 1_000_000, seed: k, sae: { d_vit: 64, exp_factor: 8 }, objective: { sparsity_coeff: 4e-4 } }));
}
const c0 = cfgs[0];
const d = c0.sae.d_vit, B = c0.sae_batch_size;
console.log(`shape: d_vit ${d}, d_sae ${d * c0.sae.exp_factor}, batch ${B}, K ${cfgs.length} (${[...new Set(cfgs.map((c) => `${c.sae.kind}/${c.objective.kind}`))].join(", ")})`);
const x = Float32Array.from({ length: B * d }, (_, i) => Math.max(0, (Math.sin(i * 12.9898) * 43758.5453) % 1));

const gpus: GPU[] = [];
interface Side { label: string; device: GPUDevice; engine: SaeEngine; batch: GPUBuffer; qs: GPUQuerySet; resolve: GPUBuffer; read: GPUBuffer; ns: number[] }
type Engines = { SaeEngine: typeof SaeEngine };
async function side(label: string, flags: string[], engines: Engines = { SaeEngine }): Promise<Side> {
  // the GPU object is kept (in `gpus`): once garbage-collected, Dawn tears its instance down under the live device
  const gpu = create(["disable-dawn-features=timestamp_quantization", ...flags]);
  gpus.push(gpu);
  const { device } = await requestSaeDevice(gpu);
  device.addEventListener("uncapturederror", (e) => console.error(`${label}: WebGPU error:`, (e as GPUUncapturedErrorEvent).error.message));
  if (!device.features.has("timestamp-query")) throw new Error("robustness: the device has no timestamp-query");
  const oob = await outOfBoundsRead(device);
  console.log(`${label}: a[10] of a 4-element binding reads ${oob.value} (${oob.clamped ? "clamped: robustness on" : "unclamped: robustness off"})`);
  // ROBUST_MATMUL=tiled|direct: the matmuls of both engines (default: the engine's own choice)
  const matmul = process.env.ROBUST_MATMUL as "tiled" | "direct" | undefined;
  const engine = engines.SaeEngine.create(device, cfgs, { memoryBudget: 8 * 2 ** 30, ...(matmul ? { matmul } : {}) });
  console.log(`${label}: matmuls ${engine.matmulVariant}`);
  engine.initBDec(x);
  const batch = engine.uploadBatch(x);
  for (let i = 0; i < 2; i++) await engine.step(batch); // warm-up: compiles, first touches
  const qs = device.createQuerySet({ type: "timestamp", count: 2 });
  const resolve = device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  return { label, device, engine, batch, qs, resolve, read, ns: [] };
}
// ROBUST_OFF_ENGINE=DIR: the side without robustness runs DIR/shaders/engine.ts (a kernel changed to be right there)
const offEngines = process.env.ROBUST_OFF_ENGINE ? ((await import(`${process.env.ROBUST_OFF_ENGINE}/shaders/engine.ts`)) as Engines) : undefined;
const sides = [await side("robust (on)", []), await side("disable_robustness (off, the default)", ["enable-dawn-features=disable_robustness"], offEngines)];

for (let r = 0; r < reps; r++)
  for (const sd of r % 2 ? [...sides].reverse() : sides) {
    await sd.engine.step(sd.batch, { timestampWrites: { querySet: sd.qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
    const enc = sd.device.createCommandEncoder();
    enc.resolveQuerySet(sd.qs, 0, 2, sd.resolve, 0);
    enc.copyBufferToBuffer(sd.resolve, 0, sd.read, 0, 16);
    sd.device.queue.submit([enc.finish()]);
    await sd.read.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(sd.read.getMappedRange().slice(0));
    sd.read.unmap();
    sd.ns.push(Number(t[1] - t[0]));
  }
const ms = (ns: number) => (ns / 1e6).toFixed(1);
const median = (a: number[]) => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)];
for (const sd of sides) console.log(`${sd.label.padEnd(20)} step: fastest ${ms(Math.min(...sd.ns))} ms, median ${ms(median(sd.ns))} ms (${reps} rounds: ${sd.ns.map(ms).join(" ")})`);
const [on, off] = sides;
const ratios = on.ns.map((v, i) => v / off.ns[i]); // each round's pair ran back to back: the steadiest figure
console.log(`robust → unrobust: fastest ${(Math.min(...on.ns) / Math.min(...off.ns)).toFixed(2)}×, median ${(median(on.ns) / median(off.ns)).toFixed(2)}×, ` +
  `median of the rounds' ratios ${median(ratios).toFixed(2)}×; per round ${ratios.map((r) => r.toFixed(2)).join(" ")}`);
for (const sd of sides) sd.engine.destroy();
process.exit(0); // two Dawn instances: leave without tearing them down (SwiftShader's threads crash at their exit)
