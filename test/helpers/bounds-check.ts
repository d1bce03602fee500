/**
 * Instruments WGSL so that every index into an array is checked against the array's length before use: storage
 * bindings against arrayLength, fixed-size workgroup and function-scope arrays (histograms, scan segments, a
 * thread's top-k keys) against their declared count. An index past it adds 1 to an atomic counter (bound at
 * `binding`) and is replaced by 0. What Dawn's robustness transform would clamp silently (it clamps all of these, not
 * only storage) is counted here, whatever SAE_SWARM_ROBUSTNESS is: a kernel whose count is not 0 reads or writes
 * outside an array, which with robustness off reads other buffers' memory (or another variable's, in workgroup or
 * thread memory), or (past the allocation) crashes SwiftShader's GPU process. Vector components (v[l], l < 4 in every
 * kernel's loops) are not checked.
 */
export function boundsChecked(code: string, binding: number): string {
  const storage = [...code.matchAll(/@binding\(\d+\) var<storage[^>]*> (\w+)\s*:\s*array</g)].map((m) => m[1]);
  // var<workgroup> name: array<T, N>; and (in a function) var name: array<T, N>; T may be atomic<u32>, N a const
  const fixed = [...code.matchAll(/\bvar(?:<workgroup>)?\s+(\w+)\s*:\s*array<\s*(?:\w+<\w+>|\w+)\s*,\s*([\w$]+)\s*>/g)].map((m) => [m[1], m[2]]);
  if (new Set(fixed.map(([name]) => name)).size !== fixed.length) throw new Error(`boundsChecked: two fixed-size arrays share a name in one module`);
  let out = code;
  for (const name of storage) out = wrapIndices(out, name, `arrayLength(&${name})`);
  for (const [name, count] of fixed) out = wrapIndices(out, name, `u32(${count})`);
  return `${out}
@group(0) @binding(${binding}) var<storage, read_write> oobCount: atomic<u32>;
fn oobCheck(i: u32, len: u32) -> u32 { if (i >= len) { atomicAdd(&oobCount, 1u); return 0u; } return i; }`;
}

/** Rewrites every `name[expr]` as `name[oobCheck(expr, len)]` (expr may nest brackets). */
function wrapIndices(code: string, name: string, len: string): string {
  const re = new RegExp(`\\b${name}\\[`, "g");
  let out = "";
  let at = 0;
  for (let m = re.exec(code); m; m = re.exec(code)) {
    const open = m.index + m[0].length;
    let depth = 1;
    let i = open;
    for (; i < code.length && depth > 0; i++) depth += code[i] === "[" ? 1 : code[i] === "]" ? -1 : 0;
    if (depth !== 0) throw new Error(`boundsChecked: unbalanced brackets after ${name}[`);
    // the index itself may index this binding too
    const index = wrapIndices(code.slice(open, i - 1), name, len);
    out += `${code.slice(at, open)}oobCheck(${index}, ${len})]`;
    at = i;
    re.lastIndex = i;
  }
  return out + code.slice(at);
}

/**
 * A device whose every kernel is bounds-checked: createShaderModule instruments the code (the counter at the
 * binding after the module's last), and bind group layouts and bind groups get the counter's entry at the binding
 * after their last, which is the same one for a layout built from the code's declarations (shaders/engine.ts
 * makeKernel). `count()` reads how many accesses fell outside their bindings so far.
 */
export function boundsCheckedDevice(device: GPUDevice): { device: GPUDevice; count: () => Promise<number>; destroy: () => void } {
  const counter = device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(counter, 0, new Uint32Array(1));
  const next = (bindings: Iterable<number>) => Math.max(-1, ...bindings) + 1;
  const overrides: Partial<GPUDevice> = {
    createShaderModule: (d) => device.createShaderModule({ ...d, code: boundsChecked(d.code, next([...d.code.matchAll(/@binding\((\d+)\)/g)].map((m) => Number(m[1])))) }),
    createBindGroupLayout: (d) => {
      const entries = [...d.entries];
      return device.createBindGroupLayout({ ...d, entries: [...entries, { binding: next(entries.map((e) => e.binding)), visibility: GPUShaderStage.COMPUTE, buffer: { type: "storage" } }] });
    },
    createBindGroup: (d) => {
      const entries = [...d.entries];
      return device.createBindGroup({ ...d, entries: [...entries, { binding: next(entries.map((e) => e.binding)), resource: { buffer: counter } }] });
    },
  };
  const wrapped = new Proxy(device, {
    get(target, prop) {
      if (prop in overrides) return overrides[prop as keyof GPUDevice];
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return {
    device: wrapped,
    async count() {
      const read = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(counter, 0, read, 0, 4);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ);
      const n = new Uint32Array(read.getMappedRange().slice(0))[0];
      read.destroy();
      return n;
    },
    destroy: () => counter.destroy(),
  };
}
