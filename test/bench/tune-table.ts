/**
 * Every step matmul × every given choice at one shape, as the tuner builds them (kernels.ts matmulOptions: A by
 * quads on a software adapter with subgroups), on Node's webgpu (Dawn): the compile time of each pipeline, then
 * TABLE_REPS rounds in which every (matmul, choice) runs one dispatch in a stamped pass of its own and once more in
 * a submit of its own timed by this process's CPU time (SwiftShader runs in it), interleaved so load drift hits
 * every candidate alike. Prints per matmul the median and fastest stamped ms and the fastest CPU ms per choice.
 *   TABLE_CHOICES=64x64/4x4/k16/direct,64x64/16x4/k16/direct  (default: the software candidates)
 *   TABLE_SHAPE=d,n,B,K  (default 64,512,1024,8: the bench's K 8; 64,512,256,4 is the tuner's shape for it)
 *   node --import tsx test/bench/tune-table.ts
 */
import { bindingsOf, dimsAndMeta, kernelCode, SOFTWARE_CANDIDATES, tensorFloats, type TuneShape } from "../../shaders/autotune";
import { MATMUL_NAMES, matmulOptions, matmulShape } from "../../shaders/kernels";
import { choiceId, matmulGrid, parseChoiceId } from "../../shaders/matmul-template";
import { robustness } from "../../runner/robustness";
import { benchDevice, dispatchCpuMs } from "./dawn";

const { device, report } = await benchDevice();
const software = report.isFallbackAdapter;
console.log(`adapter: ${report.description} (${software ? "software" : "GPU"}); robustness ${robustness()}; quad ${matmulOptions(device, software).quad}`);

const [d, n, B, K] = (process.env.TABLE_SHAPE ?? "64,512,1024,8").split(",").map(Number);
const s: TuneShape = { d, n, B, K, P: 1 };
const reps = Number(process.env.TABLE_REPS ?? 5);
const choices = process.env.TABLE_CHOICES ? process.env.TABLE_CHOICES.split(",").map((id) => parseChoiceId(id) ?? (() => { throw new Error(`unknown choice ${id}`); })()) : SOFTWARE_CANDIDATES;
const only = process.env.TABLE_MATMULS?.split(",") ?? MATMUL_NAMES;
console.log(`shape ${JSON.stringify(s)}; ${reps} rounds`);

const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
const { dims, meta } = dimsAndMeta(s);
const dimsBuf = device.createBuffer({ size: 64, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
const metaBuf = device.createBuffer({ size: Math.max(16, meta.byteLength), usage });
device.queue.writeBuffer(dimsBuf, 0, dims);
device.queue.writeBuffer(metaBuf, 0, meta);
const tensors = new Map<string, GPUBuffer>();
const tensor = (name: string) => tensors.get(name) ?? (tensors.set(name, device.createBuffer({ size: 4 * tensorFloats(name, s), usage })), tensors.get(name)!);
const qs = device.createQuerySet({ type: "timestamp", count: 2 });
const resolve = device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });

interface Cell { m: string; id: string; pipeline: GPUComputePipeline; bind: GPUBindGroup; grid: [number, number, number]; compileS: number; ns: number[]; cpu: number }
const cells: Cell[] = [];
for (const m of MATMUL_NAMES.filter((x) => only.includes(x)))
  for (const c of choices) {
    const code = kernelCode(m, c, s, matmulOptions(device, software));
    const entries: GPUBindGroupLayoutEntry[] = [];
    const res: GPUBindGroupEntry[] = [];
    for (const b of bindingsOf(code)) {
      entries.push({ binding: b.binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: b.kind === "uniform" ? "uniform" : b.readOnly ? "read-only-storage" : "storage" } });
      res.push({ binding: b.binding, resource: { buffer: b.kind === "uniform" ? dimsBuf : b.name === "saeMeta" ? metaBuf : tensor(b.name) } });
    }
    const layout = device.createBindGroupLayout({ entries });
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const pipeline = await device.createComputePipelineAsync({ layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }), compute: { module: device.createShaderModule({ code }), entryPoint: "main" } });
    // SwiftShader compiles lazily at the first dispatch: one dispatch counts as part of the compile
    const cell: Cell = { m, id: choiceId(c), pipeline, bind: device.createBindGroup({ layout, entries: res }), grid: matmulGrid(c, matmulShape(m, s).M, matmulShape(m, s).N, K), compileS: 0, ns: [], cpu: Infinity };
    const e = device.createCommandEncoder();
    const p = e.beginComputePass();
    p.setPipeline(pipeline);
    p.setBindGroup(0, cell.bind);
    p.dispatchWorkgroups(1, 1, 1);
    p.end();
    device.queue.submit([e.finish()]);
    await device.queue.onSubmittedWorkDone();
    cell.compileS = (performance.now() - t0) / 1000;
    const cu = process.cpuUsage(c0);
    console.log(`compiled ${m} ${cell.id}: ${cell.compileS.toFixed(1)} s wall, ${((cu.user + cu.system) / 1e6).toFixed(1)} s CPU`);
    cells.push(cell);
  }

for (let r = 0; r < reps; r++)
  for (const cell of cells) {
    let enc = device.createCommandEncoder();
    const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
    pass.setPipeline(cell.pipeline);
    pass.setBindGroup(0, cell.bind);
    pass.dispatchWorkgroups(...cell.grid);
    pass.end();
    enc.resolveQuerySet(qs, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(read.getMappedRange().slice(0));
    read.unmap();
    cell.ns.push(Number(t[1] - t[0]));
    cell.cpu = Math.min(cell.cpu, await dispatchCpuMs(device, cell.pipeline, cell.bind, cell.grid));
  }

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
console.log(`\nmatmul       choice                      compile s  median ms  fastest ms  CPU ms (fastest)`);
for (const cell of cells)
  console.log(`${cell.m.padEnd(12)} ${cell.id.padEnd(27)} ${cell.compileS.toFixed(1).padStart(9)} ${(median(cell.ns) / 1e6).toFixed(2).padStart(10)} ${(Math.min(...cell.ns) / 1e6).toFixed(2).padStart(11)} ${cell.cpu.toFixed(1).padStart(17)}`);
device.destroy();
process.exit(0);
