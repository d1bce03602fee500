// Calls the Worker's app inside workerd with the real local D1, R2 and Queue bindings. Tests may override vars
// (a short LEASE_TTL_MS, a small MAX_ATTEMPTS); the queue binding is wrapped to record what was sent, and every
// message still goes to the real local queue.
import { env } from "cloudflare:test";
import { app } from "../../worker/index";
import type { Env } from "../../worker/env";
import type { ClaimResponse, WandbMessage } from "../../worker/protocol";
import type { AdapterLimits } from "../../shaders/device";
import type { TrainConfig } from "../../shaders/config";
import { encodeFinalCheckpoint, encodeResumeCheckpoint, type SaeWeights } from "../../runner/safetensors";
import { planMemory } from "../../shaders/fit";

export const SUBMIT = "test-submit-token";
export const RUNNER = "test-runner-token";

export const sent: WandbMessage[] = [];
const recordingQueue = {
  send: (body: WandbMessage, opts?: QueueSendOptions) => {
    sent.push(body);
    return env.WANDB_QUEUE.send(body, opts);
  },
  sendBatch: (msgs: Iterable<MessageSendRequest<WandbMessage>>, opts?: QueueSendBatchOptions) => {
    const list = [...msgs];
    for (const m of list) sent.push(m.body);
    return env.WANDB_QUEUE.sendBatch(list, opts);
  },
} as unknown as Queue<unknown>;

export interface CallOpts {
  token?: string | null;
  json?: unknown;
  body?: BodyInit | Uint8Array;
  headers?: Record<string, string>;
  vars?: Partial<Env>;
}

export async function call(method: string, path: string, opts: CallOpts = {}): Promise<Response> {
  const headers: Record<string, string> = { ...opts.headers };
  const token = opts.token === undefined ? (path.startsWith("/v1/claims") || path.startsWith("/v1/leases") ? RUNNER : SUBMIT) : opts.token;
  if (token) headers.authorization = `Bearer ${token}`;
  let body = opts.body as BodyInit | undefined;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers["content-type"] = "application/json";
  }
  const bindings = { ...env, WANDB_QUEUE: recordingQueue, ...opts.vars } as Env;
  return app.request(`http://local${path}`, { method, headers, body }, bindings);
}

export async function json<T = any>(res: Response, status: number): Promise<T> {
  const text = await res.text();
  if (res.status !== status) throw new Error(`expected ${status}, got ${res.status}: ${text}`);
  return JSON.parse(text) as T;
}

/** A sweep of 6 small synthetic runs in one group: 10 steps each (640 / 64), logging every 5. */
export const SMALL_SWEEP = `
data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 640
batch_size = 64
log_every = 5
lr = [1e-4, 3e-4, 1e-3]
sae = { exp_factor = 4 }
objective = { sparsity_coeff = [4e-4, 8e-4] }
`;

export async function submit(text = SMALL_SWEEP, contentType = "application/toml") {
  return json<{ id: string; n_runs: number; n_groups: number; warnings: string[] }>(
    await call("POST", "/v1/sweeps", { body: text, headers: { "content-type": contentType } }),
    201,
  );
}

/** An adapter whose memory budget holds exactly `k` SAEs of SMALL_SWEEP's shape (d_vit 16, d_sae 64, batch 64). */
export function adapter(k = 1024) {
  const size = 2 ** 28;
  const limits = { maxStorageBufferBindingSize: size, maxBufferSize: size, maxComputeWorkgroupSizeX: 256 } as Partial<AdapterLimits>;
  const memoryBudget = k === 0 ? 1 : planMemory({ maxStorageBufferBindingSize: size, maxBufferSize: size }, { d_vit: 16, d_sae: 64, batch_size: 64 }, { saes: k }).totalBytes;
  return { vendor: "test", architecture: "swiftshader", device: "", description: "", isFallbackAdapter: true, features: [], limits, memoryBudget, memorySource: "flag" as const };
}

export async function claim(runnerId = "runner-a", k = 1024, vars?: Partial<Env>): Promise<ClaimResponse | null> {
  const res = await call("POST", "/v1/claims", { json: { runner_id: runnerId, adapter: adapter(k) }, vars });
  if (res.status === 204) return null;
  return json<ClaimResponse>(res, 200);
}

export function metricRow(run_id: string, step: number, loss = 1 / (step + 1)) {
  return {
    run_id,
    step,
    loss,
    mse: loss / 2,
    l0: 3,
    l1: 1.5,
    sparsity: 0.01,
    "progress/n_patches_seen": (step + 1) * 64,
    "progress/learning_rate": 1e-4,
    "progress/sparsity_coeff": 4e-4,
  };
}

export function evalBody(run_id: string, d_sae = 64) {
  const freqs = Array.from({ length: d_sae }, (_, j) => (j % 4 === 0 ? 0 : j / (4 * d_sae)));
  return {
    run_id,
    l0: 2.5,
    l1: 1.25,
    mse: 0.01,
    fvu: 0.1,
    explained_variance: 0.9,
    n_dead: freqs.filter((f) => f === 0).length,
    n_almost_dead: freqs.filter((f) => f < 1e-7).length,
    n_dense: freqs.filter((f) => f > 1e-2).length,
    freqs,
    mean_values: freqs.map((f, j) => (f === 0 ? null : j * 0.5)),
    n_examples: 640,
  };
}

/** A valid safetensors file: one F32 tensor of `n` values, with metadata. */
export function safetensors(n = 4, fill = 1.5, meta: Record<string, string> = {}): Uint8Array {
  let text = JSON.stringify({ __metadata__: meta, W: { dtype: "F32", shape: [n], data_offsets: [0, 4 * n] } });
  text += " ".repeat((8 - (text.length % 8)) % 8); // safetensors pads the header so the data is aligned
  const header = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + header.byteLength + 4 * n);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.byteLength), true);
  out.set(header, 8);
  new Float32Array(out.buffer, 8 + header.byteLength, n).fill(fill);
  return out;
}

export async function putCheckpoint(leaseId: string, token: string, runId: string, query: string, body: Uint8Array, vars?: Partial<Env>) {
  return call("PUT", `/v1/leases/${leaseId}/checkpoints/${runId}?${query}`, { body, headers: { "x-lease-token": token, "content-type": "application/octet-stream" }, vars });
}

/** Empties every table, so claims in a test see only that test's sweeps. */
export async function resetDb() {
  await env.DB.batch(["wandb_dead_letters", "wandb_runs", "upload_parts", "uploads", "eval_arrays", "checkpoints", "evals", "metrics", "leases", "runs", "groups", "sweeps"].map((t) => env.DB.prepare(`DELETE FROM ${t}`)));
  sent.length = 0;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The shape of SMALL_SWEEP's SAEs (what the Worker checks a checkpoint's tensors against). */
export const SMALL_SAE = { d_vit: 16, exp_factor: 4, kind: "relu" as "relu" | "jumprelu" };

/**
 * A real checkpoint (runner/safetensors.ts) of run `runId` at `step`, every value `fill`, for an SAE of `sae`'s shape:
 * what the Worker's strict check accepts.
 */
export function checkpointFor(runId: string, kind: "final" | "resume", step: number, fill = 1, sae = SMALL_SAE): Uint8Array {
  const cfg = { sae: { ...sae } } as unknown as TrainConfig;
  const d = sae.d_vit;
  const k = d * sae.exp_factor;
  const w = (): SaeWeights => ({
    W_enc: new Float32Array(d * k).fill(fill),
    b_enc: new Float32Array(k).fill(fill),
    W_dec: new Float32Array(k * d).fill(fill),
    b_dec: new Float32Array(d).fill(fill),
    ...(sae.kind === "jumprelu" ? { threshold: new Float32Array(k).fill(fill) } : {}),
  });
  const norm = { mean: new Float32Array(d).fill(fill), scale: fill };
  const info = { run_id: runId, cfg, step };
  return kind === "final" ? encodeFinalCheckpoint(info, w(), norm) : encodeResumeCheckpoint(info, w(), norm, { m: w(), v: w(), step });
}
