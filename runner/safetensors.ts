/**
 * safetensors (https://github.com/huggingface/safetensors) writer and reader, and the checkpoint layouts of
 * ../shared/SAE.md ("Checkpoints"). Runs in the page and in Node: typed arrays only, no I/O.
 *
 * File: u64 LE header length N, N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]},
 * "__metadata__": {string: string}} padded with spaces so that the data starts 8-byte aligned, then the data
 * (offsets relative to the start of the data, tensors packed back to back, little-endian, C order).
 */
import { usesAuxK, type TrainConfig } from "../shaders/config";
import type { DataOrigin } from "../worker/protocol";

export type Dtype = "F32" | "F64" | "I32" | "I64" | "U8";

const DTYPE_BYTES: Record<Dtype, number> = { F32: 4, F64: 8, I32: 4, I64: 8, U8: 1 };

export type TensorData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

export interface Tensor {
  dtype: Dtype;
  shape: number[];
  data: TensorData;
}

export type Metadata = Record<string, string>;

const MAX_HEADER_BYTES = 100_000_000; // the reference implementation's limit

function dtypeOf(data: TensorData): Dtype {
  if (data instanceof Float32Array) return "F32";
  if (data instanceof Float64Array) return "F64";
  if (data instanceof Int32Array) return "I32";
  if (data instanceof BigInt64Array) return "I64";
  return "U8";
}

/** A tensor from a typed array and a shape (dtype from the array's type). */
export function tensor(data: TensorData, shape: number[]): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length) throw new Error(`tensor: shape [${shape}] holds ${n} elements but the data has ${data.length}`);
  return { dtype: dtypeOf(data), shape: [...shape], data };
}

/** Serializes tensors (in the order given) and string metadata to safetensors bytes. */
export function encodeSafetensors(tensors: Record<string, Tensor>, metadata: Metadata = {}): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new Error(`safetensors: metadata '${k}' must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  const entries = Object.entries(tensors);
  for (const [name, t] of entries) {
    if (name === "__metadata__") throw new Error("safetensors: '__metadata__' is not a tensor name");
    if (dtypeOf(t.data) !== t.dtype) throw new Error(`safetensors: tensor '${name}' is ${t.dtype} but its data is ${dtypeOf(t.data)}`);
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new Error(`safetensors: tensor '${name}' has shape [${t.shape}] but ${t.data.length} elements`);
    const nbytes = n * DTYPE_BYTES[t.dtype];
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + nbytes] };
    offset += nbytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + padded);
  let at = 8 + padded;
  for (const [, t] of entries) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    if (!littleEndian() && t.dtype !== "U8") throw new Error("safetensors: big-endian hosts are not supported");
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}

let isLE: boolean | undefined;
function littleEndian(): boolean {
  isLE ??= new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  return isLE;
}

export interface Safetensors {
  tensors: Record<string, Tensor>;
  metadata: Metadata;
}

/** Parses safetensors bytes, validating the header (dtypes, shapes, offsets contiguous and covering the data). */
export function decodeSafetensors(bytes: Uint8Array): Safetensors {
  if (bytes.length < 8) throw new Error("safetensors: file shorter than its 8-byte header length");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES) || 8n + n > BigInt(bytes.length)) throw new Error(`safetensors: header length ${n} is invalid for a ${bytes.length}-byte file`);
  const headerLen = Number(n);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)));
  } catch (e) {
    throw new Error(`safetensors: header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw new Error("safetensors: header is not a JSON object");
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const metadata: Metadata = {};
  const found: Array<{ name: string; dtype: Dtype; shape: number[]; begin: number; end: number }> = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") throw new Error(`safetensors: metadata '${k}' is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = info.dtype as Dtype;
    if (!(typeof dtype === "string" && dtype in DTYPE_BYTES)) throw new Error(`safetensors: tensor '${name}' has unsupported dtype ${String(info.dtype)}`);
    const shape = info.shape as number[];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw new Error(`safetensors: tensor '${name}' has an invalid shape`);
    const offs = info.data_offsets as number[];
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0) || offs[1] < offs[0]) {
      throw new Error(`safetensors: tensor '${name}' has invalid data_offsets`);
    }
    const elems = shape.reduce((a, b) => a * b, 1);
    if (offs[1] - offs[0] !== elems * DTYPE_BYTES[dtype]) throw new Error(`safetensors: tensor '${name}' offsets span ${offs[1] - offs[0]} bytes, shape [${shape}] ${dtype} needs ${elems * DTYPE_BYTES[dtype]}`);
    found.push({ name, dtype, shape, begin: offs[0], end: offs[1] });
  }
  // The format forbids holes and overlaps: sorted by offset, the tensors must tile the data exactly.
  const sorted = [...found].sort((a, b) => a.begin - b.begin);
  let expect = 0;
  for (const t of sorted) {
    if (t.begin !== expect) throw new Error(`safetensors: tensor '${t.name}' starts at ${t.begin}, expected ${expect} (hole or overlap)`);
    expect = t.end;
  }
  if (expect !== dataLen) throw new Error(`safetensors: tensors cover ${expect} bytes but the data is ${dataLen} bytes`);
  const tensors: Record<string, Tensor> = {};
  for (const t of found) {
    // Copy: the data region need not be aligned for the typed array within the caller's buffer.
    const slice = bytes.slice(dataStart + t.begin, dataStart + t.end).buffer;
    const data: TensorData =
      t.dtype === "F32" ? new Float32Array(slice) :
      t.dtype === "F64" ? new Float64Array(slice) :
      t.dtype === "I32" ? new Int32Array(slice) :
      t.dtype === "I64" ? new BigInt64Array(slice) : new Uint8Array(slice);
    tensors[t.name] = { dtype: t.dtype, shape: t.shape, data };
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints (../shared/SAE.md, "Checkpoints")

/** One SAE's parameters as the engine exports them (row-major, SAELens orientation). */
export interface SaeWeights {
  /** [d_vit, d_sae] */
  W_enc: Float32Array;
  /** [d_sae] */
  b_enc: Float32Array;
  /** [d_sae, d_vit]: each row a feature */
  W_dec: Float32Array;
  /** [d_vit] */
  b_dec: Float32Array;
  /** [d_sae], JumpReLU: θ = exp(log θ); BatchTopK: its one θ repeated (SAELens's layout) */
  threshold?: Float32Array;
}

/** The data normalization of SAE.md: a training example is (clamp(x, ±1e5) − mean) / scale. */
export interface Normalization {
  /** μ [d_vit] */
  mean: Float32Array;
  /** s */
  scale: number;
}

/** Adam state of one SAE: first and second moments per parameter (same names and shapes) and the step taken. */
export interface AdamState {
  m: SaeWeights;
  v: SaeWeights;
  /** Optimizer steps taken (= the training step to resume at). */
  step: number;
  /** AuxK SAEs (usesAuxK): examples since each latent last fired [d_sae], the dead set's state (`aux_counters`). */
  counters?: Uint32Array;
}

export const CHECKPOINT_FORMAT = "sae-swarm/1";
export const PARAM_NAMES = ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"] as const;

/** Kinds whose checkpoints carry `threshold` [d_sae]: JumpReLU's θ, and BatchTopK's θ used at evaluation. */
export const hasThreshold = (cfg: TrainConfig): boolean => cfg.sae.kind === "jumprelu" || cfg.sae.kind === "batchtopk";

export interface CheckpointInfo {
  run_id: string;
  cfg: TrainConfig;
  /** Steps trained when the checkpoint was taken. */
  step: number;
  /** Final checkpoints: the layer and model of the data, when it says (metadata `data_origin`, read by the export). */
  data_origin?: DataOrigin;
}

function paramShapes(cfg: TrainConfig): Record<(typeof PARAM_NAMES)[number], number[]> {
  const d = cfg.sae.d_vit;
  const k = d * cfg.sae.exp_factor;
  return { W_enc: [d, k], b_enc: [k], W_dec: [k, d], b_dec: [d], threshold: [k] };
}

function paramTensors(w: SaeWeights, cfg: TrainConfig, prefix = ""): Record<string, Tensor> {
  const shapes = paramShapes(cfg);
  const out: Record<string, Tensor> = {};
  for (const name of PARAM_NAMES) {
    const data = w[name];
    if (name === "threshold") {
      if (!hasThreshold(cfg)) continue;
      if (!data) throw new Error(`checkpoint: a ${cfg.sae.kind} SAE needs '${prefix}threshold'`);
    }
    out[prefix + name] = tensor(data!, shapes[name]);
  }
  return out;
}

/**
 * The SAELens-style config (cfg.json of `SAE.save_model`), for users who load the weights with SAELens:
 * `architecture` "standard" (ReLU), "jumprelu" (JumpReLU, and BatchTopK with its θ, as SAELens saves it for
 * inference) or "topk" (with k), d_in, d_sae, and the input normalization we trained under (as worker/saelens.ts).
 */
export function saeLensConfig(cfg: TrainConfig): Record<string, unknown> {
  return {
    architecture: hasThreshold(cfg) ? "jumprelu" : cfg.sae.kind === "topk" ? "topk" : "standard",
    ...(cfg.sae.kind === "topk" ? { k: cfg.sae.k } : {}),
    d_in: cfg.sae.d_vit,
    d_sae: cfg.sae.d_vit * cfg.sae.exp_factor,
    dtype: "float32",
    device: "cpu",
    apply_b_dec_to_input: true,
    // The SAE was trained on (x − norm_mean) / norm_scale; apply it before encoding (tensors norm_mean, norm_scale).
    normalize_activations: "none",
  };
}

function metadataFor(info: CheckpointInfo, kind: "final" | "resume"): Metadata {
  return {
    format: "pt", // what safetensors.torch writes; some loaders check it
    sae_swarm: CHECKPOINT_FORMAT,
    kind,
    run_id: info.run_id,
    step: String(info.step),
    config: JSON.stringify(info.cfg),
    cfg: JSON.stringify(saeLensConfig(info.cfg)),
    ...(info.data_origin ? { data_origin: JSON.stringify(info.data_origin) } : {}),
  };
}

function normTensors(norm: Normalization, cfg: TrainConfig): Record<string, Tensor> {
  return { norm_mean: tensor(norm.mean, [cfg.sae.d_vit]), norm_scale: tensor(new Float32Array([norm.scale]), []) };
}

/**
 * The final checkpoint users download: W_enc [d_vit, d_sae], b_enc [d_sae], W_dec [d_sae, d_vit], b_dec [d_vit],
 * threshold [d_sae] (JumpReLU, BatchTopK), norm_mean [d_vit] and norm_scale [] (scalar); metadata: the TrainConfig (`config`),
 * a SAELens cfg (`cfg`), run id and step.
 */
export function encodeFinalCheckpoint(info: CheckpointInfo, weights: SaeWeights, norm: Normalization): Uint8Array {
  return encodeSafetensors({ ...paramTensors(weights, info.cfg), ...normTensors(norm, info.cfg) }, metadataFor(info, "final"));
}

/** AuxK's u32 counters as I64 (the checkpoint dtypes have no U32; I64 holds every u32 exactly). */
function countersI64(counters: Uint32Array | undefined, cfg: TrainConfig): BigInt64Array {
  const n = paramShapes(cfg).b_enc[0];
  if (!counters || counters.length !== n) throw new Error(`checkpoint: an AuxK SAE needs aux_counters [${n}], got ${counters ? counters.length : "none"}`);
  return BigInt64Array.from(counters, (c) => BigInt(c));
}

/** A resume checkpoint: the final layout plus `adam_m.<param>`, `adam_v.<param>`, `step` (I64 scalar) and, for
 *  AuxK SAEs, `aux_counters` (I64 [d_sae]: examples since each latent last fired). */
export function encodeResumeCheckpoint(info: CheckpointInfo, weights: SaeWeights, norm: Normalization, adam: AdamState): Uint8Array {
  if (adam.step !== info.step) throw new Error(`checkpoint: Adam step ${adam.step} differs from the checkpoint step ${info.step}`);
  return encodeSafetensors(
    {
      ...paramTensors(weights, info.cfg),
      ...normTensors(norm, info.cfg),
      ...paramTensors(adam.m, info.cfg, "adam_m."),
      ...paramTensors(adam.v, info.cfg, "adam_v."),
      step: tensor(new BigInt64Array([BigInt(adam.step)]), []),
      ...(usesAuxK(info.cfg) ? { aux_counters: tensor(countersI64(adam.counters, info.cfg), paramShapes(info.cfg).b_enc) } : {}),
    },
    metadataFor(info, "resume"),
  );
}

/**
 * The tensors (name → dtype, shape) a checkpoint of `cfg` holds, exactly as encodeFinalCheckpoint and
 * encodeResumeCheckpoint write them: what the Worker checks every upload against (worker/checkpoint-check.ts).
 */
export function checkpointLayout(cfg: TrainConfig, kind: "final" | "resume"): Record<string, { dtype: Dtype; shape: number[] }> {
  const shapes = paramShapes(cfg);
  const params = PARAM_NAMES.filter((n) => n !== "threshold" || hasThreshold(cfg));
  const out: Record<string, { dtype: Dtype; shape: number[] }> = {};
  const prefixes = kind === "resume" ? ["", "adam_m.", "adam_v."] : [""];
  for (const p of prefixes) {
    for (const n of params) out[p + n] = { dtype: "F32", shape: shapes[n] };
    if (p === "") Object.assign(out, { norm_mean: { dtype: "F32", shape: [cfg.sae.d_vit] }, norm_scale: { dtype: "F32", shape: [] } });
  }
  if (kind === "resume") out.step = { dtype: "I64", shape: [] };
  if (kind === "resume" && usesAuxK(cfg)) out.aux_counters = { dtype: "I64", shape: shapes.b_enc };
  return out;
}

/** Bytes of one element of a dtype. */
export const dtypeBytes = (d: Dtype): number => DTYPE_BYTES[d];

export interface DecodedCheckpoint {
  kind: "final" | "resume";
  run_id: string;
  cfg: TrainConfig;
  step: number;
  weights: SaeWeights;
  norm: Normalization;
  /** Resume checkpoints only. */
  adam?: AdamState;
}

function takeParams(t: Record<string, Tensor>, cfg: TrainConfig, prefix = ""): SaeWeights {
  const shapes = paramShapes(cfg);
  const get = (name: (typeof PARAM_NAMES)[number]): Float32Array => {
    const x = t[prefix + name];
    if (!x) throw new Error(`checkpoint: tensor '${prefix + name}' is missing`);
    if (x.dtype !== "F32") throw new Error(`checkpoint: tensor '${prefix + name}' is ${x.dtype}, expected F32`);
    if (x.shape.join(",") !== shapes[name].join(",")) throw new Error(`checkpoint: tensor '${prefix + name}' has shape [${x.shape}], expected [${shapes[name]}]`);
    return x.data as Float32Array;
  };
  const w: SaeWeights = { W_enc: get("W_enc"), b_enc: get("b_enc"), W_dec: get("W_dec"), b_dec: get("b_dec") };
  if (hasThreshold(cfg)) w.threshold = get("threshold");
  return w;
}

/** Reads a checkpoint written by encodeFinalCheckpoint/encodeResumeCheckpoint, checking names, dtypes and shapes. */
export function decodeCheckpoint(bytes: Uint8Array): DecodedCheckpoint {
  const { tensors: t, metadata } = decodeSafetensors(bytes);
  if (metadata.sae_swarm !== CHECKPOINT_FORMAT) throw new Error(`checkpoint: metadata sae_swarm is '${metadata.sae_swarm}', expected '${CHECKPOINT_FORMAT}'`);
  const kind = metadata.kind;
  if (kind !== "final" && kind !== "resume") throw new Error(`checkpoint: metadata kind '${kind}' is not final or resume`);
  const cfg = JSON.parse(metadata.config) as TrainConfig;
  const step = Number(metadata.step);
  const weights = takeParams(t, cfg);
  const mean = t.norm_mean;
  const scale = t.norm_scale;
  if (!mean || mean.dtype !== "F32" || mean.data.length !== cfg.sae.d_vit) throw new Error("checkpoint: norm_mean is missing or not F32 [d_vit]");
  if (!scale || scale.dtype !== "F32" || scale.data.length !== 1) throw new Error("checkpoint: norm_scale is missing or not an F32 scalar");
  const out: DecodedCheckpoint = {
    kind,
    run_id: metadata.run_id,
    cfg,
    step,
    weights,
    norm: { mean: mean.data as Float32Array, scale: (scale.data as Float32Array)[0] },
  };
  if (kind === "resume") {
    const s = t.step;
    if (!s || s.dtype !== "I64" || s.data.length !== 1) throw new Error("checkpoint: resume 'step' is missing or not an I64 scalar");
    const adamStep = Number((s.data as BigInt64Array)[0]);
    if (adamStep !== step) throw new Error(`checkpoint: tensor step ${adamStep} differs from metadata step ${step}`);
    out.adam = { m: takeParams(t, cfg, "adam_m."), v: takeParams(t, cfg, "adam_v."), step: adamStep };
    if (usesAuxK(cfg)) {
      const c = t.aux_counters;
      const n = paramShapes(cfg).b_enc[0];
      if (!c || c.dtype !== "I64" || c.shape.join(",") !== String(n)) throw new Error(`checkpoint: resume 'aux_counters' is missing or not I64 [${n}]`);
      out.adam.counters = Uint32Array.from(c.data as BigInt64Array, (v) => Number(v));
    }
  }
  return out;
}
