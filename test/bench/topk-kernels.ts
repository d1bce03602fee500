/**
 * Time of the selection kernels alone (shaders/topk.ts) and of one engine step, at a given shape on Dawn, so the
 * cost of each can be tuned by measurement (SwiftShader runs barriers as fiber switches). Not part of `npm test`:
 *   npx tsx test/bench/topk-kernels.ts [n=128] [B=512] [K=12] [k=4] [reps=5] [engine=1]
 * (OLD=1 also times the workgroup-per-row select on short rows, FLOOR=1 one plain pass over every row, AUX=k_aux
 * AuxK's select in both forms.)
 * Measured at the demo's shape (n 128, B 512, K 12, k 4; load 7–13, so ±2×): a workgroup per row 18 119 ms, a
 * thread per row 118–138 ms (k 8: ~300, k 16: ~400, k 64 through the radix: ~450); one plain pass 58 ms. BatchTopK:
 * ties 3 021 → 50 ms, apply 9 403 → 51–77 ms, advance (now a scan) 1.3 ms, hist 91–150 ms, resolve 24–90 ms.
 * Histogram and resolve (k 8, load 5–12, back to back): hist0 30–92 ms, resolve0 21–68 ms (one 256-thread workgroup
 * with barriers) → resolve 2.5–5.6 ms (group sums, a thread's scan, clear: no barrier); both digits together 107 ms
 * with pass 1 reading H (SPEC=0), 56–73 ms with pass 1 from pass 0's candidates (hist1 + resolve1 10–20 ms).
 * "engine step" lines time SaeEngine.step on a fixed batch (no autotune: only comparable with each other).
 */
import { existsSync } from "node:fs";
import { auxSelectKernel } from "../../shaders/auxk";
import { requestSaeDevice } from "../../shaders/device";
import { makeKernel, SaeEngine } from "../../shaders/engine";
import * as T from "../../shaders/topk";
import type { SaeKind } from "../../shaders/config";
import { trainConfig } from "../helpers/train-config";

const ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";
if (!process.env.VK_ICD_FILENAMES && existsSync(ICD) && !existsSync("/dev/nvidia0")) process.env.VK_ICD_FILENAMES = ICD;
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);
// held for the whole run: a collected instance takes its device down with it
const gpu = create([]);
const { device, report } = await requestSaeDevice(gpu);
device.addEventListener("uncapturederror", (e) => console.error("WebGPU error:", (e as GPUUncapturedErrorEvent).error.message));
// onSubmittedWorkDone alone does not keep Node's event loop alive
const keepAlive = setInterval(() => {}, 1000);
const arg = (i: number, d: number) => (process.argv[2 + i] ? Number(process.argv[2 + i]) : d);
const [n, B, K, k, reps, withEngine] = [arg(0, 128), arg(1, 512), arg(2, 12), arg(3, 4), arg(4, 5), arg(5, 1)];
console.log(`${report.vendor} ${report.architecture}: n ${n}, B ${B}, K ${K}, k ${k}, ${reps} reps`);

const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
const buf = (data: ArrayBufferView<ArrayBuffer>, u = usage) => {
  const b = device.createBuffer({ size: Math.max(16, data.byteLength), usage: u });
  device.queue.writeBuffer(b, 0, data);
  return b;
};
const h = new Float32Array(K * B * n).map(() => Math.random() * 4 - 2);
const H = buf(h);
const meta = (kRow: number, kTotal: number) => {
  const w = new Uint32Array(K * T.TOPK_META_WORDS);
  for (let s = 0; s < K; s++) [w[s * 8], w[s * 8 + 1]] = [kRow, kTotal];
  return buf(w);
};
const dims = buf(T.topkDims({ rows: B, n, K, B }), GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
const time = async (label: string, kernels: Array<[string, GPUBuffer[], [number, number, number]]>) => {
  const ks = kernels.map(([code, bufs, size]) => {
    const kn = makeKernel(device, label, code);
    return { kn, size, bind: device.createBindGroup({ layout: kn.layout, entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })) }) };
  });
  const run = async (r: number) => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let i = 0; i < r; i++)
      for (const { kn, bind, size } of ks) {
        pass.setPipeline(kn.pipeline);
        pass.setBindGroup(0, bind);
        pass.dispatchWorkgroups(...size);
      }
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await run(1);
  const t0 = performance.now();
  await run(reps);
  console.log(`${label.padEnd(34)} ${((performance.now() - t0) / reps).toFixed(2)} ms`);
};
const cut = buf(new Uint32Array(K * B * 2));
const rowOut = buf(new Float32Array(K * B * n));
if (process.env.OLD) await time("row select, a workgroup per row", [[T.rowSelectKernel({ kWord: 0, deadOnly: false, inPlace: false }), [dims, meta(k, 0), H, rowOut, cut], [B, K, 1]]]);
if (process.env.FLOOR) await time("floor: one pass per row, a thread per row", [[`
struct Dims { rows: u32, rowStride: u32, n: u32, K: u32, B: u32, size: u32, slot: u32, nSlots: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> H: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wg: vec3u) {
  if (gid.x >= dims.rows) { return; }
  let base = (wg.y * dims.rows + gid.x) * dims.n;
  for (var j = 0u; j < dims.n; j++) { out[base + j] = max(H[base + j], 0.0); }
}`, [dims, H, rowOut], [Math.ceil(B / T.ROW_THREADS), K, 1]]]);
await time("row select, a thread per row", [[T.rowSelectKernel({ kWord: 0, deadOnly: false, inPlace: false, perThread: true }), [dims, meta(k, 0), H, rowOut, cut], [Math.ceil(B / T.ROW_THREADS), K, 1]]]);
if (!T.perThreadRows(n)) await time("row select, a workgroup per row", [[T.rowSelectKernel({ kWord: 0, deadOnly: false, inPlace: false }), [dims, meta(k, 0), H, rowOut, cut], [B, K, 1]]]);
if (process.env.AUX) {
  // AuxK's select (AUX_SELECT: k_aux = AUX, over the dead latents, here every other one), both forms, alternating
  // round by round (ROUNDS, default 2) so both see the same load
  const kAux = Number(process.env.AUX);
  const w = new Uint32Array(K * T.TOPK_META_WORDS);
  for (let s = 0; s < K; s++) [w[s * 8 + 2], w[s * 8 + 4]] = [kAux, 100];
  const counters = buf(Uint32Array.from({ length: K * n }, (_, i) => (i % 2 ? 100 : 0)));
  const bufs = [dims, buf(w), H, counters, rowOut, cut];
  for (let r = 0; r < Number(process.env.ROUNDS ?? 2); r++) {
    await time(`aux select, a thread per row`, [[auxSelectKernel(true), bufs, [Math.ceil(B / T.ROW_THREADS), K, 1]]]);
    await time(`aux select, a workgroup per row`, [[auxSelectKernel(false), bufs, [B, K, 1]]]);
  }
}
{
  const m = meta(0, k * B);
  const hist = buf(new Uint32Array(K * T.BATCH_HIST_WORDS));
  const state = buf(new Uint32Array(K * T.BATCH_STATE_WORDS));
  const ties = buf(new Uint32Array(K * B));
  const Hc = buf(h);
  const pt = T.perThreadRows(n);
  const grid: [number, number, number] = [pt ? Math.ceil(B / T.ROW_THREADS) : B, K, 1];
  const groups: [number, number, number] = [T.BATCH_GROUPS / T.BATCH_GROUP_THREADS, K, 1];
  // pass 0 keeps candidates where the engine's would (one chunk of B rows); the repeated batch keeps T, so pass 1
  // then reads the candidates (SPEC=0: never)
  const spec = process.env.SPEC !== "0" && T.batchSpeculates(1, B, n);
  const hist0: [string, GPUBuffer[], [number, number, number]] = [T.batchHistKernel(0, spec), [dims, m, H, hist, state], [T.batchHistGroups(B, n), K, 1]];
  const hist1: [string, GPUBuffer[], [number, number, number]] = [T.batchHistKernel(1), [dims, m, H, hist, state], [T.batchHistGroups(B, n), K, 1]];
  const resolve = (p: 0 | 1): Array<[string, GPUBuffer[], [number, number, number]]> => [
    [T.batchGroupSumsKernel(p), [dims, m, hist], groups],
    [T.batchResolveKernel(p, p === 0 && spec), [dims, m, hist, state], [1, K, 1]],
    [T.batchClearKernel(p), [dims, m, hist], groups],
  ];
  // each rep a whole digit (its histogram, then its resolve, which clears it), as the engine runs them
  await time(`batch hist0 + resolve0${spec ? " (spec)" : ""}`, [hist0, ...resolve(0)]);
  await time("batch hist1 + resolve1", [hist1, ...resolve(1)]);
  await time("batch hist0 + resolve0 + hist1 + resolve1", [hist0, ...resolve(0), hist1, ...resolve(1)]);
  await time("batch resolve0 alone", resolve(0));
  await time("batch ties", [[T.batchTiesKernel(pt), [dims, m, H, state, ties], grid]]);
  await time("batch advance", [[T.BATCH_ADVANCE, [dims, m, state, ties], [1, K, 1]]]);
  await time("batch apply", [[T.batchApplyKernel(pt), [dims, m, Hc, state, ties], grid]]);
}

if (withEngine) {
  const data = { d_vit: n / 4, n_features: 48, sparsity: 0.04, noise: 0.01, seed: 1, n_examples: 131_072 };
  const x = new Float32Array(B * (n / 4)).map(() => Math.random() - 0.5);
  for (const kind of ["relu", "topk", "batchtopk"] as SaeKind[]) {
    const cfgs = Array.from({ length: K }, (_, i) =>
      trainConfig({ seed: 42 + i, sae_batch_size: B, n_patches: 256 * B, lr: 1e-2, log_every: 8, data, sae: { d_vit: n / 4, exp_factor: 4, kind, k: kind === "relu" ? null : k, aux_coeff: 0, n_reinit_samples: 4096 } }),
    );
    const engine = SaeEngine.create(device, cfgs);
    await engine.step(x);
    await device.queue.onSubmittedWorkDone();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await engine.step(x);
    await device.queue.onSubmittedWorkDone();
    console.log(`engine step, ${K} ${kind}`.padEnd(34) + ` ${((performance.now() - t0) / reps).toFixed(1)} ms`);
    engine.destroy?.();
  }
}
device.destroy();
clearInterval(keepAlive);
void gpu;
process.exit(0);
