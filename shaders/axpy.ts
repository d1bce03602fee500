/**
 * y ← a·x + y: the smallest real kernel, used by the foundation tests to prove that WGSL runs and reads back
 * the same in Chrome and in Node's Dawn. Sizes that are not a multiple of the workgroup size are handled by the
 * bounds check.
 */
export const AXPY_WGSL = /* wgsl */ `
struct Params { n: u32, a: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i >= params.n) { return; }
  y[i] = params.a * x[i] + y[i];
}
`;

export async function runAxpy(device: GPUDevice, a: number, x: Float32Array<ArrayBuffer>, y: Float32Array<ArrayBuffer>): Promise<Float32Array> {
  if (x.length !== y.length) throw new Error(`axpy: x has ${x.length} elements, y has ${y.length}`);
  const n = x.length;
  const module = device.createShaderModule({ code: AXPY_WGSL });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const params = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  const pv = new ArrayBuffer(16);
  new Uint32Array(pv, 0, 1)[0] = n;
  new Float32Array(pv, 4, 1)[0] = a;
  device.queue.writeBuffer(params, 0, pv);
  const bytes = Math.max(4, n * 4);
  const xb = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  const yb = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  const rb = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(xb, 0, x);
  device.queue.writeBuffer(yb, 0, y);
  const bind = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: params } },
      { binding: 1, resource: { buffer: xb } },
      { binding: 2, resource: { buffer: yb } },
    ],
  });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(Math.ceil(n / 64));
  pass.end();
  enc.copyBufferToBuffer(yb, 0, rb, 0, bytes);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(rb.getMappedRange().slice(0, n * 4));
  rb.unmap();
  for (const b of [params, xb, yb, rb]) b.destroy();
  return out;
}
