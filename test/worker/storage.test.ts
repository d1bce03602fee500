// Storage for artifacts of any size (issue 11) and strict checkpoints (issue 15), in workerd with the real local
// D1, R2 and Queue: checkpoint uploads in parts under a lowered body limit (repeats, resume, an interrupted upload
// taken over, byte-identical downloads, D1 and R2 in agreement), every refusal of a checkpoint with the field it
// names, the fallback from a bad resume checkpoint, evals at large d_sae, queue messages split, the cap at submit.
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it, vi } from "vitest";
import type { Env } from "../../worker/env";
import type { ClaimResponse, UploadInitResponse, WandbMessage } from "../../worker/protocol";
import { latestCheckpoint } from "../../worker/routes/runs";
import { EVAL_CHUNK } from "../../worker/eval-store";
import { MAX_MESSAGE_BYTES } from "../../worker/queue";
import { call, checkpointFor, evalBody, json, metricRow, putCheckpoint, resetDb, sent, sleep, submit } from "./helpers";

/** A body limit of 64 KiB: the checkpoints below (d_vit 16, d_sae 1024) take 3 parts (final) and 7 (resume). */
const SMALL_BODY = { MAX_BODY_BYTES: String(64 << 10) } as Partial<Env>;
const PART = 64 << 10;
const SAE = { d_vit: 16, exp_factor: 64, kind: "relu" as const };
const SWEEP = `
data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 640
batch_size = 64
log_every = 5
lr = 1e-3
sae = { exp_factor = 64 }
objective = { sparsity_coeff = [4e-4, 8e-4] }
`;

/** A big adapter: any of these shapes fits. */
function bigAdapter() {
  const size = 2 ** 31 - 4;
  return { vendor: "test", architecture: "swiftshader", device: "", description: "", isFallbackAdapter: true, features: [], limits: { maxStorageBufferBindingSize: size, maxBufferSize: size, maxComputeWorkgroupSizeX: 256 } };
}

async function claimAll(vars: Partial<Env> = SMALL_BODY): Promise<ClaimResponse> {
  return json<ClaimResponse>(await call("POST", "/v1/claims", { json: { runner_id: "r", adapter: bigAdapter() }, vars }), 200);
}

const objects = async (prefix = "") => (await env.CHECKPOINTS.list({ prefix })).objects.map((o) => o.key).sort();
const count = async (table: string) => (await env.DB.prepare(`SELECT count(*) AS n FROM ${table}`).first<{ n: number }>())!.n;

function uploads(c: ClaimResponse, vars: Partial<Env> = SMALL_BODY) {
  const base = `/v1/leases/${c.lease.id}/uploads`;
  const headers = { "x-lease-token": c.lease.token, "content-type": "application/octet-stream" };
  return {
    init: (run_id: string, kind: "final" | "resume", step: number, bytes: number) => call("POST", base, { json: { token: c.lease.token, run_id, kind, step, bytes }, vars }),
    part: (id: string, n: number, body: Uint8Array) => call("PUT", `${base}/${id}/parts/${n}`, { body, headers, vars }),
    complete: (id: string) => call("POST", `${base}/${id}/complete`, { json: { token: c.lease.token }, vars }),
  };
}

const slice = (b: Uint8Array, n: number) => b.subarray((n - 1) * PART, Math.min(n * PART, b.byteLength));

/** The D1 checkpoint rows and the R2 objects agree: one object per row, same size, and nothing else under the sweep. */
async function expectAgreement(sweepId: string) {
  const rows = (await env.DB.prepare(`SELECT key, bytes FROM checkpoints`).all<{ key: string; bytes: number }>()).results;
  expect(await objects(`${sweepId}/`)).toEqual(rows.map((r) => r.key).sort());
  for (const r of rows) expect((await env.CHECKPOINTS.head(r.key))!.size).toBe(r.bytes);
  // What is left of finished uploads is their uploads row (a repeated complete is answered from it), no part.
  expect(await count("upload_parts")).toBe(0);
  const open = await env.DB.prepare(`SELECT count(*) AS n FROM uploads u WHERE NOT EXISTS (SELECT 1 FROM checkpoints k WHERE k.key = u.key)`).first<{ n: number }>();
  expect(open!.n).toBe(0);
}

// Tens of requests per test, and sleeps out short leases: over the 5 s default on a loaded 2-core machine.
vi.setConfig({ testTimeout: 60_000 });

beforeEach(async () => {
  await resetDb();
  for (const k of await objects()) await env.CHECKPOINTS.delete(k);
});

describe("checkpoint uploads in parts", () => {
  it("stores a checkpoint several times the body limit: parts in any order, a repeated part and a resumed init change nothing, the download is byte-identical", async () => {
    const s = await submit(SWEEP);
    const c = await claimAll();
    expect(c.limits).toEqual({ max_body_bytes: PART, part_bytes: PART });
    const r0 = c.group.cfgs[0].run_id;
    const file = checkpointFor(r0, "resume", 5, 0.25, SAE);
    expect(file.byteLength).toBeGreaterThan(6 * PART);
    // One body over the limit is refused.
    expect((await json(await putCheckpoint(c.lease.id, c.lease.token, r0, "kind=resume&step=5", file, SMALL_BODY), 413)).error.field).toBe("body");

    const up = uploads(c);
    const init = await json<UploadInitResponse>(await up.init(r0, "resume", 5, file.byteLength), 201);
    expect(init).toMatchObject({ part_bytes: PART, n_parts: Math.ceil(file.byteLength / PART), received: [] });
    const id = init.upload_id!;
    for (const n of [3, 1, 2]) expect(await json(await up.part(id, n, slice(file, n)), 200)).toEqual({ upload_id: id, part: n, bytes: PART });
    // A repeat (the runner's retry after a lost answer) changes nothing, even with other bytes.
    expect(await json(await up.part(id, 2, new Uint8Array(PART).fill(7)), 200)).toMatchObject({ part: 2, repeated: true });
    // The runner that lost track asks again: the same upload, with the parts it holds.
    expect(await json(await up.init(r0, "resume", 5, file.byteLength), 200)).toMatchObject({ upload_id: id, received: [1, 2, 3] });
    // Complete refuses while parts are missing, naming them.
    const early = (await json(await up.complete(id), 400)).error;
    expect(early).toMatchObject({ code: "incomplete_upload", field: "parts" });
    expect(early.message).toMatch(/parts 4, 5, 6, 7/);
    // A part of the wrong size, or past the last one, is refused.
    expect((await json(await up.part(id, 4, slice(file, 4).subarray(1)), 400)).error).toMatchObject({ code: "invalid_part", field: "body" });
    expect((await json(await up.part(id, init.n_parts + 1, slice(file, 1)), 400)).error.field).toBe("part");
    for (let n = 4; n <= init.n_parts; n++) await json(await up.part(id, n, slice(file, n)), 200);
    expect(await json(await up.complete(id), 201)).toEqual({ run_id: r0, kind: "resume", step: 5, bytes: file.byteLength });
    // A repeated complete (lost answer) is answered the same; a later init says it is stored.
    expect(await json(await up.complete(id), 201)).toEqual({ run_id: r0, kind: "resume", step: 5, bytes: file.byteLength });
    expect(await json(await up.init(r0, "resume", 5, file.byteLength), 200)).toMatchObject({ upload_id: null, duplicate: { duplicate: true, bytes: file.byteLength } });
    await expectAgreement(s.id);

    const back = await call("GET", `/v1/leases/${c.lease.id}/checkpoints/${r0}?kind=resume&step=5`, { headers: { "x-lease-token": c.lease.token }, vars: SMALL_BODY });
    expect(new Uint8Array(await back.arrayBuffer())).toEqual(file);
    const user = await call("GET", `/v1/runs/${r0}/checkpoint?kind=resume`);
    expect(user.headers.get("content-length")).toBe(String(file.byteLength));
    expect(new Uint8Array(await user.arrayBuffer())).toEqual(file);
  });

  it("a final checkpoint in parts completes the lease, and is one R2 object under the key D1 holds (what the export reads)", async () => {
    const s = await submit(SWEEP);
    const c = await claimAll();
    const up = uploads(c);
    const files = new Map<string, Uint8Array>();
    for (const { run_id } of c.group.cfgs) {
      const file = checkpointFor(run_id, "final", 10, 0.5, SAE);
      files.set(run_id, file);
      const init = await json<UploadInitResponse>(await up.init(run_id, "final", 10, file.byteLength), 201);
      expect(init.n_parts).toBe(3);
      for (let n = 1; n <= init.n_parts; n++) await json(await up.part(init.upload_id!, n, slice(file, n)), 200);
      await json(await up.complete(init.upload_id!), 201);
    }
    await json(await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: { token: c.lease.token, evals: c.group.cfgs.map(({ run_id }) => evalBody(run_id, 1024)) }, vars: SMALL_BODY }), 200);
    await json(await call("POST", `/v1/leases/${c.lease.id}/complete`, { json: { token: c.lease.token }, vars: SMALL_BODY }), 200);
    await expectAgreement(s.id);
    // What the SAELens export reads: the final checkpoint's one R2 object, by the key D1 holds.
    for (const [run_id, file] of files) {
      const k = await latestCheckpoint(env as unknown as Env, run_id, "final");
      expect(k).toMatchObject({ step: 10, bytes: file.byteLength });
      expect(k.key.startsWith(`${s.id}/${run_id}/final-10-`)).toBe(true);
      expect(new Uint8Array(await (await env.CHECKPOINTS.get(k.key))!.arrayBuffer())).toEqual(file);
    }
  });

  it("a runner killed mid-upload: the next lease restarts the upload, the dead one's parts go, and it cannot write any more", async () => {
    const vars = { ...SMALL_BODY, LEASE_TTL_MS: "4000" };
    const s = await submit(SWEEP);
    const old = await claimAll(vars);
    const r0 = old.group.cfgs[0].run_id;
    const file = checkpointFor(r0, "final", 10, 1, SAE);
    const a = uploads(old, vars);
    const dead = await json<UploadInitResponse>(await a.init(r0, "final", 10, file.byteLength), 201);
    await json(await a.part(dead.upload_id!, 1, slice(file, 1)), 200);
    await json(await a.part(dead.upload_id!, 2, slice(file, 2)), 200);
    expect(await objects(`${s.id}/`)).toHaveLength(2);

    await sleep(Math.max(0, old.lease.expires_at - Date.now()) + 50);
    const neu = await claimAll();
    const b = uploads(neu);
    const fresh = await json<UploadInitResponse>(await b.init(r0, "final", 10, file.byteLength), 201);
    expect(fresh.upload_id).not.toBe(dead.upload_id);
    expect(fresh.received).toEqual([]);
    expect(await objects(`${s.id}/`)).toEqual([]); // the dead upload's parts are gone
    // The dead runner's late part and complete are refused.
    expect((await a.part(dead.upload_id!, 3, slice(file, 3))).status).toBe(409);
    expect((await a.complete(dead.upload_id!)).status).toBe(409);
    for (let n = 1; n <= fresh.n_parts; n++) await json(await b.part(fresh.upload_id!, n, slice(file, n)), 200);
    await json(await b.complete(fresh.upload_id!), 201);
    await expectAgreement(s.id);
    expect(new Uint8Array(await (await call("GET", `/v1/runs/${r0}/checkpoint`)).arrayBuffer())).toEqual(file);
  });
});

/** `file` with its header JSON replaced by `edit(header)` (the data kept as is). */
function withHeader(file: Uint8Array, edit: (h: Record<string, any>) => void): Uint8Array {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n)));
  edit(header);
  let text = JSON.stringify(header);
  text += " ".repeat((8 - (text.length % 8)) % 8);
  const h = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + h.byteLength + file.byteLength - 8 - n);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.byteLength), true);
  out.set(h, 8);
  out.set(file.subarray(8 + n), 8 + h.byteLength);
  return out;
}

describe("strict checkpoints: every refusal names its field, and stores nothing", () => {
  const tenBytes = (() => {
    const b = new Uint8Array(10);
    new DataView(b.buffer).setBigUint64(0, 2n, true);
    b.set(new TextEncoder().encode("{}"), 8);
    return b;
  })();
  type Case = { name: string; kind?: "final" | "resume"; query?: string; body: (run: string) => Uint8Array; field: string; message: RegExp };
  const final = (run: string) => checkpointFor(run, "final", 10, 1, SAE);
  const resume = (run: string) => checkpointFor(run, "resume", 5, 1, SAE);
  const cases: Case[] = [
    { name: "a 10-byte {} as a final checkpoint", body: () => tenBytes, field: "body.W_enc", message: /is missing/ },
    { name: "a tensor missing", body: (r) => withHeader(final(r), (h) => delete h.b_dec), field: "body.b_dec", message: /is missing/ },
    { name: "a tensor too many", body: (r) => withHeader(final(r), (h) => (h.extra = h.b_dec)), field: "body.extra", message: /is not a tensor of a final checkpoint/ },
    { name: "a resume tensor in a final checkpoint", body: (r) => withHeader(final(r), (h) => (h.step = h.b_dec)), field: "body.step", message: /is not a tensor/ },
    { name: "the Adam moments missing from a resume checkpoint", query: "kind=resume&step=5", body: (r) => withHeader(resume(r), (h) => delete h["adam_v.W_dec"]), field: "body.adam_v.W_dec", message: /is missing/ },
    { name: "a wrong dtype", body: (r) => withHeader(final(r), (h) => (h.b_enc.dtype = "I32")), field: "body.b_enc.dtype", message: /must be F32, got "I32"/ },
    { name: "a wrong shape (same size)", body: (r) => withHeader(final(r), (h) => (h.W_enc.shape = [1024, 16])), field: "body.W_enc.shape", message: /must be \[16, 1024\], got \[1024,16\]/ },
    { name: "another SAE's shape", body: () => withHeader(checkpointFor("x", "final", 10, 1, { d_vit: 16, exp_factor: 2, kind: "relu" }), () => {}), field: "body.W_enc.shape", message: /must be \[16, 1024\], got \[16,32\]/ },
    { name: "data_offsets that do not match the size", body: (r) => withHeader(final(r), (h) => (h.b_enc.data_offsets[1] += 4)), field: "body.b_enc.data_offsets", message: /begin \+ 4096/ },
    {
      name: "offsets with a hole",
      body: (r) => withHeader(final(r), (h) => { for (const k of Object.keys(h)) if (k !== "__metadata__") h[k].data_offsets = h[k].data_offsets.map((o: number) => o + 4); }),
      field: "body.W_enc.data_offsets",
      message: /start at 4, expected 0/,
    },
    { name: "overlapping offsets", body: (r) => withHeader(final(r), (h) => (h.b_enc.data_offsets = [4096, 8192])), field: "body.b_enc.data_offsets", message: /start at 4096, expected 65536 \(a hole or an overlap\)/ },
    { name: "no metadata", body: (r) => withHeader(final(r), (h) => delete h.__metadata__), field: "body.__metadata__", message: /is required/ },
    { name: "another run's checkpoint", body: (r) => final(r + "x"), field: "body.__metadata__.run_id", message: /must be/ },
    { name: "the metadata's step not the upload's", body: (r) => checkpointFor(r, "final", 9, 1, SAE), field: "body.__metadata__.step", message: /must be "10", got "9"/ },
    { name: "a resume checkpoint sent as final", body: (r) => withHeader(resume(r), (h) => { for (const k of Object.keys(h)) if (k.startsWith("adam_") || k === "step") delete h[k]; }), field: "body.__metadata__.kind", message: /must be "final"/ },
    { name: "a final checkpoint before n_steps", query: "kind=final&step=9", body: (r) => checkpointFor(r, "final", 9, 1, SAE), field: "step", message: /a final checkpoint is at step n_steps \(10\), got 9/ },
    { name: "a resume checkpoint at step 0", query: "kind=resume&step=0", body: (r) => checkpointFor(r, "resume", 0, 1, SAE), field: "step", message: /\[1, 9\]/ },
    { name: "a file cut short", body: (r) => final(r).subarray(0, 5000), field: "body", message: /cut short/ },
    { name: "a file with bytes after its data", body: (r) => new Uint8Array([...final(r), 0, 0, 0, 0]), field: "body", message: /cut short/ },
    { name: "a header over 64 KiB", body: (r) => withHeader(final(r), (h) => (h.__metadata__.pad = "x".repeat(70_000))), field: "body", message: /over the 65536-byte limit/ },
  ];

  for (const k of cases) {
    it(`PUT: ${k.name} → 400 ${k.field}`, async () => {
      await submit(SWEEP);
      const c = await claimAll({});
      const run = c.group.cfgs[0].run_id;
      const err = (await json(await putCheckpoint(c.lease.id, c.lease.token, run, k.query ?? "kind=final", k.body(run)), 400)).error;
      expect(err).toMatchObject({ code: "invalid_checkpoint", field: k.field });
      expect(err.message).toMatch(k.message);
      expect(await count("checkpoints")).toBe(0);
      expect(await objects()).toEqual([]);
    });
  }

  it("in parts: the header is checked with part 1 (nothing kept), and the declared size against the config", async () => {
    await submit(SWEEP);
    const c = await claimAll();
    const run = c.group.cfgs[0].run_id;
    const up = uploads(c);
    const good = checkpointFor(run, "final", 10, 1, SAE);
    const bad = withHeader(good, (h) => (h.W_dec.shape = [16, 1024]));
    expect(bad.byteLength).toBe(good.byteLength);
    const init = await json<UploadInitResponse>(await up.init(run, "final", 10, bad.byteLength), 201);
    expect((await json(await up.part(init.upload_id!, 1, slice(bad, 1)), 400)).error).toMatchObject({ code: "invalid_checkpoint", field: "body.W_dec.shape" });
    expect(await count("upload_parts")).toBe(0);
    expect(await objects()).toEqual([]);
    // Sizes no checkpoint of this run can have, and steps it cannot be at.
    expect((await json(await up.init(run, "final", 10, 10), 400)).error).toMatchObject({ field: "bytes" });
    expect((await json(await up.init(run, "final", 10, good.byteLength * 3), 400)).error).toMatchObject({ field: "bytes", message: expect.stringMatching(/between/) });
    expect((await json(await up.init(run, "final", 7, good.byteLength), 400)).error).toMatchObject({ field: "step" });
    expect((await json(await up.init(run, "resume", 10, good.byteLength), 400)).error).toMatchObject({ field: "step" });
    expect((await json(await up.init(run, "best" as "final", 10, good.byteLength), 400)).error).toMatchObject({ field: "kind" });
  });
});

describe("a bad resume checkpoint never wedges its group", () => {
  it("rejected by the runner, it is deleted, and this lease and the next claim fall back to the one before", async () => {
    const vars = { LEASE_TTL_MS: "5000" };
    const s = await submit(SWEEP);
    const old = await claimAll(vars);
    const runs = old.group.cfgs.map((x) => x.run_id);
    for (const run of runs) {
      await json(await putCheckpoint(old.lease.id, old.lease.token, run, "kind=resume&step=4", checkpointFor(run, "resume", 4, 1, SAE), vars), 201);
      await json(await putCheckpoint(old.lease.id, old.lease.token, run, "kind=resume&step=8", checkpointFor(run, "resume", 8, 2, SAE), vars), 201);
    }
    await sleep(Math.max(0, old.lease.expires_at - Date.now()) + 50);
    const neu = await claimAll({});
    expect(neu.group.resume.map((r) => r.step)).toEqual([8, 8]);
    const reject = (c: ClaimResponse, run: string, step: number) =>
      call("POST", `/v1/leases/${c.lease.id}/checkpoints/${run}/reject`, { json: { token: c.lease.token, step, error: "checkpoint: tensor step 7 differs from metadata step 8" } });
    const after = await json(await reject(neu, runs[0], 8), 200);
    expect(after.resume).toEqual([
      { run_id: runs[0], step: 4, checkpoint_path: `/v1/leases/${neu.lease.id}/checkpoints/${runs[0]}?kind=resume&step=4` },
      { run_id: runs[1], step: 8, checkpoint_path: `/v1/leases/${neu.lease.id}/checkpoints/${runs[1]}?kind=resume&step=8` },
    ]);
    // Repeated: the same answer. Bad input names its field; a stale lease is refused.
    expect(await json(await reject(neu, runs[0], 8), 200)).toEqual(after);
    expect((await json(await call("POST", `/v1/leases/${neu.lease.id}/checkpoints/${runs[0]}/reject`, { json: { token: neu.lease.token, step: 0, error: "x" } }), 400)).error.field).toBe("step");
    expect((await reject(old, runs[1], 8)).status).toBe(409);
    await expectAgreement(s.id);
    expect(await objects(`${s.id}/${runs[0]}/`)).toHaveLength(1);
    // The runner can load the one before at step 4 for every run.
    for (const r of after.resume) {
      const res = await call("GET", r.checkpoint_path.replace(/step=\d+/, "step=4"), { headers: { "x-lease-token": neu.lease.token } });
      expect(new Uint8Array(await res.arrayBuffer())).toEqual(checkpointFor(r.run_id, "resume", 4, 1, SAE));
    }
    // A later claim (the lease failed) starts from there too.
    await json(await call("POST", `/v1/leases/${neu.lease.id}/fail`, { json: { token: neu.lease.token, error: "x" } }), 200);
    const third = await claimAll({});
    expect(third.group.resume.map((r) => [r.run_id, r.step])).toEqual([[runs[0], 4], [runs[1], 8]]);
  });
});

describe("evals of any d_sae", () => {
  it("d_vit 128, exp_factor 1024 (d_sae 131 072): stored in rows under 2 MB, served whole by the same route, idempotent", async () => {
    await submit(`
data = { kind = "synthetic", d_vit = 128, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 640
batch_size = 64
lr = 1e-3
sae = { exp_factor = 1024 }
`);
    const c = await claimAll({});
    const run = c.group.cfgs[0].run_id;
    const d_sae = 128 * 1024;
    const e = evalBody(run, d_sae);
    e.freqs = e.freqs.map((f, j) => (f === 0 ? 0 : f + 1e-9 * Math.sin(j))); // long decimals: the worst case for size
    e.n_almost_dead = e.freqs.filter((f) => f < 1e-7).length;
    const post = () => call("POST", `/v1/leases/${c.lease.id}/evals`, { json: { token: c.lease.token, evals: [e] } });
    expect(await json(await post(), 200)).toEqual({ stored: 1, duplicates: 0 });
    expect(await json(await post(), 200)).toEqual({ stored: 0, duplicates: 1 });
    const rows = await env.DB.prepare(`SELECT chunk, length(freqs) + length(mean_values) AS n FROM eval_arrays WHERE run_id = ?1 ORDER BY chunk`).bind(run).all<{ chunk: number; n: number }>();
    expect(rows.results.map((r) => r.chunk)).toEqual(Array.from({ length: d_sae / EVAL_CHUNK }, (_, i) => i));
    expect(Math.max(...rows.results.map((r) => r.n))).toBeLessThan(2_000_000);
    const got = await json(await call("GET", `/v1/runs/${run}/eval`), 200);
    expect(got).toEqual({ ...e, run_id: run });
  });
});

describe("queue messages split under the message limit", () => {
  it("one metrics post of 2 000 rows of a tracked run: every row once, in order, in messages under 128 KB", async () => {
    await submit(`
data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 128000
batch_size = 64
log_every = 1
lr = 1e-3
sae = { exp_factor = 4 }
wandb_project = "p"
`);
    const c = await claimAll({});
    const run = c.group.cfgs[0].run_id;
    const rows = Array.from({ length: 2000 }, (_, step) => ({ ...metricRow(run, step), loss: Math.PI / (step + 1), mse: Math.E / (step + 7) }));
    await json(await call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: { token: c.lease.token, rows } }), 200);
    const msgs = sent.filter((m): m is Extract<WandbMessage, { kind: "metrics" }> => m.kind === "metrics");
    expect(msgs.length).toBeGreaterThan(2);
    for (const m of msgs) expect(new TextEncoder().encode(JSON.stringify(m)).byteLength).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    expect(msgs.flatMap((m) => m.rows.map((r) => r.step))).toEqual(rows.map((r) => r.step));
  });
});

describe("a sweep whose artifacts could never be stored is refused at submit", () => {
  const sweep = (d_vit: number, exp: number) => `data = { kind = "synthetic", d_vit = ${d_vit}, n_features = 32, sparsity = 0.05, seed = 1 }\nn_train = 640\nbatch_size = 64\nsae = { exp_factor = ${exp} }\n`;
  it("a resume checkpoint over 5 GiB, or an eval over the evals post limit: 400 naming sae.exp_factor, nothing written", async () => {
    const big = await call("POST", "/v1/sweeps", { body: sweep(4096, 64), headers: { "content-type": "application/toml" } });
    const e1 = (await json(big, 400)).error;
    expect(e1).toMatchObject({ code: "artifacts_too_large", field: "sae.exp_factor" });
    expect(e1.message).toMatch(/resume checkpoint would take up to \d+ bytes/);
    const evals = await call("POST", "/v1/sweeps", { body: sweep(16, 64), headers: { "content-type": "application/toml" }, vars: { MAX_BODY_BYTES: String(32 << 10) } });
    const e2 = (await json(evals, 400)).error;
    expect(e2).toMatchObject({ code: "artifacts_too_large", field: "sae.exp_factor" });
    expect(e2.message).toMatch(/an eval would take up to/);
    expect(await count("sweeps")).toBe(0);
    // The same sweep under the default limit is fine.
    await submit(sweep(16, 64));
  });
});
