/**
 * What the step matmuls' fused operands, epilogues and block modes cost (issue 12): each of the five step matmuls
 * (shaders/kernels.ts) at the bench's shape (FUSION_K SAEs, d_vit 64, d_sae 512, batch 1024; Vanilla ReLU), beside
 * the same matmul stripped of one fused part at a time, on Dawn/SwiftShader, timed with timestamp queries, one
 * dispatch per compute pass, every variant in turn within each round (so all see the same load; odd rounds in reverse
 * order), fastest and median
 * of FUSION_REPS rounds:
 *   step       the step's spec as the engine runs it for this group (kernels.ts matmulSpec: Vanilla, one block)
 *   store      its epilogue replaced by a bare store of v into the same output
 *   loads      its fused loads replaced by bare loads of the same operand at the same layout (no aK / aInv / bInv)
 *   blocks     the block form (kSegments / nBlocks) a group with Matryoshka SAEs runs, here on one block
 *   bare       store and loads: a plain matmul of the same M × N × K and layouts
 *   baseline   with FUSION_BASELINE=DIR: the step's spec as DIR's checkout builds it (DIR/shaders/kernels.ts and
 *              matmul-template.ts), an A/B of the kernel in one process
 * FUSION_CHOICES: choice ids (default 64x64/8x8/k16/direct,64x64/4x4/k16/direct); FUSION_MATMULS: some of the five;
 * FUSION_VARIANTS: some of the variants; SAE_SWARM_ROBUSTNESS as the runner.
 *   SAE_SWARM_ROBUSTNESS=off node --import tsx test/bench/fusion.ts
 */
import { makeKernel } from "../../shaders/engine";
import { KERNEL_HEADER, MATMUL_NAMES, MATMUL_SPECS, matmulOptions, matmulShape, META_WORDS, oneBlock, type MatmulName, type MatmulSpec } from "../../shaders/kernels";
import { matmul, matmulGrid, parseChoiceId, type MatmulChoice, type MatmulOptions } from "../../shaders/matmul-template";
import { robustness } from "../../runner/robustness";
import { benchDevice, dispatchCpuMs } from "./dawn";

const { device, report } = await benchDevice();
console.log(`adapter: ${report.vendor} ${report.architecture} ${report.description}; robustness ${robustness()}`);

const K = Number(process.env.FUSION_K ?? 8), d = 64, n = 512, B = 1024;
const reps = Number(process.env.FUSION_REPS ?? 5);
const choices = (process.env.FUSION_CHOICES ?? "64x64/8x8/k16/direct,64x64/4x4/k16/direct").split(",");
const only = process.env.FUSION_MATMULS?.split(",") as MatmulName[] | undefined;
const variantsOnly = process.env.FUSION_VARIANTS?.split(",");
type Build = (name: MatmulName, choice: MatmulChoice, shape: { N: number; KD: number }, opts: MatmulOptions) => string;
let baseline: Build | undefined;
if (process.env.FUSION_BASELINE) {
  const dir = process.env.FUSION_BASELINE;
  const bk = (await import(`${dir}/shaders/kernels.ts`)) as typeof import("../../shaders/kernels");
  const bt = (await import(`${dir}/shaders/matmul-template.ts`)) as typeof import("../../shaders/matmul-template");
  baseline = (name, choice, shape, opts) => bt.matmul(bk.MATMUL_SPECS[name], choice, bk.KERNEL_HEADER, shape, opts);
}

// the bare forms of each spec's operands and output (same buffers, same layout, nothing fused)
const BARE: Record<MatmulName, { loads: Partial<MatmulSpec>; store: string }> = {
  ENCODE: {
    loads: { loadA: "x[(dims.row0 + gm) * dims.d + gk]", aK: undefined, loadA4: "x_v4[((dims.row0 + gm) * dims.d + gk) / 4u]", aK4: undefined },
    store: "H[(sae * dims.B + m) * dims.n + nn] = v;",
  },
  DECODE: {
    loads: { loadA: "H[(sae * dims.B + gm) * dims.n + gk]", aK: undefined, loadA4: "H_v4[((sae * dims.B + gm) * dims.n + gk) / 4u]", aK4: undefined },
    store: "R[((sae * dims.Pmax + q) * dims.B + m) * dims.d + nn] = v;",
  },
  GRAD_F: { loads: {}, store: "G[(sae * dims.B + m) * dims.n + nn] = v;" },
  GRAD_W_ENC: { loads: { loadA: "xT[gm * dims.B + gk]", aInv: undefined }, store: "gW_enc[(sae * dims.d + m) * dims.n + nn] = v;" },
  GRAD_W_DEC: {
    loads: { loadB: "H[(sae * dims.B + gk) * dims.n + gn]", bInv: undefined, loadB4: "H_v4[((sae * dims.B + gk) * dims.n + gn) / 4u]", bInv4: undefined },
    store: "gW_dec[(sae * dims.n + nn) * dims.d + m] = v;",
  },
};
const VARIANTS: Record<string, (name: MatmulName, s: MatmulSpec) => MatmulSpec | null> = {
  step: (_, s) => oneBlock(s),
  store: (name, s) => oneBlock({ ...s, epilogue: BARE[name].store, epilogue4: undefined }),
  loads: (name, s) => (Object.keys(BARE[name].loads).length ? oneBlock({ ...s, ...BARE[name].loads }) : null),
  blocks: (_, s) => (s.mode === "plain" ? null : s),
  bare: (name, s) => oneBlock({ ...s, ...BARE[name].loads, epilogue: BARE[name].store, epilogue4: undefined }),
};

// buffers: every tensor the five specs bind, random (H about half positive, so the ReLU branches split)
const f32 = (len: number, f: (i: number) => number) => Float32Array.from({ length: len }, (_, i) => f(i));
const rnd = (i: number, s: number) => (Math.sin(i * 12.9898 + s * 78.233) * 43758.5453) % 1;
const tensors: Record<string, Float32Array<ArrayBuffer>> = {
  x: f32(B * d, (i) => rnd(i, 1)), b_dec: f32(K * d, (i) => 0.1 * rnd(i, 2)), W_enc: f32(K * d * n, (i) => 0.1 * rnd(i, 3)), b_enc: f32(K * n, (i) => 0.01 * rnd(i, 4)),
  H: f32(K * B * n, (i) => rnd(i, 5)), theta: new Float32Array(K * n), W_dec: f32(K * n * d, (i) => 0.1 * rnd(i, 6)), R: f32(K * B * d, (i) => rnd(i, 7)),
  G: f32(K * B * n, (i) => 0.01 * rnd(i, 8)), xT: f32(d * B, (i) => rnd(i, 9)), gW_enc: new Float32Array(K * d * n), gW_dec: new Float32Array(K * n * d),
};
const buffers = new Map<string, GPUBuffer>();
for (const [name, data] of Object.entries(tensors)) {
  const b = device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(b, 0, data);
  buffers.set(name, b);
}
const dims = new Uint32Array([B, d, n, K, 1, 1, B, 0, 0, 0, 0, K, 0, 0, 0, 0]);
const dimsBuf = device.createBuffer({ size: dims.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
device.queue.writeBuffer(dimsBuf, 0, dims);
const meta = new Uint32Array(K * META_WORDS + K * 2);
const bits = (v: number) => new Uint32Array(new Float32Array([v]).buffer)[0];
for (let k = 0; k < K; k++) {
  meta.set([0, 1, bits(4e-4), bits(1e-3), bits(1 / (B * d)), bits(1e-4), bits(1), bits(1 / B)], k * META_WORDS);
  meta.set([0, n], K * META_WORDS + 2 * k);
}
const metaBuf = device.createBuffer({ size: meta.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
device.queue.writeBuffer(metaBuf, 0, meta);
buffers.set("dims", dimsBuf);
buffers.set("saeMeta", metaBuf);

interface Case { label: string; pipeline: GPUComputePipeline; bind: GPUBindGroup; size: [number, number, number]; ns: number[]; cpu: number[] }
const cases: Case[] = [];
const t0 = performance.now();
for (const id of choices) {
  const choice = parseChoiceId(id) ?? (() => { throw new Error(`fusion: unknown choice ${id}`); })();
  for (const name of MATMUL_NAMES.filter((m) => !only || only.includes(m))) {
    const shape = matmulShape(name, { d, n, B });
    for (const [variant, make] of [...Object.entries(VARIANTS), ...(baseline ? [["baseline", () => null] as const] : [])]) {
      if (variantsOnly && variant !== "step" && variant !== "baseline" && !variantsOnly.includes(variant)) continue;
      const spec = make(name, MATMUL_SPECS[name]);
      if (!spec && variant !== "baseline") continue;
      // every variant as the engine builds it on this device (A read once per quad on a software adapter with subgroups)
      const opts = matmulOptions(device, report.isFallbackAdapter);
      const code = spec ? matmul(spec, choice, KERNEL_HEADER, shape, opts) : baseline!(name, choice, shape, opts);
      const label = `${name} ${variant} ${id}`;
      const kernel = makeKernel(device, label, code);
      const names = [...code.matchAll(/@binding\((\d+)\) var<[^>]+> (\w+):/g)].map((m) => m[2].replace(/_v4$/, ""));
      const bind = device.createBindGroup({ layout: kernel.layout, entries: names.map((nm, binding) => ({ binding, resource: { buffer: buffers.get(nm)! } })) });
      cases.push({ label, pipeline: kernel.pipeline, bind, size: matmulGrid(choice, shape.M, shape.N, K), ns: [], cpu: [] });
    }
  }
}
console.log(`${cases.length} kernels built in ${((performance.now() - t0) / 1000).toFixed(1)} s; K ${K}, d_vit ${d}, d_sae ${n}, batch ${B}`);

const qs = device.createQuerySet({ type: "timestamp", count: 2 * cases.length });
const resolve = device.createBuffer({ size: 16 * cases.length, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
const read = device.createBuffer({ size: 16 * cases.length, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
for (let r = -1; r < reps; r++) {
  // one submit per case, in turn (r = -1: warm-up, first touches and lazy compilation)
  // odd rounds in reverse order, so neither side of a pair always runs first
  for (const i of [...cases.keys()].sort((a, b) => (r % 2 ? b - a : a - b))) {
    const c = cases[i];
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
    pass.setPipeline(c.pipeline);
    pass.setBindGroup(0, c.bind);
    pass.dispatchWorkgroups(...c.size);
    pass.end();
    device.queue.submit([enc.finish()]);
  }
  const enc = device.createCommandEncoder();
  enc.resolveQuerySet(qs, 0, 2 * cases.length, resolve, 0);
  enc.copyBufferToBuffer(resolve, 0, read, 0, 16 * cases.length);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(read.getMappedRange().slice(0));
  read.unmap();
  if (r >= 0) cases.forEach((c, i) => c.ns.push(Number(t[2 * i + 1] - t[2 * i])));
  // FUSION_CPU=1: each case again, alone in a submit, timed by this process's CPU time (SwiftShader runs in it): the
  // work a kernel costs, which the other processes on the cores change less than its wall time
  if (process.env.FUSION_CPU && r >= 0)
    for (const c of r % 2 ? [...cases].reverse() : cases) {
      c.cpu.push((await dispatchCpuMs(device, c.pipeline, c.bind, c.size)) * 1e6);
    }
}
const median = (a: number[]) => { const s = [...a].sort((x, y) => x - y); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const flops = 2 * B * d * n * K;
const cpuOn = !!process.env.FUSION_CPU;
console.log(`\n${"kernel".padEnd(44)} ${"fastest ms".padStart(10)} ${"median ms".padStart(10)} ${"GFLOP/s".padStart(8)}  vs step (fastest / median)${cpuOn ? "   CPU ms (fastest / median)  vs step" : ""}`);
let stepOf = cases[0];
const pct = (a: number, b: number) => `${((100 * a) / b).toFixed(0)} %`;
for (const c of cases) {
  if (c.label.split(" ")[1] === "step") stepOf = c;
  const f = Math.min(...c.ns), m = median(c.ns);
  const rel = c === stepOf ? "" : `${pct(f, Math.min(...stepOf.ns))} / ${pct(m, median(stepOf.ns))}`;
  const cpu = !cpuOn ? "" : `   ${(Math.min(...c.cpu) / 1e6).toFixed(1).padStart(8)} / ${(median(c.cpu) / 1e6).toFixed(1).padStart(8)}  ${c === stepOf ? "" : `${pct(Math.min(...c.cpu), Math.min(...stepOf.cpu))} / ${pct(median(c.cpu), median(stepOf.cpu))}`}`;
  console.log(`${c.label.padEnd(44)} ${(f / 1e6).toFixed(2).padStart(10)} ${(m / 1e6).toFixed(2).padStart(10)} ${(flops / f).toFixed(2).padStart(8)}  ${rel.padEnd(13)}${cpu}`);
}
device.destroy();
process.exit(0);
