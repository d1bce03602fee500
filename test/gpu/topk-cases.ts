/**
 * GPU cases of shaders/topk.ts (run in the Chrome page and on Dawn, see cases.ts): each uploads the inputs, fills
 * every output with NaN first, runs the kernels as the engine will (BatchTopK chunk by chunk), and returns what the
 * kernels wrote. The tests compare with test/reference/topk.ts.
 */
import { makeKernel } from "../../shaders/engine";
import * as T from "../../shaders/topk";
import type { GpuCase } from "./cases";

/** Read at call time: on Dawn the GPU globals exist only once the backend has loaded. */
const storage = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
const NAN_BITS = 0x7fc00000;

export function buffer(device: GPUDevice, data: ArrayBufferView<ArrayBuffer> | number, usage = storage()): GPUBuffer {
  const bytes = typeof data === "number" ? data : data.byteLength;
  const b = device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 4) * 4), usage });
  if (typeof data === "number") device.queue.writeBuffer(b, 0, new Uint32Array(b.size / 4).fill(NAN_BITS));
  else device.queue.writeBuffer(b, 0, data);
  return b;
}

export async function read(device: GPUDevice, b: GPUBuffer): Promise<ArrayBuffer> {
  const rb = device.createBuffer({ size: b.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(b, 0, rb, 0, b.size);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = rb.getMappedRange().slice(0);
  rb.unmap();
  rb.destroy();
  return out;
}

export type Kernel = ReturnType<typeof makeKernel>;

/** makeKernel, failing loudly on a WGSL or pipeline error (a failed pipeline would otherwise leave the poison). */
export async function kernel(device: GPUDevice, label: string, code: string): Promise<Kernel> {
  device.pushErrorScope("validation");
  const k = makeKernel(device, label, code);
  const err = await device.popErrorScope();
  if (err) throw new Error(`${label}: ${err.message}`);
  return k;
}

export function dispatch(device: GPUDevice, enc: GPUCommandEncoder, k: Kernel, bufs: GPUBuffer[], size: [number, number, number]): void {
  if (bufs.length !== k.count) throw new Error(`${k.pipeline.label}: ${k.count} bindings, got ${bufs.length}`);
  const bind = device.createBindGroup({ layout: k.layout, entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const pass = enc.beginComputePass();
  pass.setPipeline(k.pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(...size);
  pass.end();
}

export const uniform = (device: GPUDevice, words: Uint32Array<ArrayBuffer>) => buffer(device, words, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
export const f32 = (a: ArrayBuffer) => Array.from(new Float32Array(a));
export const u32 = (a: ArrayBuffer) => Array.from(new Uint32Array(a));

export interface RowsInput {
  n: number;
  rows: number;
  K: number;
  meta: number[];
  /** [K, rows, n] f32 bits (so −0 travels). */
  h: number[];
  counters?: number[];
  variant: T.RowSelectVariant;
}

export interface BatchInput {
  n: number;
  B: number;
  chunkRows: number;
  K: number;
  meta: number[];
  /** [K, B, n] f32 bits. */
  h: number[];
  /** [K, BATCH_STATE_WORDS] as it stands before the step (θ and "θ set"). */
  state: number[];
  /** Apply sweeps over the chunks (BATCH_RESTART between them); f is the last sweep's. */
  sweeps: number;
  /** The ties and apply kernels' one-thread-per-row form (short rows), else one workgroup per row. */
  perThread: boolean;
  /** Pass 0 keeps candidates for pass 1 (batchHistKernel(0, true); one chunk only). */
  spec: boolean;
}

export const topkCases: Record<string, GpuCase> = {
  async "topk.rows"(device, input: RowsInput) {
    const { n, rows, K, variant } = input;
    const dims = uniform(device, T.topkDims({ rows, n, K }));
    const meta = buffer(device, Uint32Array.from(input.meta));
    const H = buffer(device, Uint32Array.from(input.h));
    const counters = variant.deadOnly ? [buffer(device, Uint32Array.from(input.counters!))] : [];
    const out = variant.inPlace ? [] : [buffer(device, 4 * K * rows * n)];
    const cut = buffer(device, 4 * K * rows * 2);
    const k = await kernel(device, "row_select", T.rowSelectKernel(variant));
    const enc = device.createCommandEncoder();
    dispatch(device, enc, k, [dims, meta, H, ...counters, ...out, cut], [variant.perThread ? Math.ceil(rows / T.ROW_THREADS) : rows, K, 1]);
    device.queue.submit([enc.finish()]);
    const result = { f: f32(await read(device, variant.inPlace ? H : out[0])), cut: u32(await read(device, cut)) };
    for (const b of [dims, meta, H, ...counters, ...out, cut]) b.destroy();
    return result;
  },

  async "topk.batch"(device, input: BatchInput) {
    const { n, B, chunkRows, K } = input;
    const chunks = Math.ceil(B / chunkRows);
    const dims = uniform(device, T.topkDims({ K }));
    const meta = buffer(device, Uint32Array.from(input.meta));
    const H = buffer(device, 4 * K * chunkRows * n);
    const hist = buffer(device, new Uint32Array(K * T.BATCH_HIST_WORDS));
    const state = buffer(device, Uint32Array.from(input.state));
    const rowTies = buffer(device, 4 * K * chunkRows);
    const f = buffer(device, 4 * K * B * n);
    const k = {
      hist: [await kernel(device, "batch_hist0", T.batchHistKernel(0, input.spec)), await kernel(device, "batch_hist1", T.batchHistKernel(1))],
      groupSums: [await kernel(device, "batch_group_sums0", T.batchGroupSumsKernel(0)), await kernel(device, "batch_group_sums1", T.batchGroupSumsKernel(1))],
      resolve: [await kernel(device, "batch_resolve0", T.batchResolveKernel(0, input.spec)), await kernel(device, "batch_resolve1", T.batchResolveKernel(1))],
      clear: [await kernel(device, "batch_clear0", T.batchClearKernel(0)), await kernel(device, "batch_clear1", T.batchClearKernel(1))],
      ties: await kernel(device, "batch_ties", T.batchTiesKernel(input.perThread)),
      apply: await kernel(device, "batch_apply", T.batchApplyKernel(input.perThread)),
      advance: await kernel(device, "batch_advance", T.BATCH_ADVANCE),
      restart: await kernel(device, "batch_restart", T.BATCH_RESTART),
    };
    const h = Uint32Array.from(input.h);
    /** Stands in for the encode of chunk c: its rows of every SAE into H [K, chunkRows, n]. */
    const encodeChunk = (c: number): number => {
      const rows = Math.min(chunkRows, B - c * chunkRows);
      for (let s = 0; s < K; s++) device.queue.writeBuffer(H, 4 * s * chunkRows * n, h, (s * B + c * chunkRows) * n, rows * n);
      device.queue.writeBuffer(dims, 0, T.topkDims({ rows, rowStride: chunkRows, n, K, B }));
      return rows;
    };
    const run = (fill: (enc: GPUCommandEncoder) => void) => {
      const enc = device.createCommandEncoder();
      fill(enc);
      device.queue.submit([enc.finish()]);
    };
    for (const p of [0, 1]) {
      for (let c = 0; c < chunks; c++) {
        const rows = encodeChunk(c);
        run((enc) => dispatch(device, enc, k.hist[p], [dims, meta, H, hist, state], [T.batchHistGroups(rows, n), K, 1]));
      }
      run((enc) => {
        const groups: [number, number, number] = [T.BATCH_GROUPS / T.BATCH_GROUP_THREADS, K, 1];
        dispatch(device, enc, k.groupSums[p], [dims, meta, hist], groups);
        dispatch(device, enc, k.resolve[p], [dims, meta, hist, state], [1, K, 1]);
        dispatch(device, enc, k.clear[p], [dims, meta, hist], groups);
      });
    }
    for (let sweep = 0; sweep < input.sweeps; sweep++) {
      if (sweep > 0) run((enc) => dispatch(device, enc, k.restart, [dims, meta, state], [1, K, 1]));
      for (let c = 0; c < chunks; c++) {
        const rows = encodeChunk(c);
        run((enc) => {
          const grid: [number, number, number] = [input.perThread ? Math.ceil(rows / T.ROW_THREADS) : rows, K, 1];
          dispatch(device, enc, k.ties, [dims, meta, H, state, rowTies], grid);
          dispatch(device, enc, k.advance, [dims, meta, state, rowTies], [1, K, 1]);
          dispatch(device, enc, k.apply, [dims, meta, H, state, rowTies], grid);
          for (let s = 0; s < K; s++) enc.copyBufferToBuffer(H, 4 * s * chunkRows * n, f, 4 * (s * B + c * chunkRows) * n, 4 * rows * n);
        });
      }
    }
    // the bins, group sums and count of candidates must be left 0 (the candidates' keys may stay)
    const histWords = u32(await read(device, hist));
    const cleared = Array.from({ length: K }, (_, s) => histWords.slice(s * T.BATCH_HIST_WORDS, s * T.BATCH_HIST_WORDS + T.BATCH_BINS + T.BATCH_GROUPS + 4));
    const result = { f: f32(await read(device, f)), state: u32(await read(device, state)), hist: cleared.some((w) => w.some((v) => v !== 0)) };
    for (const b of [dims, meta, H, hist, state, rowTies, f]) b.destroy();
    return result;
  },

  async "topk.deadCounters"(device, input: { n: number; K: number; B: number; meta: number[]; fired: number[]; counters: number[] }) {
    const { n, K, B } = input;
    const dims = uniform(device, T.topkDims({ n, K, B }));
    const meta = buffer(device, Uint32Array.from(input.meta));
    const fired = buffer(device, Float32Array.from(input.fired));
    const counters = buffer(device, Uint32Array.from(input.counters));
    const nDead = buffer(device, new Uint32Array(K));
    const enc = device.createCommandEncoder();
    dispatch(device, enc, await kernel(device, "dead_counters", T.DEAD_COUNTERS), [dims, meta, fired, counters, nDead], [Math.ceil(n / 64), 1, K]);
    device.queue.submit([enc.finish()]);
    const result = { counters: u32(await read(device, counters)), nDead: u32(await read(device, nDead)).slice(0, K) };
    for (const b of [dims, meta, fired, counters, nDead]) b.destroy();
    return result;
  },

  async "topk.gradNorm"(device, input: { K: number; sizes: number[]; grads: number[][]; meta: number[] }) {
    const { K, sizes } = input;
    const nSlots = sizes.length;
    const meta = buffer(device, Uint32Array.from(input.meta));
    const grads = input.grads.map((g) => buffer(device, Float32Array.from(g)));
    const dims = sizes.map((size, slot) => uniform(device, T.topkDims({ K, size, slot, nSlots })));
    const part = buffer(device, 4 * K * nSlots * T.NORM_WORKGROUPS);
    const clip = buffer(device, 4 * K * 2);
    const kn = {
      partial: await kernel(device, "grad_norm_partial", T.GRAD_NORM_PARTIAL),
      finish: await kernel(device, "grad_norm_finish", T.GRAD_NORM_FINISH),
      scale: await kernel(device, "grad_scale", T.GRAD_SCALE),
    };
    const enc = device.createCommandEncoder();
    // as the engine dispatches (few workgroups for a small tensor; their partials' poison is zeroed), and the first
    // tensor with every workgroup
    sizes.forEach((size, i) => dispatch(device, enc, kn.partial, [dims[i], meta, grads[i], part], [i === 0 ? T.NORM_WORKGROUPS : T.normWorkgroups(size), 1, K]));
    dispatch(device, enc, kn.finish, [dims[0], meta, part, clip], [1, 1, K]);
    sizes.forEach((size, i) => dispatch(device, enc, kn.scale, [dims[i], meta, clip, grads[i]], [Math.min(Math.ceil(size / 256), 65535), 1, K]));
    device.queue.submit([enc.finish()]);
    const c = f32(await read(device, clip));
    const out = [];
    for (let i = 0; i < nSlots; i++) out.push(f32(await read(device, grads[i])).slice(0, K * sizes[i]));
    for (const b of [meta, ...grads, ...dims, part, clip]) b.destroy();
    return { norms: c.filter((_, i) => i % 2 === 0).slice(0, K), scales: c.filter((_, i) => i % 2 === 1).slice(0, K), grads: out };
  },
};
