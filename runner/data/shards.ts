/**
 * saev's activation shards over HTTP(S) with Range requests (../shared/SAE.md "Data"; saev's
 * src/saev/data/protocol.md): `metadata.json` + `acts000000.bin`, ... each a little-endian float32 C-order array
 * [n_imgs_per_shard, n_layers, n_tokens_per_img, d_vit], n_tokens_per_img = n_patches_per_img + (cls_token ? 1 : 0),
 * token 0 the CLS token when there is one. Runs in the page and in Node (fetch only).
 *
 * Order: a seeded shuffle in two levels, so that reads stay large: images are taken in a seeded permutation per
 * epoch into a pool of at least `poolExamples` examples, and every batch is a seeded uniform draw from the pool.
 * The order is computed on indices alone, so skip(n) (resume) costs no reads and every runner draws the same
 * batches. Reads fetch, per batch, the images it needs and has not fetched yet, one Range request per image
 * slice (the chosen layer's tokens), adjacent slices merged.
 */
import type { ShardData } from "../../shaders/config";
import type { Normalization } from "../safetensors";
import type { DataOrigin } from "../../worker/protocol";
import { mixSeed, mulberry32, permutation } from "./random";
import { Prefetcher, type BatchSource } from "./source";
import { isRefusal } from "./fetch-error";

export const CLAMP = 1e5;

/** metadata.json (the fields we use; saev writes more). */
export interface ShardMetadata {
  d_vit: number;
  layers: number[];
  n_patches_per_img: number;
  cls_token: boolean;
  n_imgs: number;
  /** saev's shard budget: n_imgs_per_shard = floor(max / (n_tokens_per_img · n_layers)). Older saev: n_patches_per_shard. */
  max_patches_per_shard?: number;
  n_patches_per_shard?: number;
  [key: string]: unknown;
}

export type FetchFn = (input: string, init?: RequestInit) => Promise<Response>;

function field(meta: Record<string, unknown>, name: string, check: (v: unknown) => boolean, what: string): void {
  if (!check(meta[name])) throw new Error(`shards metadata.json: '${name}' must be ${what} (got ${JSON.stringify(meta[name])})`);
}

const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;

/** Checks metadata.json and returns it typed; errors name the field. */
export function parseMetadata(raw: unknown): ShardMetadata {
  if (typeof raw !== "object" || raw === null) throw new Error("shards metadata.json: not a JSON object");
  const m = raw as Record<string, unknown>;
  field(m, "d_vit", posInt, "a positive integer");
  field(m, "layers", (v) => Array.isArray(v) && v.length > 0 && v.every(Number.isInteger), "a non-empty list of integers");
  field(m, "n_patches_per_img", posInt, "a positive integer");
  field(m, "cls_token", (v) => typeof v === "boolean", "true or false");
  field(m, "n_imgs", posInt, "a positive integer");
  if (m.max_patches_per_shard === undefined) field(m, "n_patches_per_shard", posInt, "a positive integer (or give max_patches_per_shard)");
  else field(m, "max_patches_per_shard", posInt, "a positive integer");
  if (m.dtype !== undefined && m.dtype !== "float32") throw new Error(`shards metadata.json: 'dtype' must be "float32" (got ${JSON.stringify(m.dtype)})`);
  return m as ShardMetadata;
}

/** Where every activation vector lives. */
export class ShardLayout {
  readonly nLayers: number;
  readonly nTokens: number;
  readonly imgsPerShard: number;
  readonly nShards: number;
  constructor(readonly meta: ShardMetadata) {
    this.nLayers = meta.layers.length;
    this.nTokens = meta.n_patches_per_img + (meta.cls_token ? 1 : 0);
    const budget = meta.max_patches_per_shard ?? meta.n_patches_per_shard!;
    this.imgsPerShard = Math.floor(budget / (this.nTokens * this.nLayers));
    if (this.imgsPerShard < 1) throw new Error(`shards metadata.json: the shard budget ${budget} holds no image of ${this.nTokens * this.nLayers} vectors`);
    this.nShards = Math.ceil(meta.n_imgs / this.imgsPerShard);
  }

  static shardName(i: number): string {
    return `acts${String(i).padStart(6, "0")}.bin`;
  }

  /** Bytes of shard i (the last one may hold fewer images). */
  shardBytes(i: number): number {
    const imgs = Math.min(this.imgsPerShard, this.meta.n_imgs - i * this.imgsPerShard);
    return imgs * this.nLayers * this.nTokens * this.meta.d_vit * 4;
  }

  /** The shard and byte offset of vector [img, layerIdx, token]. */
  locate(img: number, layerIdx: number, token: number): { shard: number; offset: number } {
    const shard = Math.floor(img / this.imgsPerShard);
    const inShard = img % this.imgsPerShard;
    const vectors = (inShard * this.nLayers + layerIdx) * this.nTokens + token;
    return { shard, offset: vectors * this.meta.d_vit * 4 };
  }
}

/** Resolves data.layer (an index into metadata.layers, negative from the end). */
export function layerIndex(meta: ShardMetadata, layer: number): number {
  const n = meta.layers.length;
  const i = layer < 0 ? n + layer : layer;
  if (!Number.isInteger(layer) || i < 0 || i >= n) throw new Error(`data.layer ${layer} is out of range for ${n} stored layers [${meta.layers}]`);
  return i;
}

/**
 * The seeded example order (indices only). Example e of image img is patch e (patches mode) or the image itself
 * (cls, meanpool: one example per image).
 */
export class ExampleOrder {
  private pool: number[] = [];
  /** Examples of each image still in the pool (an image can be in it from two epochs at once). */
  private readonly left = new Map<number, number>();
  private epoch = -1;
  private perm: Uint32Array = new Uint32Array(0);
  private cursor = 0;
  private readonly draw: () => number;
  constructor(
    readonly nImgs: number,
    readonly perImg: number,
    readonly seed: number,
    readonly poolExamples: number,
  ) {
    this.draw = mulberry32(mixSeed(seed, 0x5eed));
  }

  private nextImg(): number {
    if (this.cursor >= this.perm.length) {
      this.epoch++;
      this.perm = permutation(this.nImgs, mulberry32(mixSeed(this.seed, this.epoch)));
      this.cursor = 0;
    }
    return this.perm[this.cursor++];
  }

  /** The next batch as example ids (img · perImg + e); the pool is refilled with whole images first. */
  nextBatch(size: number): number[] {
    const target = Math.max(size, this.poolExamples);
    while (this.pool.length < target) {
      const img = this.nextImg();
      for (let e = 0; e < this.perImg; e++) this.pool.push(img * this.perImg + e);
      this.left.set(img, (this.left.get(img) ?? 0) + this.perImg);
    }
    // Partial Fisher–Yates: a uniform draw of `size` from the pool, moved to the front, then cut off.
    const pool = this.pool;
    for (let i = 0; i < size; i++) {
      const j = i + Math.floor(this.draw() * (pool.length - i));
      const t = pool[i];
      pool[i] = pool[j];
      pool[j] = t;
    }
    const out = pool.slice(0, size);
    this.pool = pool.slice(size);
    for (const ex of out) {
      const img = Math.floor(ex / this.perImg);
      const n = this.left.get(img)! - 1;
      if (n === 0) this.left.delete(img);
      else this.left.set(img, n);
    }
    return out;
  }

  /** Whether examples of this image are still waiting in the pool (then its data is worth keeping). */
  has(img: number): boolean {
    return this.left.has(img);
  }
}

export interface ShardSourceOptions {
  batchSize: number;
  fetch?: FetchFn;
  /** Examples the shuffle pool holds before a batch is drawn (default max(4·batch, 4096)). */
  poolExamples?: number;
  /** Merge two slices of one shard into one request when at most this many bytes lie between them (default 0). */
  mergeGapBytes?: number;
  /** Range requests in flight at once (default 8). */
  concurrency?: number;
  /** Skip computing μ and s (e.g. when resuming, they come from the checkpoint). */
  normalization?: Normalization;
  /** Retries of one failed Range request before the batch fails (default 4). */
  retries?: number;
}


/** Counts what went over the wire, for tests and benchmarks. */
export interface FetchStats {
  requests: number;
  bytes: number;
}

export class ShardSource implements BatchSource {
  readonly d_vit: number;
  readonly nExamples: number;
  readonly layout: ShardLayout;
  readonly stats: FetchStats = { requests: 0, bytes: 0 };
  normalization: Normalization = { mean: new Float32Array(0), scale: 1 };
  readonly origin: DataOrigin;
  private readonly base: string;
  private readonly fetchFn: FetchFn;
  private readonly layerIdx: number;
  private readonly perImg: number;
  private readonly firstToken: number;
  private readonly tokensPerSlice: number;
  private order: ExampleOrder;
  /** Image slices fetched for the training order, kept while the pool still holds examples of them. */
  private readonly cache = new Map<number, Promise<Float32Array>>();
  private readonly prefetch: Prefetcher;
  private active = 0;
  private waiters: Array<() => void> = [];
  private closed = false;
  private started = false;

  private constructor(
    readonly cfg: ShardData,
    meta: ShardMetadata,
    private readonly opts: Required<Omit<ShardSourceOptions, "normalization" | "fetch">> & { fetch: FetchFn },
  ) {
    this.base = cfg.url.endsWith("/") ? cfg.url : cfg.url + "/";
    this.fetchFn = opts.fetch;
    this.layout = new ShardLayout(meta);
    this.d_vit = meta.d_vit;
    this.layerIdx = layerIndex(meta, cfg.layer);
    const text = (v: unknown) => (typeof v === "string" && v !== "" ? v : null);
    this.origin = { layer: meta.layers[this.layerIdx], vit_ckpt: text(meta.vit_ckpt), vit_family: text(meta.vit_family) };
    const P = meta.n_patches_per_img;
    if (cfg.patches === "cls") {
      if (!meta.cls_token) throw new Error("data.patches = 'cls' but these shards have no CLS token (cls_token = false)");
      this.perImg = 1;
      this.firstToken = 0;
      this.tokensPerSlice = 1;
    } else {
      this.perImg = cfg.patches === "patches" ? P : 1;
      this.firstToken = meta.cls_token ? 1 : 0;
      this.tokensPerSlice = P;
    }
    this.nExamples = meta.n_imgs * this.perImg;
    this.order = new ExampleOrder(meta.n_imgs, this.perImg, cfg.seed, opts.poolExamples);
    this.prefetch = new Prefetcher(() => this.load(this.order.nextBatch(this.opts.batchSize), this.normalization, this.order));
  }

  /** Reads metadata.json and (unless given) computes μ and s from `n_random_samples` examples. */
  static async open(cfg: ShardData, options: ShardSourceOptions): Promise<ShardSource> {
    const fetchFn = options.fetch ?? ((u, i) => fetch(u, i));
    const base = cfg.url.endsWith("/") ? cfg.url : cfg.url + "/";
    const res = await fetchFn(base + "metadata.json");
    if (!res.ok) throw new Error(`shards: GET ${base}metadata.json: HTTP ${res.status}${await reasonOf(res)}`);
    const meta = parseMetadata(await res.json());
    const src = new ShardSource(cfg, meta, {
      batchSize: options.batchSize,
      fetch: fetchFn,
      poolExamples: options.poolExamples ?? Math.max(4 * options.batchSize, 4096),
      mergeGapBytes: options.mergeGapBytes ?? 0,
      concurrency: options.concurrency ?? 8,
      retries: options.retries ?? 4,
    });
    src.normalization = options.normalization ?? (await src.computeNormalization());
    return src;
  }

  next(): Promise<Float32Array> {
    if (this.closed) return Promise.reject(new Error("shards: source is closed"));
    this.started = true;
    return this.prefetch.next();
  }

  skip(nBatches: number): void {
    if (this.started) throw new Error("shards: skip() must come before the first next()");
    // Indices only: images half-consumed before the resume point are fetched when a later batch needs them.
    for (let i = 0; i < nBatches; i++) this.order.nextBatch(this.opts.batchSize);
  }

  close(): void {
    this.closed = true;
    this.cache.clear();
  }

  /** μ = mean of clamp(x) over min(n_random_samples, N) seeded random examples; s = mean ‖x − μ‖₂ / √d. Two passes. */
  private async computeNormalization(): Promise<Normalization> {
    const d = this.d_vit;
    const n = Math.min(this.cfg.n_random_samples, this.nExamples);
    const mean = new Float32Array(d);
    if (!this.cfg.scale_mean && !this.cfg.scale_norm) return { mean, scale: 1 };
    const identity: Normalization = { mean: new Float32Array(d), scale: 1 };
    const chunk = Math.min(n, 4096);
    // Fewer samples than examples: a seeded random draw; otherwise every example once, in order.
    const pass = async (visit: (x: Float32Array, rows: number) => void) => {
      const order = new ExampleOrder(this.layout.meta.n_imgs, this.perImg, mixSeed(this.cfg.seed, 0x6e6f726d), this.opts.poolExamples);
      for (let done = 0; done < n; done += chunk) {
        const rows = Math.min(chunk, n - done);
        const ids = n < this.nExamples ? order.nextBatch(rows) : Array.from({ length: rows }, (_, i) => done + i);
        visit(await this.load(ids, identity, null), rows);
      }
    };
    const sum = new Float64Array(d);
    if (this.cfg.scale_mean) {
      await pass((x, rows) => {
        for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) sum[j] += x[r * d + j];
      });
      for (let j = 0; j < d; j++) mean[j] = sum[j] / n;
    }
    let scale = 1;
    if (this.cfg.scale_norm) {
      let norms = 0;
      await pass((x, rows) => {
        for (let r = 0; r < rows; r++) {
          let s = 0;
          for (let j = 0; j < d; j++) {
            const v = x[r * d + j] - mean[j];
            s += v * v;
          }
          norms += Math.sqrt(s);
        }
      });
      // Rounded to float32 here, as the checkpoint stores it: a resumed run must normalize with the same number.
      scale = Math.fround(norms / n / Math.sqrt(d));
      if (!(scale > 0)) throw new Error("shards: the sampled examples have zero spread; cannot normalize (set data.scale_norm = false)");
    }
    return { mean, scale };
  }

  /**
   * Fetches what the examples need and assembles the normalized batch [examples.length, d_vit]. With the training
   * `order`, fetched slices are cached while the pool still holds examples of their image; without, nothing is kept.
   */
  private async load(examples: number[], norm: Normalization, order: ExampleOrder | null): Promise<Float32Array> {
    // Synchronous part first (see Prefetcher): the cache is read and the reads are started before any await.
    const cache = order ? this.cache : new Map<number, Promise<Float32Array>>();
    const imgs = [...new Set(examples.map((ex) => Math.floor(ex / this.perImg)))];
    for (const [img, data] of this.fetchImages(imgs.filter((img) => !cache.has(img)))) cache.set(img, data);
    const slices = examples.map((ex) => cache.get(Math.floor(ex / this.perImg))!);
    if (order) for (const img of imgs) if (!order.has(img)) cache.delete(img);
    const d = this.d_vit;
    const out = new Float32Array(examples.length * d);
    const { mean, scale } = norm;
    const hasMean = mean.length === d;
    for (let i = 0; i < examples.length; i++) {
      const slice = await slices[i];
      const e = examples[i] % this.perImg;
      const src = this.cfg.patches === "patches" ? slice.subarray(e * d, (e + 1) * d) : slice;
      for (let j = 0; j < d; j++) {
        const x = Math.min(CLAMP, Math.max(-CLAMP, src[j]));
        out[i * d + j] = (x - (hasMean ? mean[j] : 0)) / scale;
      }
    }
    return out;
  }

  /** One slice per image (the chosen layer's tokens; meanpool reduced to one vector), adjacent slices merged. */
  private fetchImages(imgs: number[]): Map<number, Promise<Float32Array>> {
    const out = new Map<number, Promise<Float32Array>>();
    if (imgs.length === 0) return out;
    const sliceBytes = this.tokensPerSlice * this.d_vit * 4;
    const located = imgs
      .map((img) => ({ img, ...this.layout.locate(img, this.layerIdx, this.firstToken) }))
      .sort((a, b) => a.shard - b.shard || a.offset - b.offset);
    let group: typeof located = [];
    const flush = () => {
      if (group.length === 0) return;
      const g = group;
      group = [];
      const begin = g[0].offset;
      const end = g[g.length - 1].offset + sliceBytes;
      const bytes = this.fetchRange(g[0].shard, begin, end);
      for (const { img, offset } of g) {
        out.set(img, bytes.then((buf) => this.reduce(new Float32Array(buf, offset - begin, sliceBytes / 4))));
      }
    };
    for (const x of located) {
      const last = group[group.length - 1];
      if (last && (last.shard !== x.shard || x.offset - (last.offset + sliceBytes) > this.opts.mergeGapBytes)) flush();
      group.push(x);
    }
    flush();
    for (const p of out.values()) p.catch(() => {}); // reported by the batch that awaits it
    return out;
  }

  private reduce(tokens: Float32Array): Float32Array {
    if (this.cfg.patches !== "meanpool") return tokens;
    const d = this.d_vit;
    const P = tokens.length / d;
    const acc = new Float64Array(d);
    for (let t = 0; t < P; t++) for (let j = 0; j < d; j++) acc[j] += Math.min(CLAMP, Math.max(-CLAMP, tokens[t * d + j]));
    return Float32Array.from(acc, (v) => v / P);
  }

  private async slot(): Promise<void> {
    while (this.active >= this.opts.concurrency) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
  }

  private release(): void {
    this.active--;
    this.waiters.shift()?.();
  }

  /** GET bytes [begin, end) of a shard with a Range request; retries transient failures with backoff. */
  private async fetchRange(shard: number, begin: number, end: number): Promise<ArrayBuffer> {
    const url = this.base + ShardLayout.shardName(shard);
    const want = end - begin;
    let lastError: Error | undefined;
    for (let attempt = 0; attempt <= this.opts.retries; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2)));
      await this.slot();
      try {
        const res = await this.fetchFn(url, { headers: { range: `bytes=${begin}-${end - 1}` } });
        if (res.status === 206) {
          const buf = await res.arrayBuffer();
          this.stats.requests++;
          this.stats.bytes += buf.byteLength;
          if (buf.byteLength !== want) throw new Error(`shards: ${url} bytes ${begin}-${end - 1}: got ${buf.byteLength} bytes, expected ${want}`);
          return buf;
        }
        const why = res.status >= 400 ? await reasonOf(res) : "";
        await res.body?.cancel().catch(() => {});
        if (res.status === 200) throw new FatalError(`shards: ${url} ignored the Range header (HTTP 200); serve the shards from a server that honours Range requests`);
        if (res.status === 416) throw new FatalError(`shards: ${url} is shorter than metadata.json says (no bytes ${begin}-${end - 1})`);
        if (res.status < 500 && res.status !== 429) throw new FatalError(`shards: GET ${url}: HTTP ${res.status}${why}`);
        lastError = new Error(`shards: GET ${url}: HTTP ${res.status}${why}`);
      } catch (e) {
        if (e instanceof FatalError || isRefusal(e)) throw e;
        lastError = e as Error;
      } finally {
        this.release();
      }
    }
    throw lastError!;
  }

  /** Examples in on-disk order (image-major), normalized; for evaluation. */
  async *ordered(batchSize: number, nExamples = 0): AsyncGenerator<Float32Array> {
    const total = nExamples > 0 ? Math.min(nExamples, this.nExamples) : this.nExamples;
    for (let start = 0; start < total; start += batchSize) {
      const rows = Math.min(batchSize, total - start);
      const ids = Array.from({ length: rows }, (_, i) => start + i);
      yield await this.load(ids, this.normalization, null);
    }
  }

}

class FatalError extends Error {}

/** ": <message>" from an error answer's JSON `{error: {message}}` (the runner's /data proxy says why it refused), or "". */
async function reasonOf(res: Response): Promise<string> {
  if (!/json/.test(res.headers.get("content-type") ?? "")) return "";
  try {
    const m = ((await res.json()) as { error?: { message?: unknown } }).error?.message;
    return typeof m === "string" ? `: ${m.slice(0, 500)}` : "";
  } catch {
    return "";
  }
}
