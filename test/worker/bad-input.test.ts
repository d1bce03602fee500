// The bad-input sweep (DESIGN.md "Promises": bad input gets a 4xx naming the field and the reason; nothing is
// half-written). Every route of the Worker is fed malformed JSON and TOML, wrong content types, wrong types, unknown
// keys, missing fields, out-of-range values, bodies over the limit (with and without content-length), wrong tokens,
// unknown ids and stale lease tokens. Each case must answer its 4xx with a JSON error body whose message matches,
// and every D1 table, the R2 object list and the W&B queue must be exactly as before the request.
//
// Table-driven: add a case to CASES (or a route to ROUTES for the auth matrix). `req` builds the request from the
// fixture (a sweep with a completed, a failed, a live and an expired lease), built once in beforeAll.
import { env } from "cloudflare:test";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { encodeFinalCheckpoint, encodeResumeCheckpoint, type SaeWeights } from "../../runner/safetensors";
import type { ClaimResponse } from "../../worker/protocol";
import type { Env } from "../../worker/env";
import { RUNNER, SMALL_SWEEP, SUBMIT, adapter, call, claim, evalBody, json, metricRow, putCheckpoint, resetDb, safetensors, checkpointFor, sent, sleep, submit } from "./helpers";

const UNTRACKED = SMALL_SWEEP + "\ntrack = false\n";

/** What the cases run against (built once; bad requests must leave it untouched). */
interface Fx {
  sweep: string;
  /** SMALL_SWEEP's runs r0..r5 (10 steps each, d_sae 64). */
  runs: string[];
  /** Lease on r0, r1 that completed (metrics, evals and final checkpoints stored). */
  done: ClaimResponse;
  /** Lease on r2, r3 that failed. */
  failed: ClaimResponse;
  /** The live lease on r2..r5 (a metric at step 4 and a resume checkpoint at step 5 of r2 stored). */
  live: ClaimResponse;
  /** A lease of a second sweep that expired (its runs are claimable again). */
  expired: ClaimResponse;
  sweep2: string;
}

interface Req {
  path: string;
  /** The Authorization header's whole value; absent: the route's right token; null: no header. */
  auth?: string | null;
  json?: unknown;
  body?: BodyInit | Uint8Array;
  headers?: Record<string, string>;
  vars?: Partial<Env>;
}

interface Case {
  name: string;
  method: "GET" | "POST" | "PUT" | "DELETE" | "PATCH";
  req: (f: Fx) => Req;
  status: 400 | 401 | 403 | 404 | 409 | 413 | 415;
  /** The error body's code, when the case pins it. */
  code?: string;
  /** The error body's field (the path of the bad value, or "authorization", "body", "content-type", …). */
  field?: string;
  /** What the message must say. */
  message: RegExp;
}

// ---------------------------------------------------------------------------------------------------------------
// Request builders

const TOML = "application/toml";
const JSON_CT = "application/json";
const text = (body: string | Uint8Array, contentType?: string): { body: string | Uint8Array; headers: Record<string, string> } => ({
  body,
  headers: contentType ? { "content-type": contentType } : {},
});
const lease = (f: Fx, which: keyof Pick<Fx, "done" | "failed" | "live" | "expired">) => f[which].lease;
const leasePath = (f: Fx, which: keyof Pick<Fx, "done" | "failed" | "live" | "expired">, rest: string) => `/v1/leases/${lease(f, which).id}/${rest}`;
const live = (f: Fx, rest: string) => leasePath(f, "live", rest);
const r = (f: Fx, i: number) => f.runs[i];

/** A stream with no content-length (sent chunked), of `bytes` bytes of `fill`. */
function chunked(bytes: number, fill = 0x20, chunk = 1 << 20): ReadableStream<Uint8Array> {
  let done = 0;
  return new ReadableStream({
    pull(ctrl) {
      if (done >= bytes) return ctrl.close();
      const n = Math.min(chunk, bytes - done);
      ctrl.enqueue(new Uint8Array(n).fill(fill));
      done += n;
    },
  });
}

/** A JSON body padded with spaces to `bytes` bytes (valid JSON, just too large). */
function padded(value: unknown, bytes: number): string {
  const s = JSON.stringify(value);
  return s + " ".repeat(Math.max(0, bytes - s.length));
}

/** A safetensors file whose header is `header` (stringified), followed by `dataBytes` zero bytes. */
function rawSafetensors(header: unknown, dataBytes: number): Uint8Array {
  const h = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + h.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.byteLength), true);
  out.set(h, 8);
  return out;
}

const heartbeat = (f: Fx, progress: unknown = { step: 5, n_steps: 10 }) => ({ token: lease(f, "live").token, progress });
const metrics = (f: Fx, rows: unknown[]) => ({ token: lease(f, "live").token, rows });
const evals = (f: Fx, list: unknown[]) => ({ token: lease(f, "live").token, evals: list });
const row = (f: Fx, patch: Record<string, unknown> = {}, i = 2, step = 9) => ({ ...metricRow(r(f, i), step), ...patch });
const ev = (f: Fx, patch: Record<string, unknown> = {}, i = 2) => ({ ...evalBody(r(f, i)), ...patch });
const without = <T extends object>(o: T, key: string) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== key));
/** A valid checkpoint of `run` for the query's kind and step (the final one at step 10). */
const validFor = (run: string, query: string) => {
  const q = new URLSearchParams(query);
  const kind = q.get("kind") === "resume" ? "resume" : "final";
  const step = Number(q.get("step") ?? 10);
  return checkpointFor(run, kind, Number.isSafeInteger(step) && step > 0 ? step : 10);
};
const ckpt = (f: Fx, query: string, body?: Uint8Array, extra: Record<string, string> = {}, run = r(f, 2)): Req => ({
  path: `${live(f, `checkpoints/${run}`)}?${query}`,
  body: body ?? validFor(run, query),
  headers: { "x-lease-token": lease(f, "live").token, "content-type": "application/octet-stream", ...extra },
});
const getCkpt = (f: Fx, query: string, token = lease(f, "live").token, run = r(f, 2), which: "live" | "done" | "failed" | "expired" = "live"): Req => ({
  path: `${leasePath(f, which, `checkpoints/${run}`)}?${query}`,
  headers: { "x-lease-token": token },
});

// A fixture of fake ids, only for naming the auth cases.
const FAKE: Fx = (() => {
  const l = (id: string) => ({ lease: { id, token: "tk", expires_at: 0, heartbeat_ms: 0 }, group: { cfgs: [{ run_id: "sw_fake2-r0" }] } }) as unknown as ClaimResponse;
  return { sweep: "sw_fake", sweep2: "sw_fake2", runs: [0, 1, 2, 3, 4, 5].map((i) => `sw_fake-r${i}`), done: l("ls_done"), failed: l("ls_failed"), live: l("ls_live"), expired: l("ls_expired") };
})();

// ---------------------------------------------------------------------------------------------------------------
// The auth matrix: every route, with a request that would succeed (and write, for the writes) with the right token.

interface Route {
  method: Case["method"];
  role: "submit" | "runner";
  req: (f: Fx) => Req;
}

const ROUTES: Route[] = [
  { method: "POST", role: "submit", req: () => ({ path: "/v1/sweeps", ...text(UNTRACKED, TOML) }) },
  { method: "GET", role: "submit", req: () => ({ path: "/v1/sweeps" }) },
  { method: "GET", role: "submit", req: (f) => ({ path: `/v1/sweeps/${f.sweep}` }) },
  { method: "GET", role: "submit", req: (f) => ({ path: `/v1/runs/${r(f, 0)}` }) },
  { method: "GET", role: "submit", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?since=0` }) },
  { method: "GET", role: "submit", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/eval` }) },
  { method: "GET", role: "submit", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/checkpoint` }) },
  { method: "POST", role: "runner", req: () => ({ path: "/v1/claims", json: { runner_id: "bad-input", adapter: adapter() } }) },
  { method: "POST", role: "runner", req: (f) => ({ path: live(f, "heartbeat"), json: heartbeat(f) }) },
  { method: "POST", role: "runner", req: (f) => ({ path: live(f, "metrics"), json: metrics(f, [row(f)]) }) },
  { method: "POST", role: "runner", req: (f) => ({ path: live(f, "evals"), json: evals(f, [ev(f)]) }) },
  { method: "PUT", role: "runner", req: (f) => ckpt(f, "kind=final") },
  { method: "GET", role: "runner", req: (f) => getCkpt(f, "kind=resume") },
  { method: "POST", role: "runner", req: (f) => ({ path: live(f, "complete"), json: { token: lease(f, "live").token } }) },
  { method: "POST", role: "runner", req: (f) => ({ path: live(f, "fail"), json: { token: lease(f, "live").token, error: "boom" } }) },
];

/** "METHOD /v1/leases/:id/checkpoints/:id": a request's route, ids replaced. */
const routeKey = (method: string, path: string) => `${method} ${path.split("?")[0].replace(/\/(sw|ls)_[^/]*/g, "/:id")}`;
const routeName = (rt: Route) => routeKey(rt.method, rt.req(FAKE).path);

const AUTH_CASES: Case[] = ROUTES.flatMap((rt): Case[] => {
  const other = rt.role === "submit" ? RUNNER : SUBMIT;
  const name = routeName(rt);
  const needs = new RegExp(`needs the ${rt.role} token`);
  return [
    { name: `${name}: no Authorization`, method: rt.method, req: (f) => ({ ...rt.req(f), auth: null }), status: 401, code: "unauthorized", field: "authorization", message: /missing bearer token/ },
    { name: `${name}: wrong token`, method: rt.method, req: (f) => ({ ...rt.req(f), auth: "Bearer not-the-token" }), status: 401, field: "authorization", message: /wrong bearer token/ },
    { name: `${name}: the other role's token`, method: rt.method, req: (f) => ({ ...rt.req(f), auth: `Bearer ${other}` }), status: 401, field: "authorization", message: needs },
    { name: `${name}: Basic scheme`, method: rt.method, req: (f) => ({ ...rt.req(f), auth: `Basic ${btoa(`x:${rt.role === "submit" ? SUBMIT : RUNNER}`)}` }), status: 401, field: "authorization", message: /missing bearer token/ },
    { name: `${name}: empty bearer`, method: rt.method, req: (f) => ({ ...rt.req(f), auth: "Bearer    " }), status: 401, field: "authorization", message: /bearer token/ },
  ];
});

// ---------------------------------------------------------------------------------------------------------------
// The cases, route by route.

const sweepCase = (name: string, body: string | Uint8Array, contentType: string | undefined, status: Case["status"], field: string | undefined, message: RegExp, code?: string): Case => ({
  name: `POST /v1/sweeps: ${name}`,
  method: "POST",
  req: () => ({ path: "/v1/sweeps", ...text(body, contentType) }),
  status,
  field,
  message,
  code,
});

const SYNTH = `data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05 }\nn_train = 640\nbatch_size = 64\n`;

const SWEEP_CASES: Case[] = [
  // Malformed bodies.
  sweepCase("malformed TOML", `lr = [1e-3`, TOML, 400, "body", /not valid TOML \(line 1/, "invalid_toml"),
  sweepCase("malformed TOML (bad table)", `[sae\nexp_factor = 2`, TOML, 400, "body", /not valid TOML/, "invalid_toml"),
  sweepCase("duplicate TOML key", `lr = 1e-3\nlr = 2e-3`, TOML, 400, "body", /not valid TOML/, "invalid_toml"),
  sweepCase("malformed JSON", `{"lr": 1e-3,`, JSON_CT, 400, "body", /not valid JSON/, "invalid_json"),
  sweepCase("TOML sent as JSON", UNTRACKED, JSON_CT, 400, "body", /not valid JSON/, "invalid_json"),
  sweepCase("empty body", ``, TOML, 400, "body", /empty/, "empty_body"),
  sweepCase("blank body", `  \n\t `, TOML, 400, "body", /empty/, "empty_body"),
  sweepCase("JSON array", `[1, 2]`, JSON_CT, 400, "body", /must be a table/),
  sweepCase("JSON null", `null`, JSON_CT, 400, "body", /must be a table/),
  sweepCase("JSON string", `"lr = 1"`, JSON_CT, 400, "body", /must be a table/),
  sweepCase("invalid UTF-8", new Uint8Array([0x74, 0x61, 0x67, 0x20, 0x3d, 0x20, 0x22, 0xff, 0xfe, 0x22]), TOML, 400, "body", /UTF-8/),
  // Wrong content types.
  sweepCase("form-encoded", UNTRACKED, "application/x-www-form-urlencoded", 415, "content-type", /application\/toml/, "unsupported_media_type"),
  sweepCase("multipart", UNTRACKED, "multipart/form-data; boundary=x", 415, "content-type", /application\/toml/, "unsupported_media_type"),
  sweepCase("an image", UNTRACKED, "image/png", 415, "content-type", /image\/png/, "unsupported_media_type"),
  sweepCase("octet-stream", UNTRACKED, "application/octet-stream", 415, "content-type", /application\/toml/, "unsupported_media_type"),
  // Unknown keys (prototype names included: they must read as unknown, not crash).
  sweepCase("unknown top-level key", `lrr = 1`, TOML, 400, "lrr", /lrr: unknown key/, "invalid_sweep"),
  sweepCase("unknown nested key", `sae = { expfactor = 2 }`, TOML, 400, "sae.expfactor", /unknown key/),
  sweepCase("unknown data key", `data = { kind = "synthetic", dvit = 2 }`, TOML, 400, "data.dvit", /unknown key/),
  sweepCase("key 'constructor'", `constructor = 1`, TOML, 400, "constructor", /unknown key/),
  sweepCase("key 'toString'", `toString = "x"`, TOML, 400, "toString", /unknown key/),
  sweepCase("key 'hasOwnProperty' in a table", `[sae]\nhasOwnProperty = 1`, TOML, 400, "sae.hasOwnProperty", /unknown key/),
  sweepCase("JSON key '__proto__'", `{"__proto__": {"lr": 1}}`, JSON_CT, 400, "__proto__", /unknown key/),
  sweepCase("JSON key 'constructor' in data", `{"data": {"constructor": {}}}`, JSON_CT, 400, "data.constructor", /unknown key/),
  sweepCase("W&B parameter '__proto__'", `{"parameters": {"__proto__": {"value": {"lr": 5}}}}`, JSON_CT, 400, "__proto__", /unknown key/),
  sweepCase("W&B parameter 'constructor'", `{"parameters": {"constructor": {"value": 1}}}`, JSON_CT, 400, "constructor", /unknown key/),
  sweepCase("W&B unknown top-level key", `{"parameters": {}, "lr": 1}`, JSON_CT, 400, "lr", /unknown key/),
  sweepCase("W&B random method", `{"method": "random", "parameters": {"lr": {"values": [1e-3]}}}`, JSON_CT, 400, "method", /only "grid"/),
  sweepCase("W&B bad parameter spec", `{"parameters": {"lr": 1e-3}}`, JSON_CT, 400, "parameters.lr", /values/),
  // Wrong types.
  sweepCase("lr a string", `lr = "fast"`, TOML, 400, "lr", /lr: .*number/),
  sweepCase("track a number", `track = 1`, TOML, 400, "track", /must be true or false/),
  sweepCase("tags a string", `tags = "a"`, TOML, 400, "tags", /list of strings/),
  sweepCase("tags holding a number", `tags = ["a", 1]`, TOML, 400, "tags", /list of strings|string/),
  sweepCase("sae a number", `sae = 5`, TOML, 400, "sae", /must be a table/),
  sweepCase("data a list of numbers", `data = [1, 2]`, TOML, 400, "data", /must be a table/),
  sweepCase("a date", `lr = 1979-05-27`, TOML, 400, "lr", /number/),
  sweepCase("bad enum", `sae = { kind = "gelu" }`, TOML, 400, "sae.kind", /"relu", "jumprelu", "topk" or "batchtopk"/),
  sweepCase("bad enum in a list", `sae = { kind = ["relu", 5] }`, TOML, 400, "sae.kind[1]", /"relu", "jumprelu", "topk" or "batchtopk"/),
  sweepCase("non-integer exp_factor", `sae = { exp_factor = 2.5 }`, TOML, 400, "sae.exp_factor", /integer/),
  sweepCase("non-integer seed (JSON)", `{"seed": 1.5}`, JSON_CT, 400, "seed", /integer/),
  sweepCase("unsafe integer seed (JSON)", `{"seed": 1e300}`, JSON_CT, 400, "seed", /integer/),
  sweepCase("huge TOML integer", `seed = 99999999999999999999`, TOML, 400, undefined, /seed|TOML/),
  sweepCase("wandb_entity a number", `wandb_entity = 5`, TOML, 400, "wandb_entity", /string|null/),
  sweepCase("a list inside a list of tables", `data = [{ kind = "synthetic", d_vit = [16, 32], n_features = 32, sparsity = 0.1 }]`, TOML, 400, "data[0].d_vit", /list inside a list of tables/),
  // Out of range.
  sweepCase("negative lr", `lr = -1`, TOML, 400, "lr", /> 0/),
  sweepCase("lr = inf", `lr = inf`, TOML, 400, "lr", /finite|number/),
  sweepCase("lr = nan", `lr = nan`, TOML, 400, "lr", /number|NaN/),
  sweepCase("sparsity > 1", SYNTH.replace("0.05", "2"), TOML, 400, "data.sparsity", /<= 1/),
  sweepCase("exp_factor 0", `sae = { exp_factor = 0 }`, TOML, 400, "sae.exp_factor", />= 1/),
  sweepCase("exp_factor too big", `sae = { exp_factor = 4096 }`, TOML, 400, "sae.exp_factor", /<= 1024/),
  sweepCase("d_vit too big", `sae = { d_vit = 100000 }`, TOML, 400, "sae.d_vit", /<= 65536/),
  sweepCase("batch_size 0 (an alias: named as written)", `batch_size = 0`, TOML, 400, "batch_size", /batch_size: must be >= 1/),
  sweepCase("shard_root empty (an alias, in a list of tables)", `data = [{ shard_root = "" }]`, TOML, 400, "data[0].shard_root", /must not be empty/),
  sweepCase("negative n_lr_warmup", `n_lr_warmup = -5`, TOML, 400, "n_lr_warmup", />= 0/),
  sweepCase("too many steps", `n_train = 4_000_000_000_000\nbatch_size = 1`, TOML, 400, "n_patches", /1e9 steps/),
  sweepCase("n_prefixes over d_sae", SYNTH + `sae = { exp_factor = 1 }\nobjective = { kind = "matryoshka", n_prefixes = 64 }`, TOML, 400, "objective.n_prefixes", /<= d_sae \(16\)/),
  sweepCase("empty list", `lr = []`, TOML, 400, "lr", /empty list/),
  sweepCase("too many runs", JSON.stringify({ lr: Array.from({ length: 65 }, (_, i) => (i + 1) * 1e-5), seed: Array.from({ length: 64 }, (_, i) => i) }), JSON_CT, 400, "lr", /4160 runs, more than 4096/, "sweep_too_large"),
  sweepCase("a huge tag", `tag = "${"x".repeat(5000)}"`, TOML, 400, "tag", /at most 256 characters/),
  sweepCase("too many tags", `tags = [${Array.from({ length: 65 }, (_, i) => `"t${i}"`).join(", ")}]`, TOML, 400, "tags", /at most 64/),
  sweepCase("a huge tag in tags", `tags = ["${"x".repeat(300)}"]`, TOML, 400, "tags", /at most 256 characters/),
  sweepCase("a huge wandb_project", `wandb_project = "${"p".repeat(200)}"`, TOML, 400, "wandb_project", /at most 128 characters/),
  sweepCase("empty wandb_project", `wandb_project = ""`, TOML, 400, "wandb_project", /must not be empty/),
  sweepCase("a huge data.url", `data = { url = "https://x/${"u".repeat(5000)}" }`, TOML, 400, "data.url", /at most 4096 characters/),
  // Missing or conflicting keys.
  sweepCase("synthetic data without n_features", `data = { kind = "synthetic", d_vit = 16, sparsity = 0.1 }`, TOML, 400, "data.n_features", /is required for synthetic data/),
  sweepCase("synthetic data without d_vit", `data = { kind = "synthetic", n_features = 16, sparsity = 0.1 }`, TOML, 400, "data.d_vit", /is required/),
  sweepCase("sae.d_vit disagreeing with data.d_vit", SYNTH + `sae = { d_vit = 32 }`, TOML, 400, "sae.d_vit", /must equal data.d_vit \(16\)/),
  sweepCase("shard keys on synthetic data", `data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.1, layer = 3 }`, TOML, 400, "data.layer", /shards/),
  sweepCase("an alias and its name", `n_train = 640\nn_patches = 640`, TOML, 400, "n_train", /alias of n_patches/),
  sweepCase("several problems at once", `lrr = 1\nlr = "x"\nsae = { exp_factor = 0 }`, TOML, 400, "lrr", /lrr: unknown key; lr: .*; sae.exp_factor: must be >= 1/),
  // Over the body limit (1 MiB), with and without content-length.
  {
    name: "POST /v1/sweeps: 1 MiB + 1 with content-length",
    method: "POST",
    req: () => ({ path: "/v1/sweeps", ...text(`tag = "${"x".repeat((1 << 20) - 7)}"`, TOML) }),
    status: 413,
    code: "too_large",
    field: "body",
    message: /larger than 1048576 bytes/,
  },
  {
    name: "POST /v1/sweeps: 2 MiB chunked (no content-length)",
    method: "POST",
    req: () => ({ path: "/v1/sweeps", body: chunked(2 << 20), headers: { "content-type": TOML } }),
    status: 413,
    code: "too_large",
    field: "body",
    message: /larger than 1048576 bytes/,
  },
];

const READ_CASES: Case[] = [
  { name: "GET /v1/sweeps?limit=abc", method: "GET", req: () => ({ path: "/v1/sweeps?limit=abc" }), status: 400, field: "limit", message: /integer in \[1, 1000\]/ },
  { name: "GET /v1/sweeps?limit=0", method: "GET", req: () => ({ path: "/v1/sweeps?limit=0" }), status: 400, field: "limit", message: /integer in \[1, 1000\]/ },
  { name: "GET /v1/sweeps?limit=1001", method: "GET", req: () => ({ path: "/v1/sweeps?limit=1001" }), status: 400, field: "limit", message: /integer in \[1, 1000\]/ },
  { name: "GET /v1/sweeps?limit=2.5", method: "GET", req: () => ({ path: "/v1/sweeps?limit=2.5" }), status: 400, field: "limit", message: /integer/ },
  { name: "GET /v1/sweeps?limit=", method: "GET", req: () => ({ path: "/v1/sweeps?limit=" }), status: 400, field: "limit", message: /integer/ },
  { name: "GET /v1/sweeps/:id unknown", method: "GET", req: () => ({ path: "/v1/sweeps/sw_nope" }), status: 404, code: "not_found", field: "id", message: /sweep sw_nope not found/ },
  { name: "GET /v1/sweeps/:id bad percent-encoding", method: "GET", req: () => ({ path: "/v1/sweeps/sw_%E0%A4%A" }), status: 404, field: "id", message: /not found/ },
  { name: "GET /v1/sweeps/:id a long id", method: "GET", req: () => ({ path: `/v1/sweeps/sw_${"s".repeat(5000)}` }), status: 404, field: "id", message: /not found/ },
  { name: "GET /v1/runs/:id unknown", method: "GET", req: () => ({ path: "/v1/runs/sw_nope-r0" }), status: 404, field: "id", message: /run sw_nope-r0 not found/ },
  { name: "GET /v1/runs/:id a sweep's id", method: "GET", req: (f) => ({ path: `/v1/runs/${f.sweep}` }), status: 404, field: "id", message: /run sw_.* not found/ },
  { name: "GET /v1/runs/:id a group's id", method: "GET", req: (f) => ({ path: `/v1/runs/${f.sweep}-g0` }), status: 404, field: "id", message: /run sw_.*-g0 not found/ },
  { name: "GET /v1/runs/:id bad percent-encoding", method: "GET", req: () => ({ path: "/v1/runs/sw_%ZZ-r0" }), status: 404, field: "id", message: /not found/ },
  { name: "GET /v1/runs/:id/metrics unknown run", method: "GET", req: () => ({ path: "/v1/runs/sw_nope-r0/metrics" }), status: 404, field: "id", message: /run sw_nope-r0 not found/ },
  { name: "GET /v1/runs/:id/metrics?since=abc", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?since=abc` }), status: 400, field: "since", message: /integer/ },
  { name: "GET /v1/runs/:id/metrics?since=1.5", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?since=1.5` }), status: 400, field: "since", message: /integer/ },
  { name: "GET /v1/runs/:id/metrics?since=", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?since=` }), status: 400, field: "since", message: /integer/ },
  { name: "GET /v1/runs/:id/metrics?since=0x10", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?since=0x10` }), status: 400, field: "since", message: /integer/ },
  { name: "GET /v1/runs/:id/metrics?limit=0", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?limit=0` }), status: 400, field: "limit", message: /integer in \[1, 100000\]/ },
  { name: "GET /v1/runs/:id/metrics?limit=100001", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?limit=100001` }), status: 400, field: "limit", message: /integer in \[1, 100000\]/ },
  { name: "GET /v1/runs/:id/metrics?limit=x", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/metrics?limit=x` }), status: 400, field: "limit", message: /integer/ },
  { name: "GET /v1/runs/:id/eval unknown run", method: "GET", req: () => ({ path: "/v1/runs/sw_nope-r0/eval" }), status: 404, field: "id", message: /not found/ },
  { name: "GET /v1/runs/:id/eval of a failed-and-retaken run (none yet)", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 2)}/eval` }), status: 404, field: "id", message: /eval of run .*-r2 not found/ },
  { name: "GET /v1/runs/:id/eval of a run without one", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 4)}/eval` }), status: 404, field: "id", message: /eval of run .* not found/ },
  { name: "GET /v1/runs/:id/checkpoint unknown run", method: "GET", req: () => ({ path: "/v1/runs/sw_nope-r0/checkpoint" }), status: 404, field: "id", message: /not found/ },
  { name: "GET /v1/runs/:id/checkpoint?kind=best", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/checkpoint?kind=best` }), status: 400, field: "kind", message: /"final" or "resume"/ },
  { name: "GET /v1/runs/:id/checkpoint of a run without one", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 4)}/checkpoint` }), status: 404, field: "id", message: /final checkpoint of run .* not found/ },
  { name: "GET /v1/runs/:id/checkpoint?kind=resume with none", method: "GET", req: (f) => ({ path: `/v1/runs/${r(f, 0)}/checkpoint?kind=resume` }), status: 404, field: "id", message: /resume checkpoint/ },
  // Routes and methods that do not exist.
  { name: "GET /v1/nope", method: "GET", req: () => ({ path: "/v1/nope" }), status: 404, code: "not_found", field: "path", message: /no route GET \/v1\/nope/ },
  { name: "DELETE /v1/sweeps/:id unknown sweep", method: "DELETE", req: () => ({ path: "/v1/sweeps/sw_nope" }), status: 404, field: "id", message: /sweep sw_nope not found/ },
  { name: "DELETE /v1/runs/:id", method: "DELETE", req: (f) => ({ path: `/v1/runs/${r(f, 0)}` }), status: 404, field: "path", message: /no route DELETE/ },
  { name: "POST /v1/sweeps/:id", method: "POST", req: (f) => ({ path: `/v1/sweeps/${f.sweep}`, ...text(UNTRACKED, TOML) }), status: 404, field: "path", message: /no route POST/ },
  { name: "PATCH /v1/runs/:id", method: "PATCH", req: (f) => ({ path: `/v1/runs/${r(f, 0)}`, json: {} }), status: 404, field: "path", message: /no route PATCH/ },
  { name: "PUT /v1/claims", method: "PUT", req: () => ({ path: "/v1/claims", json: { runner_id: "x", adapter: adapter() } }), status: 404, field: "path", message: /no route PUT/ },
  { name: "POST /v1/leases/:id/abandon", method: "POST", req: (f) => ({ path: live(f, "abandon"), json: { token: lease(f, "live").token } }), status: 404, field: "path", message: /no route POST/ },
];

const CLAIM = { runner_id: "bad-input", adapter: adapter() };
const claimCase = (name: string, body: unknown, status: Case["status"], field: string | undefined, message: RegExp, code?: string): Case => ({
  name: `POST /v1/claims: ${name}`,
  method: "POST",
  req: () => (typeof body === "string" || body instanceof Uint8Array ? { path: "/v1/claims", ...text(body, JSON_CT) } : { path: "/v1/claims", json: body }),
  status,
  field,
  message,
  code,
});
const limits = (patch: Record<string, unknown>) => ({ ...CLAIM, adapter: { ...CLAIM.adapter, limits: { ...CLAIM.adapter.limits, ...patch } } });

const CLAIM_CASES: Case[] = [
  claimCase("malformed JSON", `{"runner_id": "x",`, 400, "body", /not valid JSON/, "invalid_json"),
  claimCase("empty body", ``, 400, "body", /empty/, "invalid_json"),
  claimCase("invalid UTF-8", new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]), 400, "body", /UTF-8/),
  claimCase("JSON null", `null`, 400, "body", /body: must be an object, got (null|an array)/),
  claimCase("JSON array", `[]`, 400, "body", /body: must be an object, got (null|an array)/),
  claimCase("missing runner_id", { adapter: CLAIM.adapter }, 400, "runner_id", /runner_id: is required/),
  claimCase("runner_id a number", { ...CLAIM, runner_id: 5 }, 400, "runner_id", /must be a string, got number/),
  claimCase("empty runner_id", { ...CLAIM, runner_id: "" }, 400, "runner_id", /is required|must not be empty/),
  claimCase("long runner_id", { ...CLAIM, runner_id: "r".repeat(201) }, 400, "runner_id", /at most 200/),
  claimCase("missing adapter", { runner_id: "x" }, 400, "adapter", /adapter: is required/),
  claimCase("adapter a string", { runner_id: "x", adapter: "gpu" }, 400, "adapter", /must be an object/),
  claimCase("missing limits", { ...CLAIM, adapter: { vendor: "v", architecture: "a" } }, 400, "adapter.limits", /is required/),
  claimCase("missing maxBufferSize", limits({ maxBufferSize: undefined }), 400, "adapter.limits.maxBufferSize", /is required/),
  claimCase("negative maxBufferSize", limits({ maxBufferSize: -1 }), 400, "adapter.limits.maxBufferSize", /> 0/),
  claimCase("maxStorageBufferBindingSize a string", limits({ maxStorageBufferBindingSize: "big" }), 400, "adapter.limits.maxStorageBufferBindingSize", /must be a number, got string/),
  claimCase("fractional limit", limits({ maxBufferSize: 1.5 }), 400, "adapter.limits.maxBufferSize", /integer/),
  claimCase("unsafe integer limit", limits({ maxBufferSize: 1e300 }), 400, "adapter.limits.maxBufferSize", /integer/),
  claimCase("unknown limit", limits({ maxWhatever: 5 }), 400, "adapter.limits.maxWhatever", /unknown key/),
  claimCase("adapter.features not strings", { ...CLAIM, adapter: { ...CLAIM.adapter, features: [1] } }, 400, "adapter.features[0]", /must be a string/),
  claimCase("adapter.isFallbackAdapter a string", { ...CLAIM, adapter: { ...CLAIM.adapter, isFallbackAdapter: "yes" } }, 400, "adapter.isFallbackAdapter", /boolean/),
  claimCase("unknown top-level key", { ...CLAIM, runner: "x" }, 400, "runner", /unknown key/),
  claimCase("unknown adapter key", { ...CLAIM, adapter: { ...CLAIM.adapter, gpu: "x" } }, 400, "adapter.gpu", /unknown key/),
  {
    name: "POST /v1/claims: text/plain",
    method: "POST",
    req: () => ({ path: "/v1/claims", ...text(JSON.stringify(CLAIM), "text/plain") }),
    status: 415,
    code: "unsupported_media_type",
    field: "content-type",
    message: /application\/json/,
  },
  {
    name: "POST /v1/claims: form-encoded",
    method: "POST",
    req: () => ({ path: "/v1/claims", ...text("runner_id=x", "application/x-www-form-urlencoded") }),
    status: 415,
    field: "content-type",
    message: /application\/json/,
  },
  { name: "POST /v1/claims: 64 KiB + 1", method: "POST", req: () => ({ path: "/v1/claims", ...text(padded(CLAIM, (64 << 10) + 1), JSON_CT) }), status: 413, field: "body", message: /larger than 65536/ },
  { name: "POST /v1/claims: 1 MiB chunked", method: "POST", req: () => ({ path: "/v1/claims", body: chunked(1 << 20), headers: { "content-type": JSON_CT } }), status: 413, field: "body", message: /larger than 65536/ },
];

/** Cases every JSON route under a lease shares: malformed, wrong type, unknown lease, stale tokens, too large. */
function leaseJsonCases(route: "heartbeat" | "metrics" | "evals" | "complete" | "fail", good: (f: Fx) => Record<string, unknown>, limit: number): Case[] {
  const name = (s: string) => `POST /v1/leases/:id/${route}: ${s}`;
  const base = (f: Fx, body: unknown, which: "live" | "done" | "failed" | "expired" = "live"): Req => ({ path: leasePath(f, which, route), json: body });
  const withToken = (f: Fx, token: unknown) => ({ ...good(f), token });
  return [
    { name: name("malformed JSON"), method: "POST", req: (f) => ({ path: live(f, route), ...text(`{"token": "${lease(f, "live").token}"`, JSON_CT) }), status: 400, code: "invalid_json", field: "body", message: /not valid JSON/ },
    { name: name("empty body"), method: "POST", req: (f) => ({ path: live(f, route), ...text("", JSON_CT) }), status: 400, field: "body", message: /empty/ },
    { name: name("JSON null"), method: "POST", req: (f) => base(f, null), status: 400, field: "body", message: /body: must be an object, got null/ },
    { name: name("JSON number"), method: "POST", req: (f) => base(f, 5), status: 400, field: "body", message: /body: must be an object, got number/ },
    { name: name("text/plain"), method: "POST", req: (f) => ({ path: live(f, route), ...text(JSON.stringify(good(f)), "text/plain;charset=UTF-8") }), status: 415, code: "unsupported_media_type", field: "content-type", message: /application\/json/ },
    { name: name("multipart"), method: "POST", req: (f) => ({ path: live(f, route), ...text("--x--", "multipart/form-data; boundary=x") }), status: 415, field: "content-type", message: /application\/json/ },
    { name: name("missing token"), method: "POST", req: (f) => base(f, without(good(f), "token")), status: 400, field: "token", message: /token: is required/ },
    { name: name("token a number"), method: "POST", req: (f) => base(f, withToken(f, 5)), status: 400, field: "token", message: /token: must be a string, got number/ },
    { name: name("empty token"), method: "POST", req: (f) => base(f, withToken(f, "")), status: 400, field: "token", message: /token: is required/ },
    { name: name("unknown key"), method: "POST", req: (f) => base(f, { ...good(f), extra: 1 }), status: 400, field: "extra", message: /extra: unknown key/ },
    { name: name("unknown lease"), method: "POST", req: (f) => ({ path: `/v1/leases/ls_nope/${route}`, json: good(f) }), status: 404, code: "not_found", field: "lease_id", message: /lease ls_nope not found/ },
    { name: name("another lease's token"), method: "POST", req: (f) => base(f, withToken(f, lease(f, "done").token)), status: 409, code: "stale_lease", field: "token", message: /does not match lease/ },
    // The good body (for the live lease's runs) sent to the leases that are over: their own tokens are stale now.
    ...(route === "complete" || route === "fail"
      ? []
      : ([
          { name: name("a completed lease"), method: "POST", req: (f) => base(f, withToken(f, lease(f, "done").token), "done"), status: 409, code: "stale_lease", field: "token", message: /is completed/ },
          { name: name("a failed lease"), method: "POST", req: (f) => base(f, withToken(f, lease(f, "failed").token), "failed"), status: 409, code: "stale_lease", field: "token", message: /is failed/ },
        ] satisfies Case[])),
    { name: name("an expired lease"), method: "POST", req: (f) => base(f, withToken(f, lease(f, "expired").token), "expired"), status: 409, code: "stale_lease", field: "token", message: /expired at/ },
    { name: name(`${limit} bytes + 1`), method: "POST", req: (f) => ({ path: live(f, route), ...text(padded(good(f), limit + 1), JSON_CT) }), status: 413, code: "too_large", field: "body", message: new RegExp(`larger than ${limit} bytes`) },
    { name: name("chunked, over the limit"), method: "POST", req: (f) => ({ path: live(f, route), body: chunked(limit + (1 << 20)), headers: { "content-type": JSON_CT } }), status: 413, code: "too_large", field: "body", message: new RegExp(`larger than ${limit} bytes`) },
  ];
}

const HEARTBEAT_CASES: Case[] = [
  ...leaseJsonCases("heartbeat", (f) => heartbeat(f), 64 << 10),
  ...(
    [
      ["missing progress", (f: Fx) => without(heartbeat(f), "progress"), "progress", /progress: is required/],
      ["progress a string", (f: Fx) => heartbeat(f, "half"), "progress", /must be an object/],
      ["negative step", (f: Fx) => heartbeat(f, { step: -1, n_steps: 10 }), "progress.step", />= 0/],
      ["step a string", (f: Fx) => heartbeat(f, { step: "5", n_steps: 10 }), "progress.step", /must be a number, got string/],
      ["fractional step", (f: Fx) => heartbeat(f, { step: 1.5, n_steps: 10 }), "progress.step", /integer/],
      ["step past n_steps", (f: Fx) => heartbeat(f, { step: 11, n_steps: 10 }), "progress.step", /<= progress.n_steps/],
      ["missing n_steps", (f: Fx) => heartbeat(f, { step: 1 }), "progress.n_steps", /is required/],
      ["negative samples_per_s", (f: Fx) => heartbeat(f, { step: 1, n_steps: 10, samples_per_s: -3 }), "progress.samples_per_s", />= 0/],
      ["unknown progress key", (f: Fx) => heartbeat(f, { step: 1, n_steps: 10, eta: 5 }), "progress.eta", /unknown key/],
    ] as const
  ).map(([name, body, field, message]): Case => ({ name: `POST /v1/leases/:id/heartbeat: ${name}`, method: "POST", req: (f) => ({ path: live(f, "heartbeat"), json: body(f) }), status: 400, field, message })),
];

const metricsCase = (name: string, rows: (f: Fx) => unknown, status: Case["status"], field: string, message: RegExp, code?: string): Case => ({
  name: `POST /v1/leases/:id/metrics: ${name}`,
  method: "POST",
  req: (f) => ({ path: live(f, "metrics"), json: { token: lease(f, "live").token, rows: rows(f) } }),
  status,
  field,
  message,
  code,
});

const METRICS_CASES: Case[] = [
  ...leaseJsonCases("metrics", (f) => metrics(f, [row(f)]), 4 << 20),
  metricsCase("rows missing", () => undefined, 400, "rows", /rows: is required/),
  metricsCase("rows an object", (f) => row(f), 400, "rows", /must be an array/),
  metricsCase("no rows", () => [], 400, "rows", /at least one row/),
  metricsCase("too many rows", (f) => Array.from({ length: 10_001 }, (_, i) => row(f, { step: i % 10 })), 400, "rows", /at most 10000 rows/),
  metricsCase("a row a number", () => [5], 400, "rows[0]", /must be an object/),
  metricsCase("missing mse", (f) => [without(row(f), "mse")], 400, "rows[0].mse", /rows\[0\].mse: is required/),
  metricsCase("loss a string", (f) => [row(f, { loss: "0.5" })], 400, "rows[0].loss", /must be a number, got string/),
  metricsCase("l0 null", (f) => [row(f, { l0: null })], 400, "rows[0].l0", /must be a number, got null/),
  metricsCase("negative mse", (f) => [row(f, { mse: -1 })], 400, "rows[0].mse", />= 0/),
  metricsCase("negative step", (f) => [row(f, { step: -1 })], 400, "rows[0].step", />= 0/),
  metricsCase("fractional step", (f) => [row(f, { step: 2.5 })], 400, "rows[0].step", /integer/),
  metricsCase("step past the run's last", (f) => [row(f, { step: 10 })], 400, "rows[0].step", /past the run's last step \(9\)/, "invalid_step"),
  metricsCase("unknown row key", (f) => [row(f, { extra: 1 })], 400, "rows[0].extra", /unknown key/),
  metricsCase("run_id a number", (f) => [row(f, { run_id: 5 })], 400, "rows[0].run_id", /must be a run id, got number/),
  metricsCase("a run of another lease", (f) => [row(f, { run_id: r(f, 0) })], 400, "rows[0].run_id", /is not a run of lease/, "unknown_run"),
  metricsCase("an unknown run", (f) => [row(f, { run_id: "sw_nope-r0" })], 400, "rows[0].run_id", /sw_nope-r0 is not a run of lease/, "unknown_run"),
  // All or nothing: the good rows before a bad one are not stored either.
  metricsCase("a good row, then a bad one", (f) => [row(f), row(f, { mse: "x" }, 3)], 400, "rows[1].mse", /rows\[1\].mse/),
  metricsCase("good rows, then another lease's run", (f) => [row(f), row(f, {}, 3), row(f, { run_id: r(f, 1) })], 400, "rows[2].run_id", /is not a run of lease/),
  metricsCase("good rows, then one past the end", (f) => [row(f), row(f, { step: 99 }, 3)], 400, "rows[1].step", /past the run's last step/),
  {
    name: "POST /v1/leases/:id/metrics: a non-finite number (1e999)",
    method: "POST",
    req: (f) => ({ path: live(f, "metrics"), ...text(JSON.stringify(metrics(f, [row(f)])).replace(/"l1":1.5/, '"l1":1e999'), JSON_CT) }),
    status: 400,
    field: "rows[0].l1",
    message: /finite|number/,
  },
];

const evalsCase = (name: string, list: (f: Fx) => unknown, status: Case["status"], field: string, message: RegExp, code?: string): Case => ({
  name: `POST /v1/leases/:id/evals: ${name}`,
  method: "POST",
  req: (f) => ({ path: live(f, "evals"), json: { token: lease(f, "live").token, evals: list(f) } }),
  status,
  field,
  message,
  code,
});

const EVALS_CASES: Case[] = [
  ...leaseJsonCases("evals", (f) => evals(f, [ev(f)]), 32 << 20),
  evalsCase("evals missing", () => undefined, 400, "evals", /evals: is required/),
  evalsCase("no evals", () => [], 400, "evals", /at least one eval/),
  evalsCase("missing freqs", (f) => [without(ev(f), "freqs")], 400, "evals[0].freqs", /is required/),
  evalsCase("freqs a string", (f) => [ev(f, { freqs: "0.1" })], 400, "evals[0].freqs", /must be an array/),
  evalsCase("freqs of the wrong length", (f) => [ev(f, { freqs: evalBody(r(f, 2), 32).freqs })], 400, "evals[0].freqs", /has 32 entries, the run's d_sae is 64/, "invalid_eval"),
  evalsCase("a freq over 1", (f) => [ev(f, { freqs: ev(f).freqs.map(() => 2) })], 400, "evals[0].freqs[0]", /<= 1/),
  evalsCase("a negative freq", (f) => [ev(f, { freqs: ev(f).freqs.map((x, j) => (j === 3 ? -0.5 : x)) })], 400, "evals[0].freqs[3]", />= 0/),
  evalsCase("a freq a string", (f) => [ev(f, { freqs: ev(f).freqs.map((x, j) => (j === 1 ? "x" : x)) })], 400, "evals[0].freqs[1]", /must be a number, got string/),
  evalsCase("mean_values of the wrong length", (f) => [ev(f, { mean_values: [1, 2] })], 400, "evals[0].mean_values", /has 2 entries, the run's d_sae is 64/),
  evalsCase("a mean value a string", (f) => [ev(f, { mean_values: ev(f).mean_values.map((x, j) => (j === 2 ? "y" : x)) })], 400, "evals[0].mean_values[2]", /number/),
  evalsCase("negative n_dead", (f) => [ev(f, { n_dead: -1 })], 400, "evals[0].n_dead", />= 0/),
  evalsCase("fractional n_dense", (f) => [ev(f, { n_dense: 1.5 })], 400, "evals[0].n_dense", /integer/),
  evalsCase("n_dead over d_sae", (f) => [ev(f, { n_dead: 65 })], 400, "evals[0].n_dead", /<= the run's d_sae \(64\)/),
  evalsCase("n_examples 0", (f) => [ev(f, { n_examples: 0 })], 400, "evals[0].n_examples", />= 1/),
  evalsCase("negative mse", (f) => [ev(f, { mse: -0.5 })], 400, "evals[0].mse", />= 0/),
  evalsCase("missing l0", (f) => [without(ev(f), "l0")], 400, "evals[0].l0", /is required/),
  evalsCase("unknown key", (f) => [ev(f, { best: true })], 400, "evals[0].best", /unknown key/),
  evalsCase("a run of another lease", (f) => [ev(f, {}, 0)], 400, "evals[0].run_id", /is not a run of lease/, "unknown_run"),
  evalsCase("a good eval, then a bad one", (f) => [ev(f), ev(f, { fvu: "x" }, 3)], 400, "evals[1].fvu", /must be a number/),
  evalsCase("a good eval, then one of the wrong size", (f) => [ev(f), ev(f, { freqs: [0.5] }, 3)], 400, "evals[1].freqs", /has 1 entries/),
  evalsCase("too many evals", (f) => Array.from({ length: 1025 }, () => ({ ...ev(f), freqs: [], mean_values: [] })), 400, "evals", /at most 1024/),
];

const PUT = "PUT /v1/leases/:id/checkpoints/:run_id";
const CHECKPOINT_PUT_CASES: Case[] = [
  { name: `${PUT}: no x-lease-token`, method: "PUT", req: (f) => ({ ...ckpt(f, "kind=final"), headers: { "content-type": "application/octet-stream" } }), status: 400, code: "missing_token", field: "x-lease-token", message: /x-lease-token header is required/ },
  { name: `${PUT}: another lease's token`, method: "PUT", req: (f) => ckpt(f, "kind=final", safetensors(), { "x-lease-token": lease(f, "done").token }), status: 409, field: "token", message: /does not match/ },
  { name: `${PUT}: a completed lease`, method: "PUT", req: (f) => ({ ...ckpt(f, "kind=final", safetensors(), { "x-lease-token": lease(f, "done").token }, r(f, 0)), path: `${leasePath(f, "done", `checkpoints/${r(f, 0)}`)}?kind=final` }), status: 409, code: "stale_lease", field: "token", message: /is completed/ },
  { name: `${PUT}: a failed lease`, method: "PUT", req: (f) => ({ ...ckpt(f, "kind=final", safetensors(), { "x-lease-token": lease(f, "failed").token }), path: `${leasePath(f, "failed", `checkpoints/${r(f, 2)}`)}?kind=final` }), status: 409, field: "token", message: /is failed/ },
  { name: `${PUT}: an expired lease`, method: "PUT", req: (f) => ({ ...ckpt(f, "kind=final", safetensors(), { "x-lease-token": lease(f, "expired").token }), path: `${leasePath(f, "expired", `checkpoints/${f.expired.group.cfgs[0].run_id}`)}?kind=final` }), status: 409, field: "token", message: /expired at/ },
  { name: `${PUT}: unknown lease`, method: "PUT", req: (f) => ({ ...ckpt(f, "kind=final"), path: `/v1/leases/ls_nope/checkpoints/${r(f, 2)}?kind=final` }), status: 404, field: "lease_id", message: /lease ls_nope not found/ },
  { name: `${PUT}: a run of another lease`, method: "PUT", req: (f) => ckpt(f, "kind=final", safetensors(), {}, r(f, 0)), status: 400, code: "unknown_run", field: "run_id", message: /is not a run of lease/ },
  { name: `${PUT}: an unknown run`, method: "PUT", req: (f) => ckpt(f, "kind=final", safetensors(), {}, "sw_nope-r0"), status: 400, field: "run_id", message: /sw_nope-r0 is not a run/ },
  { name: `${PUT}: no kind`, method: "PUT", req: (f) => ckpt(f, "step=3"), status: 400, field: "kind", message: /"final" or "resume"/ },
  { name: `${PUT}: kind=best`, method: "PUT", req: (f) => ckpt(f, "kind=best"), status: 400, field: "kind", message: /"final" or "resume"/ },
  { name: `${PUT}: resume without step`, method: "PUT", req: (f) => ckpt(f, "kind=resume"), status: 400, field: "step", message: /is required for resume/ },
  { name: `${PUT}: step=abc`, method: "PUT", req: (f) => ckpt(f, "kind=resume&step=abc"), status: 400, field: "step", message: /integer in \[0, 10\]/ },
  { name: `${PUT}: step=-1`, method: "PUT", req: (f) => ckpt(f, "kind=resume&step=-1"), status: 400, field: "step", message: /integer in \[0, 10\]/ },
  { name: `${PUT}: step=11`, method: "PUT", req: (f) => ckpt(f, "kind=resume&step=11"), status: 400, field: "step", message: /integer in \[0, 10\]/ },
  { name: `${PUT}: step=2.5`, method: "PUT", req: (f) => ckpt(f, "kind=resume&step=2.5"), status: 400, field: "step", message: /integer/ },
  { name: `${PUT}: step= (empty)`, method: "PUT", req: (f) => ckpt(f, "kind=resume&step="), status: 400, field: "step", message: /integer/ },
  { name: `${PUT}: step=1e1`, method: "PUT", req: (f) => ckpt(f, "kind=resume&step=1e1"), status: 400, field: "step", message: /integer/ },
  { name: `${PUT}: empty body`, method: "PUT", req: (f) => ckpt(f, "kind=final", new Uint8Array(0)), status: 400, code: "invalid_checkpoint", field: "body", message: /not a safetensors file/ },
  { name: `${PUT}: not safetensors`, method: "PUT", req: (f) => ckpt(f, "kind=final", new TextEncoder().encode("definitely not safetensors")), status: 400, code: "invalid_checkpoint", field: "body", message: /not a safetensors file/ },
  { name: `${PUT}: header length past the end`, method: "PUT", req: (f) => ckpt(f, "kind=final", (() => { const b = safetensors(); new DataView(b.buffer).setBigUint64(0, 1n << 40n, true); return b; })()), status: 400, field: "body", message: /header length/ },
  { name: `${PUT}: header not JSON`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors("{not json}", 16)), status: 400, field: "body", message: /header is not a JSON object/ },
  { name: `${PUT}: header a JSON array`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors([1, 2], 16)), status: 400, field: "body", message: /header is not a JSON object/ },
  { name: `${PUT}: a tensor past the data`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors({ W: { dtype: "F32", shape: [8], data_offsets: [0, 32] } }, 16)), status: 400, field: "body.W", message: /is not a tensor of a final checkpoint/ },
  { name: `${PUT}: a tensor whose size disagrees with its shape`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors({ W: { dtype: "F32", shape: [3], data_offsets: [0, 16] } }, 16)), status: 400, field: "body.W", message: /is not a tensor/ },
  { name: `${PUT}: an unknown dtype`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors({ W: { dtype: "Q4", shape: [4], data_offsets: [0, 16] } }, 16)), status: 400, field: "body.W", message: /is not a tensor/ },
  { name: `${PUT}: a tensor without data_offsets`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors({ W: { dtype: "F32", shape: [4] } }, 16)), status: 400, field: "body.W", message: /is not a tensor/ },
  { name: `${PUT}: metadata not strings`, method: "PUT", req: (f) => ckpt(f, "kind=final", rawSafetensors({ __metadata__: { step: 5 } }, 0)), status: 400, field: "body.W_enc", message: /is missing/ },
  { name: `${PUT}: content-type application/json`, method: "PUT", req: (f) => ckpt(f, "kind=final", safetensors(), { "content-type": "application/json" }), status: 415, code: "unsupported_media_type", field: "content-type", message: /application\/octet-stream/ },
  { name: `${PUT}: content-type text/plain`, method: "PUT", req: (f) => ckpt(f, "kind=final", safetensors(), { "content-type": "text/plain" }), status: 415, field: "content-type", message: /application\/octet-stream/ },
  { name: `${PUT}: content-length over the 16 MiB part size`, method: "PUT", req: (f) => ckpt(f, "kind=final", safetensors(), { "content-length": String((16 << 20) + 1) }), status: 413, code: "too_large", field: "body", message: /larger than 16777216 bytes/ },
  { name: `${PUT}: chunked, over the 16 MiB part size`, method: "PUT", req: (f) => ({ ...ckpt(f, "kind=final"), body: chunked((16 << 20) + 1, 0, 4 << 20) }), status: 413, code: "too_large", field: "body", message: /larger than 16777216 bytes/ },
];

const GET_CKPT = "GET /v1/leases/:id/checkpoints/:run_id";
const CHECKPOINT_GET_CASES: Case[] = [
  { name: `${GET_CKPT}: no x-lease-token`, method: "GET", req: (f) => ({ ...getCkpt(f, "kind=resume"), headers: {} }), status: 400, field: "x-lease-token", message: /x-lease-token header is required/ },
  { name: `${GET_CKPT}: another lease's token`, method: "GET", req: (f) => getCkpt(f, "kind=resume", lease(f, "failed").token), status: 409, field: "token", message: /does not match/ },
  { name: `${GET_CKPT}: a completed lease`, method: "GET", req: (f) => getCkpt(f, "kind=final", lease(f, "done").token, r(f, 0), "done"), status: 409, field: "token", message: /is completed/ },
  { name: `${GET_CKPT}: a failed lease`, method: "GET", req: (f) => getCkpt(f, "kind=resume", lease(f, "failed").token, r(f, 2), "failed"), status: 409, field: "token", message: /is failed/ },
  { name: `${GET_CKPT}: unknown lease`, method: "GET", req: (f) => ({ ...getCkpt(f, "kind=resume"), path: `/v1/leases/ls_nope/checkpoints/${r(f, 2)}` }), status: 404, field: "lease_id", message: /not found/ },
  { name: `${GET_CKPT}: a run of another lease`, method: "GET", req: (f) => getCkpt(f, "kind=resume", lease(f, "live").token, r(f, 0)), status: 400, field: "run_id", message: /is not a run of lease/ },
  { name: `${GET_CKPT}: kind=best`, method: "GET", req: (f) => getCkpt(f, "kind=best"), status: 400, field: "kind", message: /"final" or "resume"/ },
  { name: `${GET_CKPT}: step=abc`, method: "GET", req: (f) => getCkpt(f, "kind=resume&step=abc"), status: 400, field: "step", message: /integer/ },
  { name: `${GET_CKPT}: step=99`, method: "GET", req: (f) => getCkpt(f, "kind=resume&step=99"), status: 400, field: "step", message: /integer in \[0, 10\]/ },
  { name: `${GET_CKPT}: no checkpoint at that step`, method: "GET", req: (f) => getCkpt(f, "kind=resume&step=3"), status: 404, field: "step", message: /resume checkpoint of run .* at step 3 not found/ },
  { name: `${GET_CKPT}: a run without one`, method: "GET", req: (f) => getCkpt(f, "kind=resume", lease(f, "live").token, r(f, 3)), status: 404, field: "step", message: /resume checkpoint of run .* not found/ },
];

const COMPLETE_CASES: Case[] = [
  ...leaseJsonCases("complete", (f) => ({ token: lease(f, "live").token }), 64 << 10),
  { name: "POST /v1/leases/:id/complete: before the evals are in", method: "POST", req: (f) => ({ path: live(f, "complete"), json: { token: lease(f, "live").token } }), status: 409, code: "incomplete", field: "evals", message: /no eval stored for/ },
  { name: "POST /v1/leases/:id/complete: a failed lease", method: "POST", req: (f) => ({ path: leasePath(f, "failed", "complete"), json: { token: lease(f, "failed").token } }), status: 409, code: "stale_lease", field: "token", message: /is failed/ },
];

const FAIL_CASES: Case[] = [
  ...leaseJsonCases("fail", (f) => ({ token: lease(f, "live").token, error: "boom" }), 64 << 10),
  { name: "POST /v1/leases/:id/fail: missing error", method: "POST", req: (f) => ({ path: live(f, "fail"), json: { token: lease(f, "live").token } }), status: 400, field: "error", message: /error: is required/ },
  { name: "POST /v1/leases/:id/fail: empty error", method: "POST", req: (f) => ({ path: live(f, "fail"), json: { token: lease(f, "live").token, error: "" } }), status: 400, field: "error", message: /is required|must not be empty/ },
  { name: "POST /v1/leases/:id/fail: error an object", method: "POST", req: (f) => ({ path: live(f, "fail"), json: { token: lease(f, "live").token, error: { msg: "x" } } }), status: 400, field: "error", message: /must be a string, got object/ },
  { name: "POST /v1/leases/:id/fail: a huge error", method: "POST", req: (f) => ({ path: live(f, "fail"), json: { token: lease(f, "live").token, error: "e".repeat(20_001) } }), status: 400, field: "error", message: /at most 20000 characters/ },
  { name: "POST /v1/leases/:id/fail: a completed lease", method: "POST", req: (f) => ({ path: leasePath(f, "done", "fail"), json: { token: lease(f, "done").token, error: "late" } }), status: 409, code: "stale_lease", field: "token", message: /is completed/ },
];

export const CASES: Case[] = [
  ...AUTH_CASES,
  ...SWEEP_CASES,
  ...READ_CASES,
  ...CLAIM_CASES,
  ...HEARTBEAT_CASES,
  ...METRICS_CASES,
  ...EVALS_CASES,
  ...CHECKPOINT_PUT_CASES,
  ...CHECKPOINT_GET_CASES,
  ...COMPLETE_CASES,
  ...FAIL_CASES,
];

// ---------------------------------------------------------------------------------------------------------------
// Running a case

/** Every D1 table (but D1's and Cloudflare's own, and the migrations), every R2 object, and the W&B queue so far. */
async function snapshot() {
  const { results: tables } = await env.DB.prepare(
    `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'd1\\_%' ESCAPE '\\' ORDER BY name`,
  ).all<{ name: string }>();
  const db: Record<string, unknown[]> = {};
  const rows = await env.DB.batch(tables.map(({ name }) => env.DB.prepare(`SELECT * FROM "${name}" ORDER BY rowid`)));
  tables.forEach(({ name }, i) => (db[name] = rows[i].results));
  const r2: { key: string; size: number; etag: string }[] = [];
  let cursor: string | undefined;
  do {
    const page = await env.CHECKPOINTS.list({ cursor });
    r2.push(...page.objects.map((o) => ({ key: o.key, size: o.size, etag: o.etag })));
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return { tables: Object.keys(db), db, r2, queue: sent.length };
}

async function send(method: string, q: Req): Promise<Response> {
  const headers = { ...q.headers };
  if (q.auth === null) return call(method, q.path, { token: null, json: q.json, body: q.body, headers, vars: q.vars });
  if (q.auth !== undefined) headers.authorization = q.auth;
  // token: null stops call() from adding the route's token over an explicit Authorization header.
  return call(method, q.path, { token: q.auth !== undefined ? null : undefined, json: q.json, body: q.body, headers, vars: q.vars });
}

let fx: Fx;
/** A case changed something: the next one gets a fresh fixture, so one failure does not cascade. */
let dirty = false;

async function buildFixture(): Promise<Fx> {
  await resetDb();
  const s = await submit(UNTRACKED);
  const runs = [0, 1, 2, 3, 4, 5].map((i) => `${s.id}-r${i}`);
  // r0, r1: completed.
  const done = (await claim("done", 2))!;
  const tok = (c: ClaimResponse) => c.lease.token;
  await json(await call("POST", `/v1/leases/${done.lease.id}/metrics`, { json: { token: tok(done), rows: [metricRow(runs[0], 4), metricRow(runs[1], 4)] } }), 200);
  await json(await call("POST", `/v1/leases/${done.lease.id}/evals`, { json: { token: tok(done), evals: [evalBody(runs[0]), evalBody(runs[1])] } }), 200);
  for (const id of [runs[0], runs[1]]) await json(await putCheckpoint(done.lease.id, tok(done), id, "kind=final", checkpointFor(id, "final", 10, 2)), 201);
  await json(await call("POST", `/v1/leases/${done.lease.id}/complete`, { json: { token: tok(done) } }), 200);
  // r2, r3: failed once, then claimed again with r4, r5 by the live lease.
  const failed = (await claim("failed", 2))!;
  expect(failed.group.cfgs.map((c) => c.run_id)).toEqual([runs[2], runs[3]]);
  await json(await call("POST", `/v1/leases/${failed.lease.id}/fail`, { json: { token: tok(failed), error: "device lost" } }), 200);
  // An hour's TTL: the cases take minutes on a loaded machine, and the live lease must stay live throughout.
  const liveLease = (await claim("live", 4, { LEASE_TTL_MS: "3600000" }))!;
  expect(liveLease.group.cfgs.map((c) => c.run_id)).toEqual(runs.slice(2));
  await json(await call("POST", `/v1/leases/${liveLease.lease.id}/metrics`, { json: { token: tok(liveLease), rows: [metricRow(runs[2], 4)] } }), 200);
  await json(await putCheckpoint(liveLease.lease.id, tok(liveLease), runs[2], "kind=resume&step=5", checkpointFor(runs[2], "resume", 5, 3)), 201);
  // A second sweep whose lease expired at once.
  const s2 = await submit(UNTRACKED);
  const expired = (await claim("expired", 1024, { LEASE_TTL_MS: "1" }))!;
  expect(expired.group.sweep_id).toBe(s2.id);
  await sleep(20);
  return { sweep: s.id, sweep2: s2.id, runs, done, failed, live: liveLease, expired };
}

beforeAll(async () => {
  fx = await buildFixture();
});

beforeEach(async () => {
  if (dirty) fx = await buildFixture();
  dirty = false;
});

describe("bad input: every route answers 4xx naming the problem, and changes nothing", () => {
  it("covers every route with auth cases and bad-input cases", () => {
    const auth = new Set(AUTH_CASES.map((c) => c.name));
    for (const rt of ROUTES) {
      const key = routeName(rt);
      const own = CASES.filter((c) => !auth.has(c.name) && routeKey(c.method, c.req(FAKE).path) === key);
      expect(own.length, `bad-input cases for ${key}`).toBeGreaterThanOrEqual(3);
    }
  }, 60_000); // builds every request, the large bodies too

  it.each(CASES.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const before = await snapshot();
    const res = await send(c.method, c.req(fx));
    const bodyText = await res.text();
    const after = await snapshot();
    dirty = JSON.stringify(after) !== JSON.stringify(before);
    expect(res.status, bodyText.slice(0, 500)).toBe(c.status);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    const body = JSON.parse(bodyText) as { error: { code: string; message: string; field?: string; issues?: { field: string; message: string }[] } };
    expect(typeof body.error?.code).toBe("string");
    expect(body.error.message).toMatch(c.message);
    expect(body.error.field, "the error names a field").toBeTruthy();
    if (c.field !== undefined) expect(body.error.field).toBe(c.field);
    if (c.code !== undefined) expect(body.error.code).toBe(c.code);
    expect(after.tables).toEqual(before.tables);
    for (const t of before.tables) expect(after.db[t], `table ${t} changed`).toEqual(before.db[t]);
    expect(after.r2, "R2 changed").toEqual(before.r2);
    expect(after.queue, "something was queued").toBe(before.queue);
  }, 60_000);

  it("the same requests with the right token and a good body succeed (the cases above fail for their one fault)", async () => {
    const f = fx;
    const ok = async (method: string, q: Req, status = 200) => {
      const res = await send(method, q);
      expect(res.status, `${method} ${q.path}: ${(await res.clone().text()).slice(0, 300)}`).toBe(status);
      return res;
    };
    // Content types that must keep working: text/plain and none for sweeps, JSON with a charset for the runner.
    await ok("POST", { path: "/v1/sweeps", ...text(UNTRACKED, "text/plain;charset=UTF-8") }, 201);
    await ok("POST", { path: "/v1/sweeps", ...text(new TextEncoder().encode(UNTRACKED)) }, 201);
    await ok("POST", { path: "/v1/sweeps", ...text(JSON.stringify({ lr: 1e-3, track: false }), "application/json; charset=utf-8") }, 201);
    await ok("POST", { path: "/v1/sweeps", ...text(UNTRACKED, "text/toml") }, 201);
    for (const rt of ROUTES) {
      const q = rt.req(f);
      const path = q.path;
      if (path.endsWith("/complete")) continue; // needs every eval and checkpoint first (409 incomplete, above)
      if (path.endsWith("/fail")) continue; // last, below
      // JSON bodies go with a charset, as browsers send them.
      const withCharset = q.json === undefined ? q : { path, ...text(JSON.stringify(q.json), "application/json; charset=utf-8") };
      await ok(rt.method, withCharset, rt.method === "PUT" || (path === "/v1/sweeps" && rt.method === "POST") ? 201 : 200);
    }
    // A checkpoint with no content type, and a resume one at a step.
    await ok("PUT", { ...ckpt(f, "kind=resume&step=7"), headers: { "x-lease-token": lease(f, "live").token } }, 201);
    // The runner's own checkpoints pass the safetensors check (scalars, I64 step, metadata).
    const { run_id, cfg } = f.live.group.cfgs[1];
    const d = cfg.sae.d_vit;
    const k = d * cfg.sae.exp_factor;
    const w = (): SaeWeights => ({ W_enc: new Float32Array(d * k), b_enc: new Float32Array(k), W_dec: new Float32Array(k * d), b_dec: new Float32Array(d) });
    const norm = { mean: new Float32Array(d), scale: 1 };
    const resume = encodeResumeCheckpoint({ run_id, cfg, step: 6 }, w(), norm, { m: w(), v: w(), step: 6 });
    await ok("PUT", ckpt(f, "kind=resume&step=6", resume, {}, run_id), 201);
    await ok("PUT", ckpt(f, "kind=final", encodeFinalCheckpoint({ run_id, cfg, step: 10 }, w(), norm), {}, run_id), 201);
    await ok("POST", { path: live(f, "fail"), json: { token: lease(f, "live").token, error: "boom" } });
  }, 60_000);
});
