/**
 * The runner's client of the Worker protocol (worker/protocol.ts, ../shared/DESIGN.md "HTTP API"). Runs in the
 * page (base URL `/api` on the CLI's 127.0.0.1 page server, which proxies to the Worker and adds the token) and
 * in Node (base URL the Worker itself, with the token).
 *
 * Failure rules: network errors, 5xx and 429 are retried with exponential backoff and jitter (the Worker's writes
 * are idempotent, so a retry after a lost response changes nothing); 409 means the lease is no longer ours and
 * raises LeaseLost, which the loop answers by dropping the group at once; other 4xx raise ApiError (a bug or bad
 * input: retrying cannot help).
 */
import type {
  CheckpointKind,
  ClaimRequest,
  ClaimResponse,
  ErrorBody,
  EvalsRequest,
  HeartbeatRequest,
  Lease,
  MetricRow,
  RejectCheckpointRequest,
  RejectCheckpointResponse,
  ResumePoint,
  UploadInitRequest,
  UploadInitResponse,
  UploadLimits,
} from "../worker/protocol";

export type FetchFn = (input: string, init?: RequestInit) => Promise<Response>;

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The Worker refused a write under this lease (409): another runner holds the group now. */
export class LeaseLost extends Error {
  constructor(
    readonly leaseId: string,
    message: string,
  ) {
    super(`lease ${leaseId} lost: ${message}`);
    this.name = "LeaseLost";
  }
}

export class Aborted extends Error {
  constructor() {
    super("aborted");
    this.name = "Aborted";
  }
}

export interface RetryPolicy {
  /** First delay (ms); doubles per attempt. */
  baseMs: number;
  /** Cap on one delay (ms). */
  maxMs: number;
  /** Attempts in all (Infinity: until it succeeds, the lease is lost, or the signal aborts). */
  maxAttempts: number;
}

export const DEFAULT_RETRY: RetryPolicy = { baseMs: 250, maxMs: 30_000, maxAttempts: Infinity };

export interface WorkerClientOptions {
  /** The Worker's base URL (or `/api` behind the CLI's proxy); no trailing slash needed. */
  server: string;
  /** Runner token; omitted behind the proxy, which adds it. */
  token?: string;
  fetch?: FetchFn;
  retry?: Partial<RetryPolicy>;
  /** Aborts waits and requests (shutdown). */
  signal?: AbortSignal;
  /** Sent with every request (the page sends the proxy's session key). */
  headers?: Record<string, string>;
  /** Called before each retry, for logs. */
  onRetry?: (what: string, attempt: number, delayMs: number, reason: string) => void;
}

/** The backoff before retry `attempt` (1-based): base·2^(attempt−1), capped, times a jitter in [0.5, 1). */
export function backoffMs(policy: RetryPolicy, attempt: number, rand: () => number = Math.random): number {
  return Math.min(policy.maxMs, policy.baseMs * 2 ** (attempt - 1)) * (0.5 + rand() / 2);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new Aborted());
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new Aborted());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

interface RequestSpec {
  method: "GET" | "POST" | "PUT";
  path: string;
  json?: unknown;
  body?: Uint8Array;
  headers?: Record<string, string>;
  /** The lease this write is under: a 409 becomes LeaseLost. */
  leaseId?: string;
  retry?: Partial<RetryPolicy>;
  /** Aborts this request and its retries (besides the client's own signal). */
  signal?: AbortSignal;
}

class Retryable extends Error {}

export class WorkerClient {
  readonly base: string;
  private readonly fetchFn: FetchFn;
  private readonly policy: RetryPolicy;

  constructor(private readonly opts: WorkerClientOptions) {
    this.base = opts.server.replace(/\/+$/, "");
    this.fetchFn = opts.fetch ?? ((u, i) => fetch(u, i));
    this.policy = { ...DEFAULT_RETRY, ...opts.retry };
  }

  /** POST /v1/claims: a lease on a group, or null when nothing is waiting (204). */
  async claim(req: ClaimRequest, signal?: AbortSignal): Promise<ClaimResponse | null> {
    const res = await this.request({ method: "POST", path: "/v1/claims", json: req, signal });
    if (res.status === 204) return null;
    return (await res.json()) as ClaimResponse;
  }

  /** POST /v1/leases/:id/heartbeat; returns the Worker's answer (the extended lease, when it sends one). */
  async heartbeat(lease: Lease, progress: HeartbeatRequest["progress"], retry?: Partial<RetryPolicy>, kernels?: HeartbeatRequest["kernels"]): Promise<Partial<Lease>> {
    const body: HeartbeatRequest = { token: lease.token, progress, ...(kernels ? { kernels } : {}) };
    const res = await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/heartbeat`, json: body, leaseId: lease.id, retry });
    const parsed = (await res.json().catch(() => ({}))) as { lease?: Partial<Lease> } & Partial<Lease>;
    return parsed.lease ?? parsed;
  }

  /** POST /v1/leases/:id/metrics (idempotent per run and step). Use MetricsQueue to keep rows until acknowledged. */
  async postMetrics(lease: Lease, rows: MetricRow[]): Promise<void> {
    await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/metrics`, json: { token: lease.token, rows }, leaseId: lease.id });
  }

  /**
   * POST /v1/leases/:id/evals, in as many posts as the Worker's body limit needs (`limits`, from the claim): evals
   * are added to a post while its JSON stays under the limit (one eval per post at the least).
   */
  async postEvals(lease: Lease, evals: EvalsRequest["evals"], limits?: UploadLimits): Promise<void> {
    const max = limits?.max_body_bytes ?? Infinity;
    const posts: EvalsRequest["evals"][] = [];
    let bytes = 0;
    for (const e of evals) {
      const n = limits ? new TextEncoder().encode(JSON.stringify(e)).byteLength + 1 : 0;
      if (!posts.length || bytes + n > max - 1024) {
        posts.push([]);
        bytes = 0;
      }
      posts[posts.length - 1].push(e);
      bytes += n;
    }
    if (!posts.length) posts.push([]); // the Worker answers an empty post (400), as it always did
    for (const p of posts) {
      const body: EvalsRequest = { token: lease.token, evals: p };
      await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/evals`, json: body, leaseId: lease.id });
    }
  }

  /**
   * Stores a checkpoint of any size: one PUT when it fits one part (or the Worker sent no limits), else an upload
   * in parts of the Worker's part size (POST uploads, PUT each part it does not hold yet, POST complete). Every
   * request is retried as usual; a repeated part changes nothing, and a lost answer to complete is answered again.
   */
  async uploadCheckpoint(lease: Lease, runId: string, kind: CheckpointKind, step: number, bytes: Uint8Array, limits?: UploadLimits): Promise<void> {
    if (!limits || bytes.byteLength <= limits.part_bytes) return this.putCheckpoint(lease, runId, kind, step, bytes);
    const base = `/v1/leases/${enc(lease.id)}/uploads`;
    const init: UploadInitRequest = { token: lease.token, run_id: runId, kind, step, bytes: bytes.byteLength };
    const up = (await (await this.request({ method: "POST", path: base, json: init, leaseId: lease.id })).json()) as UploadInitResponse;
    if (up.duplicate || !up.upload_id) return;
    const have = new Set(up.received);
    for (let n = 1; n <= up.n_parts; n++) {
      if (have.has(n)) continue;
      await this.request({
        method: "PUT",
        path: `${base}/${enc(up.upload_id)}/parts/${n}`,
        body: bytes.subarray((n - 1) * up.part_bytes, Math.min(n * up.part_bytes, bytes.byteLength)),
        headers: { "content-type": "application/octet-stream", "x-lease-token": lease.token },
        leaseId: lease.id,
      });
    }
    await this.request({ method: "POST", path: `${base}/${enc(up.upload_id)}/complete`, json: { token: lease.token }, leaseId: lease.id });
  }

  /** POST /v1/leases/:id/checkpoints/:run_id/reject: this resume checkpoint does not load; the lease's resume points without it. */
  async rejectCheckpoint(lease: Lease, runId: string, step: number, error: string): Promise<ResumePoint[]> {
    const body: RejectCheckpointRequest = { token: lease.token, step, error: error.slice(0, 20_000) };
    const res = await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/checkpoints/${enc(runId)}/reject`, json: body, leaseId: lease.id });
    return ((await res.json()) as RejectCheckpointResponse).resume;
  }

  /** PUT /v1/leases/:id/checkpoints/:run_id?kind=&step= with the safetensors bytes. */
  async putCheckpoint(lease: Lease, runId: string, kind: CheckpointKind, step: number, bytes: Uint8Array): Promise<void> {
    await this.request({
      method: "PUT",
      path: `/v1/leases/${enc(lease.id)}/checkpoints/${enc(runId)}?kind=${kind}&step=${step}`,
      body: bytes,
      headers: { "content-type": "application/octet-stream", "x-lease-token": lease.token },
      leaseId: lease.id,
    });
  }

  /** GET a resume checkpoint (ResumePoint.checkpoint_path) under this lease. */
  async getCheckpoint(lease: Lease, checkpointPath: string): Promise<Uint8Array> {
    const res = await this.request({ method: "GET", path: checkpointPath, headers: { "x-lease-token": lease.token }, leaseId: lease.id });
    return new Uint8Array(await res.arrayBuffer());
  }

  /** POST /v1/leases/:id/complete */
  async complete(lease: Lease): Promise<void> {
    await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/complete`, json: { token: lease.token }, leaseId: lease.id });
  }

  /**
   * POST /v1/leases/:id/release: gives the group back without counting a failure (the runner stops, its page or its
   * device was lost); its runs are claimable at once and resume from their checkpoints.
   */
  async release(lease: Lease, reason: string, retry?: Partial<RetryPolicy>): Promise<void> {
    await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/release`, json: { token: lease.token, reason }, leaseId: lease.id, retry });
  }

  /** POST /v1/leases/:id/fail: the group itself failed here (counted once per runner toward MAX_ATTEMPTS). */
  async fail(lease: Lease, error: string, retry?: Partial<RetryPolicy>): Promise<void> {
    await this.request({ method: "POST", path: `/v1/leases/${enc(lease.id)}/fail`, json: { token: lease.token, error }, leaseId: lease.id, retry });
  }

  private async request(spec: RequestSpec): Promise<Response> {
    const policy = { ...this.policy, ...spec.retry };
    const headers: Record<string, string> = { ...this.opts.headers, ...spec.headers };
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let body: BodyInit | undefined;
    if (spec.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(spec.json);
    } else if (spec.body) {
      body = spec.body as unknown as BodyInit;
    }
    const what = `${spec.method} ${spec.path.split("?")[0]}`;
    const signal = spec.signal && this.opts.signal ? AbortSignal.any([spec.signal, this.opts.signal]) : (spec.signal ?? this.opts.signal);
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw new Aborted();
      let retryAfterMs = 0;
      let reason: string;
      try {
        const res = await this.fetchFn(this.base + spec.path, { method: spec.method, headers, body, signal });
        if (res.ok) return res;
        const err = await readError(res);
        // 404 naming the lease: it is gone with its sweep (DELETE /v1/sweeps/:id), as lost as a 409's.
        if ((res.status === 409 || (res.status === 404 && err.field === "lease_id")) && spec.leaseId) throw new LeaseLost(spec.leaseId, err.message);
        if (res.status >= 500 || res.status === 429) {
          const ra = Number(res.headers.get("retry-after"));
          if (ra > 0) retryAfterMs = Math.min(policy.maxMs, ra * 1000);
          throw new Retryable(`HTTP ${res.status}: ${err.message}`);
        }
        throw new ApiError(res.status, err.code, `${what}: HTTP ${res.status}: ${err.message}`, err.field);
      } catch (e) {
        if (e instanceof LeaseLost || e instanceof ApiError) throw e;
        if (signal?.aborted) throw new Aborted();
        reason = e instanceof Error ? e.message : String(e);
      }
      if (attempt >= policy.maxAttempts) throw new Error(`${what}: gave up after ${attempt} attempts: ${reason}`);
      const delay = Math.max(retryAfterMs, backoffMs(policy, attempt));
      this.opts.onRetry?.(what, attempt, delay, reason);
      await sleep(delay, signal);
    }
  }
}

const enc = encodeURIComponent;

async function readError(res: Response): Promise<{ code: string; message: string; field?: string }> {
  const text = await res.text().catch(() => "");
  try {
    const parsed = JSON.parse(text) as ErrorBody;
    if (parsed?.error?.message) return parsed.error;
  } catch {
    // not JSON: fall through
  }
  return { code: `http_${res.status}`, message: text.slice(0, 300) || res.statusText };
}

/**
 * Step-metric rows of one lease, kept in order until the Worker acknowledges them. One post in flight at a time
 * (so rows are never reordered); transient failures are retried inside the client, so what ends the queue is a
 * LeaseLost (the loop drops the group), an ApiError, or an abort; `error` says which, and the unsent rows stay.
 */
export class MetricsQueue {
  private rows: MetricRow[] = [];
  private sending: Promise<void> | null = null;
  private failure: Error | null = null;
  acknowledged = 0;

  constructor(
    private readonly client: WorkerClient,
    private readonly lease: Lease,
    private readonly maxRowsPerPost = 500,
  ) {}

  /** Rows not yet acknowledged. */
  get pending(): number {
    return this.rows.length;
  }

  /** Why the queue stopped (LeaseLost, ApiError, Aborted), or null. */
  get error(): Error | null {
    return this.failure;
  }

  push(rows: MetricRow[]): void {
    if (rows.length === 0) return;
    this.rows.push(...rows);
    this.kick();
  }

  /** Resolves when every pushed row is acknowledged; throws what stopped the queue. */
  async flush(): Promise<void> {
    while (this.sending) await this.sending;
    if (this.failure) throw this.failure;
  }

  private kick(): void {
    if (this.sending || this.failure) return;
    this.sending = this.drain().finally(() => {
      this.sending = null;
      if (this.rows.length > 0 && !this.failure) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.rows.length > 0) {
      const batch = this.rows.slice(0, this.maxRowsPerPost);
      try {
        await this.client.postMetrics(this.lease, batch);
      } catch (e) {
        this.failure = e instanceof Error ? e : new Error(String(e));
        return;
      }
      this.rows.splice(0, batch.length);
      this.acknowledged += batch.length;
    }
  }
}
