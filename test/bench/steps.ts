/**
 * One training step per dispatch (issue 12): the demo's first group (examples/demo.toml as the Worker expands it:
 * 12 SAEs, d_vit 32, d_sae 128, batch 512) by default, or the bench's shape (STEPS_SHAPE=bench: d_vit 64, d_sae
 * 512, batch 1024, 8 ReLU/Vanilla SAEs) on Node's webgpu (Dawn), timed with timestamp queries:
 *   - the whole step in one compute pass (as SaeEngine.step records it), the fastest of STEPS_REPS steps;
 *   - every dispatch of that step in a compute pass of its own, stamped at its beginning and end (the fastest of
 *     STEPS_REPS steps per dispatch), grouped by kernel;
 *   - the bare cost of a dispatch: 256 one-invocation dispatches in one stamped pass, minus one alone;
 *   - with STEPS_BASELINE=DIR, the same for another checkout's engine (DIR/shaders/engine.ts), round by round in
 *     turn with this tree's, so both see the same load (2 cores shared: only ratios within one run mean much).
 *   - STEPS_KERNELS / STEPS_BASELINE_KERNELS: the matmuls' choices of this tree's / the baseline's engine, one
 *     choice id for all five ("64x64/8x8/k16/direct") or "ENCODE=id,DECODE=id,…" (the others keep the default);
 *     without them both run the default (direct) kernels.
 *   node --import tsx test/bench/steps.ts        (STEPS_SHAPE=bench, STEPS_REPS=5, STEPS_OBJECTIVE=matryoshka)
 */
import { readFileSync } from "node:fs";
import { SaeEngine } from "../../shaders/engine";
import { MATMUL_NAMES } from "../../shaders/kernels";
import { choiceId, parseChoiceId, type MatmulChoice } from "../../shaders/matmul-template";
import type { TrainConfig } from "../../shaders/config";
import { expandSweep, parseSweepText } from "../../worker/sweep";
import { trainConfig } from "../helpers/train-config";
import { robustness } from "../../runner/robustness";
import { benchDevice, dispatchCpuMs } from "./dawn";

const { device, report } = await benchDevice();
if (!device.features.has("timestamp-query")) throw new Error("steps: the device has no timestamp-query");
console.log(`adapter: ${report.vendor} ${report.architecture} ${report.description}; robustness ${robustness()}`);

const reps = Number(process.env.STEPS_REPS ?? 5);
let cfgs: TrainConfig[];
if (process.env.STEPS_SHAPE === "bench") {
  cfgs = Array.from({ length: 8 }, (_, k) => trainConfig({ sae_batch_size: 1024, log_every: 1_000_000, seed: k, sae: { d_vit: 64, exp_factor: 8 }, objective: { sparsity_coeff: 4e-4 } }));
} else {
  const { raw } = parseSweepText(readFileSync(new URL("../../examples/demo.toml", import.meta.url), "utf8"), "application/toml");
  const all = expandSweep(raw).configs.map((c) => c.cfg);
  cfgs = all.filter((c) => c.data.kind === "synthetic" && c.data.seed === (all[0].data as { seed: number }).seed).map((c) => ({ ...c, log_every: 1_000_000 }));
  // STEPS_OBJECTIVE=vanilla|matryoshka: the group's configs of that objective only (to split the cost by objective)
  if (process.env.STEPS_OBJECTIVE) cfgs = cfgs.filter((c) => c.objective.kind === process.env.STEPS_OBJECTIVE);
}
const c0 = cfgs[0];
const d = c0.sae.d_vit, n = d * c0.sae.exp_factor, B = c0.sae_batch_size;
console.log(`shape: d_vit ${d}, d_sae ${n}, batch ${B}, K ${cfgs.length} (${[...new Set(cfgs.map((c) => `${c.sae.kind}/${c.objective.kind}`))].join(", ")})`);
const x = Float32Array.from({ length: B * d }, (_, i) => Math.max(0, (Math.sin(i * 12.9898) * 43758.5453) % 1));

// the engine's recorded dispatches (private; read here to time each one alone)
type Dispatch = { kernel: { pipeline: GPUComputePipeline }; bind: GPUBindGroup; size: [number, number, number] };
type Engine = Pick<SaeEngine, "step" | "uploadBatch" | "initBDec" | "destroy" | "plan" | "matmulVariant" | "kernels">;
interface Side { label: string; engine: Engine; batch: GPUBuffer; dispatches: Dispatch[]; stepNs: number; steps: number[]; best: number[]; all: number[][]; cpu: number[] }
async function side(label: string, create: (device: GPUDevice, cfgs: TrainConfig[], o: object) => Engine): Promise<Side> {
  const t0 = performance.now();
  const engine = create(device, cfgs, { memoryBudget: 8 * 2 ** 30 });
  engine.initBDec(x);
  const batch = engine.uploadBatch(x);
  for (let i = 0; i < 2; i++) await engine.step(batch); // warm-up: compiles, first touches
  await device.queue.onSubmittedWorkDone();
  // creation and two warm-up steps: mostly compiling on SwiftShader
  console.log(`${label}: created and 2 warm-up steps in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const dispatches = [...(engine as unknown as { stepDispatches(): Iterable<Dispatch> }).stepDispatches()];
  console.log(`${label}: ${engine.plan.rowChunks} × ${engine.plan.rowsPerChunk} rows, ${engine.plan.slabs} slab(s); matmuls ${Object.entries(engine.kernels).map(([m, c]) => `${m} ${choiceId(c)}`).join(", ")}; ${dispatches.length} dispatches`);
  return { label, engine, batch, dispatches, stepNs: Infinity, steps: [], all: [], best: dispatches.map(() => Infinity), cpu: dispatches.map(() => Infinity) };
}
// STEPS_BASELINE=DIR: the same step by another checkout's engine (DIR/shaders/engine.ts), timed in turn with this one
// in the same process, so both see the same machine load (the fastest of STEPS_REPS rounds each)
// the engine's `kernels` option from STEPS_KERNELS-style text (choice objects, so either checkout's engine takes them)
function kernelsOf(text: string | undefined): Record<string, MatmulChoice> | undefined {
  if (!text) return undefined;
  const parse = (id: string) => parseChoiceId(id) ?? (() => { throw new Error(`steps: unknown choice ${id}`); })();
  if (!text.includes("=")) return Object.fromEntries(MATMUL_NAMES.map((m) => [m, parse(text)]));
  return Object.fromEntries(text.split(",").map((kv) => kv.split("=")).map(([m, id]) => [m, parse(id)]));
}
const mine = kernelsOf(process.env.STEPS_KERNELS), theirs = kernelsOf(process.env.STEPS_BASELINE_KERNELS);
const sides = [await side("this tree", (dv, c, o) => SaeEngine.create(dv, c, { ...o, kernels: mine }))];
if (process.env.STEPS_BASELINE) {
  const other = (await import(`${process.env.STEPS_BASELINE}/shaders/engine.ts`)) as { SaeEngine: { create(dv: GPUDevice, c: TrainConfig[], o: object): Engine } };
  sides.push(await side(`baseline ${process.env.STEPS_BASELINE}`, (dv, c, o) => other.SaeEngine.create(dv, c, { ...o, kernels: theirs })));
}
const N = Math.max(...sides.map((s) => s.dispatches.length));
const qs = device.createQuerySet({ type: "timestamp", count: 2 * N });
const resolve = device.createBuffer({ size: 16 * N, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
const read = device.createBuffer({ size: 16 * N, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
async function stamps(count: number): Promise<BigUint64Array> {
  await read.mapAsync(GPUMapMode.READ, 0, 16 * count);
  const out = new BigUint64Array(read.getMappedRange(0, 16 * count).slice(0));
  read.unmap();
  return out;
}

for (let r = 0; r < reps; r++)
  for (const sd of sides) {
    // the whole step in one pass, as SaeEngine.step records it
    await sd.engine.step(sd.batch, { timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
    let enc = device.createCommandEncoder();
    enc.resolveQuerySet(qs, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
    device.queue.submit([enc.finish()]);
    const t = await stamps(1);
    sd.stepNs = Math.min(sd.stepNs, Number(t[1] - t[0]));
    sd.steps.push(Number(t[1] - t[0]));
    // each dispatch alone (same order, same buffers: each sees its predecessors' writes as in the step)
    const M = sd.dispatches.length;
    enc = device.createCommandEncoder();
    sd.dispatches.forEach((p, i) => {
      const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
      pass.setPipeline(p.kernel.pipeline);
      pass.setBindGroup(0, p.bind);
      pass.dispatchWorkgroups(...p.size);
      pass.end();
    });
    enc.resolveQuerySet(qs, 0, 2 * M, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 16 * M);
    device.queue.submit([enc.finish()]);
    const u = await stamps(M);
    for (let i = 0; i < M; i++) {
      sd.best[i] = Math.min(sd.best[i], Number(u[2 * i + 1] - u[2 * i]));
      (sd.all[i] ??= []).push(Number(u[2 * i + 1] - u[2 * i]));
    }
    // STEPS_CPU=1: each dispatch alone in a submit of its own, timed by this process's CPU time (SwiftShader runs
    // in it): the work a kernel costs, which other processes' load on the cores changes less than wall time
    if (process.env.STEPS_CPU)
      for (const [i, p] of sd.dispatches.entries())
        sd.cpu[i] = Math.min(sd.cpu[i], (await dispatchCpuMs(device, p.kernel.pipeline, p.bind, p.size)) * 1e6);
  }

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
}
for (const sd of sides) {
  const byKernel = new Map<string, { count: number; ns: number; medNs: number; workgroups: number; cpuNs: number }>();
  sd.dispatches.forEach((p, i) => {
    const label = p.kernel.pipeline.label;
    const e = byKernel.get(label) ?? { count: 0, ns: 0, medNs: 0, workgroups: 0, cpuNs: 0 };
    e.count++;
    e.ns += sd.best[i];
    e.medNs += median(sd.all[i] ?? []);
    e.cpuNs += sd.cpu[i];
    e.workgroups += p.size[0] * p.size[1] * p.size[2];
    byKernel.set(label, e);
  });
  const sum = sd.best.reduce((a, b) => a + b, 0);
  console.log(`\n${sd.label}: per dispatch (fastest of ${reps} rounds each, a compute pass per dispatch), in step order:`);
  const cpu = process.env.STEPS_CPU ? "    CPU ms" : "";
  console.log(`kernel               dispatches  workgroups        ms   share  median ms${cpu}`);
  for (const [label, e] of byKernel)
    console.log(`${label.padEnd(20)} ${String(e.count).padStart(10)} ${String(e.workgroups).padStart(11)} ${(e.ns / 1e6).toFixed(2).padStart(9)} ${((100 * e.ns) / sum).toFixed(1).padStart(6)} % ${(e.medNs / 1e6).toFixed(2).padStart(9)}${cpu ? (e.cpuNs / 1e6).toFixed(1).padStart(10) : ""}`);
  console.log(`${"Σ dispatches alone".padEnd(20)} ${String(sd.dispatches.length).padStart(10)} ${"".padStart(11)} ${(sum / 1e6).toFixed(2).padStart(9)}`);
  console.log(`whole step in one pass: ${(sd.stepNs / 1e6).toFixed(2)} ms (fastest of ${reps}), median ${(median(sd.steps) / 1e6).toFixed(2)} ms`);
}
if (sides.length === 2) {
  console.log(`\nstep: ${(sides[1].stepNs / 1e6).toFixed(1)} ms (baseline) → ${(sides[0].stepNs / 1e6).toFixed(1)} ms (this tree): ${(sides[1].stepNs / sides[0].stepNs).toFixed(2)}×`);
  // the rounds' ratios: each round times both sides back to back, so the median ratio is the least load-bound figure
  const ratios = sides[0].steps.map((t, r) => sides[1].steps[r] / t);
  console.log(`step medians: ${(median(sides[1].steps) / 1e6).toFixed(1)} → ${(median(sides[0].steps) / 1e6).toFixed(1)} ms: ${(median(sides[1].steps) / median(sides[0].steps)).toFixed(2)}×; rounds' ratios ${ratios.map((x) => x.toFixed(2)).join(" ")} (median ${median(ratios).toFixed(2)}×)`);
}

// the bare cost of a dispatch in a pass: 256 one-invocation dispatches in one stamped pass, minus one alone
{
  const module = device.createShaderModule({ code: "@group(0) @binding(0) var<storage, read_write> o: array<u32>;\n@compute @workgroup_size(1) fn main() { o[0] = o[0] + 1u; }" });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const buf = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  const bind = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }] });
  const passNs = async (count: number) => {
    let bestNs = Infinity;
    for (let r = 0; r < reps; r++) {
      const enc = device.createCommandEncoder();
      const p = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
      p.setPipeline(pipeline);
      p.setBindGroup(0, bind);
      for (let i = 0; i < count; i++) p.dispatchWorkgroups(1);
      p.end();
      enc.resolveQuerySet(qs, 0, 2, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
      device.queue.submit([enc.finish()]);
      const t = await stamps(1);
      bestNs = Math.min(bestNs, Number(t[1] - t[0]));
    }
    return bestNs;
  };
  const many = await passNs(256), one = await passNs(1);
  console.log(`bare dispatch: ${((many - one) / 255 / 1e3).toFixed(1)} µs each (256 one-invocation dispatches in one stamped pass ${(many / 1e6).toFixed(2)} ms, one ${(one / 1e6).toFixed(3)} ms); ` +
    `× ${sides[0].dispatches.length} dispatches = ${((sides[0].dispatches.length * (many - one)) / 255 / 1e6).toFixed(2)} ms of the step`);
}
for (const sd of sides) sd.engine.destroy();
device.destroy();
process.exit(0);
