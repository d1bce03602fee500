/**
 * GPU case of shaders/auxk.ts (runs in the Chrome page and on Dawn, see cases.ts): one step's AuxK kernels run as
 * the engine would (shaders/auxk.ts's integration note) over row chunks, with every output and working buffer
 * filled with NaN first; the test compares what comes back with test/reference/auxk.ts.
 */
import * as A from "../../shaders/auxk";
import { makeKernel } from "../../shaders/engine";
import { META_WORDS } from "../../shaders/kernels";
import { topkDims } from "../../shaders/topk";
import type { GpuCase } from "./cases";
import { buffer, dispatch, f32, kernel, read, u32, uniform } from "./topk-cases";

type Kernel = ReturnType<typeof makeKernel>;

/** One dispatch whose size a kernel wrote into `args` (as the engine runs AUX_SELECT and the per-latent kernels). */
function dispatchIndirect(device: GPUDevice, enc: GPUCommandEncoder, k: Kernel, bufs: GPUBuffer[], args: GPUBuffer, offset: number): void {
  if (bufs.length !== k.count) throw new Error(`${k.pipeline.label}: ${k.count} bindings, got ${bufs.length}`);
  const bind = device.createBindGroup({ layout: k.layout, entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const pass = enc.beginComputePass();
  pass.setPipeline(k.pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroupsIndirect(args, 4 * offset);
  pass.end();
}

export interface AuxkInput {
  /** AUX_SELECT's form (and AUX_ARGS' size for it): a thread per row, else a workgroup per row. */
  perThread: boolean;
  K: number;
  d: number;
  n: number;
  /** Rows of the whole batch, rows per chunk (a multiple of rowsPerPartial), rows per partial sum. */
  B: number;
  C: number;
  rowsPerPartial: number;
  Pmax: number;
  /** Prefixes per SAE (R's slot P − 1 holds x̂ − x). */
  P: number[];
  topkMeta: number[];
  auxMeta: number[];
  x: number[];
  b_dec: number[];
  W_dec: number[];
  /** [K, B, n] f32 bits (so −0 travels). */
  h: number[];
  /** x̂ − x [K, B, d]. */
  resid: number[];
  counters: number[];
  /** Count of f > 0 per latent over the step [K, n] (the engine's colStats). */
  fired: number[];
  /** The engine's gradients before the aux terms are added. */
  gW_enc: number[];
  gW_dec: number[];
  gb_enc: number[];
}

export const auxkCases: Record<string, GpuCase> = {
  async "auxk.step"(device, input: AuxkInput) {
    const { K, d, n, B, C, rowsPerPartial: rpp, Pmax, P } = input;
    const S = Math.ceil(B / rpp);
    const chunks = Math.ceil(B / C);
    const kn = {
      deadList: await kernel(device, "aux_dead_list", A.AUX_DEAD_LIST),
      args: await kernel(device, "aux_args", A.auxArgsKernel(input.perThread)),
      rows: await kernel(device, "aux_rows", A.AUX_ROWS),
      denCols: await kernel(device, "aux_den_cols", A.AUX_DEN_COLS),
      denFinish: await kernel(device, "aux_den_finish", A.AUX_DEN_FINISH),
      select: await kernel(device, "aux_select", A.auxSelectKernel(input.perThread)),
      decode: await kernel(device, "aux_decode", A.AUX_DECODE),
      numCols: await kernel(device, "aux_num_cols", A.AUX_NUM_COLS),
      gradH: await kernel(device, "aux_grad_h", A.AUX_GRAD_H),
      gradWDec: await kernel(device, "aux_grad_w_dec", A.AUX_GRAD_W_DEC),
      gradWEnc: await kernel(device, "aux_grad_w_enc", A.AUX_GRAD_W_ENC),
      bEncCols: await kernel(device, "aux_b_enc_cols", A.AUX_B_ENC_COLS),
      bEncAdd: await kernel(device, "aux_b_enc_add", A.AUX_B_ENC_ADD),
      dead: await kernel(device, "dead_counters", A.DEAD_COUNTERS),
      loss: await kernel(device, "aux_loss", A.AUX_LOSS),
    };
    // the engine's group meta: only nPrefixes (word 1) is read here
    const metaWords = new Uint32Array(K * META_WORDS + K * (Pmax + 1));
    P.forEach((p, s) => (metaWords[s * META_WORDS + 1] = p));
    const meta = buffer(device, metaWords);
    const auxMeta = buffer(device, Uint32Array.from(input.auxMeta));
    const cap = input.auxMeta[3]; // auxList's entries per row (the same word for every SAE)
    const topkMeta = buffer(device, Uint32Array.from(input.topkMeta));
    const x = buffer(device, Float32Array.from(input.x));
    const b_dec = buffer(device, Float32Array.from(input.b_dec));
    const W_dec = buffer(device, Float32Array.from(input.W_dec));
    const counters = buffer(device, Uint32Array.from(input.counters));
    const fired = buffer(device, Float32Array.from(input.fired));
    const gW_enc = buffer(device, Float32Array.from(input.gW_enc));
    const gW_dec = buffer(device, Float32Array.from(input.gW_dec));
    const gb_enc = buffer(device, Float32Array.from(input.gb_enc));
    const nDead = buffer(device, new Uint32Array(K));
    // working set of one chunk, and the step's partials and scalars: all poisoned
    const H = buffer(device, 4 * K * C * n);
    const R = buffer(device, 4 * K * Pmax * C * d);
    const G = buffer(device, 4 * K * C * n);
    const act = buffer(device, 4 * K * C * n);
    const cut = buffer(device, 4 * K * C * 2);
    const auxR = buffer(device, 4 * K * C * d);
    const denPart = buffer(device, 4 * K * S * d * A.AUX_DEN_STATS);
    const numPart = buffer(device, 4 * K * S * d);
    const bEnc = buffer(device, 4 * K * n * 2);
    const scal = buffer(device, 4 * K * A.AUX_SCALARS);
    const deadList = buffer(device, 4 * K * (n + 1));
    const list = buffer(device, 4 * K * C * cap * 2);
    const cnt = buffer(device, 4 * K * C);
    const args = buffer(device, 4 * A.AUX_ARGS_WORDS, GPUBufferUsage.STORAGE | GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST);
    // the chunks' outputs, gathered over the whole batch
    const outAct = buffer(device, 4 * K * B * n);
    const outR = buffer(device, 4 * K * B * d);
    const outG = buffer(device, 4 * K * B * n);
    const outList = buffer(device, 4 * K * B * cap * 2);
    const outCnt = buffer(device, 4 * K * B);
    const dims = Array.from({ length: chunks }, () => uniform(device, new Uint32Array(16)));
    const tdims = Array.from({ length: chunks }, () => uniform(device, new Uint32Array(8)));
    const stepDims = uniform(device, topkDims({ n, K, B }));

    const h = Uint32Array.from(input.h);
    const resid = Float32Array.from(input.resid);
    const nanF = (len: number) => new Float32Array(len).fill(NaN);
    /** Stands in for chunk c's forward: H = its raw pre-activations, R's slot P − 1 = x̂ − x (the rest NaN). */
    const forwardChunk = (c: number): number => {
      const rows = Math.min(C, B - c * C);
      const row0 = c * C;
      device.queue.writeBuffer(dims[c], 0, new Uint32Array([rows, d, n, K, Pmax, S, rpp, 0, row0, row0 / rpp, 0, K, c > 0 ? 1 : 0, 0, 0, 0]));
      device.queue.writeBuffer(tdims[c], 0, topkDims({ rows, n, K, B }));
      device.queue.writeBuffer(R, 0, nanF(K * Pmax * C * d));
      for (let s = 0; s < K; s++) {
        device.queue.writeBuffer(H, 4 * s * rows * n, h, (s * B + row0) * n, rows * n);
        device.queue.writeBuffer(R, 4 * ((s * Pmax + P[s] - 1) * rows) * d, resid, (s * B + row0) * d, rows * d);
      }
      for (const b of [G, act, auxR, list, cnt]) device.queue.writeBuffer(b, 0, nanF(b.size / 4));
      return rows;
    };
    const run = (fill: (enc: GPUCommandEncoder) => void) => {
      const enc = device.createCommandEncoder();
      fill(enc);
      device.queue.submit([enc.finish()]);
    };
    const ceil = (a: number, b: number) => Math.ceil(a / b);

    device.pushErrorScope("validation");
    // 0. the step's dead set and the indirect sizes (dims of chunk 0: its rows are the most)
    forwardChunk(0);
    run((enc) => {
      dispatch(device, enc, kn.deadList, [dims[0], meta, auxMeta, counters, deadList], [1, 1, K]);
      dispatch(device, enc, kn.args, [dims[0], meta, auxMeta, deadList, args], [1, 1, 1]);
    });
    const gotDead = u32(await read(device, deadList)).slice(0, K * (n + 1));
    const gotArgs = u32(await read(device, args)).slice(0, A.AUX_ARGS_WORDS);
    // 1. the denominator: a forward-only sweep, then the merge
    for (let c = 0; c < chunks; c++) {
      const rows = forwardChunk(c);
      run((enc) => dispatch(device, enc, kn.denCols, [dims[c], meta, auxMeta, R, denPart], [ceil(d, 64), ceil(rows, rpp), K]));
    }
    run((enc) => dispatch(device, enc, kn.denFinish, [dims[0], meta, auxMeta, denPart, scal], [1, 1, K]));
    // 2. the training sweep
    for (let c = 0; c < chunks; c++) {
      const rows = forwardChunk(c);
      run((enc) => {
        dispatchIndirect(device, enc, kn.select, [tdims[c], topkMeta, H, counters, act, cut], args, A.AUX_ARGS_SELECT);
        dispatch(device, enc, kn.rows, [dims[c], meta, auxMeta, deadList, act, list, cnt], [rows, 1, K]);
        dispatch(device, enc, kn.decode, [dims[c], meta, auxMeta, list, cnt, W_dec, R, auxR], [ceil(d, 64), rows, K]);
        dispatch(device, enc, kn.numCols, [dims[c], meta, auxMeta, auxR, numPart], [ceil(d, 64), ceil(rows, rpp), K]);
        dispatch(device, enc, kn.gradH, [dims[c], meta, auxMeta, scal, list, cnt, auxR, W_dec, G], [ceil(cap, 64), rows, K]);
        dispatchIndirect(device, enc, kn.gradWDec, [dims[c], meta, auxMeta, scal, deadList, act, auxR, gW_dec], args, A.AUX_ARGS_LATENT);
        dispatchIndirect(device, enc, kn.gradWEnc, [dims[c], meta, auxMeta, deadList, act, G, x, b_dec, gW_enc], args, A.AUX_ARGS_LATENT);
        dispatch(device, enc, kn.bEncCols, [dims[c], meta, auxMeta, deadList, act, G, bEnc], [ceil(n, 64), 1, K]);
        for (let s = 0; s < K; s++) {
          enc.copyBufferToBuffer(list, 4 * s * rows * cap * 2, outList, 4 * (s * B + c * C) * cap * 2, 4 * rows * cap * 2);
          enc.copyBufferToBuffer(cnt, 4 * s * rows, outCnt, 4 * (s * B + c * C), 4 * rows);
          enc.copyBufferToBuffer(act, 4 * s * rows * n, outAct, 4 * (s * B + c * C) * n, 4 * rows * n);
          enc.copyBufferToBuffer(G, 4 * s * rows * n, outG, 4 * (s * B + c * C) * n, 4 * rows * n);
          enc.copyBufferToBuffer(auxR, 4 * s * rows * d, outR, 4 * (s * B + c * C) * d, 4 * rows * d);
        }
      });
    }
    // 3. epilogue
    run((enc) => {
      dispatch(device, enc, kn.bEncAdd, [dims[0], meta, auxMeta, deadList, bEnc, gb_enc], [ceil(n, 64), 1, K]);
      dispatch(device, enc, kn.dead, [stepDims, topkMeta, fired, counters, nDead], [ceil(n, 64), 1, K]);
      dispatch(device, enc, kn.loss, [dims[0], meta, auxMeta, numPart, nDead, scal], [1, 1, K]);
    });
    const err = await device.popErrorScope();
    if (err) throw new Error(`auxk.step: ${err.message}`);
    const result = {
      act: f32(await read(device, outAct)),
      auxR: f32(await read(device, outR)),
      G: f32(await read(device, outG)),
      list: u32(await read(device, outList)).slice(0, K * B * cap * 2),
      cnt: u32(await read(device, outCnt)).slice(0, K * B),
      deadList: gotDead,
      args: gotArgs,
      gW_enc: f32(await read(device, gW_enc)),
      gW_dec: f32(await read(device, gW_dec)),
      gb_enc: f32(await read(device, gb_enc)),
      scal: f32(await read(device, scal)).slice(0, K * A.AUX_SCALARS),
      counters: u32(await read(device, counters)).slice(0, K * n),
      nDead: u32(await read(device, nDead)).slice(0, K),
    };
    const all = [meta, auxMeta, topkMeta, x, b_dec, W_dec, counters, fired, gW_enc, gW_dec, gb_enc, nDead, H, R, G, act, cut, auxR, denPart, numPart, bEnc, scal, outAct, outR, outG, deadList, list, cnt, args, outList, outCnt, ...dims, ...tdims, stepDims];
    for (const b of all) b.destroy();
    return result;
  },
};
