/**
 * A local stand-in for api.wandb.ai that speaks the HTTP protocol W&B's own client speaks (read from wandb/wandb:
 * core/api/graphql/mutation_run.graphql for UpsertBucket, core/internal/filestream for file_stream), and records
 * what each run received: config, tags, history lines by offset (a resent offset overwrites, as on W&B), the
 * summary, completion. It is stricter than W&B where that catches our mistakes: it refuses history gaps and
 * unwrapped configs, and notes every `_step` that does not increase.
 *
 * Faults can be injected per endpoint: an HTTP status (429 with Retry-After, 500, 400...), a connection dropped
 * before the request is applied, or one dropped after it was applied (the reply is lost).
 *
 * In tests: `const w = await WandbStandin.start({ apiKey })`. As a process (for wrangler dev):
 * `node --import tsx test/wandb/standin.ts [--port 0] [--key KEY]` prints `{"url": ...}` and serves
 * GET /_standin/runs, POST /_standin/faults (a Fault or a list), POST /_standin/reset.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pathToFileURL } from "node:url";
import { parseWandbJson } from "../../worker/wandb/json";

export interface StandinRun {
  entity: string;
  project: string;
  name: string;
  upserts: number;
  displayName: string | null;
  groupName: string | null;
  jobType: string | null;
  tags: string[];
  /** The config as sent: a JSON string whose top-level values are {"value": v}. */
  configRaw: string | null;
  /** The config unwrapped. */
  config: Record<string, unknown> | null;
  /** History lines by offset, as received (strings). */
  history: string[];
  summary: Record<string, unknown> | null;
  complete: boolean;
  exitcode: number | null;
  fileStreamRequests: number;
  heartbeats: number;
  /** Requests that wrote a line over an existing one (a resend). */
  overwrites: number;
  /** Protocol breaches the stand-in saw (a real server would accept some of them silently). */
  violations: string[];
}

export type FaultTarget = "graphql" | "file_stream" | "any";
export type Fault =
  | { on: FaultTarget; kind: "status"; status: number; retryAfter?: string; body?: string }
  /** Closes the connection without applying the request or replying. */
  | { on: FaultTarget; kind: "drop" }
  /** Applies the request, then closes the connection without replying. */
  | { on: FaultTarget; kind: "drop-after-apply" };

export interface StandinRequest {
  op: "graphql" | "file_stream" | "other";
  path: string;
  status: number | "dropped";
  authorization: string | null;
  fault?: Fault["kind"];
}

export interface StandinOptions {
  apiKey: string;
  /** The entity a run gets when the upsert's entity is null. */
  defaultEntity?: string;
  port?: number;
}

const RUN_NAME = /^[a-z0-9]{1,64}$/;
const MAX_BODY_BYTES = 10 * 1024 * 1024 + 64 * 1024;
const MAX_LINES = 10_000;

export class WandbStandin {
  readonly runs = new Map<string, StandinRun>();
  readonly requests: StandinRequest[] = [];
  private faults: Fault[] = [];

  private constructor(
    private readonly server: Server,
    readonly url: string,
    private readonly opts: Required<Omit<StandinOptions, "port">>,
  ) {}

  static async start(options: StandinOptions): Promise<WandbStandin> {
    const opts = { apiKey: options.apiKey, defaultEntity: options.defaultEntity ?? "standin-user" };
    let standin: WandbStandin | undefined;
    const server = createServer((req, res) => {
      standin!.handle(req, res).catch((err) => {
        if (!res.headersSent) reply(res, 500, { errors: [{ message: String(err) }] });
      });
    });
    await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    standin = new WandbStandin(server, `http://127.0.0.1:${port}`, opts);
    return standin;
  }

  /** Queues faults; each is used by the next request it matches, once. */
  inject(...faults: Fault[]): void {
    this.faults.push(...faults);
  }

  pendingFaults(): number {
    return this.faults.length;
  }

  run(entity: string, project: string, name: string): StandinRun | undefined {
    return this.runs.get(key(entity, project, name));
  }

  /** History lines parsed (bare NaN/Infinity allowed). */
  historyOf(run: StandinRun): Array<Record<string, unknown>> {
    return run.history.map((l) => parseWandbJson(l) as Record<string, unknown>);
  }

  reset(): void {
    this.runs.clear();
    this.requests.length = 0;
    this.faults = [];
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve, reject) => this.server.close((err) => (err ? reject(err) : resolve())));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const body = await readBody(req);
    if (path.startsWith("/_standin/")) return this.control(req.method ?? "GET", path, body, res);

    const fileStream = /^\/files\/([^/]+)\/([^/]+)\/([^/]+)\/file_stream$/.exec(path);
    const op = path === "/graphql" ? "graphql" : fileStream ? "file_stream" : "other";
    const record: StandinRequest = { op, path, status: 0, authorization: req.headers.authorization ?? null };
    this.requests.push(record);

    const fi = op === "other" ? -1 : this.faults.findIndex((f) => f.on === "any" || f.on === op);
    const fault = fi >= 0 ? this.faults.splice(fi, 1)[0] : undefined;
    if (fault) record.fault = fault.kind;
    if (fault?.kind === "drop") {
      record.status = "dropped";
      req.socket.destroy();
      return;
    }
    if (fault?.kind === "status") {
      record.status = fault.status;
      const headers: Record<string, string> = fault.retryAfter !== undefined ? { "retry-after": fault.retryAfter } : {};
      reply(res, fault.status, fault.body ?? { error: `injected ${fault.status}` }, headers);
      return;
    }

    let status: number;
    let out: unknown;
    if (req.method !== "POST") [status, out] = [405, { error: "POST only" }];
    else if (!this.authorized(req.headers.authorization)) [status, out] = [401, { errors: [{ message: "user is not logged in" }] }];
    else if (body.length > MAX_BODY_BYTES) [status, out] = [413, { error: "request too large" }];
    else if (op === "graphql") [status, out] = this.graphql(body);
    else if (fileStream) {
      const [, e, p, n] = fileStream.map((s) => decodeURIComponent(s));
      [status, out] = this.fileStream(e, p, n, body);
    } else [status, out] = [404, { error: `no route ${path}` }];

    record.status = status;
    if (fault?.kind === "drop-after-apply") {
      record.status = "dropped";
      req.socket.destroy();
      return;
    }
    reply(res, status, out);
  }

  private authorized(header: string | undefined): boolean {
    const m = /^Basic ([A-Za-z0-9+/=]+)$/.exec(header ?? "");
    if (!m) return false;
    return Buffer.from(m[1], "base64").toString("utf8") === `api:${this.opts.apiKey}`;
  }

  private graphql(body: string): [number, unknown] {
    let req: { query?: unknown; variables?: Record<string, unknown> };
    try {
      req = JSON.parse(body);
    } catch {
      return [400, { errors: [{ message: "body is not JSON" }] }];
    }
    if (typeof req.query !== "string" || !/mutation\s+UpsertBucket\s*\(/.test(req.query) || !/upsertBucket\s*\(\s*input\s*:/.test(req.query)) {
      return [400, { errors: [{ message: "the stand-in only answers the UpsertBucket mutation" }] }];
    }
    const v = req.variables ?? {};
    const name = v.name;
    if (typeof name !== "string" || !RUN_NAME.test(name)) {
      return [200, { errors: [{ message: `invalid run name ${JSON.stringify(name)}`, path: ["upsertBucket"] }], data: { upsertBucket: null } }];
    }
    if (typeof v.project !== "string" || v.project === "") {
      return [200, { errors: [{ message: "project is required" }], data: { upsertBucket: null } }];
    }
    const entity = typeof v.entity === "string" && v.entity !== "" ? v.entity : this.opts.defaultEntity;
    let config: Record<string, unknown> | null = null;
    if (v.config !== undefined && v.config !== null) {
      if (typeof v.config !== "string") return [400, { errors: [{ message: "config must be a JSONString" }] }];
      let parsed: unknown;
      try {
        parsed = parseWandbJson(v.config);
      } catch {
        return [400, { errors: [{ message: "config is not JSON" }] }];
      }
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        return [400, { errors: [{ message: "config must be a JSON object" }] }];
      }
      config = {};
      for (const [k, w] of Object.entries(parsed)) {
        if (typeof w !== "object" || w === null || !("value" in w)) {
          return [400, { errors: [{ message: `config key ${k} is not wrapped as {"value": ...}` }] }];
        }
        config[k] = (w as { value: unknown }).value;
      }
    }
    if (v.tags !== undefined && v.tags !== null && (!Array.isArray(v.tags) || v.tags.some((t) => typeof t !== "string"))) {
      return [400, { errors: [{ message: "tags must be [String!]" }] }];
    }

    const k = key(entity, v.project, name);
    let run = this.runs.get(k);
    const inserted = !run;
    if (!run) {
      run = {
        entity, project: v.project, name, upserts: 0, displayName: null, groupName: null, jobType: null, tags: [],
        configRaw: null, config: null, history: [], summary: null, complete: false, exitcode: null,
        fileStreamRequests: 0, heartbeats: 0, overwrites: 0, violations: [],
      };
      this.runs.set(k, run);
    }
    run.upserts++;
    if (typeof v.displayName === "string") run.displayName = v.displayName;
    if (typeof v.groupName === "string") run.groupName = v.groupName;
    if (typeof v.jobType === "string") run.jobType = v.jobType;
    if (Array.isArray(v.tags)) run.tags = v.tags as string[];
    if (config) [run.configRaw, run.config] = [v.config as string, config];
    return [200, {
      data: {
        upsertBucket: {
          bucket: {
            id: Buffer.from(`Run:v1:${name}:${v.project}:${entity}`).toString("base64"),
            name,
            displayName: run.displayName,
            description: null,
            sweepName: null,
            project: { id: Buffer.from(`Project:${v.project}`).toString("base64"), name: v.project, entity: { id: "e1", name: entity } },
            historyLineCount: run.history.length,
          },
          inserted,
        },
      },
    }];
  }

  private fileStream(entity: string, project: string, name: string, body: string): [number, unknown] {
    const run = this.runs.get(key(entity, project, name));
    if (!run) return [404, { error: `run ${entity}/${project}/${name} not found` }];
    let req: { files?: Record<string, { offset?: unknown; content?: unknown }>; complete?: unknown; exitcode?: unknown };
    try {
      req = JSON.parse(body);
    } catch {
      return [400, { error: "body is not JSON" }];
    }
    run.fileStreamRequests++;
    const files = req.files ?? {};
    if (Object.keys(files).length === 0 && req.complete === undefined) run.heartbeats++;
    if (run.complete && (Object.keys(files).length > 0)) run.violations.push("data sent after the run completed");

    for (const [file, chunk] of Object.entries(files)) {
      const { offset, content } = chunk ?? {};
      if (!Number.isInteger(offset) || (offset as number) < 0 || !Array.isArray(content) || content.some((c) => typeof c !== "string")) {
        return [400, { error: `${file}: offset must be a non-negative integer and content a list of strings` }];
      }
      const lines = content as string[];
      if (file === "wandb-history.jsonl") {
        const at = offset as number;
        if (lines.length > MAX_LINES) return [400, { error: `more than ${MAX_LINES} lines in one push` }];
        if (at > run.history.length) {
          return [400, { error: `history offset ${at} leaves a gap after line ${run.history.length - 1}` }];
        }
        // Validate the whole push before applying any of it: a refused request changes nothing.
        const parsedLines: Array<Record<string, unknown>> = [];
        for (const [i, line] of lines.entries()) {
          try {
            parsedLines.push(parseWandbJson(line) as Record<string, unknown>);
          } catch {
            return [400, { error: `history line ${at + i} is not JSON` }];
          }
        }
        for (const [i, line] of lines.entries()) {
          const parsed = parsedLines[i];
          for (const f of ["_step", "_timestamp", "_runtime"]) {
            if (typeof parsed[f] !== "number") run.violations.push(`history line ${at + i} has no numeric ${f}`);
          }
          if (!Number.isInteger(parsed._step)) run.violations.push(`history line ${at + i}: _step is not an integer`);
          if (at + i < run.history.length) {
            run.overwrites++;
            if (run.history[at + i] !== line) run.violations.push(`history line ${at + i} overwritten with different content`);
          }
          run.history[at + i] = line;
        }
        const steps = run.history.map((l) => (parseWandbJson(l) as { _step: number })._step);
        for (let i = 1; i < steps.length; i++) {
          if (!(steps[i] > steps[i - 1])) {
            run.violations.push(`_step does not increase at line ${i}: ${steps[i - 1]} then ${steps[i]}`);
            break;
          }
        }
      } else if (file === "wandb-summary.json") {
        if (lines.length !== 1 || offset !== 0) return [400, { error: "the summary is one line at offset 0" }];
        try {
          run.summary = parseWandbJson(lines[0]) as Record<string, unknown>;
        } catch {
          return [400, { error: "summary is not JSON" }];
        }
      }
      // Other files (output.log, wandb-events.jsonl) are accepted and not recorded.
    }
    if (req.complete === true) {
      run.complete = true;
      run.exitcode = typeof req.exitcode === "number" ? req.exitcode : null;
    }
    return [200, { exitcode: null, limits: {} }];
  }

  private control(method: string, path: string, body: string, res: ServerResponse): void {
    if (method === "GET" && path === "/_standin/runs") {
      return reply(res, 200, { runs: [...this.runs.values()], requests: this.requests });
    }
    if (method === "POST" && path === "/_standin/faults") {
      const parsed = JSON.parse(body) as Fault | Fault[];
      this.inject(...(Array.isArray(parsed) ? parsed : [parsed]));
      return reply(res, 200, { pending: this.faults.length });
    }
    if (method === "POST" && path === "/_standin/reset") {
      this.reset();
      return reply(res, 200, { ok: true });
    }
    reply(res, 404, { error: `no control route ${method} ${path}` });
  }
}

function key(entity: string, project: string, name: string): string {
  return `${entity}/${project}/${name}`;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(text);
}

// As a process: serve until terminated; the first stdout line is {"url": ...}.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (flag: string) => {
    const i = process.argv.indexOf(flag);
    return i >= 0 ? process.argv[i + 1] : undefined;
  };
  const standin = await WandbStandin.start({
    apiKey: arg("--key") ?? process.env.WANDB_API_KEY ?? "standin-key",
    port: Number(arg("--port") ?? 0),
    defaultEntity: arg("--entity"),
  });
  console.log(JSON.stringify({ url: standin.url }));
  const stop = () => void standin.close().then(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
