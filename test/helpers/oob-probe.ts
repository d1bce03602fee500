/**
 * Whether a device clamps storage-buffer indices (Dawn's robustness transform): reads a[10] through a 4-element
 * binding (bytes 0..16) of a 256-element buffer holding 100 + i. Clamped: 103 (the binding's last element); not
 * clamped: whatever the driver returns past the binding (SwiftShader: 110, the buffer's own element). Dawn ignores
 * an unknown toggle silently, so this is how a test or bench knows `disable_robustness` took effect.
 */
export async function outOfBoundsRead(device: GPUDevice): Promise<{ value: number; clamped: boolean }> {
  const code = `@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read_write> o: array<u32>;
@group(0) @binding(2) var<uniform> idx: vec4u;
@compute @workgroup_size(1) fn main() { o[0] = a[idx.x]; }`;
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module: device.createShaderModule({ code }), entryPoint: "main" } });
  const a = device.createBuffer({ size: 1024, usage: GPUBufferUsage.STORAGE, mappedAtCreation: true });
  new Uint32Array(a.getMappedRange()).set(Array.from({ length: 256 }, (_, i) => 100 + i));
  a.unmap();
  const o = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const u = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  const r = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(u, 0, new Uint32Array([10, 0, 0, 0])); // a uniform, so the compiler cannot see it is out of bounds
  const bind = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: a, offset: 0, size: 16 } }, { binding: 1, resource: { buffer: o } }, { binding: 2, resource: { buffer: u } }],
  });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(1);
  pass.end();
  enc.copyBufferToBuffer(o, 0, r, 0, 16);
  device.queue.submit([enc.finish()]);
  await r.mapAsync(GPUMapMode.READ);
  const value = new Uint32Array(r.getMappedRange())[0];
  r.unmap();
  for (const b of [a, o, u, r]) b.destroy();
  return { value, clamped: value === 103 };
}
