/**
 * Every step matmul (kernels.ts MATMUL_SPECS) as one choice builds it, at a given shape, with every storage index
 * checked against its binding (test/helpers/bounds-check.ts): how many accesses fell outside, per matmul. The
 * buffers are bound as the tuner binds them (autotune.ts: each tensor at exactly its size at that shape, vec4 views
 * on the same buffers), the Dims and meta a step of that shape would bind.
 */
import { bindingsOf, dimsAndMeta, kernelCode, tensorFloats, type TuneShape } from "../../shaders/autotune";
import { MATMUL_NAMES, matmulShape } from "../../shaders/kernels";
import { matmulGrid, parseChoiceId } from "../../shaders/matmul-template";
import { boundsChecked, boundsCheckedDevice } from "../helpers/bounds-check";
import type { TrainConfig } from "../../shaders/config";
import { SaeEngine, type EngineOptions } from "../../shaders/engine";
import type { GpuCase } from "./cases";

async function matmulBounds(device: GPUDevice, input: { shape: TuneShape; choice: string; quad?: boolean }): Promise<Record<string, number>> {
  const s = input.shape;
  const choice = parseChoiceId(input.choice);
  if (!choice) throw new Error(`matmulBounds: no choice ${input.choice}`);
  const { dims, meta } = dimsAndMeta(s);
  const created: GPUBuffer[] = [];
  const make = (bytes: number, usage: number, data?: Uint32Array<ArrayBuffer>) => {
    const b = device.createBuffer({ size: Math.max(16, 4 * Math.ceil(bytes / 4)), usage: usage | GPUBufferUsage.COPY_DST });
    if (data) device.queue.writeBuffer(b, 0, data);
    created.push(b);
    return b;
  };
  const dimsBuf = make(dims.byteLength, GPUBufferUsage.UNIFORM, dims);
  const metaBuf = make(meta.byteLength, GPUBufferUsage.STORAGE, meta);
  const tensors = new Map<string, GPUBuffer>();
  const tensor = (name: string) => tensors.get(name) ?? (tensors.set(name, make(4 * tensorFloats(name, s), GPUBufferUsage.STORAGE)), tensors.get(name)!);
  const out: Record<string, number> = {};
  try {
    for (const m of MATMUL_NAMES) {
      const plain = kernelCode(m, choice, s, { quad: input.quad });
      const bindings = [...bindingsOf(plain)];
      const counter = Math.max(...bindings.map((b) => b.binding)) + 1;
      const code = boundsChecked(plain, counter);
      const count = make(4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, new Uint32Array(1));
      const entries: GPUBindGroupEntry[] = bindings.map((b) => ({
        binding: b.binding,
        resource: { buffer: b.kind === "uniform" ? dimsBuf : b.name === "saeMeta" ? metaBuf : tensor(b.name) },
      }));
      entries.push({ binding: counter, resource: { buffer: count } });
      // an explicit layout, as the tuner's: "auto" would drop the vec4 views a scalar path leaves unused
      const layout = device.createBindGroupLayout({
        entries: [
          ...bindings.map((b) => ({ binding: b.binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: (b.kind === "uniform" ? "uniform" : b.readOnly ? "read-only-storage" : "storage") as GPUBufferBindingType } })),
          { binding: counter, visibility: GPUShaderStage.COMPUTE, buffer: { type: "storage" as GPUBufferBindingType } },
        ],
      });
      device.pushErrorScope("validation");
      const module = device.createShaderModule({ code });
      const pipeline = device.createComputePipeline({ label: `bounds ${m} ${input.choice}`, layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }), compute: { module, entryPoint: "main" } });
      const bind = device.createBindGroup({ layout, entries });
      const err = await device.popErrorScope();
      if (err) throw new Error(`matmulBounds ${m} ${input.choice}: ${err.message}`);
      const { M, N } = matmulShape(m, { d: s.d, n: s.n, B: s.B });
      out[m] = await dispatchAndCount(device, pipeline, bind, matmulGrid(choice, M, N, s.K), count);
    }
  } finally {
    for (const b of created) b.destroy();
  }
  return out;
}

/** A kernel that indexes a 4-element storage binding, a workgroup array and a thread's array at 0..9, through the
 *  check: how many accesses it counted (18 when it counts each access past each array once). */
async function boundsProbe(device: GPUDevice): Promise<number> {
  const code = boundsChecked(
    /* wgsl */ `@group(0) @binding(0) var<storage, read_write> a: array<u32>;
var<workgroup> w: array<u32, 4>;
@compute @workgroup_size(1)
fn main() {
  var t: array<u32, 4>;
  for (var i = 0u; i < 10u; i++) { a[i] = i; w[i] = i; t[i] = i; }
  a[0] = w[3] + t[3];
}`,
    1,
  );
  const a = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  const count = device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  try {
    const pipeline = device.createComputePipeline({ layout: "auto", compute: { module: device.createShaderModule({ code }), entryPoint: "main" } });
    const bind = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: a } }, { binding: 1, resource: { buffer: count } }] });
    return await dispatchAndCount(device, pipeline, bind, [1, 1, 1], count);
  } finally {
    for (const b of [a, count]) b.destroy();
  }
}

/** Runs one dispatch and reads the counter it added to (a 4-byte storage buffer with COPY_SRC). */
async function dispatchAndCount(device: GPUDevice, pipeline: GPUComputePipeline, bind: GPUBindGroup, grid: [number, number, number], count: GPUBuffer): Promise<number> {
  const read = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...grid);
    pass.end();
    enc.copyBufferToBuffer(count, 0, read, 0, 4);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    return new Uint32Array(read.getMappedRange().slice(0))[0];
  } finally {
    read.destroy();
  }
}

/** Steps of an engine whose every kernel is bounds-checked, on random batches: accesses outside a binding. */
async function engineBounds(device: GPUDevice, input: { cfgs: TrainConfig[]; options?: EngineOptions; steps: number }): Promise<number> {
  const checked = boundsCheckedDevice(device);
  const engine = SaeEngine.create(checked.device, input.cfgs, input.options);
  try {
    const B = input.cfgs[0].sae_batch_size;
    const d = input.cfgs[0].sae.d_vit;
    for (let t = 0; t < input.steps; t++) await engine.step(Float32Array.from({ length: B * d }, (_, i) => Math.sin(i * 12.9898 + t) * 2), { metrics: true });
    await engine.evaluate([Float32Array.from({ length: (B + 3) * d }, (_, i) => Math.cos(i * 7.1 + 1))]);
    return await checked.count();
  } finally {
    engine.destroy();
    checked.destroy();
  }
}

export const boundsCases: Record<string, GpuCase> = {
  boundsProbe: (device) => boundsProbe(device),
  matmulBounds: (device, input) => matmulBounds(device, input),
  engineBounds: (device, input) => engineBounds(device, input),
};
