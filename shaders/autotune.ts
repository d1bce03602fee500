/**
 * The autotuner: for the shape an engine is about to be created for, times candidate MatmulChoices of each of the
 * step's five matmuls (kernels.ts MATMUL_SPECS, with their fused operands and epilogues) on the device and keeps
 * the fastest per matmul. Timing: timestamp queries around a compute pass of `reps` dispatches where the device has
 * "timestamp-query", else the wall clock ended by onSubmittedWorkDone. Bounded: a time budget per shape (the
 * default choice is always timed first, so a cut-short tuning still returns a measured choice for every matmul), a
 * small candidate set on software adapters (SwiftShader: barrier-free "direct" kernels only, and a batch of at most
 * a few hundred rows), and the tuning buffers capped in size (fewer SAEs, then fewer rows, than the engine's slab).
 *
 * The runner caches the result per adapter and shape (runner/tune-cache.ts) and reports it with the lease.
 */
import { planMemory, type MemoryPlan } from "./fit";
import { KERNEL_HEADER, MATMUL_NAMES, META_WORDS, VEC4_VIEW, matmulOptions, matmulShape, matmulSpec, type MatmulChoices, type MatmulName } from "./kernels";
import { choiceFor, choiceId, matmul, matmulGrid, parseChoiceId, validChoice, type MatmulChoice, type MatmulOptions } from "./matmul-template";
import { drawPrefixBounds } from "./schedule";

/** The shape an engine runs its matmuls at: the row chunk's rows and the slab's SAEs of its memory plan. */
export interface TuneShape {
  d: number;
  n: number;
  /** Rows per row chunk (the M or K of the matmuls). */
  B: number;
  /** SAEs per slab (the grid's z). */
  K: number;
  /** Most Matryoshka prefixes of the group (1: Vanilla). */
  P: number;
}

export interface TunedKernel {
  choice: string;
  /** The chosen kernel's rate at the tuning shape (2·M·N·KD per SAE / time). */
  gflops: number;
  /** The default choice's rate, for comparison (equal to gflops when the default won). */
  default_gflops: number;
}

export interface TuneResult {
  kernels: Record<MatmulName, TunedKernel>;
  timing: "timestamp" | "wall";
  /** Wall time the tuning took (compilation included). */
  tuned_ms: number;
  /** Candidates timed per matmul (fewer when the budget ran out). */
  candidates: number;
  /** The shape timed (≤ the engine's: fewer SAEs or rows when the buffers would be too large). */
  shape: TuneShape;
}

export interface TuneOptions {
  /** Software adapter (SwiftShader …): the small candidate set. */
  software: boolean;
  /** Stop starting new candidates this long (ms) after the defaults are timed; default 4000 on GPUs, 2000 on
   *  software adapters. */
  budgetMs?: number;
  /** Largest total size of the tuning buffers (bytes); default 512 MiB (software: 16 MiB). */
  maxBytes?: number;
  /** Candidates instead of the adapter's set (tests). */
  candidates?: MatmulChoice[];
}

const ids = (list: string[]) => list.map((id) => parseChoiceId(id)!);

/**
 * Candidates on GPUs: the default, BK and tile/outputs-per-thread variations around it (the published fast WGSL
 * GEMMs use 128×64 tiles with 8×4 outputs per thread), two of them with vec4 tile loads of B (the step's specs
 * declare vec4 views; at d_vit or d_sae not a multiple of 4 a /v4 choice compiles to its scalar twin), and the two
 * direct ones.
 */
export const GPU_CANDIDATES: MatmulChoice[] = ids([
  "64x64/4x4/k16/tiled",
  "64x64/4x4/k8/tiled",
  "64x64/4x4/k32/tiled",
  "128x64/8x4/k8/tiled",
  "128x64/8x4/k16/tiled",
  "64x128/8x4/k16/tiled",
  "64x64/8x8/k16/tiled",
  "128x128/8x8/k8/tiled",
  "128x128/8x8/k16/tiled",
  "128x64/8x4/k16/tiled/v4",
  "128x128/8x8/k16/tiled/v4",
  "64x64/4x4/k16/direct",
  "128x64/8x4/k16/direct",
]);

/** Candidates on software adapters: barrier-free kernels only (SwiftShader runs barriers as fiber switches), in
 *  the order the budget reaches them: 64×64/8×4 right after the default (with A read once per quad it was the
 *  fastest or within noise of it for all five matmuls, BENCHMARKS.md §8), the vec4 one last (in the step it
 *  measured within the noise of its scalar twin). Not 64×64/16×4 (no faster than 8×4 by quads) nor the 16-column
 *  direct choices: a plain 16 × 16 kernel reads ~2× fewer operands per FMA, but SwiftShader compiles the step's for
 *  6–9 s each, and its block-masked ones (dL/df, dL/dW_dec) for over a minute, at load 10 (2 cores); with vec4
 *  loads 8 × 16 compiled for over 8 minutes at load 8. */
export const SOFTWARE_CANDIDATES: MatmulChoice[] = ids(["64x64/4x4/k16/direct", "64x64/8x4/k16/direct", "128x64/8x4/k16/direct", "64x64/8x8/k16/direct", "64x64/8x8/k16/direct/v4"]);

/** Every choice the tuner can pick on some adapter (what test/gpu/matmul-variants.test.ts must check). */
export const TUNER_CHOICES: MatmulChoice[] = [...GPU_CANDIDATES, ...SOFTWARE_CANDIDATES].filter((c, i, all) => all.findIndex((x) => choiceId(x) === choiceId(c)) === i);

/** The choices to time on this device: the default first, then the rest its limits allow. */
export function candidatesFor(device: GPUDevice, software: boolean, custom?: MatmulChoice[]): MatmulChoice[] {
  const lim = { invocations: device.limits.maxComputeInvocationsPerWorkgroup, workgroupBytes: device.limits.maxComputeWorkgroupStorageSize };
  const first = choiceFor(software);
  const rest = (custom ?? (software ? SOFTWARE_CANDIDATES : GPU_CANDIDATES)).filter((c) => choiceId(c) !== choiceId(first));
  return [first, ...rest].filter((c) => validChoice(c, lim));
}

/** The tuning shape of an engine's memory plan (the matmuls' rows are a row chunk's, their z a slab's SAEs). */
export function tuneShapeOf(plan: MemoryPlan, s: { d_vit: number; d_sae: number; prefixes: number }): TuneShape {
  return { d: s.d_vit, n: s.d_sae, B: plan.rowsPerChunk, K: plan.saesPerSlab, P: s.prefixes };
}

/** The memory plan the engine will make for these options (the same call as SaeEngine's constructor). */
export function planFor(device: GPUDevice, s: { d_vit: number; d_sae: number; batch: number; prefixes: number; saes: number }, o: { memoryBudget?: number; maxBindingSize?: number; minRowsPerChunk?: number; maxRowsPerChunk?: number } = {}): MemoryPlan {
  const limits = { maxStorageBufferBindingSize: Math.min(device.limits.maxStorageBufferBindingSize, o.maxBindingSize ?? Infinity), maxBufferSize: device.limits.maxBufferSize };
  return planMemory(limits, { d_vit: s.d_vit, d_sae: s.d_sae, batch_size: s.batch, n_prefixes: s.prefixes }, { memoryBudget: o.memoryBudget, minRowsPerChunk: o.minRowsPerChunk, maxRowsPerChunk: o.maxRowsPerChunk, saes: s.saes });
}

/** A stable key of a tuning shape (the cache's). */
export const shapeKey = (s: TuneShape) => `d${s.d}-n${s.n}-b${s.B}-k${s.K}-p${s.P}`;

/** Floats of each tensor a step matmul binds, at shape s (the engine's layouts, kernels.ts). */
export function tensorFloats(name: string, s: TuneShape): number {
  const { d, n, B, K, P } = s;
  const sizes: Record<string, number> = {
    x: B * d, xT: d * B, b_dec: K * d, W_enc: K * d * n, b_enc: K * n, H: K * B * n, W_dec: K * n * d, theta: K * n, R: K * P * B * d, G: K * B * n,
    gW_enc: K * d * n, gW_dec: K * n * d,
  };
  if (!(name in sizes)) throw new Error(`autotune: no size for tensor ${name}; add it to tensorFloats`);
  return sizes[name];
}

/** Total bytes of the tuning buffers at shape s (every tensor of the five matmuls: they are allocated once). */
function tuneBytes(s: TuneShape): number {
  const names = new Set(MATMUL_NAMES.flatMap((m) => [...bindingsOf(kernelCode(m, choiceFor(false), s))].filter((b) => b.kind === "storage" && b.name !== "saeMeta").map((b) => b.name)));
  return 4 * [...names].reduce((a, name) => a + tensorFloats(name, s), 0);
}

/**
 * The shape actually timed: fewer SAEs, then fewer rows (halved, multiples of 4 kept, not below minRows), until the
 * buffers fit maxBytes. Past that they are allowed: one SAE's weights and gradients are needed whatever the rows, and
 * the engine (created after tuning, whose buffers are freed first) needs more than them for that SAE alone.
 */
export function shrinkShape(s: TuneShape, maxBytes: number, maxRows = Infinity, minRows = 64): TuneShape {
  let t = { ...s, B: Math.min(s.B, Math.max(4, maxRows)) };
  while (tuneBytes(t) > maxBytes && t.K > 1) t = { ...t, K: Math.ceil(t.K / 2) };
  const floor = Math.min(t.B, minRows);
  while (tuneBytes(t) > maxBytes && t.B > floor) t = { ...t, B: Math.max(floor, 4 * Math.ceil(t.B / 8)) };
  return t;
}

export function kernelCode(m: MatmulName, c: MatmulChoice, s: TuneShape, opts?: MatmulOptions): string {
  return matmul(matmulSpec(m, s.P > 1), c, KERNEL_HEADER, matmulShape(m, { d: s.d, n: s.n, B: s.B }), opts);
}

/**
 * The WGSL of every choice the tuner can pick for every step matmul, at an aligned and an odd shape: what a cached
 * tuning result was measured on. The runner's cache keys on its hash (runner/tune-cache.ts), so any change to the
 * kernel templates, the header or the candidate set makes old entries unused without anyone bumping a version.
 */
export function candidateWgsl(): string {
  const shapes: TuneShape[] = [
    { d: 64, n: 256, B: 64, K: 2, P: 2 },
    { d: 33, n: 97, B: 35, K: 3, P: 1 },
  ];
  // each as the engine builds it on a software adapter with subgroups (A read once per quad) and elsewhere
  return shapes.flatMap((s) => MATMUL_NAMES.flatMap((m) => TUNER_CHOICES.flatMap((c) => [false, true].map((quad) => kernelCode(m, c, s, { quad }))))).join("\n");
}

export function* bindingsOf(code: string): Generator<{ binding: number; kind: "uniform" | "storage"; readOnly: boolean; name: string }> {
  for (const m of code.matchAll(/@binding\((\d+)\) var<(uniform|storage, read_write|storage, read)> (\w+)/g))
    // a vec4 view (`x_v4`) binds its tensor's buffer
    yield { binding: Number(m[1]), kind: m[2] === "uniform" ? "uniform" : "storage", readOnly: m[2] === "storage, read", name: m[3].replace(VEC4_VIEW, "") };
}

/**
 * The Dims and meta a step of shape s would bind. Prefixes (P > 1) drawn as the step draws them (schedule.ts, SAE k
 * seeded k, step 0): saev's lengths crowd the first latents, so a block matmul's tile there runs several blocks, which
 * evenly spread bounds would not show, and the ranking would not be the step's. Vanilla when P = 1.
 */
export function dimsAndMeta(s: TuneShape): { dims: Uint32Array<ArrayBuffer>; meta: Uint32Array<ArrayBuffer> } {
  const dims = new Uint32Array([s.B, s.d, s.n, s.K, s.P, 1, s.B, 0, 0, 0, 0, s.K, 0, 0, 0, 0]);
  const meta = new Uint32Array(s.K * META_WORDS + s.K * (s.P + 1));
  const f = new Float32Array(meta.buffer);
  for (let k = 0; k < s.K; k++) {
    const bounds = s.P > 1 ? drawPrefixBounds(s.n, s.P, k, 0) : [0, s.n];
    // as the engine's meta: the SAE's own prefix count (fewer than P only when d_sae < P + 1) and its bounds
    meta[k * META_WORDS + 1] = bounds.length - 1;
    f[k * META_WORDS + 4] = 1; // loss scale
    bounds.forEach((b, q) => (meta[s.K * META_WORDS + k * (s.P + 1) + q] = b));
  }
  return { dims, meta };
}

interface Candidate {
  choice: MatmulChoice;
  pipeline: GPUComputePipeline;
  bind: GPUBindGroup;
  grid: [number, number, number];
  best: number;
}

/**
 * Times the candidates of every step matmul at `shape` and returns the fastest choice per matmul. The engine then
 * takes `choicesOf(result)` as its `kernels` option.
 */
export async function autotune(device: GPUDevice, shape: TuneShape, o: TuneOptions): Promise<TuneResult> {
  const t0 = performance.now();
  const budget = o.budgetMs ?? (o.software ? 2000 : 4000);
  // software: a few hundred rows rank the kernels as well as the whole chunk and keep tuning to about a second
  // GPUs: at least 1024 rows (or the chunk's), so that a matmul over the rows still fills the device
  const s = o.software
    ? shrinkShape({ ...shape, K: Math.min(shape.K, 4) }, o.maxBytes ?? 16 * 2 ** 20, 256)
    : shrinkShape(shape, o.maxBytes ?? 512 * 2 ** 20, Infinity, 1024);
  const cands = candidatesFor(device, o.software, o.candidates);
  const stamps = device.features.has("timestamp-query");
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const { dims, meta } = dimsAndMeta(s);
  const created: GPUBuffer[] = [];
  const make = (size: number, u: number) => {
    const b = device.createBuffer({ size: Math.max(16, 4 * Math.ceil(size / 4)), usage: u });
    created.push(b);
    return b;
  };
  const dimsBuf = make(dims.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  const metaBuf = make(meta.byteLength, usage);
  device.queue.writeBuffer(dimsBuf, 0, dims);
  device.queue.writeBuffer(metaBuf, 0, meta);
  // zeros: a matmul's speed does not depend on the values (no denormals, no NaN)
  const tensors = new Map<string, GPUBuffer>();
  const tensor = (name: string) => tensors.get(name) ?? (tensors.set(name, make(4 * tensorFloats(name, s), usage)), tensors.get(name)!);
  const querySet = stamps ? device.createQuerySet({ type: "timestamp", count: 2 }) : null;
  const resolve = stamps ? make(16, GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC) : null;
  const readback = stamps ? device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }) : null;

  /** Seconds per dispatch of `reps` back-to-back dispatches of c. */
  const time = async (c: Candidate, reps: number): Promise<number> => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass(querySet ? { timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } } : undefined);
    pass.setPipeline(c.pipeline);
    pass.setBindGroup(0, c.bind);
    for (let i = 0; i < reps; i++) pass.dispatchWorkgroups(...c.grid);
    pass.end();
    if (querySet) {
      enc.resolveQuerySet(querySet, 0, 2, resolve!, 0);
      enc.copyBufferToBuffer(resolve!, 0, readback!, 0, 16);
    }
    const w0 = performance.now();
    device.queue.submit([enc.finish()]);
    if (!querySet) {
      await device.queue.onSubmittedWorkDone();
      return (performance.now() - w0) / 1000 / reps;
    }
    await readback!.mapAsync(GPUMapMode.READ);
    const [a, b] = new BigUint64Array(readback!.getMappedRange().slice(0));
    readback!.unmap();
    const ns = Number(b - a);
    // a timestamp of 0 or a non-increasing pair (some drivers): fall back to this submit's wall time
    return (ns > 0 ? ns / 1e9 : (performance.now() - w0) / 1000) / reps;
  };

  const result = {} as Record<MatmulName, TunedKernel>;
  // the budget counts from when the defaults are built and timed: their pipelines are the engine's own (Dawn and
  // Chrome reuse an identical pipeline), so compiling them is no cost of tuning
  let since = t0;
  // >=: a budget of 0 is spent at once even where performance.now() is coarse (Chrome rounds it), so two reads match
  const over = () => performance.now() - since >= budget;
  /** Compiles choice for matmul m (null when this adapter cannot build it: then it is no candidate). */
  const build = async (m: MatmulName, choice: MatmulChoice): Promise<Candidate | null> => {
    const { M, N } = matmulShape(m, { d: s.d, n: s.n, B: s.B });
    const code = kernelCode(m, choice, s, matmulOptions(device, o.software));
    const entries: GPUBindGroupLayoutEntry[] = [];
    const resources: GPUBindGroupEntry[] = [];
    for (const b of bindingsOf(code)) {
      entries.push({ binding: b.binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: b.kind === "uniform" ? "uniform" : b.readOnly ? "read-only-storage" : "storage" } });
      const buffer = b.kind === "uniform" ? dimsBuf : b.name === "saeMeta" ? metaBuf : tensor(b.name);
      resources.push({ binding: b.binding, resource: { buffer } });
    }
    const layout = device.createBindGroupLayout({ entries });
    const pipeline = await device
      .createComputePipelineAsync({
        label: `tune ${m} ${choiceId(choice)}`,
        layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
      })
      .catch(() => null);
    if (!pipeline) return null;
    device.pushErrorScope("validation");
    const bind = device.createBindGroup({ layout, entries: resources });
    if (await device.popErrorScope()) return null;
    return { choice, pipeline, bind, grid: matmulGrid(choice, M, N, s.K), best: Infinity };
  };
  // GPUs: every compile starts now (the driver may compile in parallel); software adapters compile one at a time
  // as the budget allows (compiling is most of their tuning time; the default's pipeline is the engine's own, which
  // Dawn and Chrome reuse, so it costs nothing extra).
  const pending = new Map<string, Promise<Candidate | null>>();
  const get = (m: MatmulName, c: MatmulChoice) => {
    const k = `${m} ${choiceId(c)}`;
    if (!pending.has(k)) pending.set(k, build(m, c));
    return pending.get(k)!;
  };
  if (!o.software) for (const c of cands) for (const m of MATMUL_NAMES) void get(m, c);
  const live = new Map<MatmulName, Candidate[]>(MATMUL_NAMES.map((m) => [m, []]));
  let timed = 0;
  try {
    // candidate by candidate across the five matmuls (the default first), so a budget that runs out leaves every
    // matmul the same candidates; the first dispatch warms up (first touches, lazy compilation) and sizes the runs
    outer: for (const [i, c] of cands.entries()) {
      if (i === 1) since = performance.now();
      for (const m of MATMUL_NAMES) {
        if (i > 0 && over()) break outer;
        const cand = await get(m, c);
        if (!cand) continue;
        cand.best = await time(cand, 1);
        // software: one more dispatch for the first candidate only (its first one also cleared the fresh buffers)
        if (o.software && i === 0) cand.best = Math.min(cand.best, await time(cand, 1));
        live.get(m)!.push(cand);
        timed = Math.max(timed, i + 1);
      }
    }
    // GPUs: two more rounds of ~5 ms of work per candidate, interleaved (load drift hits every candidate alike)
    if (!o.software)
      for (let round = 0; round < 2; round++)
        for (const m of MATMUL_NAMES)
          for (const c of live.get(m)!) {
            if (over() && round > 0) break;
            const reps = Math.max(1, Math.min(50, Math.round(0.005 / c.best)));
            c.best = Math.min(c.best, await time(c, reps));
          }
    // software: one more dispatch per candidate, interleaved: one each ranked the candidates differently from run to
    // run (at load 0.5 the 4x4 default won dL/dW_enc 2 times in 5 over 64x64/8x4, 1.3x faster in the step)
    if (o.software) for (const m of MATMUL_NAMES) for (const c of live.get(m)!) c.best = Math.min(c.best, await time(c, 1));
    for (const m of MATMUL_NAMES) {
      const list = live.get(m)!;
      if (list.length === 0) throw new Error(`autotune: no candidate of ${m} could be built on this device`);
      const { M, N, KD } = matmulShape(m, { d: s.d, n: s.n, B: s.B });
      const flops = 2 * M * N * KD * s.K;
      const win = list.reduce((a, b) => (b.best < a.best ? b : a));
      const def = list.find((c) => choiceId(c.choice) === choiceId(cands[0])) ?? win;
      result[m] = { choice: choiceId(win.choice), gflops: flops / win.best / 1e9, default_gflops: flops / def.best / 1e9 };
    }
  } finally {
    // compiles still in flight (GPUs, past the budget) finish on their own; only buffers are ours to free
    for (const b of created) b.destroy();
    readback?.destroy();
    querySet?.destroy();
  }
  return { kernels: result, timing: stamps ? "timestamp" : "wall", tuned_ms: Math.round(performance.now() - t0), candidates: timed, shape: s };
}

/** The engine's `kernels` option from a tuning result (an unknown choice id, e.g. from an old cache, is left out). */
export function choicesOf(r: Pick<TuneResult, "kernels">): MatmulChoices {
  const out: MatmulChoices = {};
  for (const m of MATMUL_NAMES) {
    const c = r.kernels[m] && parseChoiceId(r.kernels[m].choice);
    if (c) out[m] = c;
  }
  return out;
}

/** What a runner reports with a lease (and shows in its log): the kernels its engine runs for the group's shape. */
export interface KernelReport extends TuneResult {
  /** The cache key of the engine's shape (shapeKey of the unshrunk TuneShape). */
  key: string;
  /** tuned: timed for this lease; cache: a previous tuning of this adapter and shape. */
  source: "tuned" | "cache";
}

/** Where tuned kernels are kept between groups (the runner: its disk cache, runner/tune-cache.ts). */
export interface KernelCache {
  get(key: string): TuneResult | undefined;
  put(key: string, r: TuneResult): void;
  /** The tuning budget (ms) instead of the adapter's default (the runner: SAE_SWARM_TUNE_BUDGET_MS). */
  budgetMs?: number;
}

/**
 * The report of a cached choice: the result's own fields only, since an entry read from the cache file carries more
 * (saveTuned's `at`), and the Worker refuses a heartbeat whose kernels hold a key it does not know.
 */
export function cachedReport(hit: TuneResult, key: string): KernelReport {
  const { kernels, timing, tuned_ms, candidates, shape } = hit;
  return { kernels, timing, tuned_ms, candidates, shape, key, source: "cache" };
}

/**
 * The kernels for an engine of these configs on this device: from the cache, else tuned now (and cached).
 * `engine`: the engine's plan options (memory budget …), so the tuning shape is the engine's.
 */
export async function kernelsFor(
  device: GPUDevice,
  s: { d_vit: number; d_sae: number; batch: number; prefixes: number; saes: number },
  cache: KernelCache,
  o: { software: boolean; engine?: Parameters<typeof planFor>[2]; tune?: Partial<TuneOptions> },
): Promise<KernelReport> {
  const plan = planFor(device, s, o.engine);
  const key = shapeKey(tuneShapeOf(plan, { d_vit: s.d_vit, d_sae: s.d_sae, prefixes: s.prefixes }));
  const hit = cache.get(key);
  if (hit && Object.keys(choicesOf(hit)).length === MATMUL_NAMES.length) return cachedReport(hit, key);
  const r = await autotune(device, tuneShapeOf(plan, { d_vit: s.d_vit, d_sae: s.d_sae, prefixes: s.prefixes }), { software: o.software, ...(cache.budgetMs !== undefined ? { budgetMs: cache.budgetMs } : {}), ...o.tune });
  cache.put(key, r);
  return { ...r, key, source: "tuned" };
}

/** One line per matmul for logs: "ENCODE 128x64/8x4/k16/tiled 812.4 GFLOP/s (default 640.1)". */
export function describeKernels(r: Pick<TuneResult, "kernels">): string[] {
  return MATMUL_NAMES.map((m) => {
    const k = r.kernels[m];
    return `${m} ${k.choice} ${k.gflops.toFixed(2)} GFLOP/s${k.gflops !== k.default_gflops ? ` (default ${k.default_gflops.toFixed(2)})` : ""}`;
  });
}
