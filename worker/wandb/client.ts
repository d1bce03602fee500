/**
 * A small fetch-based Weights & Biases client that runs inside a Worker (no Node APIs), speaking the same HTTP
 * protocol as W&B's own client (../shared/WANDB.md): GraphQL `UpsertBucket` to create or update a run, and the
 * run's `file_stream` for history lines, the summary, heartbeats and completion. Retries follow W&B's policy.
 */
import { wandbJson } from "./json";

export const DEFAULT_BASE_URL = "https://api.wandb.ai";
/** W&B accepts about 10 MiB per request (and per line). */
export const MAX_REQUEST_BYTES = 10 * 1024 * 1024;
/** At most this many history lines per file_stream push. */
export const MAX_LINES_PER_PUSH = 10_000;
const HISTORY_FILE = "wandb-history.jsonl";
const SUMMARY_FILE = "wandb-summary.json";
/** Room for the request's envelope around the history lines (file names, offset, flags). */
const ENVELOPE_BYTES = 1024;

/** Statuses W&B's client never retries (filestream and GraphQL alike; GraphQL does retry 409). */
const NEVER_RETRY = new Set([400, 401, 403, 404, 409, 410, 413, 422, 501]);

export type WandbOp = "graphql" | "file_stream";

/** A failed W&B call, with what the server said, so the consumer can store and show it. */
export class WandbError extends Error {
  constructor(
    readonly op: WandbOp,
    /** HTTP status; null when no response came (network error) or the request was refused before sending. */
    readonly status: number | null,
    /** The response body (or the network error's message), cut to 2,000 characters. */
    readonly body: string,
    /** Whether trying again later may succeed (429, 5xx, network errors, or retries exhausted on those). */
    readonly retryable: boolean,
    readonly attempts: number,
    /** Server-requested wait (Retry-After) longer than the client was willing to sleep. */
    readonly retryAfterMs?: number,
  ) {
    super(`W&B ${op} failed${status === null ? "" : ` with HTTP ${status}`} after ${attempts} attempt(s): ${body}`);
    this.name = "WandbError";
  }
}

export interface WandbClientOptions {
  apiKey: string;
  /** WANDB_BASE_URL; default https://api.wandb.ai. */
  baseUrl?: string;
  fetch?: typeof fetch;
  /** Injected so tests never wait. */
  sleep?: (ms: number) => Promise<void>;
  /** Unix ms; used to read HTTP-date Retry-After headers. */
  now?: () => number;
  /** In [0, 1); the backoff jitter. */
  random?: () => number;
  /** Tries per request, the first included (default 6: waits of ~2, 4, 8, 16, 32 s). */
  maxAttempts?: number;
  /** The longest single wait the client sleeps through; a longer Retry-After is returned as an error (default 60 s). */
  maxWaitMs?: number;
}

/** Where a run lives on W&B. */
export interface WandbRunRef {
  entity: string;
  project: string;
  /** The run id used in URLs (lowercase base-36). */
  name: string;
}

export interface UpsertRunInput {
  name: string;
  project: string;
  /** null: the API key's default entity, read back from the reply. */
  entity: string | null;
  displayName?: string;
  groupName?: string;
  jobType?: string;
  tags?: string[];
  /** Plain config; each top-level key is sent wrapped as {"value": v}, as W&B's client does. */
  config?: Record<string, unknown>;
}

export interface UpsertedRun extends WandbRunRef {
  url: string;
  /** How many history lines W&B holds: where the history continues. */
  historyLineCount: number;
  inserted: boolean;
}

export interface FileStreamUpdate {
  /** Encoded history lines (see rows.ts), the first at 0-based line `offset`; consecutive. */
  history?: { offset: number; lines: string[] };
  /** The whole summary (W&B keeps only the last one sent). */
  summary?: Record<string, unknown>;
  /** Marks the run finished once everything before it is accepted. */
  complete?: { exitCode: number };
}

/** The GraphQL mutation W&B's client sends (core/api/graphql/mutation_run.graphql), trimmed to what we use. */
export const UPSERT_BUCKET = `mutation UpsertBucket(
  $id: String, $name: String, $project: String, $entity: String, $groupName: String, $description: String,
  $displayName: String, $notes: String, $commit: String, $config: JSONString, $host: String, $debug: Boolean,
  $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, $tags: [String!],
  $summaryMetrics: JSONString
) {
  upsertBucket(input: {
    id: $id, name: $name, groupName: $groupName, modelName: $project, entityName: $entity,
    description: $description, displayName: $displayName, notes: $notes, config: $config, commit: $commit,
    host: $host, debug: $debug, jobProgram: $program, jobRepo: $repo, jobType: $jobType, state: $state,
    sweep: $sweep, tags: $tags, summaryMetrics: $summaryMetrics
  }) {
    bucket {
      id name displayName description sweepName
      project { id name entity { id name } }
      historyLineCount
    }
    inserted
  }
}`;

/** W&B run ids: lowercase base-36, so none of the characters W&B refuses (`:;,#?/'`) can occur. */
export const RUN_NAME_PATTERN = /^[a-z0-9]{1,64}$/;

/** The app URL for an API base URL: api.wandb.ai → wandb.ai; self-hosted api.X → app.X; otherwise the same. */
export function appUrlFor(baseUrl: string): string {
  const url = new URL(baseUrl);
  if (url.hostname.startsWith("api.wandb.")) url.hostname = url.hostname.slice("api.".length);
  else if (url.hostname.startsWith("api.")) url.hostname = `app.${url.hostname.slice("api.".length)}`;
  return url.origin + url.pathname.replace(/\/+$/, "");
}

export function runUrl(baseUrl: string, run: WandbRunRef): string {
  const seg = encodeURIComponent;
  return `${appUrlFor(baseUrl)}/${seg(run.entity)}/${seg(run.project)}/runs/${seg(run.name)}`;
}

/** Each top-level key wrapped {"value": v}, as a JSON string (the JSONString GraphQL scalar). */
export function wrapConfig(config: Record<string, unknown>): string {
  const wrapped: Record<string, { value: unknown }> = {};
  for (const [k, v] of Object.entries(config)) if (v !== undefined) wrapped[k] = { value: v };
  return wandbJson(wrapped);
}

/** 2 s·2ⁿ plus 0–25 % jitter, capped at 60 s (n = 0 for the first retry). */
export function backoffMs(retry: number, random: () => number): number {
  const base = Math.min(2000 * 2 ** retry, 60_000);
  return Math.min(base * (1 + 0.25 * random()), 60_000);
}

/** Retry-After in ms (delta-seconds or an HTTP date), or null when absent or unreadable. */
export function parseRetryAfter(header: string | null, now: number): number | null {
  if (header === null || header.trim() === "") return null;
  const s = header.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const at = Date.parse(s);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

export function isRetryable(status: number, op: WandbOp): boolean {
  if (status === 409 && op === "graphql") return true;
  return !NEVER_RETRY.has(status);
}

const utf8 = new TextEncoder();

export class WandbClient {
  readonly baseUrl: string;
  private readonly auth: string;
  private readonly fetchFn: typeof fetch;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly maxAttempts: number;
  private readonly maxWaitMs: number;

  constructor(opts: WandbClientOptions) {
    if (!opts.apiKey) throw new Error("WANDB_API_KEY is empty: set it as a Worker secret to forward runs to W&B");
    this.baseUrl = (opts.baseUrl || DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.auth = `Basic ${btoa(`api:${opts.apiKey}`)}`;
    this.fetchFn = opts.fetch ?? ((input, init) => fetch(input, init));
    this.sleep = opts.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.maxAttempts = opts.maxAttempts ?? 6;
    this.maxWaitMs = opts.maxWaitMs ?? 60_000;
  }

  /** Creates the run, or updates it when it exists (same entity/project/name). */
  async upsertRun(input: UpsertRunInput): Promise<UpsertedRun> {
    if (!RUN_NAME_PATTERN.test(input.name)) {
      throw new WandbError("graphql", null, `run name ${JSON.stringify(input.name)} is not lowercase base-36`, false, 0);
    }
    const variables: Record<string, unknown> = {
      name: input.name,
      project: input.project,
      entity: input.entity,
      displayName: input.displayName ?? null,
      groupName: input.groupName ?? null,
      jobType: input.jobType ?? null,
      tags: input.tags ?? null,
      config: input.config ? wrapConfig(input.config) : null,
    };
    const text = await this.post("graphql", "/graphql", JSON.stringify({ operationName: "UpsertBucket", query: UPSERT_BUCKET, variables }));
    let reply: any;
    try {
      reply = JSON.parse(text);
    } catch {
      throw new WandbError("graphql", 200, `unreadable reply: ${cut(text)}`, true, 1);
    }
    if (Array.isArray(reply?.errors) && reply.errors.length > 0) {
      throw new WandbError("graphql", 200, cut(JSON.stringify(reply.errors)), false, 1);
    }
    const bucket = reply?.data?.upsertBucket?.bucket;
    const entity = bucket?.project?.entity?.name;
    if (typeof bucket?.name !== "string" || typeof entity !== "string") {
      throw new WandbError("graphql", 200, `reply without bucket.name and project.entity.name: ${cut(text)}`, false, 1);
    }
    const ref = { entity, project: bucket.project.name ?? input.project, name: bucket.name };
    return {
      ...ref,
      url: runUrl(this.baseUrl, ref),
      historyLineCount: Number(bucket.historyLineCount ?? 0),
      inserted: Boolean(reply.data.upsertBucket.inserted),
    };
  }

  /**
   * Sends history lines, the summary and/or completion, split into requests of ≤ 10,000 lines and ≤ 10 MiB.
   * The summary and completion ride on the last request, so they are accepted only after every line.
   * Returns the number of requests made.
   */
  async push(run: WandbRunRef, update: FileStreamUpdate): Promise<number> {
    const lines = update.history?.lines ?? [];
    const offset0 = update.history?.offset ?? 0;
    const chunks: Array<{ offset: number; content: string[]; bytes: number }> = [];
    for (let i = 0; i < lines.length; i++) {
      const bytes = utf8.encode(JSON.stringify(lines[i])).length + 1;
      if (bytes > MAX_REQUEST_BYTES - ENVELOPE_BYTES) {
        throw new WandbError("file_stream", null, `history line at offset ${offset0 + i} is ${bytes} bytes; W&B takes at most ~10 MiB`, false, 0);
      }
      const cur = chunks[chunks.length - 1];
      if (!cur || cur.content.length >= MAX_LINES_PER_PUSH || cur.bytes + bytes > MAX_REQUEST_BYTES - ENVELOPE_BYTES) {
        chunks.push({ offset: offset0 + i, content: [lines[i]], bytes });
      } else {
        cur.content.push(lines[i]);
        cur.bytes += bytes;
      }
    }

    const history = chunks.map((c) => ({ offset: c.offset, content: c.content }));
    const bodies: string[] = history.map((h) => JSON.stringify({ files: { [HISTORY_FILE]: h } }));
    const tail: Record<string, unknown> = {};
    if (update.summary) tail.files = { [SUMMARY_FILE]: { offset: 0, content: [wandbJson(update.summary)] } };
    if (update.complete) {
      tail.complete = true;
      tail.exitcode = update.complete.exitCode;
    }
    if (Object.keys(tail).length > 0) {
      const last = history.length > 0 ? { files: { [HISTORY_FILE]: history[history.length - 1] } } : null;
      const merged = last ? { ...tail, files: { ...last.files, ...((tail.files as object) ?? {}) } } : tail;
      const body = JSON.stringify(merged);
      if (last && utf8.encode(body).length <= MAX_REQUEST_BYTES) bodies[bodies.length - 1] = body;
      else bodies.push(JSON.stringify(tail));
    }
    const path = fileStreamPath(run);
    for (const body of bodies) await this.post("file_stream", path, body);
    return bodies.length;
  }

  appendHistory(run: WandbRunRef, offset: number, lines: string[]): Promise<number> {
    return this.push(run, { history: { offset, lines } });
  }

  writeSummary(run: WandbRunRef, summary: Record<string, unknown>): Promise<number> {
    return this.push(run, { summary });
  }

  /** Marks the run finished: exit code 0 is success, anything else shows the run as failed. */
  finish(run: WandbRunRef, exitCode: number): Promise<number> {
    return this.push(run, { complete: { exitCode } });
  }

  /** An empty file_stream request: keeps an idle run from being marked crashed (send about every 30 s). */
  async heartbeat(run: WandbRunRef): Promise<void> {
    await this.post("file_stream", fileStreamPath(run), "{}");
  }

  /** POST with W&B's retry policy; returns the 2xx body or throws a WandbError. */
  private async post(op: WandbOp, path: string, body: string): Promise<string> {
    for (let attempt = 1; ; attempt++) {
      let status: number | null = null;
      let text: string;
      let retryAfter: number | null = null;
      try {
        const res = await this.fetchFn(this.baseUrl + path, {
          method: "POST",
          headers: { authorization: this.auth, "content-type": "application/json" },
          body,
        });
        status = res.status;
        text = await res.text();
        if (res.ok) return text;
        retryAfter = parseRetryAfter(res.headers.get("retry-after"), this.now());
      } catch (err) {
        // No (whole) response: a dropped connection or a reset. W&B's client retries these.
        if (status !== null) text = `response body lost: ${String(err)}`;
        else text = `network error: ${err instanceof Error ? err.message : String(err)}`;
        if (status !== null && status >= 200 && status < 300) status = null;
      }
      if (status !== null && !isRetryable(status, op)) throw new WandbError(op, status, cut(text), false, attempt);
      if (attempt >= this.maxAttempts) throw new WandbError(op, status, cut(text), true, attempt);
      const wait = retryAfter ?? backoffMs(attempt - 1, this.random);
      if (wait > this.maxWaitMs) throw new WandbError(op, status, cut(text), true, attempt, wait);
      await this.sleep(wait);
    }
  }
}

function fileStreamPath(run: WandbRunRef): string {
  const seg = encodeURIComponent;
  return `/files/${seg(run.entity)}/${seg(run.project)}/${seg(run.name)}/file_stream`;
}

function cut(s: string): string {
  return s.length > 2000 ? `${s.slice(0, 2000)}…` : s;
}
