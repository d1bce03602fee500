/**
 * The direct GRAD_F kernel alone (shaders/kernels.ts, one Matryoshka SAE: d_vit 17, d_sae 51, batch 37, block
 * bounds [0, 4, 5, 10, 51]) on two Dawn instances, with and without `disable_robustness`, each against a float64
 * reference. Every buffer is bound whole and padded by 64 Ki elements past any index the kernel can form, so nothing
 * is read out of bounds: a difference is the compiler's or the driver's, not the kernel's. On SwiftShader (webgpu
 * 0.6.2), with blockOf as a search that breaks at the column's block, the device without robustness was wrong in
 * latents 4-11 (G written as 0), those of the threads whose four columns span more than one block: the second
 * inlined call of blockOf (the thread's last column) returned a stale q, below the first call's, so the per-thread
 * block loop (`own` in shaders/matmul-template.ts) ran no block at all. blockOf now counts over all P bounds (a trip
 * count uniform over the workgroup) and both devices are right. Rerun it after a `webgpu` or Chromium update:
 *   node --import tsx test/bench/robustness-repro.ts
 */
import { existsSync } from "node:fs";
import { choiceFor, matmul, matmulGrid } from "../../shaders/matmul-template";
import { FLAG_JUMPRELU, GRAD_F, KERNEL_HEADER, META_WORDS } from "../../shaders/kernels";

const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);

const B = 37, d = 17, n = 51, bounds = [0, 4, 5, 10, 51], P = bounds.length - 1, PAD = 1 << 16;
const choice = choiceFor(true);
const code = matmul(GRAD_F, choice, KERNEL_HEADER, { N: n, KD: d });
const rnd = (i: number) => (Math.sin(i * 12.9898 + 1) * 43758.5453) % 1;
const R = Float32Array.from({ length: P * B * d + PAD }, (_, i) => rnd(i)); // [P, B, d]: residual suffix sums
const W = Float32Array.from({ length: n * d + PAD }, (_, i) => rnd(i + 7e5)); // W_dec [n, d]
const meta = new Uint32Array(META_WORDS + P + 1 + PAD);
meta[0] = FLAG_JUMPRELU; // JumpReLU: G is the matmul alone (no L1 term)
meta[1] = P;
new Float32Array(meta.buffer, 4 * 4, 1)[0] = 1; // loss scale
meta.set(bounds, META_WORDS);
// Dims: B, d, n, K, Pmax, S, chunk, size, row0, part0, sae0, Kall, accumulate, pad × 3
const dims = Uint32Array.from([B, d, n, 1, P, 1, B, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
const blockOf = (j: number) => {
  let q = 0;
  while (q + 1 < P && j >= bounds[q + 1]) q++;
  return q;
};
const want = new Float64Array(B * n);
for (let m = 0; m < B; m++)
  for (let j = 0; j < n; j++) for (let k = 0; k < d; k++) want[m * n + j] += R[(blockOf(j) * B + m) * d + k] * W[j * d + k];

const gpus: GPU[] = []; // kept: a collected GPU object tears its Dawn instance down under the live device
for (const flags of [[], ["enable-dawn-features=disable_robustness"]]) {
  const gpu = create(flags);
  gpus.push(gpu);
  const device = await (await gpu.requestAdapter())!.requestDevice();
  device.addEventListener("uncapturederror", (e) => console.error("WebGPU error:", (e as GPUUncapturedErrorEvent).error.message));
  const upload = (data: Uint32Array | Float32Array, usage: number) => {
    const b = device.createBuffer({ size: Math.ceil(data.byteLength / 16) * 16, usage, mappedAtCreation: true });
    new Uint8Array(b.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    b.unmap();
    return b;
  };
  const G = device.createBuffer({ size: 4 * (B * n + PAD), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const S = GPUBufferUsage.STORAGE;
  const buffers = [upload(dims, GPUBufferUsage.UNIFORM), upload(meta, S), upload(R, S), upload(W, S), upload(new Float32Array(B * n + PAD), S), G];
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module: device.createShaderModule({ code }), entryPoint: "main" } });
  const bind = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: buffers.map((b, i) => ({ binding: i, resource: { buffer: b } })) });
  const read = device.createBuffer({ size: 4 * B * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(...matmulGrid(choice, B, n, 1));
  pass.end();
  enc.copyBufferToBuffer(G, 0, read, 0, 4 * B * n);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const got = new Float32Array(read.getMappedRange().slice(0));
  read.unmap();
  const wrong = new Set<number>();
  for (let i = 0; i < B * n; i++) if (!(Math.abs(got[i] - want[i]) <= 1e-4 * (1 + Math.abs(want[i])))) wrong.add(i % n);
  console.log(`${flags.length ? "disable_robustness" : "robust (on)"}: wrong latents: ${[...wrong].sort((a, b) => a - b).join(",") || "none"}`);
}
process.exit(0); // two Dawn instances: leave without tearing them down
