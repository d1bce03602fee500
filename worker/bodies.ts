/**
 * zod schemas for the runner protocol's JSON bodies (worker/protocol.ts); parsed at the edge of each route, before
 * anything is read from or written to D1. Every message names the reason ("is required", "must be a number, got
 * string", "must be >= 0", "unknown key"); errors.ts prefixes the field path.
 */
import type { Context } from "hono";
import { z } from "zod";
import { LIMIT_NAMES, MEMORY_SOURCES } from "../shaders/device";
import { MATMUL_NAMES } from "../shaders/kernels";
import { parseChoiceId } from "../shaders/matmul-template";
import { badRequest, fromZod, mediaType, unsupportedMediaType } from "./errors";

/** What a value is, for "must be X, got Y". */
function kindOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "number" && !Number.isFinite(v)) return String(v);
  return typeof v;
}

/** The type-error message of a schema: "is required" when absent, else "must be WHAT, got KIND". */
const typed = (what: string) => ({ error: (iss: { input?: unknown }) => (iss.input === undefined ? "is required" : `must be ${what}, got ${kindOf(iss.input)}`) });

/** A finite number (zod 4 rejects NaN and ±Infinity). */
const num = () => z.number(typed("a number"));
const nonNeg = () => num().min(0, "must be >= 0");
const int = (min: number) => num().int("must be an integer").min(min, `must be >= ${min}`);
const str = (max: number) => z.string(typed("a string")).max(max, `must be at most ${max} characters`);
const token = z.string(typed("a string")).min(1, "is required").max(200, "must be at most 200 characters");
const runId = z.string(typed("a run id")).min(1, "is required").max(200, "must be at most 200 characters");
const object = <S extends z.core.$ZodLooseShape>(shape: S) => z.strictObject(shape, typed("an object"));
const array = <T extends z.ZodType>(item: T) => z.array(item, typed("an array"));

/** GPU limits: the two the chunking reads are required; every other known limit may come; unknown names are refused. */
const posInt = () => num().int("must be an integer").positive("must be > 0");
const LIMITS = object({
  maxStorageBufferBindingSize: posInt(),
  maxBufferSize: posInt(),
  ...Object.fromEntries(LIMIT_NAMES.filter((n) => n !== "maxStorageBufferBindingSize" && n !== "maxBufferSize").map((n) => [n, int(0).optional()])),
});

export const ClaimBody = object({
  runner_id: z.string(typed("a string")).min(1, "must not be empty").max(200, "must be at most 200 characters"),
  adapter: object({
    vendor: str(200),
    architecture: str(200),
    device: str(200).optional(),
    description: str(1000).optional(),
    isFallbackAdapter: z.boolean(typed("a boolean")).optional(),
    features: array(str(100)).max(200, "must hold at most 200 features").optional(),
    limits: LIMITS,
    /** Bytes the runner's engine may use (runner/gpu-memory.ts); absent: DEFAULT_MEMORY_BUDGET. */
    memoryBudget: posInt().max(2 ** 53, "must be at most 2^53").optional(),
    memorySource: z.enum(MEMORY_SOURCES, { error: `must be one of ${MEMORY_SOURCES.join(", ")}` }).optional(),
  }),
});

/** One autotuned matmul: a choice the generator builds (matmul-template.ts choiceId) and its measured rates. */
const TunedKernel = object({
  choice: str(64).refine((id) => parseChoiceId(id) !== null, { message: "must be a matmul choice such as 64x64/4x4/k16/tiled" }),
  gflops: nonNeg(),
  default_gflops: nonNeg(),
});

/** The kernels a runner's engine runs for a lease (shaders/autotune.ts KernelReport). */
export const KernelsBody = object({
  key: str(200),
  source: z.enum(["tuned", "cache"], { error: 'must be "tuned" or "cache"' }),
  timing: z.enum(["timestamp", "wall"], { error: 'must be "timestamp" or "wall"' }),
  tuned_ms: nonNeg(),
  candidates: int(0),
  shape: object({ d: int(1), n: int(1), B: int(1), K: int(1), P: int(1) }),
  kernels: object(Object.fromEntries(MATMUL_NAMES.map((m) => [m, TunedKernel])) as Record<(typeof MATMUL_NAMES)[number], typeof TunedKernel>),
});

export const HeartbeatBody = object({
  token,
  kernels: KernelsBody.optional(),
  progress: object({
    step: int(0),
    n_steps: int(0),
    samples_per_s: nonNeg().optional(),
  }).refine((p) => p.step <= p.n_steps, { message: "must be <= progress.n_steps", path: ["step"] }),
});

export const MetricRowBody = object({
  run_id: runId,
  step: int(0),
  loss: nonNeg(),
  mse: nonNeg(),
  l0: nonNeg(),
  l1: nonNeg(),
  sparsity: nonNeg(),
  "progress/n_patches_seen": nonNeg(),
  "progress/learning_rate": nonNeg(),
  "progress/sparsity_coeff": nonNeg(),
  // AuxK's (TopK/BatchTopK runs only): optional, so rows of the other kinds and of older runners stay valid.
  aux_loss: nonNeg().optional(),
  n_dead_train: int(0).optional(),
});

export const MetricsBody = object({
  token,
  rows: array(MetricRowBody).min(1, "must hold at least one row").max(10_000, "must hold at most 10000 rows per post"),
});

export const EvalBody = object({
  run_id: runId,
  l0: nonNeg(),
  l1: nonNeg(),
  mse: nonNeg(),
  fvu: nonNeg(),
  explained_variance: num(),
  n_dead: int(0),
  n_almost_dead: int(0),
  n_dense: int(0),
  freqs: array(num().min(0, "must be >= 0").max(1, "must be <= 1")),
  mean_values: array(z.number(typed("a number or null")).nullable()),
  n_examples: int(1),
});

export const EvalsBody = object({
  token,
  evals: array(EvalBody).min(1, "must hold at least one eval").max(1024, "must hold at most 1024 evals per post"),
});

export const CompleteBody = object({ token });

export const UploadInitBody = object({
  token,
  run_id: runId,
  kind: z.enum(["final", "resume"], { error: 'must be "final" or "resume"' }),
  step: int(0),
  bytes: int(10),
});

export const RejectCheckpointBody = object({
  token,
  step: int(1),
  error: z.string(typed("a string")).min(1, "is required").max(20_000, "must be at most 20000 characters"),
});
export const FailBody = object({ token, error: z.string(typed("a string")).min(1, "is required").max(20_000, "must be at most 20000 characters") });
export const ReleaseBody = object({ token, reason: z.string(typed("a string")).max(20_000, "must be at most 20000 characters").optional() });

/** application/json or any application/*+json; a request without a content type is read as JSON too. */
export function requireJson(c: Context): void {
  const t = mediaType(c.req.header("content-type"));
  if (t !== undefined && t !== "application/json" && !/^application\/[\w.-]+\+json$/.test(t)) throw unsupportedMediaType("application/json", t);
}

/** The body as text, refusing bytes that are not UTF-8 (rather than storing U+FFFD in their place). */
export async function utf8Body(c: Context): Promise<string> {
  const buf = await c.req.arrayBuffer();
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(buf);
  } catch {
    throw badRequest("invalid_encoding", "the body is not valid UTF-8", "body");
  }
}

/** Reads and validates a JSON body: 415 for another content type, 400 naming the field otherwise. */
export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  requireJson(c);
  const text = await utf8Body(c);
  if (!text.trim()) throw badRequest("invalid_json", "the body is empty (expected a JSON object)", "body");
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw badRequest("invalid_json", `the body is not valid JSON: ${(e as Error).message}`, "body");
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw fromZod(r.error);
  return r.data;
}
