/**
 * A run's final checkpoint as a SAELens v6 directory (cfg.json, sae_weights.safetensors, sparsity.safetensors), with
 * the data normalization folded into the weights so the SAE takes raw activations.
 *
 * The fold. The SAE was trained on x′ = (x − μ)/s (../shared/SAE.md, "Data"), with h = (x′ − b_dec)W_enc + b_enc,
 * f = act(h), x̂′ = f W_dec + b_dec. Then h = ((x − μ)/s − b_dec)W_enc + b_enc = (x − (s·b_dec + μ))(W_enc/s) + b_enc,
 * and the raw reconstruction s·x̂′ + μ = f(s·W_dec) + (s·b_dec + μ). So with
 *   W_enc ← W_enc / s,   b_dec ← s·b_dec + μ,   W_dec ← s·W_dec   (b_enc and the threshold θ unchanged)
 * SAELens's forward with apply_b_dec_to_input on raw x gives the same h (hence the same f and L0) and x̂ = s·x̂′ + μ,
 * so its MSE on raw data is s² times the MSE on normalized data. Exact up to float32 rounding (and the ±1e5 clamp).
 * W_dec's rows then have norm s, not 1.
 *
 * Sizes: a ViT-L SAE's weights are hundreds of MiB and an isolate has 128 MB, so sae_weights.safetensors is
 * streamed: the new header is computed from the shapes, then each tensor is read from R2 with one ranged GET and
 * scaled chunk by chunk (s is a scalar, so the fold of W_enc and W_dec is per element); only b_dec, μ and s are
 * held whole.
 */
import type { TrainConfig } from "../shaders/config";
import { ApiError } from "./errors";
import type { DataOrigin, SaeLensCfg } from "./protocol";

/** The config layout written: SAELens's v6 (metadata in `metadata`); older versions are read as pre-6 configs. */
export const SAE_LENS_VERSION = "6.0.0";
export const SAE_LENS_FILES = ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"] as const;

const MAX_HEADER_BYTES = 16 << 20; // ours are a few KiB (the TrainConfig in the metadata)

const badCheckpoint = (key: string, why: string) => new ApiError(500, "bad_checkpoint", `stored checkpoint ${key}: ${why}`);

/** How a run's SAE maps to SAELens: the architecture, whether it has a threshold, and TopK's k. */
export interface ExportKind {
  architecture: SaeLensCfg["architecture"];
  threshold: boolean;
  k?: number;
}

/**
 * ReLU → "standard"; JumpReLU → "jumprelu" with θ; TopK → "topk" with k; BatchTopK → "jumprelu" with its θ (how
 * SAELens saves BatchTopK for inference). Read loosely from the config, so kinds added later map here or refuse.
 */
export function exportKind(cfg: TrainConfig): ExportKind {
  const sae = cfg.sae as { kind?: unknown; k?: unknown };
  switch (sae.kind) {
    case "relu":
      return { architecture: "standard", threshold: false };
    case "jumprelu":
    case "batchtopk":
      return { architecture: "jumprelu", threshold: true };
    case "topk":
      if (!(Number.isInteger(sae.k) && (sae.k as number) > 0)) throw new ApiError(500, "bad_config", `a TopK run needs a positive integer sae.k, got ${JSON.stringify(sae.k)}`, "sae.k");
      return { architecture: "topk", threshold: false, k: sae.k as number };
    default:
      throw new ApiError(501, "not_exportable", `sae.kind ${JSON.stringify(sae.kind)} has no SAELens export`, "sae.kind");
  }
}

interface StoredTensor {
  dtype: string;
  shape: number[];
  /** Byte offset in the R2 object (header included) and length. */
  offset: number;
  bytes: number;
}

/** A stored checkpoint's safetensors header, read with two ranged GETs; tensor data stays in R2. */
export interface StoredCheckpoint {
  key: string;
  tensors: Record<string, StoredTensor>;
  metadata: Record<string, string>;
}

async function getRange(bucket: R2Bucket, key: string, offset: number, length: number): Promise<R2ObjectBody> {
  const obj = await bucket.get(key, { range: { offset, length } });
  if (!obj) throw new ApiError(500, "missing_object", `checkpoint ${key} is in D1 but not in R2`);
  return obj;
}

/** Reads and checks the header: shapes and offsets inside the object (dtypes are checked where a tensor is used). */
export async function readCheckpointHeader(bucket: R2Bucket, key: string): Promise<StoredCheckpoint> {
  const first = await getRange(bucket, key, 0, 8);
  const size = first.size;
  const lenBuf = await first.arrayBuffer();
  if (lenBuf.byteLength < 8) throw badCheckpoint(key, `only ${size} bytes`);
  const n = new DataView(lenBuf).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES) || 8n + n > BigInt(size)) throw badCheckpoint(key, `header length ${n} is invalid for ${size} bytes`);
  const headerLen = Number(n);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(await (await getRange(bucket, key, 8, headerLen)).text()) as Record<string, unknown>;
  } catch (e) {
    throw badCheckpoint(key, `header is not JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw badCheckpoint(key, "header is not a JSON object");
  const tensors: Record<string, StoredTensor> = {};
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (typeof raw === "object" && raw !== null) metadata = raw as Record<string, string>;
      continue;
    }
    const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const shape = t.shape as number[];
    const offs = t.data_offsets as number[];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw badCheckpoint(key, `tensor ${name} has an invalid shape`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(Number.isInteger) || offs[0] < 0 || offs[1] < offs[0]) throw badCheckpoint(key, `tensor ${name} has invalid data_offsets`);
    const offset = 8 + headerLen + offs[0];
    if (offset + offs[1] - offs[0] > size) throw badCheckpoint(key, `tensor ${name} runs past the end of the object`);
    tensors[name] = { dtype: String(t.dtype), shape, offset, bytes: offs[1] - offs[0] };
  }
  return { key, tensors, metadata };
}

/** The F32 tensor `name` with one of the `shapes`, else a 500 naming what the checkpoint holds. */
function tensorOf(ck: StoredCheckpoint, name: string, ...shapes: number[][]): StoredTensor {
  const t = ck.tensors[name];
  if (!t) throw badCheckpoint(ck.key, `tensor ${name} is missing`);
  if (t.dtype !== "F32") throw badCheckpoint(ck.key, `tensor ${name} is ${t.dtype}, expected F32`);
  if (!shapes.some((s) => s.join(",") === t.shape.join(","))) throw badCheckpoint(ck.key, `tensor ${name} has shape [${t.shape}], expected [${shapes[0]}]`);
  if (t.bytes !== 4 * t.shape.reduce((a, b) => a * b, 1)) throw badCheckpoint(ck.key, `tensor ${name} spans ${t.bytes} bytes for shape [${t.shape}]`);
  return t;
}

async function readF32(bucket: R2Bucket, ck: StoredCheckpoint, t: StoredTensor): Promise<Float32Array> {
  return new Float32Array(await (await getRange(bucket, ck.key, t.offset, t.bytes)).arrayBuffer());
}

export interface Normalization {
  mean: Float32Array;
  scale: number;
}

/** μ [d_in] and s (a scalar) of the checkpoint. */
export async function readNormalization(bucket: R2Bucket, ck: StoredCheckpoint, d: number): Promise<Normalization> {
  const [mean, scale] = await Promise.all([readF32(bucket, ck, tensorOf(ck, "norm_mean", [d])), readF32(bucket, ck, tensorOf(ck, "norm_scale", [], [1]))]);
  if (!(scale[0] > 0 && Number.isFinite(scale[0]))) throw badCheckpoint(ck.key, `norm_scale is ${scale[0]}, not a positive number`);
  return { mean, scale: scale[0] };
}

/** A safetensors header (u64 length + JSON padded with spaces to 8 bytes) for F32 tensors packed in this order. */
export function f32Header(tensors: Array<[name: string, shape: number[]]>, metadata: Record<string, string>): { bytes: Uint8Array; dataBytes: number } {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, shape] of tensors) {
    const bytes = 4 * shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const bytes = new Uint8Array(8 + padded).fill(0x20);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, 8);
  return { bytes, dataBytes: offset };
}

/** One part of the output: bytes computed here, or a range of the stored object, optionally mapped as float32s. */
type Part = { bytes: Uint8Array } | { offset: number; length: number; map?: (x: Float32Array) => void };

/**
 * sae_weights.safetensors: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] and, for
 * thresholded kinds, threshold [d_sae] (a scalar θ, as BatchTopK may store, is broadcast), float32, folded.
 * Returns the exact size and a stream that reads the big tensors from R2 as it is pulled.
 */
export async function foldedWeights(bucket: R2Bucket, ck: StoredCheckpoint, cfg: TrainConfig, norm: Normalization): Promise<{ size: number; body: ReadableStream<Uint8Array> }> {
  const d = cfg.sae.d_vit;
  const k = d * cfg.sae.exp_factor;
  const kind = exportKind(cfg);
  const W_enc = tensorOf(ck, "W_enc", [d, k]);
  const b_enc = tensorOf(ck, "b_enc", [k]);
  const W_dec = tensorOf(ck, "W_dec", [k, d]);
  const storedBDec = await readF32(bucket, ck, tensorOf(ck, "b_dec", [d]));
  const s = norm.scale;
  const b_dec = new Float32Array(d);
  for (let j = 0; j < d; j++) b_dec[j] = s * storedBDec[j] + norm.mean[j];

  const names: Array<[string, number[]]> = [["W_enc", [d, k]], ["b_enc", [k]], ["W_dec", [k, d]], ["b_dec", [d]]];
  const parts: Part[] = [
    { offset: W_enc.offset, length: W_enc.bytes, map: (x) => { for (let i = 0; i < x.length; i++) x[i] = x[i] / s; } },
    { offset: b_enc.offset, length: b_enc.bytes },
    { offset: W_dec.offset, length: W_dec.bytes, map: (x) => { for (let i = 0; i < x.length; i++) x[i] = x[i] * s; } },
    { bytes: new Uint8Array(b_dec.buffer) },
  ];
  if (kind.threshold) {
    const theta = tensorOf(ck, "threshold", [k], [], [1]);
    names.push(["threshold", [k]]);
    parts.push(theta.bytes === 4 * k ? { offset: theta.offset, length: theta.bytes } : { bytes: new Uint8Array(new Float32Array(k).fill((await readF32(bucket, ck, theta))[0]).buffer) });
  }
  const header = f32Header(names, { format: "pt" });
  return { size: header.bytes.length + header.dataBytes, body: partsStream(bucket, ck.key, [{ bytes: header.bytes }, ...parts]) };
}

/**
 * The parts one after another, pulled on demand (backpressure: nothing is read from R2 before the client takes the
 * previous chunk). Each range is one GET, mapped chunk by chunk. A short read from R2 errors the stream (the client
 * sees a cut body, never a short file).
 */
function partsStream(bucket: R2Bucket, key: string, parts: Part[]): ReadableStream<Uint8Array> {
  let i = 0;
  let reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  let got = 0;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        for (;;) {
          const part = parts[i];
          if (!part) return controller.close();
          if ("bytes" in part) {
            i++;
            return controller.enqueue(part.bytes);
          }
          if (!reader) {
            const body = (await getRange(bucket, key, part.offset, part.length)).body;
            reader = (part.map ? body.pipeThrough(mapFloat32(part.map)) : body).getReader();
            got = 0;
          }
          const { done, value } = await reader.read();
          if (done) {
            reader = null;
            if (got !== part.length) throw new Error(`checkpoint ${key}: read ${got} of ${part.length} bytes at ${part.offset}`);
            i++;
            continue;
          }
          got += value.byteLength;
          return controller.enqueue(value);
        }
      },
      async cancel(reason) {
        await reader?.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * A byte stream of little-endian float32s, `map`ped in place chunk by chunk. Chunks may end inside a float: its
 * 1–3 bytes wait for the next chunk; a stream that ends inside a float is an error.
 */
export function mapFloat32(map: (x: Float32Array) => void): TransformStream<Uint8Array, Uint8Array> {
  let carry = new Uint8Array(0);
  return new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      const joined = carry.length > 0 ? concat(carry, chunk) : chunk;
      const whole = joined.byteLength - (joined.byteLength % 4);
      carry = joined.slice(whole);
      if (whole === 0) return;
      const floats = new Float32Array(joined.slice(0, whole).buffer); // a copy: aligned, and the output's own buffer
      map(floats);
      controller.enqueue(new Uint8Array(floats.buffer));
    },
    flush() {
      if (carry.length > 0) throw new Error(`float32 stream ended ${carry.length} bytes into a float`);
    },
  });
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

/** sparsity.safetensors: `sparsity` [d_sae] = log10(freq + 1e-10) per latent, from the run's eval. */
export function sparsityFile(freqs: number[]): Uint8Array<ArrayBuffer> {
  const header = f32Header([["sparsity", [freqs.length]]], { format: "pt" });
  const out = new Uint8Array(header.bytes.length + header.dataBytes);
  out.set(header.bytes);
  new Float32Array(out.buffer, header.bytes.length, freqs.length).set(freqs.map((f) => Math.log10(f + 1e-10)));
  return out;
}

/** The checkpoint's `data_origin` (written by runners since the export exists); all null when absent or unreadable. */
function dataOrigin(ck: StoredCheckpoint): DataOrigin {
  const none: DataOrigin = { layer: null, vit_ckpt: null, vit_family: null };
  try {
    const o = JSON.parse(ck.metadata.data_origin ?? "null") as Partial<DataOrigin> | null;
    if (!o || typeof o !== "object") return none;
    const text = (v: unknown) => (typeof v === "string" && v !== "" ? v : null);
    return { layer: Number.isInteger(o.layer) ? (o.layer as number) : null, vit_ckpt: text(o.vit_ckpt), vit_family: text(o.vit_family) };
  } catch {
    return none;
  }
}

export interface RunIds {
  id: string;
  sweepId: string;
  groupId: string;
}

/** cfg.json: SAELens v6's SAEConfig.to_dict() for the folded SAE, with the run's ids and TrainConfig in `metadata`. */
export function saeLensCfg(run: RunIds, cfg: TrainConfig, ck: StoredCheckpoint, norm: Normalization): SaeLensCfg {
  const kind = exportKind(cfg);
  const origin = dataOrigin(ck);
  const data = cfg.data;
  return {
    architecture: kind.architecture,
    d_in: cfg.sae.d_vit,
    d_sae: cfg.sae.d_vit * cfg.sae.exp_factor,
    dtype: "float32",
    device: "cpu",
    apply_b_dec_to_input: true,
    normalize_activations: "none",
    reshape_activations: "none",
    ...(kind.k !== undefined ? { k: kind.k, rescale_acts_by_decoder_norm: false as const } : {}),
    metadata: {
      sae_lens_version: SAE_LENS_VERSION,
      // saev's shards hold the residual stream after ViT block `layer`.
      hook_name: origin.layer === null ? null : `blocks.${origin.layer}.hook_resid_post`,
      hook_layer: origin.layer,
      model_name: origin.vit_ckpt,
      model_class_name: origin.vit_family,
      dataset_path: data.kind === "shards" ? data.url : `sae-swarm synthetic data ${JSON.stringify(data)}`,
      run_id: run.id,
      sweep_id: run.sweepId,
      group_id: run.groupId,
      step: Number(ck.metadata.step),
      train_config: cfg,
      normalization: { mean: Array.from(norm.mean), scale: norm.scale, folded: true },
    },
  };
}
