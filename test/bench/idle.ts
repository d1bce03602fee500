/**
 * GPU idle time within a training step, measured with timestamp queries: the runner's training loop (as
 * runner/page/loop.ts runs it: await the next batch, upload it, step, read metrics back on log steps) on one
 * engine, with the beginning and end of every step's compute pass stamped on the GPU's clock.
 *
 *   busy  = Σ (end_t − begin_t)                 the step's kernels running
 *   span  = end_last − begin_first              the GPU's timeline from the first timed step to the last
 *   idle  = 1 − busy / span                     the share of a step's time the GPU waits for the host
 *
 * Gaps are split by cause: after a log step (the metrics read-back drains the queue, then the host turns the
 * statistics into metrics and awaits the next batch) and after any other step (the host was not ready: data
 * still loading, or the queue ran dry). Not counted as busy: the batch copy into `x` and the queue writes before
 * the pass (a few hundred KiB per step at the software shape).
 */
import { SaeEngine } from "../../shaders/engine";
import type { ShardData } from "../../shaders/config";
import { ShardSource } from "../../runner/data/shards";
import { trainConfig } from "../helpers/train-config";

export interface IdleCase {
  label: string;
  /** "memory": one batch held in memory (uploaded every step, no fetch); "shards": ShardSource over HTTP. */
  data: "memory" | "shards";
  /** Metrics read back every this many steps (0: never). */
  logEvery: number;
}

export interface IdleShape {
  d_vit: number;
  exp_factor: number;
  batch: number;
  K: number;
  steps: number;
  warmup: number;
}

export interface IdleResult {
  label: string;
  wallMsPerStep: number;
  busyMsPerStep: number;
  /** 1 − busy / span on the GPU's clock. */
  idle: number;
  /** Shares of span idle after log steps and after other steps. */
  idleAfterLog: number;
  idleOther: number;
  /** 1 − busy / host wall time (includes the first step's launch and the last one's completion). */
  idleVsWall: number;
  /** ms per step the host spent awaiting the next batch. */
  dataWaitMsPerStep: number;
}

export async function measureIdle(device: GPUDevice, shape: IdleShape, c: IdleCase, shardsUrl: string | null): Promise<IdleResult> {
  if (!device.features.has("timestamp-query")) throw new Error("the device has no timestamp-query");
  const { d_vit, exp_factor, batch: B, K, steps, warmup } = shape;
  const logEvery = c.logEvery > 0 ? c.logEvery : 1_000_000_000;
  const cfgs = Array.from({ length: K }, (_, k) =>
    trainConfig({ sae_batch_size: B, log_every: logEvery, seed: k, sae: { d_vit, exp_factor }, objective: { sparsity_coeff: 4e-4 * 2 ** k } }),
  );
  const engine = SaeEngine.create(device, cfgs, { memoryBudget: 100 * 2 ** 30 });
  let next: () => Promise<Float32Array>;
  let source: ShardSource | null = null;
  if (c.data === "shards") {
    if (!shardsUrl) throw new Error("shards case without a shards URL");
    const data: ShardData = { kind: "shards", url: shardsUrl, layer: -1, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 4096, seed: 0 };
    source = await ShardSource.open(data, { batchSize: B });
    next = () => source!.next();
  } else {
    const x = Float32Array.from({ length: B * d_vit }, (_, i) => Math.sin(i * 12.9898) * 0.5);
    next = async () => x;
  }
  const n = warmup + steps;
  const querySet = device.createQuerySet({ type: "timestamp", count: 2 * steps });
  const resolve = device.createBuffer({ size: 16 * steps, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const read = device.createBuffer({ size: 16 * steps, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const logStep: boolean[] = [];
  let dataWait = 0;
  let t0 = 0;
  for (let t = 0; t < n; t++) {
    if (t === warmup) {
      await device.queue.onSubmittedWorkDone();
      t0 = performance.now();
      dataWait = 0;
    }
    const w0 = performance.now();
    const x = await next();
    dataWait += performance.now() - w0;
    const i = t - warmup;
    const timestampWrites = i >= 0 ? { querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } : undefined;
    const metrics = await engine.step(engine.uploadBatch(x), { timestampWrites });
    if (i >= 0) logStep.push(metrics !== null);
  }
  await device.queue.onSubmittedWorkDone();
  const wall = performance.now() - t0;
  const enc = device.createCommandEncoder();
  enc.resolveQuerySet(querySet, 0, 2 * steps, resolve, 0);
  enc.copyBufferToBuffer(resolve, 0, read, 0, 16 * steps);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const ts = Array.from(new BigUint64Array(read.getMappedRange().slice(0)), (v) => Number(v) / 1e6); // ms
  read.unmap();
  for (const b of [resolve, read]) b.destroy();
  querySet.destroy();
  source?.close();
  engine.destroy();

  let busy = 0, gapLog = 0, gapOther = 0;
  for (let i = 0; i < steps; i++) {
    busy += ts[2 * i + 1] - ts[2 * i];
    if (i > 0) {
      const gap = Math.max(0, ts[2 * i] - ts[2 * i - 1]);
      if (logStep[i - 1]) gapLog += gap;
      else gapOther += gap;
    }
  }
  const span = ts[2 * steps - 1] - ts[0];
  if (!(span > 0 && busy > 0)) throw new Error(`timestamps look wrong (span ${span} ms, busy ${busy} ms)`);
  return {
    label: c.label,
    wallMsPerStep: wall / steps,
    busyMsPerStep: busy / steps,
    idle: 1 - busy / span,
    idleAfterLog: gapLog / span,
    idleOther: gapOther / span,
    idleVsWall: 1 - busy / wall,
    dataWaitMsPerStep: dataWait / steps,
  };
}
