/**
 * Plain C = A·B matmuls (row-major f32) that serve as the roofline for the benchmark: the best of these on an
 * adapter is the rate the training step's matmuls are measured against. "tiled" and "direct" are hand-written,
 * register-blocked (4 × 4 outputs per thread) with vec4 loads; "tiled" stages 64 × 16 / 16 × 64 tiles in workgroup
 * memory (GPUs), "direct" reads straight from memory without barriers (software adapters); their shapes:
 * M % 64 = N % 64 = K % 16 = 0. "gen:<choice>" is kernels.ts's generator (matmul-template.ts) for that choice, on
 * any shape: the same code the step's matmuls are built from.
 */
import { isSoftwareDevice, makeKernel } from "./engine";
import { matmulOptions, plainMatmul } from "./kernels";
import { choiceFor, choiceId, matmulGrid, parseChoiceId, type MatmulChoice } from "./matmul-template";

export type MatmulVariant = "tiled" | "direct" | `gen:${string}`;
/** The hand-written pair and the generator's two pre-tuner defaults. */
export const MATMUL_VARIANTS: MatmulVariant[] = ["tiled", "direct", `gen:${choiceId(choiceFor(false))}`, `gen:${choiceId(choiceFor(true))}`];

export const generatedVariant = (c: MatmulChoice): MatmulVariant => `gen:${choiceId(c)}`;

const PARAMS = /* wgsl */ `
struct Dims { M: u32, N: u32, K: u32, pad: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> A: array<vec4f>;
@group(0) @binding(2) var<storage, read> B: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> C: array<vec4f>;
`;

export const MATMUL_TILED = /* wgsl */ `${PARAMS}
var<workgroup> As: array<f32, 1024>;   // [16 k][64 m]
var<workgroup> Bs: array<vec4f, 256>;  // [16 k][16 vec4 columns]
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) l: vec3u, @builtin(local_invocation_index) lid: u32) {
  let m0 = wg.y * 64u; let n0 = wg.x * 64u;
  let K4 = dims.K / 4u; let N4 = dims.N / 4u;
  var acc0 = vec4f(0.0); var acc1 = vec4f(0.0); var acc2 = vec4f(0.0); var acc3 = vec4f(0.0);
  for (var k0 = 0u; k0 < dims.K; k0 += 16u) {
    let am = lid / 4u; let ak4 = lid % 4u;
    let a = A[(m0 + am) * K4 + k0 / 4u + ak4];
    As[(ak4 * 4u) * 64u + am] = a.x; As[(ak4 * 4u + 1u) * 64u + am] = a.y;
    As[(ak4 * 4u + 2u) * 64u + am] = a.z; As[(ak4 * 4u + 3u) * 64u + am] = a.w;
    let bk = lid / 16u; let bc = lid % 16u;
    Bs[bk * 16u + bc] = B[(k0 + bk) * N4 + n0 / 4u + bc];
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let b = Bs[kk * 16u + l.x];
      let ab = kk * 64u + l.y * 4u;
      acc0 = fma(vec4f(As[ab]), b, acc0);
      acc1 = fma(vec4f(As[ab + 1u]), b, acc1);
      acc2 = fma(vec4f(As[ab + 2u]), b, acc2);
      acc3 = fma(vec4f(As[ab + 3u]), b, acc3);
    }
    workgroupBarrier();
  }
  let r = m0 + l.y * 4u; let c = n0 / 4u + l.x;
  C[r * N4 + c] = acc0; C[(r + 1u) * N4 + c] = acc1; C[(r + 2u) * N4 + c] = acc2; C[(r + 3u) * N4 + c] = acc3;
}`;

export const MATMUL_DIRECT = /* wgsl */ `${PARAMS}
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let K4 = dims.K / 4u; let N4 = dims.N / 4u;
  let c = g.x; let r = g.y * 4u;
  if (c >= N4 || r >= dims.M) { return; }
  var acc0 = vec4f(0.0); var acc1 = vec4f(0.0); var acc2 = vec4f(0.0); var acc3 = vec4f(0.0);
  for (var k4 = 0u; k4 < K4; k4++) {
    let b0 = B[(4u * k4) * N4 + c]; let b1 = B[(4u * k4 + 1u) * N4 + c];
    let b2 = B[(4u * k4 + 2u) * N4 + c]; let b3 = B[(4u * k4 + 3u) * N4 + c];
    let a0 = A[r * K4 + k4]; let a1 = A[(r + 1u) * K4 + k4]; let a2 = A[(r + 2u) * K4 + k4]; let a3 = A[(r + 3u) * K4 + k4];
    acc0 = fma(vec4f(a0.x), b0, fma(vec4f(a0.y), b1, fma(vec4f(a0.z), b2, fma(vec4f(a0.w), b3, acc0))));
    acc1 = fma(vec4f(a1.x), b0, fma(vec4f(a1.y), b1, fma(vec4f(a1.z), b2, fma(vec4f(a1.w), b3, acc1))));
    acc2 = fma(vec4f(a2.x), b0, fma(vec4f(a2.y), b1, fma(vec4f(a2.z), b2, fma(vec4f(a2.w), b3, acc2))));
    acc3 = fma(vec4f(a3.x), b0, fma(vec4f(a3.y), b1, fma(vec4f(a3.z), b2, fma(vec4f(a3.w), b3, acc3))));
  }
  C[r * N4 + c] = acc0; C[(r + 1u) * N4 + c] = acc1; C[(r + 2u) * N4 + c] = acc2; C[(r + 3u) * N4 + c] = acc3;
}`;

export interface Matmul {
  /** Queues `repeats` C = A·B dispatches in one compute pass (stamped at its ends when timestampWrites is given). */
  encode(enc: GPUCommandEncoder, repeats: number, timestampWrites?: GPUComputePassTimestampWrites): void;
  readC(): Promise<Float32Array>;
  /** Fills C with NaN (tests: an element the kernel fails to write stays NaN). */
  poisonC(): void;
  destroy(): void;
}

export function createMatmul(device: GPUDevice, variant: MatmulVariant, M: number, N: number, K: number, a: Float32Array<ArrayBuffer>, b: Float32Array<ArrayBuffer>): Matmul {
  const choice = variant.startsWith("gen:") ? parseChoiceId(variant.slice(4)) : null;
  if (variant.startsWith("gen:") && !choice) throw new Error(`matmul: unknown variant ${variant}`);
  if (!choice && (M % 64 || N % 64 || K % 16)) throw new Error(`matmul: M and N must be multiples of 64 and K of 16, got ${M}×${N}×${K}`);
  const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  // vec4 views read whole vec4s: round the operands up to one (the padding is never used)
  const padded = (n: number) => 4 * Math.ceil(n / 4) * 4;
  const A = device.createBuffer({ size: padded(M * K), usage: storage });
  const B = device.createBuffer({ size: padded(K * N), usage: storage });
  const C = device.createBuffer({ size: padded(M * N), usage: storage });
  device.queue.writeBuffer(A, 0, a);
  device.queue.writeBuffer(B, 0, b);
  const dims = device.createBuffer({ size: 64, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  // generated kernels read the engine's Dims (B, d, n, K, Pmax, S, chunk, size, row0, part0, sae0, Kall, accumulate,
  // 3 pads) and a (here unused) meta buffer
  device.queue.writeBuffer(dims, 0, choice ? new Uint32Array([M, K, N, 1, 1, 1, 256, 0, 0, 0, 0, 1, 0, 0, 0, 0]) : new Uint32Array([M, N, K, 0, 0, 0, 0, 0]));
  const meta = device.createBuffer({ size: 4 * 32, usage: storage });
  let pipeline: GPUComputePipeline;
  let layout: GPUBindGroupLayout;
  let buffers: GPUBuffer[];
  if (choice) {
    const kernel = makeKernel(device, variant, plainMatmul(choice, { N, KD: K }, matmulOptions(device, isSoftwareDevice(device))));
    pipeline = kernel.pipeline;
    layout = kernel.layout;
    buffers = [dims, meta, A, B, C, A, B];
  } else {
    const module = device.createShaderModule({ code: variant === "tiled" ? MATMUL_TILED : MATMUL_DIRECT });
    pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
    layout = pipeline.getBindGroupLayout(0);
    buffers = [dims, A, B, C];
  }
  const bind = device.createBindGroup({ layout, entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const size: [number, number, number] = choice ? matmulGrid(choice, M, N, 1) : variant === "direct" ? [Math.ceil(N / 4 / 8), Math.ceil(M / 4 / 8), 1] : [N / 64, M / 64, 1];
  return {
    encode(enc, repeats, timestampWrites) {
      const pass = enc.beginComputePass(timestampWrites ? { timestampWrites } : undefined);
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind);
      for (let i = 0; i < repeats; i++) pass.dispatchWorkgroups(...size);
      pass.end();
    },
    poisonC() {
      device.queue.writeBuffer(C, 0, new Float32Array(C.size / 4).fill(NaN));
    },
    async readC() {
      const rb = device.createBuffer({ size: C.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(C, 0, rb, 0, C.size);
      device.queue.submit([enc.finish()]);
      await rb.mapAsync(GPUMapMode.READ);
      const out = new Float32Array(rb.getMappedRange().slice(0, 4 * M * N));
      rb.destroy();
      return out;
    },
    destroy() {
      for (const b of [dims, meta, A, B, C]) b.destroy();
    },
  };
}
