/**
 * The batched SAE training engine: K SAEs of one shape (same d_vit, exp_factor and batch size; any mix of
 * ReLU/JumpReLU/TopK/BatchTopK, Vanilla/Matryoshka, lr, sparsity_coeff, schedules, max_grad_norm, seeds) trained in
 * lock-step on one batch with the WGSL kernels of kernels.ts, topk.ts and auxk.ts, computing SAE.md exactly.
 * Runtime-agnostic: give it a GPUDevice (Chrome or Dawn).
 *
 * Memory (shaders/fit.ts `planMemory`, which the Worker's chunking and `sae-swarm fit` use too): the SAEs are spread
 * over slabs, each a set of buffers no larger than one storage binding; a step runs slab by slab, and streams the
 * batch through each slab in row chunks, so the activations exist for one slab and one chunk only. Per slab:
 *   prologue (normalize W_dec, θ) → [BatchTopK: the whole batch's threshold, two sweeps of encode + histogram over
 *   the chunks] → for each row chunk: forward (encode, TopK/BatchTopK selection in place, decode, residual columns)
 *   and backward (dL/df, latent columns, dW_enc and dW_dec accumulated over the chunks) → epilogue (sum the partials
 *   of the whole batch, dL/db_enc, dL/dθ, dL/db_dec, parallel removal, max_grad_norm clipping, Adam).
 * A slab with AuxK SAEs adds shaders/auxk.ts's kernels as its integration note orders them: with several row chunks a
 * forward-only sweep first (AuxK's denominator needs the whole batch's residual), in each chunk the dead latents'
 * select on the raw pre-activations, the aux reconstruction and its gradients, and the dead counters at the end.
 * The normalizations are the whole batch's, so the chunks add up to SAE.md's full-batch step.
 *
 *   const engine = SaeEngine.create(device, cfgs);
 *   engine.initBDec(sample);                      // or setBDec(mean)
 *   for (let t = 0; t < steps; t++) {
 *     const metrics = await engine.step(engine.uploadBatch(data.batch(t, B)));   // StepMetrics[] on log steps
 *   }
 *   const evals = await engine.evaluate(batches); // EvalMetrics[] (decoder normalized first, SAE.md)
 *   const weights = await engine.exportWeights();
 */
import type { EvalMetrics, StepMetrics, TrainConfig } from "./config";
import { ALMOST_DEAD_THRESHOLD, DENSE_THRESHOLD, isSelectKind, usesAuxK } from "./config";
import { DEFAULT_MEMORY_BUDGET, persistentTensors, planMemory, STAGED_AUX_WORDS, workingTensors, type MemoryPlan, type SaeShape } from "./fit";
import * as K from "./kernels";
import * as TK from "./topk";
import { BATCH_STATE_WORDS, rowSelectKernel, topkDims, topkMetaWords } from "./topk";
import * as AK from "./auxk";
import { BATCH_THETA, thetaOf, thetaWords } from "./batchtopk";
import { choiceFor, matmulGrid, type MatmulChoice } from "./matmul-template";
import { adamScalars, initWeights, learningRate, prefixBounds, sparsityCoeff } from "./schedule";

export const PARAM_NAMES = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"] as const;
export type ParamName = (typeof PARAM_NAMES)[number];
export type SaeParams = Record<ParamName, Float32Array>;

/** Exported weights of one SAE, in SAELens/saev layout (W_enc [d_vit, d_sae], W_dec [d_sae, d_vit]). */
export interface SaeWeights {
  W_enc: Float32Array;
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec: Float32Array;
  /** JumpReLU: θ = exp(log θ); BatchTopK: its one θ for every latent (SAELens's layout). */
  threshold?: Float32Array;
}

/** Everything needed to resume: parameters, Adam moments, and the number of steps taken. */
export interface EngineState {
  step: number;
  /** theta: BatchTopK's θ (null or absent: not set yet, the next step sets it to that step's smallest kept value).
   *  counters: AuxK's examples since each latent last fired [d_sae] (AuxK SAEs; absent: zero, nothing dead). */
  saes: Array<{ params: SaeParams; m?: SaeParams; v?: SaeParams; theta?: number | null; counters?: Uint32Array }>;
}

export interface EngineOptions {
  /** Device-memory budget in bytes for the memory plan (default DEFAULT_MEMORY_BUDGET). */
  memoryBudget?: number;
  /** Largest buffer a slab may use, below the device's maxStorageBufferBindingSize (tests: force several slabs). */
  maxBindingSize?: number;
  /** Fewest rows per row chunk (default MIN_ROWS_PER_CHUNK; tests lower it to force several chunks). */
  minRowsPerChunk?: number;
  /** Most rows per row chunk (default the whole batch; benchmarks set it to measure chunking). */
  maxRowsPerChunk?: number;
  /**
   * Matmul variant: "tiled" (workgroup-memory tiles, for GPUs) or "direct" (no barriers; several times faster on
   * software adapters such as SwiftShader, which run barriers as fiber switches). Default: by the adapter.
   */
  matmul?: "tiled" | "direct";
  /** A choice per step matmul (shaders/autotune.ts picks them per adapter and shape); missing ones: `matmul`'s. */
  kernels?: K.MatmulChoices;
}

const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe|softpipe|warp|microsoft basic render/i;

/** True when the device's adapter is a CPU emulation (SwiftShader and friends). */
export function isSoftwareDevice(device: GPUDevice): boolean {
  const info = (device as { adapterInfo?: GPUAdapterInfo }).adapterInfo;
  if (!info) return false;
  if ((info as { isFallbackAdapter?: boolean }).isFallbackAdapter) return true;
  return SOFTWARE_ADAPTER.test([info.vendor, info.architecture, info.device, info.description].join(" "));
}

interface Kernel {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  count: number;
}

/** Builds an explicit bind group layout from the kernel's declarations, so unused-looking bindings never vanish. */
export function makeKernel(device: GPUDevice, label: string, code: string): Kernel {
  const entries: GPUBindGroupLayoutEntry[] = [];
  for (const m of code.matchAll(/@binding\((\d+)\) var<(uniform|storage, read_write|storage, read)>/g)) {
    const type: GPUBufferBindingType = m[2] === "uniform" ? "uniform" : m[2] === "storage, read" ? "read-only-storage" : "storage";
    entries.push({ binding: Number(m[1]), visibility: GPUShaderStage.COMPUTE, buffer: { type } });
  }
  const layout = device.createBindGroupLayout({ label, entries });
  const module = device.createShaderModule({ label, code });
  const pipeline = device.createComputePipeline({
    label,
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: "main" },
  });
  return { pipeline, layout, count: entries.length };
}

interface Dispatch {
  kernel: Kernel;
  bind: GPUBindGroup;
  size: [number, number, number];
  /** Sizes a GPU kernel wrote (AuxK's, from the step's dead set): dispatchWorkgroupsIndirect at this byte offset. */
  indirect?: { buffer: GPUBuffer; offset: number };
}

/**
 * The dispatches of one slab's step, in order (see the file comment). Each chunk's backward needs only its own
 * forward. BatchTopK's selection over the whole batch runs in `select`, before any chunk's forward: two sweeps over
 * the chunks (encode, then one 16-bit digit of the threshold's histogram each), each resolved once the whole batch
 * is counted; then each chunk's forward encodes again (H is per chunk; with one chunk H is kept) and applies it.
 */
interface SlabStep {
  prologue: Dispatch[];
  select: Dispatch[];
  chunks: Array<{ forward: Dispatch[]; backward: Dispatch[] }>;
  epilogue: Dispatch[];
}

/** The dispatches of one slab's evaluation of one batch: θ, then per row chunk encode, decode, statistics. */
interface SlabEval {
  prologue: Dispatch[];
  chunks: Dispatch[][];
}

interface Slab {
  index: number;
  /** First SAE of the group in this slab, and how many it holds. */
  sae0: number;
  count: number;
}

const ceil = (a: number, b: number) => Math.ceil(a / b);
const DIMS_WORDS = 16;

/** Whether an SAE trains with AuxK (as shaders/auxk.ts's auxMetaWords decides). */
const auxOn = usesAuxK;

export class SaeEngine {
  readonly K: number;
  readonly d_vit: number;
  readonly d_sae: number;
  readonly batchSize: number;
  readonly maxPrefixes: number;
  readonly matmulVariant: "tiled" | "direct";
  /** The choice each step matmul runs (options.kernels, else matmulVariant's). */
  readonly kernels: Record<K.MatmulName, MatmulChoice>;
  /** Row chunks and slabs, as planned from the device limits and the memory budget. */
  readonly plan: MemoryPlan;
  private t = 0;
  private decoderDirty = false;
  private readonly sizes: Record<ParamName, number>;
  private readonly perSae: Set<string>;
  private readonly slabs: Slab[];
  private readonly buffers = new Map<string, GPUBuffer>();
  private readonly uploads: GPUBuffer[];
  private uploadIndex = 0;
  private readonly stepPasses: SlabStep[];
  private readonly normalizePasses: Dispatch[];
  private readonly evalPasses: SlabEval[];
  private readonly staging: GPUBuffer;

  static create(device: GPUDevice, cfgs: TrainConfig[], options: EngineOptions = {}): SaeEngine {
    return new SaeEngine(device, cfgs, options);
  }

  private constructor(
    readonly device: GPUDevice,
    readonly cfgs: TrainConfig[],
    options: EngineOptions,
  ) {
    if (cfgs.length === 0) throw new Error("engine: no configs");
    const c0 = cfgs[0];
    for (const [i, c] of cfgs.entries()) {
      for (const [key, a, b] of [
        ["sae.d_vit", c.sae.d_vit, c0.sae.d_vit],
        ["sae.exp_factor", c.sae.exp_factor, c0.sae.exp_factor],
        ["sae_batch_size", c.sae_batch_size, c0.sae_batch_size],
        ["log_every", c.log_every, c0.log_every],
      ] as const)
        if (a !== b) throw new Error(`engine: config ${i} has ${key} = ${a} but config 0 has ${b}; a group must share it`);
      if (c.objective.kind === "matryoshka" && c.objective.n_prefixes < 1) throw new Error(`engine: config ${i}: objective.n_prefixes must be ≥ 1`);
      if (c.max_grad_norm != null && !(c.max_grad_norm > 0)) throw new Error(`engine: config ${i}: max_grad_norm must be > 0 or null, got ${c.max_grad_norm}`);
      if (c.sae.kind === "jumprelu" && !(c.sae.bandwidth > 0 && c.sae.init_threshold > 0))
        throw new Error(`engine: config ${i}: JumpReLU needs sae.bandwidth > 0 and sae.init_threshold > 0`);
    }
    this.K = cfgs.length;
    this.d_vit = c0.sae.d_vit;
    this.d_sae = c0.sae.d_vit * c0.sae.exp_factor;
    this.batchSize = c0.sae_batch_size;
    this.maxPrefixes = Math.max(...cfgs.map((c) => prefixBounds(c, 0).length - 1));
    const shape: SaeShape = { d_vit: this.d_vit, d_sae: this.d_sae, batch_size: this.batchSize, n_prefixes: this.maxPrefixes, batchtopk: cfgs.some((c) => c.sae.kind === "batchtopk"), auxk: cfgs.some(auxOn), k_aux: AK.auxListCap(cfgs) };
    const budget = options.memoryBudget ?? DEFAULT_MEMORY_BUDGET;
    const limits = {
      maxStorageBufferBindingSize: Math.min(device.limits.maxStorageBufferBindingSize, options.maxBindingSize ?? Infinity),
      maxBufferSize: device.limits.maxBufferSize,
    };
    this.plan = planMemory(limits, shape, { memoryBudget: budget, minRowsPerChunk: options.minRowsPerChunk, maxRowsPerChunk: options.maxRowsPerChunk, saes: this.K });
    if (!this.plan.fits)
      throw new Error(
        `engine: ${this.K} SAEs of d_vit ${this.d_vit}, d_sae ${this.d_sae}, batch ${this.batchSize}, ${this.maxPrefixes} prefixes ` +
          `do not fit this device: at most ${this.plan.maxSaes} (maxStorageBufferBindingSize ${limits.maxStorageBufferBindingSize}, ` +
          `maxBufferSize ${limits.maxBufferSize}, memory budget ${budget} bytes); split the group`,
      );
    const { rowsPerChunk: C, rowChunks, saesPerSlab } = this.plan;

    const d = this.d_vit, n = this.d_sae, B = this.batchSize;
    this.sizes = { W_enc: d * n, b_enc: n, W_dec: n * d, b_dec: d, log_threshold: n };
    this.slabs = Array.from({ length: this.plan.slabs }, (_, index) => ({ index, sae0: index * saesPerSlab, count: Math.min(saesPerSlab, this.K - index * saesPerSlab) }));
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const add = (name: string, bytes: number, u = usage) => this.buffers.set(name, device.createBuffer({ label: name, size: Math.max(16, bytes), usage: u }));
    const persistent = persistentTensors(shape);
    this.perSae = new Set(Object.keys(persistent));
    for (const slab of this.slabs) for (const [name, size] of Object.entries(persistent)) add(this.slabName(name, slab), 4 * slab.count * size);
    // the working set: one slab's SAEs, one row chunk, reused by every chunk and slab
    for (const [name, size] of Object.entries(workingTensors(shape, C))) add(name, 4 * saesPerSlab * size);
    add("x", 4 * B * d);
    add("xT", 4 * C * d); // a row chunk of x transposed (K.TRANSPOSE_X), for dL/dW_enc
    add("mu0", 4 * d);
    add("xStats", 4 * 4 * d);
    add("meta", 4 * this.metaWords());
    add("evalMeta", 4 * this.metaWords());
    if (shape.auxk) {
      add("auxMeta", 4 * this.K * AK.AUX_META_WORDS);
      device.queue.writeBuffer(this.buf("auxMeta"), 0, AK.auxMetaWords(cfgs));
      add("auxArgs", 4 * AK.AUX_ARGS_WORDS, usage | GPUBufferUsage.INDIRECT);
    }
    const uniform = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
    for (const slab of this.slabs) {
      // shaders/topk.ts's constants per SAE of the slab (TopK's k, BatchTopK's k·B and β, max_grad_norm), its Dims
      // for the whole slab (n) and per parameter tensor (gradient clipping)
      add(`topkMeta#${slab.index}`, 4 * slab.count * TK.TOPK_META_WORDS);
      device.queue.writeBuffer(this.buf(`topkMeta#${slab.index}`), 0, topkMetaWords(cfgs.slice(slab.sae0, slab.sae0 + slab.count), B));
      add(`slabTopkDims#${slab.index}`, 4 * DIMS_WORDS, uniform);
      device.queue.writeBuffer(this.buf(`slabTopkDims#${slab.index}`), 0, topkDims({ n, K: slab.count, B }));
      PARAM_NAMES.forEach((p, slot) => {
        add(`clipDims#${slab.index}.${p}`, 4 * DIMS_WORDS, uniform);
        device.queue.writeBuffer(this.buf(`clipDims#${slab.index}.${p}`), 0, topkDims({ K: slab.count, size: this.sizes[p], slot, nSlots: PARAM_NAMES.length }));
      });
      for (let c = 0; c < rowChunks; c++) {
        add(`dims#${slab.index}/${c}`, 4 * DIMS_WORDS, uniform);
        add(`evalDims#${slab.index}/${c}`, 4 * DIMS_WORDS, uniform);
        device.queue.writeBuffer(this.buf(`dims#${slab.index}/${c}`), 0, this.dims(slab, c, B));
        if (this.selects(slab) || this.batches(slab)) {
          add(`topkDims#${slab.index}/${c}`, 4 * DIMS_WORDS, uniform);
          add(`evalTopkDims#${slab.index}/${c}`, 4 * DIMS_WORDS, uniform);
          device.queue.writeBuffer(this.buf(`topkDims#${slab.index}/${c}`), 0, this.selectDims(slab, c, B));
        }
      }
      for (const p of PARAM_NAMES) {
        add(`dims#${slab.index}.${p}`, 4 * DIMS_WORDS, uniform);
        device.queue.writeBuffer(this.buf(`dims#${slab.index}.${p}`), 0, this.dims(slab, 0, B, this.sizes[p]));
      }
    }
    this.uploads = [0, 1].map((i) => device.createBuffer({ label: `upload${i}`, size: 4 * B * d, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC }));
    this.staging = device.createBuffer({ label: "staging", size: Math.max(16, 4 * this.K * (2 * n + d + (shape.auxk ? STAGED_AUX_WORDS : 0))), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });

    // Kernels and their bind groups (train: dims + meta; eval: evalDims + evalMeta).
    const k = (label: string, code: string) => makeKernel(device, label, code);
    this.matmulVariant = options.matmul ?? (isSoftwareDevice(device) ? "direct" : "tiled");
    this.kernels = Object.fromEntries(K.MATMUL_NAMES.map((m) => [m, options.kernels?.[m] ?? choiceFor(this.matmulVariant === "direct")])) as Record<K.MatmulName, MatmulChoice>;
    const mm = K.matmulKernels(this.kernels, { d, n, B: C }, K.matmulOptions(device, isSoftwareDevice(device)), this.maxPrefixes > 1);
    const spec = TK.batchSpeculates(this.plan.rowChunks, C, n);
    // short rows: the select kernels run a thread per row, else a workgroup per row (TK.perThreadRows)
    const perThread = TK.perThreadRows(n);
    const kn = {
      normalize: k("normalize_rows", K.NORMALIZE_ROWS),
      thresholds: k("thresholds", K.THRESHOLDS),
      encode: k("encode", mm.ENCODE),
      decode: k("decode", mm.DECODE),
      resid: k("resid_cols", K.RESID_COLS),
      gradF: k("grad_f", mm.GRAD_F),
      latent: k("latent_cols", K.LATENT_COLS),
      latentFinish: k("latent_finish", K.LATENT_FINISH),
      gradBDec: k("grad_b_dec", K.GRAD_B_DEC),
      transposeX: k("transpose_x", K.TRANSPOSE_X),
      gradWEnc: k("grad_w_enc", mm.GRAD_W_ENC),
      gradWDec: k("grad_w_dec", mm.GRAD_W_DEC),
      removeParallel: k("remove_parallel", K.REMOVE_PARALLEL),
      adam: k("adam", K.ADAM_KERNEL),
      evalLatent: k("eval_latent", K.EVAL_LATENT),
      evalResid: k("eval_resid", K.EVAL_RESID),
      // TopK: f = ReLU(h) on each row's k largest, written over H, so the ReLU kernels (θ = 0) then run unchanged
      rowSelect: k("row_select", rowSelectKernel({ kWord: 0, deadOnly: false, inPlace: true, perThread })),
      // BatchTopK (shaders/topk.ts): the whole batch's threshold, then f = ReLU(h) on the kept entries written over H
      // (a small batch in one chunk: pass 1 mostly from pass 0's candidates, see TK.batchSpeculates)
      batchHist: [k("batch_hist0", TK.batchHistKernel(0, spec)), k("batch_hist1", TK.batchHistKernel(1))],
      batchGroupSums: [k("batch_group_sums0", TK.batchGroupSumsKernel(0)), k("batch_group_sums1", TK.batchGroupSumsKernel(1))],
      batchResolve: [k("batch_resolve0", TK.batchResolveKernel(0, spec)), k("batch_resolve1", TK.batchResolveKernel(1))],
      batchClear: [k("batch_clear0", TK.batchClearKernel(0)), k("batch_clear1", TK.batchClearKernel(1))],
      batchTies: k("batch_ties", TK.batchTiesKernel(perThread)),
      batchApply: k("batch_apply", TK.batchApplyKernel(perThread)),
      batchAdvance: k("batch_advance", TK.BATCH_ADVANCE),
      batchTheta: k("batch_theta", BATCH_THETA),
      // max_grad_norm: torch's clip_grad_norm_ per SAE over all of its gradients
      gradNormPartial: k("grad_norm_partial", TK.GRAD_NORM_PARTIAL),
      gradNormFinish: k("grad_norm_finish", TK.GRAD_NORM_FINISH),
      gradScale: k("grad_scale", TK.GRAD_SCALE),
    };
    // AuxK (shaders/auxk.ts), compiled only for a group that has it
    const ak = shape.auxk
      ? (() => {
          return {
            deadList: k("aux_dead_list", AK.AUX_DEAD_LIST),
            args: k("aux_args", AK.auxArgsKernel(perThread)),
            rows: k("aux_rows", AK.AUX_ROWS),
            denCols: k("aux_den_cols", AK.AUX_DEN_COLS),
            denFinish: k("aux_den_finish", AK.AUX_DEN_FINISH),
            select: k("aux_select", AK.auxSelectKernel(perThread)),
            decode: k("aux_decode", AK.AUX_DECODE),
            numCols: k("aux_num_cols", AK.AUX_NUM_COLS),
            gradH: k("aux_grad_h", AK.AUX_GRAD_H),
            gradWDec: k("aux_grad_w_dec", AK.AUX_GRAD_W_DEC),
            gradWEnc: k("aux_grad_w_enc", AK.AUX_GRAD_W_ENC),
            bEncCols: k("aux_b_enc_cols", AK.AUX_B_ENC_COLS),
            bEncAdd: k("aux_b_enc_add", AK.AUX_B_ENC_ADD),
            dead: k("dead_counters", AK.DEAD_COUNTERS),
            loss: k("aux_loss", AK.AUX_LOSS),
            batchRestart: k("batch_restart", TK.BATCH_RESTART),
          };
        })()
      : null;
    const rowsOf = (c: number) => Math.min(C, B - c * C);
    const partialsOf = (c: number) => ceil(rowsOf(c), this.plan.rowsPerPartial);
    this.stepPasses = [];
    this.evalPasses = [];
    this.normalizePasses = [];
    for (const slab of this.slabs) {
      // names: per-SAE tensors resolve to this slab's buffers, the rest are shared
      const dispatch = (kernel: Kernel, names: string[], size: [number, number, number]): Dispatch => {
        if (names.length !== kernel.count) throw new Error(`engine: ${kernel.pipeline.label} takes ${kernel.count} bindings, got ${names.length}`);
        const bind = device.createBindGroup({
          layout: kernel.layout,
          // a vec4 view (`x_v4`, kernels.ts) is its tensor's buffer bound a second time
          entries: names.map((n) => n.replace(K.VEC4_VIEW, "")).map((name, binding) => ({ binding, resource: { buffer: this.buf(this.perSae.has(name) ? this.slabName(name, slab) : name) } })),
        });
        return { kernel, bind, size };
      };
      const Ks = slab.count;
      const grid = (m: K.MatmulName, M: number, N: number) => matmulGrid(this.kernels[m], M, N, Ks);
      const tr = (c: number) => [`dims#${slab.index}/${c}`, "meta"];
      const ev = (c: number) => [`evalDims#${slab.index}/${c}`, "evalMeta"];
      const normalize = dispatch(kn.normalize, [...tr(0), "W_dec"], [ceil(n, 64), 1, Ks]);
      this.normalizePasses.push(normalize);
      const thresholds = (names: string[]) => dispatch(kn.thresholds, [...names, "log_threshold", "theta"], [ceil(n, 64), 1, Ks]);
      const encode = (names: string[], c: number) => dispatch(kn.encode, [...names, "x", "b_dec", "W_enc", "b_enc", "H", "x_v4", "b_dec_v4", "W_enc_v4"], grid("ENCODE", rowsOf(c), n));
      const decode = (names: string[], c: number) => dispatch(kn.decode, [...names, "x", "b_dec", "W_dec", "H", "theta", "R", "W_dec_v4", "H_v4", "theta_v4"], grid("DECODE", rowsOf(c), d));
      const meta = `topkMeta#${slab.index}`;
      const sel = (dimsName: string, c: number) => [`${dimsName}#${slab.index}/${c}`, meta];
      // encode, then (a slab with TopK SAEs) the selection in place: the other kinds' rows are left as they are
      const selectGrid = (c: number): [number, number, number] => [perThread ? ceil(rowsOf(c), TK.ROW_THREADS) : rowsOf(c), Ks, 1];
      const rowSelect = (dimsName: string, c: number) => (this.selects(slab) ? [dispatch(kn.rowSelect, [...sel(dimsName, c), "H", "cut"], selectGrid(c))] : []);
      const encodeAndSelect = (names: string[], c: number, dimsName: string) => [encode(names, c), ...rowSelect(dimsName, c)];
      // BatchTopK (SAEs of other kinds leave these kernels at once): a digit of the threshold from every chunk's
      // histogram, then per chunk the ties in (row, latent) order and f written over H.
      const batches = this.batches(slab);
      const kept = rowChunks === 1; // one chunk: H survives from the select sweeps, no second encode
      const chunkIds = Array.from({ length: rowChunks }, (_, c) => c);
      const hist = (p: 0 | 1, c: number) => dispatch(kn.batchHist[p], [...sel("topkDims", c), "H", "batchHist", "batchState"], [TK.batchHistGroups(rowsOf(c), n), Ks, 1]);
      // a digit resolved in three barrier-free dispatches (see TK.batchGroupSumsKernel): group sums, scan, clear
      const groupsGrid: [number, number, number] = [TK.BATCH_GROUPS / TK.BATCH_GROUP_THREADS, Ks, 1];
      const resolve = (p: 0 | 1) => [
        dispatch(kn.batchGroupSums[p], [...sel("topkDims", 0), "batchHist"], groupsGrid),
        dispatch(kn.batchResolve[p], [...sel("topkDims", 0), "batchHist", "batchState"], [1, Ks, 1]),
        dispatch(kn.batchClear[p], [...sel("topkDims", 0), "batchHist"], groupsGrid),
      ];
      const batchSelect = !batches
        ? []
        : kept
          ? [encode(tr(0), 0), hist(0, 0), ...resolve(0), hist(1, 0), ...resolve(1)]
          : [...chunkIds.flatMap((c) => [encode(tr(c), c), hist(0, c)]), ...resolve(0), ...chunkIds.flatMap((c) => [encode(tr(c), c), hist(1, c)]), ...resolve(1)];
      const batchApply = (c: number) =>
        !batches
          ? []
          : [
              dispatch(kn.batchTies, [...sel("topkDims", c), "H", "batchState", "rowTies"], selectGrid(c)),
              dispatch(kn.batchAdvance, [...sel("topkDims", c), "batchState", "rowTies"], [1, Ks, 1]),
              dispatch(kn.batchApply, [...sel("topkDims", c), "H", "batchState", "rowTies"], selectGrid(c)),
            ];
      // max_grad_norm (a slab with a limit): Σ g² per tensor, the norm and scale per SAE, every gradient scaled
      const clip = !this.clips(slab)
        ? []
        : [
            ...PARAM_NAMES.map((p) => dispatch(kn.gradNormPartial, [`clipDims#${slab.index}.${p}`, meta, `grad.${p}`, "normPart"], [TK.normWorkgroups(this.sizes[p]), 1, Ks])),
            dispatch(kn.gradNormFinish, [`clipDims#${slab.index}.W_enc`, meta, "normPart", "clip"], [1, 1, Ks]),
            ...PARAM_NAMES.map((p) => dispatch(kn.gradScale, [`clipDims#${slab.index}.${p}`, meta, "clip", `grad.${p}`], [Math.min(ceil(this.sizes[p], 256), 65535), 1, Ks])),
          ];
      // AuxK (a slab with AuxK SAEs; the others' entries are left alone by every kernel): see shaders/auxk.ts
      const aux = ak && this.auxes(slab) ? ak : null;
      const am = (c: number) => [...tr(c), "auxMeta"];
      const denCols = (c: number) => (aux ? [dispatch(aux.denCols, [...am(c), "R", "auxDenPart"], [ceil(d, 64), partialsOf(c), Ks])] : []);
      const denFinish = aux ? [dispatch(aux.denFinish, [...am(0), "auxDenPart", "auxScal"], [1, 1, Ks])] : [];
      // several chunks: a forward-only sweep for the denominator, BatchTopK's tie count restarted after it
      const denSweep =
        !aux || kept
          ? []
          : [
              ...chunkIds.flatMap((c) => [...encodeAndSelect(tr(c), c, "topkDims"), ...batchApply(c), decode(tr(c), c), ...denCols(c)]),
              ...(batches ? [dispatch(aux.batchRestart, [...sel("topkDims", 0), "batchState"], [1, Ks, 1])] : []),
              ...denFinish,
            ];
      // on the raw h, before the main selection overwrites H
      // (sized by AUX_ARGS: no workgroups when the slab has nothing dead)
      const indirect = (p: Dispatch, offset: number): Dispatch => ({ ...p, indirect: { buffer: this.buf("auxArgs"), offset: 4 * offset } });
      const auxSelect = (c: number) => (aux ? [indirect(dispatch(aux.select, [...sel("topkDims", c), "H", "counters", "auxAct", "auxCut"], selectGrid(c)), AK.AUX_ARGS_SELECT)] : []);
      // the step's dead set and the indirect sizes, before any chunk (the counters change only in the epilogue)
      const auxPrologue = !aux
        ? []
        : [dispatch(aux.deadList, [...am(0), "counters", "deadList"], [1, 1, Ks]), dispatch(aux.args, [...am(0), "deadList", "auxArgs"], [1, 1, 1])];
      const auxForward = (c: number) =>
        !aux
          ? []
          : [
              ...(kept ? [...denCols(c), ...denFinish] : []),
              dispatch(aux.rows, [...am(c), "deadList", "auxAct", "auxList", "auxCnt"], [rowsOf(c), 1, Ks]),
              dispatch(aux.decode, [...am(c), "auxList", "auxCnt", "W_dec", "R", "auxR"], [ceil(d, 64), rowsOf(c), Ks]),
              dispatch(aux.numCols, [...am(c), "auxR", "auxNumPart"], [ceil(d, 64), partialsOf(c), Ks]),
            ];
      const auxBackward = (c: number) =>
        !aux
          ? []
          : [
              dispatch(aux.gradH, [...am(c), "auxScal", "auxList", "auxCnt", "auxR", "W_dec", "G"], [ceil(shape.k_aux!, 64), rowsOf(c), Ks]),
              indirect(dispatch(aux.gradWDec, [...am(c), "auxScal", "deadList", "auxAct", "auxR", "grad.W_dec"], [1, 1, Ks]), AK.AUX_ARGS_LATENT),
              indirect(dispatch(aux.gradWEnc, [...am(c), "deadList", "auxAct", "G", "x", "b_dec", "grad.W_enc"], [1, 1, Ks]), AK.AUX_ARGS_LATENT),
              dispatch(aux.bEncCols, [...am(c), "deadList", "auxAct", "G", "auxBEnc"], [ceil(n, 64), 1, Ks]),
            ];
      // after LATENT_FINISH (colStats' count of f > 0 per latent), before GRAD_B_DEC (it carries gb_enc into b_dec)
      const auxEpilogue = !aux
        ? []
        : [
            dispatch(aux.bEncAdd, [...am(0), "deadList", "auxBEnc", "grad.b_enc"], [ceil(n, 64), 1, Ks]),
            dispatch(aux.dead, [`slabTopkDims#${slab.index}`, meta, "colStats", "counters", "nDead"], [ceil(n, 64), 1, Ks]),
            dispatch(aux.loss, [...am(0), "auxNumPart", "nDead", "auxScal"], [1, 1, Ks]),
          ];
      this.stepPasses.push({
        prologue: [normalize, thresholds(tr(0)), ...auxPrologue],
        select: [...batchSelect, ...denSweep],
        chunks: chunkIds.map((c) => ({
          forward: [
            ...(batches && kept ? [...auxSelect(c), ...rowSelect("topkDims", c)] : [encode(tr(c), c), ...auxSelect(c), ...rowSelect("topkDims", c)]),
            ...batchApply(c),
            decode(tr(c), c),
            dispatch(kn.resid, [...tr(c), "R", "residPart"], [ceil(d, 64), partialsOf(c), Ks]),
            ...auxForward(c),
          ],
          backward: [
            dispatch(kn.gradF, [...tr(c), "R", "W_dec", "H", "G", "R_v4", "W_dec_v4"], grid("GRAD_F", rowsOf(c), n)),
            dispatch(kn.latent, [...tr(c), "H", "theta", "G", "latentPart"], [ceil(n, 64), partialsOf(c), Ks]),
            dispatch(kn.transposeX, [...tr(c), "x", "xT"], [ceil(rowsOf(c), 64), d, 1]),
            dispatch(kn.gradWEnc, [...tr(c), "xT", "b_dec", "G", "grad.W_enc"], grid("GRAD_W_ENC", d, n)),
            dispatch(kn.gradWDec, [...tr(c), "H", "theta", "R", "grad.W_dec", "H_v4", "theta_v4"], grid("GRAD_W_DEC", d, n)),
            ...auxBackward(c),
          ],
        })),
        epilogue: [
          dispatch(kn.latentFinish, [...tr(0), "theta", "latentPart", "grad.b_enc", "grad.log_threshold", "colStats"], [ceil(n, 64), 1, Ks]),
          ...auxEpilogue,
          dispatch(kn.gradBDec, [...tr(0), "residPart", "W_enc", "grad.b_enc", "grad.b_dec", "colStats"], [ceil(d, 64), 1, Ks]),
          dispatch(kn.removeParallel, [...tr(0), "W_dec", "grad.W_dec"], [ceil(n, 64), 1, Ks]),
          ...clip,
          ...PARAM_NAMES.map((p) => {
            const wgs = ceil(this.sizes[p], 256);
            return dispatch(kn.adam, [`dims#${slab.index}.${p}`, "meta", p, `grad.${p}`, `m.${p}`, `v.${p}`], [Math.min(wgs, 65535), ceil(wgs, 65535), Ks]);
          }),
        ],
      });
      this.evalPasses.push({
        // BatchTopK evaluates as a JumpReLU with its one θ (SAE.md): θ over what THRESHOLDS wrote for it
        prologue: [thresholds(ev(0)), ...(batches ? [dispatch(kn.batchTheta, [`slabTopkDims#${slab.index}`, meta, "batchState", "theta"], [ceil(n, 64), 1, Ks])] : [])],
        chunks: Array.from({ length: rowChunks }, (_, c) => [
          ...encodeAndSelect(ev(c), c, "evalTopkDims"),
          decode(ev(c), c),
          dispatch(kn.evalLatent, [...ev(c), "H", "theta", "evalCount", "evalSum"], [ceil(n, 64), 1, Ks]),
          dispatch(kn.evalResid, [...ev(c), "R", "x", "mu0", "evalResid", "xStats"], [ceil(d, 64), 1, Ks]),
        ]),
      });
    }

    // Weights from each SAE's own seed (SAE.md init); Adam moments start at zero.
    this.importState({ step: 0, saes: cfgs.map((c) => ({ params: initWeights(c) })) });
  }

  /** Steps taken so far (the global step of the next `step`). */
  get stepIndex(): number {
    return this.t;
  }

  private buf(name: string): GPUBuffer {
    const b = this.buffers.get(name);
    if (!b) throw new Error(`engine: no buffer named ${name}`);
    return b;
  }

  private slabName(name: string, slab: Slab): string {
    return `${name}#${slab.index}`;
  }

  private slabOf(k: number): { slab: Slab; i: number } {
    const slab = this.slabs[Math.floor(k / this.plan.saesPerSlab)];
    return { slab, i: k - slab.sae0 };
  }

  /** Whether a slab holds a TopK SAE (and so runs the selection after each encode). */
  private selects(slab: Slab): boolean {
    return this.cfgs.slice(slab.sae0, slab.sae0 + slab.count).some((c) => c.sae.kind === "topk");
  }

  /** Whether a slab holds a BatchTopK SAE (and so selects over the whole batch before the chunks' forward). */
  private batches(slab: Slab): boolean {
    return this.cfgs.slice(slab.sae0, slab.sae0 + slab.count).some((c) => c.sae.kind === "batchtopk");
  }

  /** Whether a slab holds an SAE with AuxK (and so runs shaders/auxk.ts's kernels). */
  private auxes(slab: Slab): boolean {
    return this.cfgs.slice(slab.sae0, slab.sae0 + slab.count).some(auxOn);
  }

  /** Whether a slab holds an SAE with max_grad_norm (and so clips the gradients before Adam). */
  private clips(slab: Slab): boolean {
    return this.cfgs.slice(slab.sae0, slab.sae0 + slab.count).some((c) => c.max_grad_norm != null);
  }

  /** shaders/topk.ts's Dims of one slab and row chunk c of a batch of `rows` rows (H's rows are the chunk's). */
  private selectDims(slab: Slab, c: number, rows: number): Uint32Array<ArrayBuffer> {
    const chunkRows = Math.max(0, Math.min(this.plan.rowsPerChunk, rows - c * this.plan.rowsPerChunk));
    const words = new Uint32Array(DIMS_WORDS);
    words.set(topkDims({ rows: chunkRows, n: this.d_sae, K: slab.count, B: rows }));
    return words;
  }

  private metaWords(): number {
    return this.K * K.META_WORDS + this.K * (this.maxPrefixes + 1);
  }

  /** The Dims uniform of one slab and row chunk c of a batch of `rows` rows (`size`: Adam's tensor size). */
  private dims(slab: Slab, c: number, rows: number, size = 0): Uint32Array<ArrayBuffer> {
    const C = this.plan.rowsPerChunk;
    const row0 = c * C;
    return new Uint32Array([
      Math.max(0, Math.min(C, rows - row0)), this.d_vit, this.d_sae, slab.count, this.maxPrefixes, this.plan.partials, this.plan.rowsPerPartial, size,
      row0, row0 / this.plan.rowsPerPartial, slab.sae0, this.K, c > 0 ? 1 : 0, 0, 0, 0,
    ]);
  }

  /** The sparsity coefficient in effect at step t: TopK and BatchTopK select instead of penalizing (SAE.md), so 0. */
  private coeffAt(c: TrainConfig, t: number): number {
    return isSelectKind(c.sae.kind) ? 0 : sparsityCoeff(c, t);
  }

  /** Per-SAE step constants and prefix bounds for step t (eval: one full prefix, no loss terms). */
  private meta(t: number, evaluation: boolean): { words: Uint32Array<ArrayBuffer>; bounds: number[][] } {
    const words = new Uint32Array(this.metaWords());
    const f = new Float32Array(words.buffer);
    const bounds: number[][] = [];
    for (const [k, c] of this.cfgs.entries()) {
      const b = evaluation ? [0, this.d_sae] : prefixBounds(c, t);
      const P = b.length - 1;
      const { stepSize, sqrtBias2 } = adamScalars(learningRate(c, t), t);
      const o = k * K.META_WORDS;
      words[o] = (c.sae.kind === "jumprelu" ? K.FLAG_JUMPRELU : 0) | (c.sae.normalize_w_dec ? K.FLAG_NORMALIZE : 0) | (c.sae.remove_parallel_grads ? K.FLAG_REMOVE_PARALLEL : 0);
      words[o + 1] = P;
      f[o + 2] = evaluation ? 0 : this.coeffAt(c, t);
      f[o + 3] = c.sae.bandwidth;
      // the whole batch's normalizations: every row chunk adds its share of the full-batch gradient
      f[o + 4] = 2 / (this.batchSize * P * this.d_vit);
      f[o + 5] = stepSize;
      f[o + 6] = sqrtBias2;
      f[o + 7] = 1 / this.batchSize;
      const bo = this.K * K.META_WORDS + k * (this.maxPrefixes + 1);
      for (let q = 0; q <= P; q++) words[bo + q] = b[q];
      bounds.push(b);
    }
    return { words, bounds };
  }

  /** Records dispatches into one compute pass (one pass per step: each dispatch sees the previous one's writes). */
  private encodePasses(enc: GPUCommandEncoder, passes: Iterable<Dispatch>, timestampWrites?: GPUComputePassTimestampWrites): void {
    const pass = enc.beginComputePass(timestampWrites ? { timestampWrites } : undefined);
    for (const p of passes) {
      pass.setPipeline(p.kernel.pipeline);
      pass.setBindGroup(0, p.bind);
      if (p.indirect) pass.dispatchWorkgroupsIndirect(p.indirect.buffer, p.indirect.offset);
      else pass.dispatchWorkgroups(...p.size);
    }
    pass.end();
  }

  /** A step's dispatches: slab by slab, the prologue, each row chunk's forward then backward, the epilogue. */
  private *stepDispatches(): Generator<Dispatch> {
    for (const s of this.stepPasses) {
      yield* s.prologue;
      yield* s.select;
      for (const c of s.chunks) {
        yield* c.forward;
        yield* c.backward;
      }
      yield* s.epilogue;
    }
  }

  /**
   * Copies a batch into the next of two upload buffers and returns it, for `step`. The copy is queued, so the
   * caller may prepare (and upload) batch t + 1 while step t runs.
   */
  uploadBatch(x: Float32Array): GPUBuffer {
    this.checkBatch(x, this.batchSize);
    const b = this.uploads[this.uploadIndex];
    this.uploadIndex ^= 1;
    this.device.queue.writeBuffer(b, 0, x.buffer, x.byteOffset, x.byteLength);
    return b;
  }

  private checkBatch(x: Float32Array, rows: number): void {
    if (x.length !== rows * this.d_vit) throw new Error(`engine: a batch must hold ${rows} × ${this.d_vit} floats, got ${x.length}`);
  }

  /** b_dec of every SAE ← the mean of `sample` ([N, d_vit] row-major), accumulated in float64. */
  initBDec(sample: Float32Array): void {
    const d = this.d_vit;
    if (sample.length === 0 || sample.length % d) throw new Error(`engine: initBDec needs N × ${d} floats, got ${sample.length}`);
    const N = sample.length / d;
    const mean = new Float64Array(d);
    for (let r = 0; r < N; r++) for (let c = 0; c < d; c++) mean[c] += sample[r * d + c];
    this.setBDec(mean.map((v) => v / N));
  }

  /** b_dec of every SAE ← mean (for callers that stream the sample themselves). */
  setBDec(mean: ArrayLike<number>): void {
    if (mean.length !== this.d_vit) throw new Error(`engine: setBDec needs ${this.d_vit} values, got ${mean.length}`);
    for (const slab of this.slabs) {
      const all = new Float32Array(slab.count * this.d_vit);
      for (let k = 0; k < slab.count; k++) for (let c = 0; c < this.d_vit; c++) all[k * this.d_vit + c] = mean[c];
      this.device.queue.writeBuffer(this.buf(this.slabName("b_dec", slab)), 0, all);
    }
  }

  /**
   * One training step of every SAE on `batch` ([batch_size, d_vit]; a Float32Array, or a GPUBuffer such as
   * uploadBatch returns). Resolves to per-SAE StepMetrics on log steps ((step + 1) % log_every == 0, or when
   * `opts.metrics`), read back once; otherwise to null without waiting for the GPU. `opts.timestampWrites` (a
   * device with "timestamp-query") stamps the beginning and end of the step's compute pass (benchmarks).
   */
  async step(batch: Float32Array | GPUBuffer, opts: { metrics?: boolean; timestampWrites?: GPUComputePassTimestampWrites } = {}): Promise<StepMetrics[] | null> {
    const t = this.t;
    const bytes = 4 * this.batchSize * this.d_vit;
    const { words, bounds } = this.meta(t, false);
    this.device.queue.writeBuffer(this.buf("meta"), 0, words);
    const enc = this.device.createCommandEncoder({ label: `step ${t}` });
    if (batch instanceof Float32Array) {
      this.checkBatch(batch, this.batchSize);
      this.device.queue.writeBuffer(this.buf("x"), 0, batch.buffer, batch.byteOffset, batch.byteLength);
    } else {
      if (batch.size < bytes) throw new Error(`engine: batch buffer holds ${batch.size} bytes, a batch needs ${bytes}`);
      enc.copyBufferToBuffer(batch, 0, this.buf("x"), 0, bytes);
    }
    // AuxK's n_dead_train: DEAD_COUNTERS adds into it
    for (const slab of this.slabs) if (this.auxes(slab)) enc.clearBuffer(this.buf(this.slabName("nDead", slab)));
    this.encodePasses(enc, this.stepDispatches(), opts.timestampWrites);
    const log = opts.metrics || (t + 1) % this.cfgs[0].log_every === 0;
    const { d_sae: n, d_vit: d } = this;
    const auxWords = this.buffers.has("auxMeta") ? STAGED_AUX_WORDS : 0;
    const statsBytes = 4 * this.K * (2 * n + d + auxWords);
    // staging: every slab's colStats, then (AuxK) auxScal [K, 4] and nDead [K] in group order
    const auxAt = this.K * (2 * n + d);
    if (log)
      for (const slab of this.slabs) {
        enc.copyBufferToBuffer(this.buf(this.slabName("colStats", slab)), 0, this.staging, 4 * slab.sae0 * (2 * n + d), 4 * slab.count * (2 * n + d));
        if (!this.auxes(slab)) continue;
        enc.copyBufferToBuffer(this.buf(this.slabName("auxScal", slab)), 0, this.staging, 4 * (auxAt + slab.sae0 * AK.AUX_SCALARS), 4 * slab.count * AK.AUX_SCALARS);
        enc.copyBufferToBuffer(this.buf(this.slabName("nDead", slab)), 0, this.staging, 4 * (auxAt + this.K * AK.AUX_SCALARS + slab.sae0), 4 * slab.count);
      }
    this.device.queue.submit([enc.finish()]);
    this.t++;
    this.decoderDirty = true;
    if (!log) return null;

    const stats = await this.readStaging(statsBytes);
    const B = this.batchSize;
    return this.cfgs.map((c, k) => {
      // colStats of a slab: [L0 count: count × n][L1 sum: count × n][Σ e²: count × d]
      const { slab, i } = this.slabOf(k);
      const base = slab.sae0 * (2 * n + d);
      let l0 = 0, l1 = 0, sq = 0;
      for (let j = 0; j < n; j++) {
        l0 += stats[base + i * n + j];
        l1 += stats[base + (slab.count + i) * n + j];
      }
      for (let col = 0; col < d; col++) sq += stats[base + 2 * slab.count * n + i * d + col];
      const P = bounds[k].length - 1;
      const coeff = this.coeffAt(c, t);
      const mse = sq / (B * P * d);
      const sparsity = coeff * (c.sae.kind === "jumprelu" ? l0 / B : l1 / B);
      // AuxK: aux_loss and n_dead_train (the latents dead during the step); loss = mse + aux_coeff·aux (SAE.md)
      const aux = auxOn(c)
        ? { aux_loss: stats[auxAt + k * AK.AUX_SCALARS + 2], n_dead_train: new Uint32Array(stats.buffer, 4 * (auxAt + this.K * AK.AUX_SCALARS + k), 1)[0] }
        : null;
      return {
        ...(aux ?? {}),
        loss: mse + sparsity + (aux ? c.sae.aux_coeff * aux.aux_loss : 0),
        mse,
        l0: l0 / B,
        l1: l1 / B,
        sparsity,
        "progress/n_patches_seen": (t + 1) * B,
        "progress/learning_rate": learningRate(c, t),
        "progress/sparsity_coeff": coeff,
      };
    });
  }

  private async readStaging(bytes: number): Promise<Float32Array> {
    await this.staging.mapAsync(GPUMapMode.READ, 0, bytes);
    const out = new Float32Array(this.staging.getMappedRange(0, bytes).slice(0));
    this.staging.unmap();
    return out;
  }

  /** Copies byte ranges of buffers into one read-back buffer and returns each as a Float32Array. */
  private async readRanges(ranges: Array<{ buffer: GPUBuffer; offset: number; bytes: number }>): Promise<Float32Array[]> {
    const total = ranges.reduce((a, r) => a + r.bytes, 0);
    const rb = this.device.createBuffer({ size: Math.max(16, total), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.device.createCommandEncoder();
    let at = 0;
    for (const r of ranges) {
      enc.copyBufferToBuffer(r.buffer, r.offset, rb, at, r.bytes);
      at += r.bytes;
    }
    this.device.queue.submit([enc.finish()]);
    await rb.mapAsync(GPUMapMode.READ);
    const all = rb.getMappedRange();
    at = 0;
    const out = ranges.map((r) => {
      const a = new Float32Array(all.slice(at, at + r.bytes));
      at += r.bytes;
      return a;
    });
    rb.unmap();
    rb.destroy();
    return out;
  }

  /**
   * Reads a whole internal buffer (tests and checkpoints). A per-SAE tensor comes back for all SAEs in group order
   * (its slabs concatenated); the working set (H, G, R, partials) holds the last slab's last row chunk.
   */
  async readBuffer(name: string): Promise<Float32Array> {
    const buffers = this.perSae.has(name) ? this.slabs.map((s) => this.buf(this.slabName(name, s))) : [this.buf(name)];
    const parts = await this.readRanges(buffers.map((buffer) => ({ buffer, offset: 0, bytes: buffer.size })));
    if (parts.length === 1) return parts[0];
    const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Fills every intermediate and gradient buffer with NaN, so a test sees any element a kernel failed to write. */
  poison(): void {
    const names = ["H", "G", "R", "xT", "latentPart", "residPart"];
    const aux = this.buffers.has("auxMeta");
    if (aux) names.push("auxAct", "auxCut", "auxR", "auxDenPart", "auxNumPart", "auxBEnc", "deadList", "auxList", "auxCnt");
    for (const slab of this.slabs)
      for (const p of ["colStats", ...PARAM_NAMES.map((p) => `grad.${p}`), ...(aux ? ["auxScal", "nDead"] : [])]) names.push(this.slabName(p, slab));
    for (const name of names) {
      const b = this.buf(name);
      this.device.queue.writeBuffer(b, 0, new Float32Array(b.size / 4).fill(NaN));
    }
  }

  /** Normalizes every W_dec row (SAEs with normalize_w_dec), as after the last step (SAE.md). */
  normalizeDecoder(): void {
    this.writeMeta("meta", this.t);
    const enc = this.device.createCommandEncoder();
    this.encodePasses(enc, this.normalizePasses);
    this.device.queue.submit([enc.finish()]);
    this.decoderDirty = false;
  }

  private writeMeta(name: "meta" | "evalMeta", t: number): void {
    this.device.queue.writeBuffer(this.buf(name), 0, this.meta(t, name === "evalMeta").words);
  }

  /**
   * EvalMetrics per SAE over every example of `batches` (each [rows ≤ batch_size, d_vit]); the decoder is
   * normalized first when a step has run since. Streams each batch through the SAEs in the step's row chunks and
   * slabs. Counts are exact (u32), sums compensated, totals in float64.
   */
  async evaluate(batches: Iterable<Float32Array> | AsyncIterable<Float32Array>): Promise<EvalMetrics[]> {
    if (this.decoderDirty) this.normalizeDecoder();
    const { device, d_vit: d, d_sae: n, batchSize: B } = this;
    this.writeMeta("evalMeta", this.t);
    const enc0 = device.createCommandEncoder();
    enc0.clearBuffer(this.buf("xStats"));
    for (const slab of this.slabs) for (const name of ["evalCount", "evalSum", "evalResid"]) enc0.clearBuffer(this.buf(this.slabName(name, slab)));
    device.queue.submit([enc0.finish()]);
    let N = 0;
    let mu0: Float64Array | null = null;
    for await (const batch of batches) {
      if (batch.length % d) throw new Error(`engine: an eval batch must hold rows × ${d} floats, got ${batch.length}`);
      for (let start = 0; start < batch.length / d; start += B) {
        const rows = Math.min(B, batch.length / d - start);
        const x = batch.subarray(start * d, (start + rows) * d);
        if (!mu0) {
          mu0 = new Float64Array(d);
          for (let r = 0; r < rows; r++) for (let c = 0; c < d; c++) mu0[c] += x[r * d + c] / rows;
          device.queue.writeBuffer(this.buf("mu0"), 0, Float32Array.from(mu0));
          mu0 = Float64Array.from(Float32Array.from(mu0)); // the shift the GPU uses
        }
        const chunks = ceil(rows, this.plan.rowsPerChunk);
        for (const slab of this.slabs)
          for (let c = 0; c < chunks; c++) {
            device.queue.writeBuffer(this.buf(`evalDims#${slab.index}/${c}`), 0, this.dims(slab, c, rows));
            if (this.selects(slab) || this.batches(slab)) device.queue.writeBuffer(this.buf(`evalTopkDims#${slab.index}/${c}`), 0, this.selectDims(slab, c, rows));
          }
        device.queue.writeBuffer(this.buf("x"), 0, x.buffer, x.byteOffset, x.byteLength);
        const enc = device.createCommandEncoder();
        this.encodePasses(enc, this.evalPasses.flatMap((s) => [...s.prologue, ...s.chunks.slice(0, chunks).flat()]));
        device.queue.submit([enc.finish()]);
        N += rows;
      }
    }
    if (N === 0) throw new Error("engine: evaluate got no examples");
    const [countF, sums, resid, xStats] = await Promise.all(["evalCount", "evalSum", "evalResid", "xStats"].map((b) => this.readBuffer(b)));
    const counts = new Uint32Array(countF.buffer);
    let total = 0;
    for (let c = 0; c < d; c++) {
      const s1 = xStats[4 * c] + xStats[4 * c + 1];
      const s2 = xStats[4 * c + 2] + xStats[4 * c + 3];
      total += s2 - (s1 * s1) / N;
    }
    return this.cfgs.map((_, k) => {
      const freqs: number[] = [];
      const meanValues: (number | null)[] = [];
      let l0 = 0, l1 = 0, sq = 0;
      for (let j = 0; j < n; j++) {
        const cnt = counts[k * n + j];
        const s = sums[2 * (k * n + j)] + sums[2 * (k * n + j) + 1];
        freqs.push(cnt / N);
        meanValues.push(cnt > 0 ? s / cnt : null);
        l0 += cnt;
        l1 += s;
      }
      for (let c = 0; c < d; c++) sq += resid[2 * (k * d + c)] + resid[2 * (k * d + c) + 1];
      const fvu = sq / total;
      return {
        l0: l0 / N,
        l1: l1 / N,
        mse: sq / (N * d),
        fvu,
        explained_variance: 1 - fvu,
        n_dead: freqs.filter((f) => f === 0).length,
        n_almost_dead: freqs.filter((f) => f < ALMOST_DEAD_THRESHOLD).length,
        n_dense: freqs.filter((f) => f > DENSE_THRESHOLD).length,
        freqs,
        mean_values: meanValues,
        n_examples: N,
      };
    });
  }

  /** One SAE's parameters (or Adam moments: prefix "m." / "v."), read in one copy. */
  private async readSae(prefix: string, k: number): Promise<SaeParams> {
    const { slab, i } = this.slabOf(k);
    const parts = await this.readRanges(
      PARAM_NAMES.map((p) => ({ buffer: this.buf(this.slabName(prefix + p, slab)), offset: 4 * i * this.sizes[p], bytes: 4 * this.sizes[p] })),
    );
    return Object.fromEntries(PARAM_NAMES.map((p, j) => [p, parts[j]])) as SaeParams;
  }

  /** Every SAE's parameters (or moments), one SAE at a time, so no read-back is larger than one SAE. */
  private async readParams(prefix: string): Promise<SaeParams[]> {
    const out: SaeParams[] = [];
    for (let k = 0; k < this.K; k++) out.push(await this.readSae(prefix, k));
    return out;
  }

  /** Trained weights per SAE (the decoder normalized first when a step has run since, SAE.md). */
  async exportWeights(): Promise<SaeWeights[]> {
    if (this.decoderDirty) this.normalizeDecoder();
    const params = await this.readParams("");
    const thetas = await this.thetas();
    return params.map((p, k) => ({
      W_enc: p.W_enc,
      b_enc: p.b_enc,
      W_dec: p.W_dec,
      b_dec: p.b_dec,
      ...(this.cfgs[k].sae.kind === "jumprelu" ? { threshold: p.log_threshold.map(Math.exp) } : {}),
      // SAELens saves BatchTopK as a JumpReLU: θ per latent, here one value for all (0 before the first step)
      ...(this.cfgs[k].sae.kind === "batchtopk" ? { threshold: new Float32Array(this.d_sae).fill(thetas[k] ?? 0) } : {}),
    }));
  }

  /** BatchTopK's θ per SAE (null for the other kinds, and before the first step). */
  async thetas(): Promise<Array<number | null>> {
    const words = new Uint32Array((await this.readBuffer("batchState")).buffer);
    return this.cfgs.map((c, k) => (c.sae.kind === "batchtopk" ? thetaOf(words.subarray(k * BATCH_STATE_WORDS, (k + 1) * BATCH_STATE_WORDS)) : null));
  }

  /** Parameters, Adam moments, BatchTopK's θ and the step, exactly as they are (for resume checkpoints). */
  async exportState(): Promise<EngineState> {
    const [params, m, v, thetas] = [await this.readParams(""), await this.readParams("m."), await this.readParams("v."), await this.thetas()];
    const counters = await this.counters();
    return { step: this.t, saes: params.map((p, k) => ({ params: p, m: m[k], v: v[k], theta: thetas[k], ...(counters[k] ? { counters: counters[k]! } : {}) })) };
  }

  /** AuxK's per-latent counters (examples since each latent last fired) per SAE; null for SAEs without AuxK. */
  async counters(): Promise<Array<Uint32Array | null>> {
    if (!this.buffers.has("auxMeta")) return this.cfgs.map(() => null);
    const all = new Uint32Array((await this.readBuffer("counters")).buffer);
    const n = this.d_sae;
    return this.cfgs.map((c, k) => (auxOn(c) ? all.slice(k * n, (k + 1) * n) : null));
  }

  /** Restores parameters (and Adam moments, zero when absent), BatchTopK's θ (unset when absent) and the step count. */
  importState(state: EngineState): void {
    if (state.saes.length !== this.K) throw new Error(`engine: state has ${state.saes.length} SAEs, the engine ${this.K}`);
    const kinds = ["", "m.", "v."] as const;
    const source = (s: EngineState["saes"][number], kind: (typeof kinds)[number]) => (kind === "" ? s.params : kind === "m." ? s.m : s.v);
    // check everything before writing anything
    for (const [k, s] of state.saes.entries())
      for (const kind of kinds)
        for (const p of PARAM_NAMES) {
          const src = source(s, kind);
          if (src && src[p].length !== this.sizes[p]) throw new Error(`engine: state of SAE ${k}: ${kind}${p} has ${src[p].length} values, expected ${this.sizes[p]}`);
        }
    for (const [k, s] of state.saes.entries())
      if (s.counters && s.counters.length !== this.d_sae) throw new Error(`engine: state of SAE ${k}: counters has ${s.counters.length} values, expected ${this.d_sae}`);
    for (const [k, s] of state.saes.entries()) {
      const { slab, i } = this.slabOf(k);
      for (const kind of kinds) {
        const src = source(s, kind);
        for (const p of PARAM_NAMES) {
          const size = this.sizes[p];
          const values = src ? src[p] : new Float32Array(size);
          this.device.queue.writeBuffer(this.buf(this.slabName(kind + p, slab)), 4 * i * size, values.buffer, values.byteOffset, values.byteLength);
        }
      }
      this.device.queue.writeBuffer(this.buf(this.slabName("batchState", slab)), 4 * i * BATCH_STATE_WORDS, thetaWords(this.cfgs[k].sae.kind === "batchtopk" ? (s.theta ?? null) : null));
      if (this.buffers.has(this.slabName("counters", slab))) {
        const counters = auxOn(this.cfgs[k]) && s.counters ? s.counters : new Uint32Array(this.d_sae);
        this.device.queue.writeBuffer(this.buf(this.slabName("counters", slab)), 4 * i * this.d_sae, counters.buffer, counters.byteOffset, counters.byteLength);
      }
    }
    this.t = state.step;
    this.decoderDirty = false;
  }

  destroy(): void {
    for (const b of this.buffers.values()) b.destroy();
    for (const b of this.uploads) b.destroy();
    this.staging.destroy();
  }
}
