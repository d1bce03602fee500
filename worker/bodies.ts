/** zod schemas for the runner protocol's JSON bodies (worker/protocol.ts); parsed at the edge of each route. */
import type { Context } from "hono";
import { z } from "zod";
import { badRequest, fromZod } from "./errors";

const num = z.number({ message: "must be a number" }).finite("must be finite");
const token = z.string({ message: "is required" }).min(1, "is required").max(200);
const runId = z.string({ message: "must be a run id" }).min(1).max(200);

export const ClaimBody = z.object({
  runner_id: z.string({ message: "is required" }).min(1, "is required").max(200),
  adapter: z.looseObject({
    vendor: z.string({ message: "must be a string" }),
    architecture: z.string({ message: "must be a string" }),
    device: z.string().optional(),
    description: z.string().optional(),
    isFallbackAdapter: z.boolean().optional(),
    features: z.array(z.string()).optional(),
    limits: z.looseObject({
      maxStorageBufferBindingSize: z.number({ message: "must be a number" }).int().positive("must be > 0"),
      maxBufferSize: z.number({ message: "must be a number" }).int().positive("must be > 0"),
    }),
  }),
});

export const HeartbeatBody = z.strictObject({
  token,
  progress: z.looseObject({
    step: z.number({ message: "must be a number" }).int().min(0, "must be >= 0"),
    n_steps: z.number({ message: "must be a number" }).int().min(0, "must be >= 0"),
    samples_per_s: num.optional(),
  }),
});

export const MetricRowBody = z.strictObject({
  run_id: runId,
  step: z.number({ message: "must be a number" }).int("must be an integer").min(0, "must be >= 0"),
  loss: num,
  mse: num,
  l0: num,
  l1: num,
  sparsity: num,
  "progress/n_patches_seen": num,
  "progress/learning_rate": num,
  "progress/sparsity_coeff": num,
});

export const MetricsBody = z.strictObject({
  token,
  rows: z.array(MetricRowBody).min(1, "must hold at least one row").max(10_000, "at most 10000 rows per post"),
});

export const EvalBody = z.strictObject({
  run_id: runId,
  l0: num,
  l1: num,
  mse: num,
  fvu: num,
  explained_variance: num,
  n_dead: z.number().int().min(0, "must be >= 0"),
  n_almost_dead: z.number().int().min(0, "must be >= 0"),
  n_dense: z.number().int().min(0, "must be >= 0"),
  freqs: z.array(z.number().min(0, "must be >= 0").max(1, "must be <= 1")),
  mean_values: z.array(z.union([num, z.null()])),
  n_examples: z.number().int().min(1, "must be >= 1"),
});

export const EvalsBody = z.strictObject({
  token,
  evals: z.array(EvalBody).min(1, "must hold at least one eval").max(1024),
});

export const CompleteBody = z.strictObject({ token });
export const FailBody = z.strictObject({ token, error: z.string({ message: "is required" }).min(1, "is required").max(20_000, "at most 20000 characters") });

/** Reads and validates a JSON body; 400 naming the field otherwise. */
export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    throw badRequest("invalid_json", "the body is not valid JSON", "body");
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw fromZod(r.error);
  return r.data;
}
