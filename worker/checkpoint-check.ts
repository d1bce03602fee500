/**
 * Strict checkpoints: an upload must be exactly the safetensors file the run's config implies (runner/safetensors.ts
 * checkpointLayout): every tensor by name with its dtype and shape, no other, packed back to back from offset 0
 * (contiguous, covering the data exactly), and metadata naming this run, kind and step.
 *
 * Streaming-friendly: it reads only the first 8 bytes and the header (at most MAX_HEADER_BYTES), never the data;
 * the file's size follows from the header, and the upload routes check the bytes they receive against it.
 */
import type { TrainConfig } from "../shaders/config";
import { CHECKPOINT_FORMAT, checkpointLayout, dtypeBytes, type Dtype } from "../runner/safetensors";
import { badRequest } from "./errors";
import type { CheckpointKind } from "./protocol";

/** Largest safetensors header accepted: the tensors' entries and the metadata (the config, twice) take a few KiB. */
export const MAX_HEADER_BYTES = 64 << 10;

export interface CheckpointTarget {
  runId: string;
  cfg: TrainConfig;
  kind: CheckpointKind;
  step: number;
}

/** Bytes of the data section (every tensor) of a checkpoint of `cfg`. */
export function checkpointDataBytes(cfg: TrainConfig, kind: CheckpointKind): number {
  return Object.values(checkpointLayout(cfg, kind)).reduce((a, t) => a + t.shape.reduce((x, d) => x * d, 1) * dtypeBytes(t.dtype), 0);
}

/** The most a checkpoint of `cfg` can weigh: its data, the largest header and the 8-byte length. */
export const maxCheckpointBytes = (cfg: TrainConfig, kind: CheckpointKind) => 8 + MAX_HEADER_BYTES + checkpointDataBytes(cfg, kind);

const refuse = (field: string, why: string) => badRequest("invalid_checkpoint", why, field);
const notSafetensors = (why: string) => refuse("body", `is not a safetensors file (${why})`);

/**
 * The header's length N from the file's first bytes (8 + N bytes are needed to check it); refuses a file too short
 * to hold a header, or a header longer than MAX_HEADER_BYTES or than the file (`total`, when known).
 */
export function headerLength(prefix: Uint8Array, total: number): number {
  if (prefix.byteLength < 8 || total < 10) throw notSafetensors(`too short: ${total} bytes`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n < 2n || n > BigInt(total - 8)) throw notSafetensors(`header length ${n}, but the file has ${total} bytes`);
  if (n > BigInt(MAX_HEADER_BYTES)) throw notSafetensors(`header length ${n} is over the ${MAX_HEADER_BYTES}-byte limit`);
  return Number(n);
}

/**
 * Checks the header in `prefix` (the file's first bytes, at least 8 + N of them) against `t`, and returns the size
 * the file must have (8 + N + its data). `total` is the size the uploader declared (or sent).
 */
export function checkCheckpointHeader(prefix: Uint8Array, total: number, t: CheckpointTarget): number {
  const n = headerLength(prefix, total);
  if (prefix.byteLength < 8 + n) throw notSafetensors(`its ${n}-byte header does not fit in the first part (${prefix.byteLength} bytes)`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(prefix.subarray(8, 8 + n)));
  } catch {
    throw notSafetensors("its header is not a JSON object");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw notSafetensors("its header is not a JSON object");
  const entries = header as Record<string, unknown>;
  const want = checkpointLayout(t.cfg, t.kind);
  const what = `a ${t.kind} checkpoint of run ${t.runId} (d_vit ${t.cfg.sae.d_vit}, exp_factor ${t.cfg.sae.exp_factor}, ${t.cfg.sae.kind})`;

  for (const name of Object.keys(entries))
    if (name !== "__metadata__" && !Object.hasOwn(want, name)) throw refuse(`body.${name}`, `is not a tensor of ${what}`);
  const spans: Array<{ name: string; begin: number; end: number }> = [];
  for (const [name, spec] of Object.entries(want)) {
    const got = entries[name];
    if (got === undefined) throw refuse(`body.${name}`, `is missing: ${what} holds ${Object.keys(want).join(", ")}`);
    if (typeof got !== "object" || got === null || Array.isArray(got)) throw refuse(`body.${name}`, "must be an object {dtype, shape, data_offsets}");
    const { dtype, shape, data_offsets: off } = got as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (dtype !== spec.dtype) throw refuse(`body.${name}.dtype`, `must be ${spec.dtype}, got ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || shape.length !== spec.shape.length || shape.some((d, i) => d !== spec.shape[i]))
      throw refuse(`body.${name}.shape`, `must be [${spec.shape.join(", ")}], got ${JSON.stringify(shape)}`);
    const size = spec.shape.reduce((a, d) => a * d, 1) * dtypeBytes(spec.dtype as Dtype);
    if (!Array.isArray(off) || off.length !== 2 || !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[1] - off[0] !== size)
      throw refuse(`body.${name}.data_offsets`, `must be [begin, begin + ${size}] for ${spec.dtype} [${spec.shape.join(", ")}], got ${JSON.stringify(off)}`);
    spans.push({ name, begin: off[0], end: off[1] });
  }
  // Contiguous: sorted by offset, the tensors tile the data from 0 with no hole or overlap.
  spans.sort((a, b) => a.begin - b.begin);
  let at = 0;
  for (const s of spans) {
    if (s.begin !== at) throw refuse(`body.${s.name}.data_offsets`, `start at ${s.begin}, expected ${at} (a hole or an overlap)`);
    at = s.end;
  }
  checkMetadata(entries.__metadata__, t);
  const size = 8 + n + at;
  if (size !== total) throw notSafetensors(`${total} bytes, but its header describes ${size} (cut short?)`);
  return size;
}

function checkMetadata(meta: unknown, t: CheckpointTarget): void {
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) throw refuse("body.__metadata__", "is required: an object of strings (sae_swarm, kind, run_id, step)");
  const m = meta as Record<string, unknown>;
  for (const [k, v] of Object.entries(m)) if (typeof v !== "string") throw refuse(`body.__metadata__.${k}`, "must be a string");
  const expect: Record<string, string> = { sae_swarm: CHECKPOINT_FORMAT, kind: t.kind, run_id: t.runId, step: String(t.step) };
  for (const [k, v] of Object.entries(expect))
    if (m[k] !== v) throw refuse(`body.__metadata__.${k}`, `must be ${JSON.stringify(v)}, got ${m[k] === undefined ? "nothing" : JSON.stringify(m[k])}`);
}

/** The query's step for a checkpoint of a run with `nSteps` steps: a final one is at n_steps, a resume one within. */
export function checkStep(kind: CheckpointKind, step: number, nSteps: number, field = "step"): void {
  if (kind === "final" && step !== nSteps) throw badRequest("invalid_checkpoint", `a final checkpoint is at step n_steps (${nSteps}), got ${step}`, field);
  if (kind === "resume" && (step < 1 || step >= nSteps)) throw badRequest("invalid_checkpoint", `a resume checkpoint is at a step in [1, ${nSteps - 1}], got ${step}`, field);
}
