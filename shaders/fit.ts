/**
 * How many SAEs of one shape fit on an adapter, and how the engine lays them out: the memory plan. The Worker
 * chunks groups with it (from the limits and the memory budget a runner reports with its claim), `sae-swarm fit`
 * prints it, and the engine allocates exactly what it describes, so all three agree.
 *
 * The engine (shaders/engine.ts) keeps, per SAE, its parameters, their gradients and Adam's two moments (plus a
 * few per-latent vectors); these are spread over slabs: one buffer per tensor holds the stacked tensors of up to
 * `saesPerSlab` SAEs, so no buffer is larger than one storage binding (maxStorageBufferBindingSize, maxBufferSize).
 * A step runs slab by slab, and within a slab streams the batch through the SAEs in row chunks: the activations
 * (pre-activations H, dL/df G, residuals R) and the column partial sums exist for one slab's SAEs and one chunk of
 * rows only, and are reused by every chunk and slab. The total must fit the device-memory budget, which WebGPU does
 * not expose: the runner reports it (--gpu-memory, SAE_SWARM_GPU_MEMORY, nvidia-smi/rocm-smi) or a default applies.
 *
 * Keep these formulas in step with the buffers `SaeEngine` allocates.
 */
import type { AdapterLimits } from "./device";
import { AUX_DEN_STATS, AUX_SCALARS } from "./auxk";
import { BATCH_HIST_WORDS, BATCH_STATE_WORDS, NORM_WORKGROUPS } from "./topk";

/** The engine's parameter tensors (W_enc, b_enc, W_dec, b_dec, log θ): gradient clipping sums over all of them. */
const PARAM_COUNT = 5;

/** Rows per partial sum of the column reductions (kernels.ts RESID_COLS, LATENT_COLS), when a chunk has as many. */
export const ROWS_PER_PARTIAL = 256;

/**
 * Fewest rows a chunk may hold by default. Smaller chunks leave more memory to SAEs, but each chunk reads and
 * rewrites the weight gradients once more; a chunk of 1024 rows keeps that under a few percent of the step.
 */
export const MIN_ROWS_PER_CHUNK = 1024;

/** Default device-memory budget when the runner reports none: 2 GiB, safe on any discrete GPU. */
export const DEFAULT_MEMORY_BUDGET = 2 * 2 ** 30;

export interface SaeShape {
  d_vit: number;
  d_sae: number;
  batch_size: number;
  /** Most Matryoshka prefixes of any SAE in the group (1, the default, when all are Vanilla). */
  n_prefixes?: number;
  /** Whether the group holds a BatchTopK SAE: its whole-batch histogram select needs working buffers of its own. */
  batchtopk?: boolean;
  /** Whether the group holds a TopK/BatchTopK SAE with AuxK (aux_coeff > 0): dead counters and AuxK's working set. */
  auxk?: boolean;
  /** AuxK: entries per row of its gathered selection, min(k_aux, d_sae) at most over the group (shaders/auxk.ts's
   *  auxListCap; absent: SAE.md's default k_aux, 512). */
  k_aux?: number;
}

export type BindingLimits = Pick<AdapterLimits, "maxStorageBufferBindingSize" | "maxBufferSize">;

export interface PlanOptions {
  /** Device memory the engine may use, in bytes (default DEFAULT_MEMORY_BUDGET). */
  memoryBudget?: number;
  /** Fewest rows per chunk (default MIN_ROWS_PER_CHUNK, or the whole batch when smaller). Tests lower it. */
  minRowsPerChunk?: number;
  /** Most rows per chunk (default the whole batch). Benchmarks set it to measure chunking's cost. */
  maxRowsPerChunk?: number;
  /** Plan for this many SAEs (the engine: its group). Default: as many as fit. */
  saes?: number;
}

export interface MemoryPlan {
  /** SAEs planned for (the group, or maxSaes). */
  saes: number;
  /** The most SAEs that fit (with the chunk size that holds the most). */
  maxSaes: number;
  /** False when `saes` > maxSaes (the engine refuses such a group). */
  fits: boolean;
  rowsPerChunk: number;
  rowChunks: number;
  /** Rows per partial sum of the column reductions, and how many partials the whole batch has. */
  rowsPerPartial: number;
  partials: number;
  /** SAEs per slab (the first slabs; the last may hold fewer) and the number of slabs. */
  saesPerSlab: number;
  slabs: number;
  /** The largest buffer a slab may have: min(maxStorageBufferBindingSize, maxBufferSize). */
  bindingBytes: number;
  /** Bytes every SAE keeps: parameters, gradients, Adam moments, per-latent vectors. */
  bytesPerSae: number;
  /** Bytes per SAE of one slab for one chunk (H, G, R, partial sums); allocated for one slab only. */
  workingBytesPerSae: number;
  /** Bytes independent of the SAEs: the batch (working copy, two upload buffers, a chunk transposed) and read-back room. */
  sharedBytes: number;
  /** What the plan allocates: saes·bytesPerSae + saesPerSlab·workingBytesPerSae + sharedBytes. */
  totalBytes: number;
  memoryBudget: number;
}

const prefixes = (s: SaeShape) => Math.max(1, s.n_prefixes ?? 1);

export const rowsPerPartial = (rowsPerChunk: number) => Math.min(ROWS_PER_PARTIAL, rowsPerChunk);

/** Elements of each tensor every SAE keeps (stacked per slab, one buffer per name). */
export function persistentTensors(s: SaeShape): Record<string, number> {
  const { d_vit: d, d_sae: n } = s;
  const params = { W_enc: d * n, b_enc: n, W_dec: n * d, b_dec: d, log_threshold: n };
  const out: Record<string, number> = {};
  // parameters, their gradients and Adam's two moments
  for (const [name, size] of Object.entries(params)) for (const kind of ["", "grad.", "m.", "v."]) out[kind + name] = size;
  out.theta = n; // exp(log θ), or 0 for ReLU
  out.colStats = 2 * n + d; // step metrics: per-latent L0 count and L1 sum, per-column Σ e²
  out.evalCount = n;
  out.evalSum = 2 * n;
  out.evalResid = 2 * d;
  // shaders/topk.ts: BatchTopK's threshold state and θ (u32 words), and max_grad_norm's partial sums and (norm, scale)
  out.batchState = BATCH_STATE_WORDS;
  out.normPart = PARAM_COUNT * NORM_WORKGROUPS;
  out.clip = 2;
  // AuxK (shaders/auxk.ts): examples since each latent fired (u32, in resume checkpoints), the step's n_dead_train
  // (u32) and [den, gscale, aux, num]; per slab, so log steps read every slab's after the step
  if (s.auxk) Object.assign(out, { counters: n, nDead: 1, auxScal: AUX_SCALARS });
  return out;
}

/** Elements per SAE of the tensors that exist for one slab and one row chunk (reused by all of them). */
export function workingTensors(s: SaeShape, rowsPerChunk: number): Record<string, number> {
  const { d_vit: d, d_sae: n } = s;
  const partials = Math.ceil(s.batch_size / rowsPerPartial(rowsPerChunk));
  return {
    H: rowsPerChunk * n, // pre-activations
    G: rowsPerChunk * n, // dL/df
    R: prefixes(s) * rowsPerChunk * d, // per-prefix residuals, then their suffix sums
    latentPart: 4 * partials * n, // per partial of the whole batch: Σ dL/dh, Σ dL/dθ, #{f > 0}, Σ f
    residPart: 2 * partials * d, // per partial: Σ e², Σ R_0
    cut: 2 * rowsPerChunk, // TopK: each row's selection threshold and tie cut (shaders/topk.ts)
    // BatchTopK (shaders/topk.ts): the whole batch's 16-bit radix histogram (and its group sums), and each row's ties with the threshold
    ...(s.batchtopk ? { batchHist: BATCH_HIST_WORDS, rowTies: rowsPerChunk } : {}),
    // AuxK (shaders/auxk.ts): the dead latents' kept ReLU(h) (as large as H), its select's cut, e − ê, the whole
    // batch's partials of the denominator and numerator, Σ_b dL_aux/dh (compensated), the step's dead list, and
    // each row's gathered selection (latent, value) with its count
    ...(s.auxk
      ? {
          auxAct: rowsPerChunk * n,
          auxCut: 2 * rowsPerChunk,
          auxR: rowsPerChunk * d,
          auxDenPart: AUX_DEN_STATS * partials * d,
          auxNumPart: partials * d,
          auxBEnc: 2 * n,
          deadList: n + 1,
          auxList: 2 * rowsPerChunk * Math.min(n, s.k_aux ?? 512),
          auxCnt: rowsPerChunk,
        }
      : {}),
  };
}

/** Words per SAE the engine's metrics staging buffer holds for AuxK: auxScal and nDead. */
export const STAGED_AUX_WORDS = AUX_SCALARS + 1;

const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
const largest = (r: Record<string, number>) => Math.max(...Object.values(r));

/** Bytes every SAE keeps (plus its share of the metrics staging buffer). */
export function bytesPerSae(s: SaeShape): number {
  return 4 * (sum(persistentTensors(s)) + 2 * s.d_sae + s.d_vit + (s.auxk ? STAGED_AUX_WORDS : 0));
}

/** Bytes shared by the whole group: the batch (working copy, two upload buffers, and a row chunk of it transposed
 *  for dL/dW_enc, counted as the whole batch), eval x statistics, and room to read back one SAE's largest tensor
 *  (exports read one SAE at a time). */
export function sharedBytes(s: SaeShape): number {
  return 4 * (4 * s.batch_size * s.d_vit + 5 * s.d_vit + s.d_vit * s.d_sae);
}

/** Chunk sizes to try, largest first: the batch split into 1, 2, 3, … chunks of equal size, rounded up to whole
 *  partials (ROWS_PER_PARTIAL rows) so a partial never straddles two chunks, down to `min` rows. */
function chunkCandidates(B: number, min: number, max: number): number[] {
  const top = Math.min(B, Math.max(1, max));
  const lo = Math.max(1, Math.min(min, top));
  const out: number[] = [];
  for (let chunks = Math.ceil(B / top); ; chunks++) {
    let c = Math.ceil(B / chunks);
    if (c >= ROWS_PER_PARTIAL && chunks > 1) c = Math.min(top, Math.ceil(c / ROWS_PER_PARTIAL) * ROWS_PER_PARTIAL);
    if (c < lo) break;
    if (c !== out.at(-1) && (c === B || c % rowsPerPartial(c) === 0)) out.push(c);
    if (c === 1) break;
  }
  return out.length ? out : [lo];
}

interface Layout {
  rowsPerChunk: number;
  saesPerSlab: number; // by binding
  working: number; // bytes per slab SAE
  maxSaes: number;
}

function layout(s: SaeShape, rowsPerChunk: number, binding: number, available: number, persist: number): Layout {
  const working = 4 * sum(workingTensors(s, rowsPerChunk));
  const biggest = 4 * Math.max(largest(persistentTensors(s)), largest(workingTensors(s, rowsPerChunk)));
  const saesPerSlab = Math.floor(binding / biggest);
  let maxSaes = 0;
  if (saesPerSlab >= 1 && available > 0) {
    // K SAEs need K·persist + min(K, saesPerSlab)·working: fewer than one full slab, or full slabs' working set
    const belowOneSlab = Math.floor(available / (persist + working));
    maxSaes = belowOneSlab < saesPerSlab ? belowOneSlab : Math.floor((available - saesPerSlab * working) / persist);
  }
  return { rowsPerChunk, saesPerSlab, working, maxSaes };
}

/** The memory plan for a shape on an adapter (see MemoryPlan). */
export function planMemory(limits: BindingLimits, s: SaeShape, opts: PlanOptions = {}): MemoryPlan {
  const B = s.batch_size;
  const memoryBudget = opts.memoryBudget ?? DEFAULT_MEMORY_BUDGET;
  const bindingBytes = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const persist = bytesPerSae(s);
  const shared = sharedBytes(s);
  const xFits = 4 * B * s.d_vit <= bindingBytes; // the batch is one binding
  const available = xFits ? memoryBudget - shared : -1;
  const candidates = chunkCandidates(B, opts.minRowsPerChunk ?? MIN_ROWS_PER_CHUNK, opts.maxRowsPerChunk ?? B);
  const layouts = candidates.map((c) => layout(s, c, bindingBytes, available, persist));
  // Smaller chunks shrink the working set per SAE but allow larger slabs, which hold it for more SAEs: neither end
  // always holds the most, so every candidate is tried.
  const best = layouts.reduce((a, b) => (b.maxSaes > a.maxSaes ? b : a));
  const maxSaes = best.maxSaes;
  const saes = opts.saes ?? maxSaes;
  // the largest chunk with which the group fits (fewest passes and gradient read-modify-writes)
  const chosen = layouts.find((l) => l.maxSaes >= saes) ?? best;
  const saesPerSlab = Math.max(1, Math.min(chosen.saesPerSlab, saes));
  const rowsPerChunk = chosen.rowsPerChunk;
  return {
    saes,
    maxSaes,
    fits: saes >= 1 && saes <= maxSaes,
    rowsPerChunk,
    rowChunks: Math.ceil(B / rowsPerChunk),
    rowsPerPartial: rowsPerPartial(rowsPerChunk),
    partials: Math.ceil(B / rowsPerPartial(rowsPerChunk)),
    saesPerSlab,
    slabs: Math.max(1, Math.ceil(saes / saesPerSlab)),
    bindingBytes,
    bytesPerSae: persist,
    workingBytesPerSae: chosen.working,
    sharedBytes: shared,
    totalBytes: saes * persist + Math.min(saes, saesPerSlab) * chosen.working + shared,
    memoryBudget,
  };
}

/** How many SAEs of this shape one engine (one group chunk) can hold; 0 when not even one fits. */
export function maxSaesThatFit(limits: BindingLimits, s: SaeShape, memoryBudget = DEFAULT_MEMORY_BUDGET, opts: Omit<PlanOptions, "memoryBudget" | "saes"> = {}): number {
  return planMemory(limits, s, { ...opts, memoryBudget }).maxSaes;
}

/**
 * The plan before row chunks and slabs (kept to compare capacities in BENCHMARKS.md): the whole batch's H and G
 * per SAE, and every stacked tensor in one binding.
 */
export function maxSaesUnchunked(limits: BindingLimits, s: SaeShape, memoryBudget = DEFAULT_MEMORY_BUDGET): number {
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  if (4 * s.batch_size * s.d_vit > binding) return 0;
  const S = Math.ceil(s.batch_size / ROWS_PER_PARTIAL);
  const { d_vit: d, d_sae: n, batch_size: B } = s;
  const tensors = { ...persistentTensors(s), H: B * n, G: B * n, R: prefixes(s) * B * d, latentPart: 4 * S * n, residPart: 2 * S * d };
  const byBinding = Math.floor(binding / (4 * largest(tensors)));
  const byMemory = Math.floor((memoryBudget - 4 * (3 * B * d + 5 * d)) / (4 * sum(tensors)));
  return Math.max(0, Math.min(byBinding, byMemory));
}
