/**
 * `npm run bench`, through Node's `webgpu` package (Dawn) alone (no Chrome, no Worker), so it runs on any machine
 * with a GPU and Vulkan (or SwiftShader):
 *
 * 1. GPU idle time within a training step (idle.ts): the runner's loop with timestamp queries on every step's
 *    compute pass; batches from memory or from saev-layout shards served over HTTP on 127.0.0.1.
 *    Shape: BENCH_IDLE_D / BENCH_IDLE_EXP / BENCH_IDLE_B / BENCH_IDLE_K / BENCH_IDLE_STEPS / BENCH_IDLE_LOG_EVERY
 *    (defaults: d_vit 32, exp 4, batch 1024, K 4, 24 steps, metrics every 8 on a software adapter; the engine
 *    table's shape, K 4, 100 steps, metrics every 25 on a GPU). BENCH_IDLE=0 skips it.
 * 2. The engine table, printed last: the training step's throughput for K = 1, 2, 4, 8 SAEs at one fixed shape,
 *    against the best plain matmul on the same adapter in the same run (the roofline).
 *    Shape: BENCH_D (d_vit), BENCH_EXP (exp_factor), BENCH_B (batch); defaults by adapter (small on software ones).
 *    Timing: wall clock over `reps` queued steps, ended by onSubmittedWorkDone (batches already on the GPU: the
 *    runner uploads the next batch while a step runs). Then chunking's cost: K = BENCH_CHUNKED_K (4) once more in
 *    one pass, in BENCH_CHUNKS (4) row chunks, and in as many row chunks over one slab per SAE.
 *    Beside each K: saev's step in PyTorch (scripts/torch_step.py) at the same shape, where python3 imports torch
 *    (BENCH_TORCH=0 skips it), and the engine/PyTorch ratio. The last line is a one-line summary at K 8.
 *
 * `npm run bench:e2e` (e2e.ts) is the end-to-end half: wrangler dev + a Chrome runner. Not a test: nothing here
 * asserts a speed.
 */
import { existsSync } from "node:fs";
import { SaeEngine, type EngineOptions } from "../../shaders/engine";
import { persistentTensors, workingTensors } from "../../shaders/fit";
import { createMatmul, generatedVariant, MATMUL_VARIANTS } from "../../shaders/matmul";
import { autotune, candidatesFor, choicesOf, describeKernels, planFor, tuneShapeOf, type TuneResult } from "../../shaders/autotune";
import { choiceId } from "../../shaders/matmul-template";
import { requestSaeDevice } from "../../shaders/device";
import { trainConfig } from "../helpers/train-config";
import { measureIdle, type IdleCase, type IdleResult } from "./idle";
import { serveDirWithRanges } from "../runner/range-server";
import { writeBenchShards } from "./shards";
import { torchStep, torchUnavailable } from "./torch";
import { dawnRobustnessFlags, robustness } from "../../runner/robustness";

const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);
// Raw timestamps (Dawn quantizes them by default; the idle measurement wants the GPU's own resolution), and the
// runner's robustness setting (SAE_SWARM_ROBUSTNESS, runner/robustness.ts), so the bench times what a runner runs.
const gpu = create(["disable-dawn-features=timestamp_quantization", ...dawnRobustnessFlags()]);
const { device, report } = await requestSaeDevice(gpu).catch((e: Error) => {
  console.error(`${e.message}\nNode's webgpu (Dawn) found no adapter: it needs a Vulkan loader (libvulkan1) and a driver (the GPU's, or ${ICD} from Debian's chromium, through VK_ICD_FILENAMES)`);
  process.exit(1);
});
device.addEventListener("uncapturederror", (e) => console.error("WebGPU error:", (e as GPUUncapturedErrorEvent).error.message));
const software = report.isFallbackAdapter;
console.log(`adapter: ${report.vendor} ${report.architecture} ${report.description} (${software ? "software" : "GPU"}); robustness ${robustness()}`);

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

// Roofline: the best of our plain matmuls at the step's dominant shape [B, d] × [d, n]: the hand-written pair, the
// generator's defaults, and every choice the autotuner may pick on this adapter.
const rand = (len: number) => Float32Array.from({ length: len }, (_, i) => Math.sin(i * 12.9898) * 0.5);
const roof: Array<{ variant: string; gflops: number }> = [];
const roofVariants = [...new Set([...MATMUL_VARIANTS, ...candidatesFor(device, software).map(generatedVariant)])];
for (const variant of roofVariants) {
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

// Per-dispatch cost: 256 dispatches of a one-invocation kernel (one store each) in one compute pass, as a step
// records its ~17 dispatches; minus one such dispatch alone, per dispatch.
let dispatchUs = NaN;
{
  const module = device.createShaderModule({ code: "@group(0) @binding(0) var<storage, read_write> o: array<u32>;\n@compute @workgroup_size(1) fn main() { o[0] = o[0] + 1u; }" });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const buf = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  const bind = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }] });
  const pass = (n: number) => () => {
    const enc = device.createCommandEncoder();
    const p = enc.beginComputePass();
    p.setPipeline(pipeline);
    p.setBindGroup(0, bind);
    for (let i = 0; i < n; i++) p.dispatchWorkgroups(1);
    p.end();
    device.queue.submit([enc.finish()]);
  };
  const many = await timeIt(pass(256), 3);
  const one = await timeIt(pass(1), 3);
  dispatchUs = ((many - one) / 255) * 1e6;
  console.log(`dispatch cost: ${dispatchUs.toFixed(1)} µs per dispatch (256 one-invocation dispatches in one pass: ${(many * 1000).toFixed(2)} ms; one alone: ${(one * 1000).toFixed(2)} ms)`);
  buf.destroy();
}

const torchSkip = torchUnavailable();
let torchDevice = "";
const byK = new Map<number, { pct: number; ratio: string }>();
const rows: string[][] = [];
const benchConfigs = (K: number) =>
  Array.from({ length: K }, (_, k) => trainConfig({ sae_batch_size: B, log_every: 1_000_000, seed: k, sae: { d_vit: d, exp_factor: exp }, objective: { sparsity_coeff: 4e-4 } }));
const budget = software ? 8 * 2 ** 30 : 100 * 2 ** 30;
const layoutOf = (e: SaeEngine) => `${e.plan.rowChunks} × ${e.plan.rowsPerChunk} rows, ${e.plan.slabs} slab${e.plan.slabs > 1 ? "s" : ""}`;
function engineRow(label: string, K: number, secs: number, engine: SaeEngine, torch: { ms: string; ratio: string } = { ms: "-", ratio: "-" }): number {
  const flops = 10 * B * d * n * K; // encode, decode, dL/df, dL/dW_enc, dL/dW_dec: 2·B·d·n each
  const gflops = flops / secs / 1e9;
  const pct = (100 * gflops) / best.gflops;
  const kernels = [...new Set(Object.values(engine.kernels).map(choiceId))];
  const what = kernels.length === 1 ? kernels[0] : "tuned (see above)";
  rows.push([label, (secs * 1000).toFixed(1), gflops.toFixed(2), ((K * B) / secs).toFixed(0), `${pct.toFixed(0)} %`, torch.ms, torch.ratio, `${what}, ${layoutOf(engine)}`]);
  return pct;
}
// saev's step in PyTorch, same shape and K, right after the engine's (so both see about the same machine load)
function torchBeside(K: number, secs: number): { ms: string; ratio: string } {
  if (torchSkip) return { ms: "-", ratio: "-" };
  try {
    const t = torchStep({ d, n, B, K, reps });
    torchDevice = `${t.device}, ${t.threads} threads, torch ${t.torch}`;
    return { ms: t.ms_per_step.toFixed(1), ratio: ((secs * 1000) / t.ms_per_step).toFixed(2) };
  } catch (e) {
    console.error(String(e));
    return { ms: "error", ratio: "-" };
  }
}
// Each K: the engine with the default kernels, then (when the autotuner, as a runner runs it at this shape, chose
// otherwise) with the tuned ones; the summary takes the tuned engine (what a runner trains with).
const tunings: Array<{ K: number; r: TuneResult }> = [];
const defaultIds = (engine: SaeEngine) => Object.values(engine.kernels).map(choiceId).join();
for (const K of Ks) {
  let engine: SaeEngine;
  try {
    engine = SaeEngine.create(device, benchConfigs(K), { memoryBudget: budget });
  } catch (e) {
    rows.push([String(K), "-", "-", "-", "-", "-", "-", String(e).slice(0, 60)]);
    continue;
  }
  const batch = engine.uploadBatch(rand(B * d));
  const secs = await timeIt(() => void engine.step(batch), reps);
  const plan = planFor(device, { d_vit: d, d_sae: n, batch: B, prefixes: 1, saes: K }, { memoryBudget: budget });
  const tuned = await autotune(device, tuneShapeOf(plan, { d_vit: d, d_sae: n, prefixes: 1 }), { software });
  tunings.push({ K, r: tuned });
  const kernels = choicesOf(tuned);
  const same = Object.values(kernels).map(choiceId).join() === defaultIds(engine);
  let pick = { secs, engine, label: String(K) };
  if (!same) {
    const te = SaeEngine.create(device, benchConfigs(K), { memoryBudget: budget, kernels });
    const tb = te.uploadBatch(rand(B * d));
    const tsecs = await timeIt(() => void te.step(tb), reps);
    engineRow(String(K), K, secs, engine);
    pick = { secs: tsecs, engine: te, label: `${K} tuned` };
  }
  const torch = torchBeside(K, pick.secs);
  byK.set(K, { pct: engineRow(pick.label, K, pick.secs, pick.engine, torch), ratio: torch.ratio });
  engine.destroy();
  if (pick.engine !== engine) pick.engine.destroy();
}

// Chunking's cost: K = BENCH_CHUNKED_K SAEs in one pass, in BENCH_CHUNKS row chunks, and in as many row chunks over
// one slab per SAE (the binding just holds the batch and one SAE's largest tensor at that chunk size). The three
// are timed in turn, BENCH_CHUNK_ROUNDS times, and each layout's fastest round is kept, so that the load of a
// shared machine drifting during the run does not pass for a difference between them.
const chunks = env("BENCH_CHUNKS", 4);
const chunkedK = env("BENCH_CHUNKED_K", 4);
const rounds = env("BENCH_CHUNK_ROUNDS", 3);
const chunkNotes: string[] = [];
{
  const rowsPerChunk = Math.ceil(B / chunks);
  const shape = { d_vit: d, d_sae: n, batch_size: B };
  const maxBindingSize = 4 * Math.max(B * d, ...Object.values(persistentTensors(shape)), ...Object.values(workingTensors(shape, rowsPerChunk)));
  const layouts: Array<{ label: string; options: EngineOptions }> = [
    { label: `${chunkedK}, one pass`, options: {} },
    { label: `${chunkedK}, ${chunks} chunks`, options: { minRowsPerChunk: 1, maxRowsPerChunk: rowsPerChunk } },
    { label: `${chunkedK}, ${chunks} chunks, slabs`, options: { minRowsPerChunk: 1, maxRowsPerChunk: rowsPerChunk, maxBindingSize } },
  ];
  const engines = layouts.map((l) => SaeEngine.create(device, benchConfigs(chunkedK), { memoryBudget: budget, ...l.options }));
  const batches = engines.map((e) => e.uploadBatch(rand(B * d)));
  const best = engines.map(() => Infinity);
  for (let r = 0; r < rounds; r++)
    for (const [i, e] of engines.entries()) best[i] = Math.min(best[i], await timeIt(() => void e.step(batches[i]), reps));
  layouts.forEach((l, i) => engineRow(l.label, chunkedK, best[i], engines[i]));
  const pct = (x: number) => `${x >= best[0] ? "+" : ""}${((100 * (x - best[0])) / best[0]).toFixed(1)} %`;
  chunkNotes.push(
    `chunking's cost at K ${chunkedK} (fastest of ${rounds} rounds each): ${layoutOf(engines[1])} ${pct(best[1])}, ${layoutOf(engines[2])} ${pct(best[2])} vs one pass`,
  );
  for (const e of engines) e.destroy();
}

// GPU idle time within a step (timestamp queries), on the runner's loop.
const idleRows: string[][] = [];
let idleNote = "";
if (process.env.BENCH_IDLE !== "0") {
  if (!device.features.has("timestamp-query")) idleNote = "GPU idle: skipped (this adapter has no timestamp-query)";
  else {
    const shape = {
      d_vit: env("BENCH_IDLE_D", software ? 32 : d),
      exp_factor: env("BENCH_IDLE_EXP", software ? 4 : exp),
      batch: env("BENCH_IDLE_B", software ? 1024 : B),
      K: env("BENCH_IDLE_K", 4),
      steps: env("BENCH_IDLE_STEPS", software ? 24 : 100),
      warmup: 2,
    };
    const logEvery = env("BENCH_IDLE_LOG_EVERY", software ? 8 : 25);
    const imgs = Math.max(256, Math.ceil((4 * shape.batch) / 16)); // 16 patches per image: 4 batches per epoch at least
    const t0 = performance.now();
    const shards = await writeBenchShards({ d_vit: shape.d_vit, n_imgs: imgs });
    const server = await serveDirWithRanges(shards.dir);
    console.log(`\nGPU idle: wrote ${shards.written.shards.length} shards (${(shards.written.bytes / 2 ** 20).toFixed(1)} MiB, ${imgs} images × 16 patches) in ${((performance.now() - t0) / 1000).toFixed(1)} s; serving ${server.url}`);
    const cases: IdleCase[] = [
      { label: "memory, no metrics", data: "memory", logEvery: 0 },
      { label: `memory, metrics every ${logEvery}`, data: "memory", logEvery },
      { label: "HTTP shards, no metrics", data: "shards", logEvery: 0 },
      { label: `HTTP shards, metrics every ${logEvery} (runner loop)`, data: "shards", logEvery },
    ];
    const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
    idleRows.push(["loop", "wall ms/step", "GPU-busy ms/step", "idle", "after log", "other", "1 − busy/wall", "data wait ms/step"]);
    try {
      for (const c of cases) {
        let r: IdleResult;
        try {
          r = await measureIdle(device, shape, c, server.url);
        } catch (e) {
          idleRows.push([c.label, String(e).slice(0, 80), "", "", "", "", "", ""]);
          continue;
        }
        idleRows.push([r.label, r.wallMsPerStep.toFixed(1), r.busyMsPerStep.toFixed(1), pct(r.idle), pct(r.idleAfterLog), pct(r.idleOther), pct(r.idleVsWall), r.dataWaitMsPerStep.toFixed(1)]);
        console.log(`  ${r.label}: idle ${pct(r.idle)}`);
      }
    } finally {
      await server.close();
      shards.remove();
    }
    idleNote = `GPU idle within a step: d_vit ${shape.d_vit}, d_sae ${shape.d_vit * shape.exp_factor}, batch ${shape.batch}, K ${shape.K}; ${shape.steps} timed steps after ${shape.warmup}`;
  }
}

function printTable(rows: string[][], leftCols = 1): void {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log(r.map((c, i) => (i < leftCols ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "));
}

if (idleNote) console.log(`\n${idleNote}`);
if (idleRows.length) printTable(idleRows);

for (const { K, r } of tunings)
  console.log(`\nautotune at K ${K} (${r.timing} timing, ${r.candidates} candidates, ${r.tuned_ms} ms, timed at ${JSON.stringify(r.shape)}):\n  ${describeKernels(r).join("\n  ")}`);
console.log(`\ndispatch cost: ${dispatchUs.toFixed(1)} µs per dispatch (a step at one row chunk and one slab is 17 dispatches)`);
console.log(`roofline: matmul ${best.variant} ${best.gflops.toFixed(2)} GFLOP/s ([${B}, ${d}] × [${d}, ${n}])`);
const header = ["K", "ms/step", "GFLOP/s", "SAE-samples/s", "of matmul", "PyTorch ms/step", "engine/PyTorch", "kernels"];
printTable([header, ...rows], 0);
for (const line of chunkNotes) console.log(line);
console.log(torchSkip ? `PyTorch: skipped: ${torchSkip}` : `PyTorch: scripts/torch_step.py on ${torchDevice} (saev's ReLU/Vanilla step, same shape and K)`);
device.destroy();
const k8 = byK.get(8);
const p8 = k8 ? `${k8.pct.toFixed(0)}%` : "n/a%";
const r8 = k8 && k8.ratio !== "-" ? k8.ratio : "n/a";
console.log(`summary: step at ${p8} of the best matmul (K 8); engine/PyTorch step time ${r8} (K 8) at d_vit ${d}, d_sae ${n}, batch ${B}`);
