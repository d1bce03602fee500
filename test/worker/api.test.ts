// The HTTP API inside workerd against real local D1, R2 and Queue: every route's happy path, bad input, auth,
// the claim race, lease expiry and takeover, stale writes, idempotent metrics, retries, and a sweep to completion.
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { planMemory } from "../../shaders/fit";
import type { ClaimResponse } from "../../worker/protocol";
import {
  RUNNER, SMALL_SWEEP, SUBMIT, adapter, call, claim, evalBody, json, metricRow, putCheckpoint, resetDb, safetensors, checkpointFor, sent, sleep, submit,
} from "./helpers";

beforeEach(resetDb);

const count = async (table: string) => (await env.DB.prepare(`SELECT count(*) AS n FROM ${table}`).first<{ n: number }>())!.n;

/** Posts everything a lease needs to complete: metrics, evals, final checkpoints. */
async function finishLease(c: ClaimResponse) {
  const { id, token } = c.lease;
  const rows = c.group.cfgs.flatMap(({ run_id }) => [metricRow(run_id, 4), metricRow(run_id, 9)]);
  await json(await call("POST", `/v1/leases/${id}/metrics`, { json: { token, rows } }), 200);
  await json(await call("POST", `/v1/leases/${id}/evals`, { json: { token, evals: c.group.cfgs.map(({ run_id }) => evalBody(run_id)) } }), 200);
  for (const { run_id } of c.group.cfgs) await json(await putCheckpoint(id, token, run_id, "kind=final", checkpointFor(run_id, "final", 10, 2)), 201);
  return json(await call("POST", `/v1/leases/${id}/complete`, { json: { token } }), 200);
}

describe("auth", () => {
  it("/health needs no token; every /v1 route needs the right one", async () => {
    expect((await call("GET", "/health", { token: null })).status).toBe(200);
    const none = await call("GET", "/v1/sweeps", { token: null });
    expect(none.status).toBe(401);
    expect((await none.json<any>()).error).toMatchObject({ code: "unauthorized", field: "authorization" });
    expect((await call("GET", "/v1/sweeps", { token: "nope" })).status).toBe(401);
    expect((await call("GET", "/v1/sweeps", { token: RUNNER })).status).toBe(401);
    expect((await call("GET", "/v1/runs/x", { token: RUNNER })).status).toBe(401);
    expect((await call("POST", "/v1/sweeps", { token: RUNNER, body: SMALL_SWEEP })).status).toBe(401);
    expect((await call("POST", "/v1/claims", { token: SUBMIT, json: { runner_id: "r", adapter: adapter() } })).status).toBe(401);
    expect((await call("POST", "/v1/leases/x/heartbeat", { token: SUBMIT, json: {} })).status).toBe(401);
    expect((await call("POST", "/v1/claims", { token: null, json: {} })).status).toBe(401);
    expect(await count("sweeps")).toBe(0);
  });

  it("an unset secret locks its routes", async () => {
    const res = await call("GET", "/v1/sweeps", { token: "", vars: { SUBMIT_TOKEN: "" } });
    expect(res.status).toBe(401);
    expect((await call("GET", "/v1/sweeps", { token: "x", vars: { SUBMIT_TOKEN: "" } })).status).toBe(401);
  });
});

describe("sweeps", () => {
  it("submits TOML and JSON and reads them back with groups, runs and progress", async () => {
    const s = await submit();
    expect(s).toMatchObject({ n_runs: 6, n_groups: 1, warnings: [] });
    const j = await submit(JSON.stringify({ lr: [1e-3, 2e-3], sae: { exp_factor: [2, 4] }, n_workers: 4 }), "application/json");
    expect(j).toMatchObject({ n_runs: 4, n_groups: 2 });
    expect(j.warnings[0]).toMatch(/^n_workers/);

    const list = await json(await call("GET", "/v1/sweeps"), 200);
    expect(list.sweeps.map((x: any) => x.id).sort()).toEqual([s.id, j.id].sort());
    const one = list.sweeps.find((x: any) => x.id === s.id);
    expect(one).toMatchObject({ status: "waiting", n_runs: 6, n_groups: 1, progress: { n_runs: 6, waiting: 6, done: 0, fraction_done: 0 } });

    const detail = await json(await call("GET", `/v1/sweeps/${j.id}`), 200);
    expect(detail.sweep).toMatchObject({ id: j.id, format: "json", n_runs: 4 });
    expect(detail.groups.map((g: any) => [g.id, g.status, g.n_runs])).toEqual([[`${j.id}-g0`, "waiting", 2], [`${j.id}-g1`, "waiting", 2]]);
    expect(detail.runs.map((r: any) => [r.id, r.group_id])).toEqual([
      [`${j.id}-r0`, `${j.id}-g0`], [`${j.id}-r1`, `${j.id}-g1`], [`${j.id}-r2`, `${j.id}-g0`], [`${j.id}-r3`, `${j.id}-g1`],
    ]);
    expect(detail.runs[3].cfg).toMatchObject({ lr: 2e-3, seed: 45, sae: { exp_factor: 4 } });
    expect((await call("GET", "/v1/sweeps/sw_nope")).status).toBe(404);
  });

  it("bad sweeps get 400 naming the key, and nothing is written", async () => {
    const bad = async (body: string, ct: string, field: string) => {
      const res = await call("POST", "/v1/sweeps", { body, headers: { "content-type": ct } });
      const e = await json(res, 400);
      expect(e.error.field).toBe(field);
      expect(typeof e.error.message).toBe("string");
      return e.error;
    };
    const e = await bad(`lrr = 1\n[sae]\nexpfactor = 2`, "application/toml", "lrr");
    expect(e.issues.map((i: any) => i.field)).toEqual(["lrr", "sae.expfactor"]);
    await bad(`lr = "x"`, "application/toml", "lr");
    await bad(`lr = -1`, "application/toml", "lr");
    await bad(`lr = []`, "application/toml", "lr");
    await bad(`lr = [1e-3`, "application/toml", "body");
    await bad(`{"lr": [1e-3, true]}`, "application/json", "lr[1]");
    const huge = { lr: Array.from({ length: 65 }, (_, i) => (i + 1) * 1e-5), seed: Array.from({ length: 64 }, (_, i) => i) };
    expect((await bad(JSON.stringify(huge), "application/json", "lr")).code).toBe("sweep_too_large");
    expect(await count("sweeps")).toBe(0);
    expect(await count("runs")).toBe(0);
  });

  it("the largest allowed sweep (4096 runs) is written whole", async () => {
    const sweep = { lr: Array.from({ length: 64 }, (_, i) => (i + 1) * 1e-5), seed: Array.from({ length: 64 }, (_, i) => i), sae: { exp_factor: 2 } };
    const s = await submit(JSON.stringify(sweep), "application/json");
    expect(s).toMatchObject({ n_runs: 4096, n_groups: 1 });
    expect(await count("runs")).toBe(4096);
    const last = await env.DB.prepare(`SELECT cfg, track, status, group_id FROM runs WHERE id = ?`).bind(`${s.id}-r4095`).first<{ cfg: string; track: number; status: string; group_id: string }>();
    expect(JSON.parse(last!.cfg)).toMatchObject({ lr: 64e-5, seed: 63 });
    expect(last).toMatchObject({ track: 1, status: "waiting", group_id: `${s.id}-g0` });
  });

  it("bodies over the limit get 413", async () => {
    const res = await call("POST", "/v1/sweeps", { body: `tag = "${"x".repeat(1 << 20)}"`, headers: { "content-type": "application/toml" } });
    expect(res.status).toBe(413);
    expect((await res.json<any>()).error).toMatchObject({ code: "too_large", field: "body" });
  });
});

describe("claims and leases", () => {
  it("204 when nothing waits; 400 naming the field for a bad claim", async () => {
    expect(await claim()).toBeNull();
    const e = await json(await call("POST", "/v1/claims", { json: { runner_id: "r", adapter: { vendor: "v", architecture: "a", limits: {} } } }), 400);
    expect(e.error.field).toBe("adapter.limits.maxStorageBufferBindingSize");
    expect((await json(await call("POST", "/v1/claims", { body: "{", headers: { "content-type": "application/json" } }), 400)).error.code).toBe("invalid_json");
  });

  it("a sweep runs to completion: claim, heartbeat, metrics, evals, checkpoints, complete, and the read API", async () => {
    const s = await submit();
    const c = (await claim("runner-a"))!;
    expect(c.group).toMatchObject({ id: `${s.id}-g0`, sweep_id: s.id, resume: [], attempt: 1, data: { kind: "synthetic", d_vit: 16 } });
    expect(c.group.cfgs.map((r) => r.run_id)).toEqual([0, 1, 2, 3, 4, 5].map((i) => `${s.id}-r${i}`));
    expect(c.group.cfgs[0].cfg).toMatchObject({ n_patches: 640, sae_batch_size: 64, sae: { d_vit: 16, exp_factor: 4 } });
    expect(c.lease.expires_at).toBeGreaterThan(Date.now());
    expect(c.lease.heartbeat_ms).toBe(20_000);
    // The adapter report is stored with the lease.
    const stored = await env.DB.prepare(`SELECT adapter, runner_id FROM leases WHERE id = ?`).bind(c.lease.id).first<{ adapter: string; runner_id: string }>();
    expect(JSON.parse(stored!.adapter)).toMatchObject({ architecture: "swiftshader" });
    expect(await claim("runner-b")).toBeNull(); // the whole group is leased

    const hb = await json(await call("POST", `/v1/leases/${c.lease.id}/heartbeat`, { json: { token: c.lease.token, progress: { step: 5, n_steps: 10 } } }), 200);
    expect(hb.expires_at).toBeGreaterThanOrEqual(c.lease.expires_at);
    const during = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(during.sweep.status).toBe("running");
    expect(during.groups[0]).toMatchObject({ status: "running", progress: { leased: 6 } });
    expect(during.groups[0].leases[0]).toMatchObject({ id: c.lease.id, runner_id: "runner-a", status: "active", progress: { step: 5, n_steps: 10 } });
    expect(during.groups[0].leases[0].token).toBeUndefined();

    const run0 = c.group.cfgs[0].run_id;
    // Completing before the evals are in is refused.
    expect((await json(await call("POST", `/v1/leases/${c.lease.id}/complete`, { json: { token: c.lease.token } }), 409)).error).toMatchObject({ code: "incomplete", field: "evals" });
    expect(await finishLease(c)).toMatchObject({ status: "completed", group_status: "done" });
    // A repeated complete is answered, not refused.
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/complete`, { json: { token: c.lease.token } }), 200)).toMatchObject({ repeated: true });

    const done = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(done.sweep).toMatchObject({ status: "done", progress: { done: 6, fraction_done: 1 } });
    expect(done.sweep.finished_at).toBeGreaterThan(0);
    expect(done.groups[0].status).toBe("done");
    expect(done.runs.every((r: any) => r.status === "done")).toBe(true);

    const run = await json(await call("GET", `/v1/runs/${run0}`), 200);
    expect(run.run).toMatchObject({ id: run0, status: "done", n_steps: 10, latest: { step: 9, loss: 0.1 }, eval: { l0: 2.5, n_dead: 16, n_examples: 640 } });
    expect(run.run.checkpoints).toEqual([expect.objectContaining({ kind: "final", step: 10, bytes: checkpointFor(run0, "final", 10, 2).byteLength })]);
    const hist = await json(await call("GET", `/v1/runs/${run0}/metrics`), 200);
    expect(hist.rows.map((r: any) => r.step)).toEqual([4, 9]);
    expect(hist.rows[0]).toMatchObject({ loss: 0.2, "progress/n_patches_seen": 320 });
    expect((await json(await call("GET", `/v1/runs/${run0}/metrics?since=4`), 200)).rows.map((r: any) => r.step)).toEqual([9]);
    expect((await json(await call("GET", `/v1/runs/${run0}/metrics?since=x`), 400)).error.field).toBe("since");
    const ev = await json(await call("GET", `/v1/runs/${run0}/eval`), 200);
    expect(ev).toEqual({ ...evalBody(run0), run_id: run0 });
    const ck = await call("GET", `/v1/runs/${run0}/checkpoint`);
    expect(ck.status).toBe(200);
    expect(new Uint8Array(await ck.arrayBuffer())).toEqual(checkpointFor(run0, "final", 10, 2));
    expect((await call("GET", `/v1/runs/${run0}/checkpoint?kind=resume`)).status).toBe(404);
    expect((await call("GET", `/v1/runs/nope`)).status).toBe(404);
    expect((await call("GET", `/v1/runs/nope/eval`)).status).toBe(404);

    // W&B: one metrics message per run and post, one eval, one finish; tracked runs only.
    expect(sent.filter((m) => m.kind === "metrics")).toHaveLength(6);
    expect(sent.filter((m) => m.kind === "eval")).toHaveLength(6);
    expect(sent.filter((m) => m.kind === "finish").map((m) => m.kind === "finish" && [m.run_id, m.exit_code])).toEqual(c.group.cfgs.map((r) => [r.run_id, 0]));
    const m0 = sent.find((m) => m.kind === "metrics" && m.run_id === run0)!;
    expect(m0.kind === "metrics" && m0.rows.map((r) => r.step)).toEqual([4, 9]);
  });

  it("duplicate metric and eval posts are stored once and enqueued once", async () => {
    await submit();
    const c = (await claim())!;
    const r0 = c.group.cfgs[0].run_id;
    const body = { token: c.lease.token, rows: [metricRow(r0, 0), metricRow(r0, 5)] };
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: body }), 200)).toEqual({ stored: 2, duplicates: 0 });
    // The same rows again (a retry), plus one new, plus one replayed with other values: only the new one lands.
    const again = { token: c.lease.token, rows: [metricRow(r0, 0), { ...metricRow(r0, 5), loss: 123 }, metricRow(r0, 9)] };
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: again }), 200)).toEqual({ stored: 1, duplicates: 2 });
    const rows = await env.DB.prepare(`SELECT step, loss FROM metrics WHERE run_id = ? ORDER BY step`).bind(r0).all<{ step: number; loss: number }>();
    expect(rows.results).toEqual([{ step: 0, loss: 1 }, { step: 5, loss: 1 / 6 }, { step: 9, loss: 0.1 }]);
    const msgs = sent.filter((m) => m.kind === "metrics");
    expect(msgs.map((m) => m.kind === "metrics" && m.rows.map((r) => r.step))).toEqual([[0, 5], [9]]);

    const ev = { token: c.lease.token, evals: [evalBody(r0)] };
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: ev }), 200)).toEqual({ stored: 1, duplicates: 0 });
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: ev }), 200)).toEqual({ stored: 0, duplicates: 1 });
    expect(sent.filter((m) => m.kind === "eval")).toHaveLength(1);
  });

  it("a queue failure loses nothing: the rows are stored, 503, and the runner's retry sends them", async () => {
    await submit();
    const c = (await claim())!;
    const r0 = c.group.cfgs[0].run_id;
    const down = { send: () => Promise.reject(new Error("queue down")), sendBatch: () => Promise.reject(new Error("queue down")) } as unknown as Queue<unknown>;
    const body = { token: c.lease.token, rows: [metricRow(r0, 0), metricRow(r0, 5)] };
    const res = await call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: body, vars: { WANDB_QUEUE: down } });
    expect((await json(res, 503)).error.code).toBe("queue_unavailable");
    const ev = { token: c.lease.token, evals: [evalBody(r0)] };
    expect((await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: ev, vars: { WANDB_QUEUE: down } })).status).toBe(503);
    expect(await count("metrics")).toBe(2);
    expect(await count("evals")).toBe(1);
    expect(sent).toEqual([]);
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: body }), 200)).toEqual({ stored: 0, duplicates: 2 });
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: ev }), 200)).toEqual({ stored: 0, duplicates: 1 });
    expect(sent.map((m) => m.kind)).toEqual(["metrics", "eval"]);
    const m = sent[0];
    expect(m.kind === "metrics" && m.rows).toEqual([0, 5].map((step) => ({ ...metricRow(r0, step), run_id: undefined, ts: expect.any(Number) })).map(({ run_id: _r, ...x }) => x));
    const e = sent[1];
    expect(e.kind === "eval" && e.eval).toEqual((({ run_id: _r, ...x }) => x)(evalBody(r0)));
    // And once sent, a third post sends nothing.
    await json(await call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: body }), 200);
    expect(sent).toHaveLength(2);
    // A finish lost to the queue is sent by the repeated complete.
    await json(await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: { token: c.lease.token, evals: c.group.cfgs.slice(1).map(({ run_id }) => evalBody(run_id)) } }), 200);
    for (const { run_id } of c.group.cfgs) await json(await putCheckpoint(c.lease.id, c.lease.token, run_id, "kind=final", checkpointFor(run_id, "final", 10)), 201);
    sent.length = 0;
    expect((await call("POST", `/v1/leases/${c.lease.id}/complete`, { json: { token: c.lease.token }, vars: { WANDB_QUEUE: down } })).status).toBe(503);
    expect((await json(await call("GET", `/v1/runs/${r0}`), 200)).run.status).toBe("done");
    expect(await json(await call("POST", `/v1/leases/${c.lease.id}/complete`, { json: { token: c.lease.token } }), 200)).toMatchObject({ repeated: true });
    expect(sent.map((m) => m.kind === "finish" && m.run_id)).toEqual(c.group.cfgs.map((r) => r.run_id));
    await json(await call("POST", `/v1/leases/${c.lease.id}/complete`, { json: { token: c.lease.token } }), 200);
    expect(sent).toHaveLength(6);
  });

  it("untracked runs store everything and enqueue nothing", async () => {
    await submit(SMALL_SWEEP + "\ntrack = false\n");
    const c = (await claim())!;
    await finishLease(c);
    expect(sent).toEqual([]);
  });

  it("bad runner input: 400 naming the field, 404 for an unknown lease", async () => {
    await submit();
    const c = (await claim())!;
    const { id, token } = c.lease;
    const r0 = c.group.cfgs[0].run_id;
    const post = (path: string, body: unknown) => call("POST", `/v1/leases/${id}/${path}`, { json: body });
    const { mse: _m, ...noMse } = metricRow(r0, 0);
    expect((await json(await post("metrics", { token, rows: [noMse] }), 400)).error.field).toBe("rows[0].mse");
    expect((await json(await post("metrics", { token, rows: [{ ...metricRow(r0, 0), extra: 1 }] }), 400)).error.field).toBe("rows[0].extra");
    expect((await json(await post("metrics", { token, rows: [metricRow(r0, 0), metricRow("sw_x-r0", 0)] }), 400)).error).toMatchObject({ code: "unknown_run", field: "rows[1].run_id" });
    expect((await json(await post("metrics", { token, rows: [metricRow(r0, 10)] }), 400)).error.field).toBe("rows[0].step");
    expect((await json(await post("metrics", { token, rows: [] }), 400)).error.field).toBe("rows");
    expect((await json(await post("metrics", { rows: [metricRow(r0, 0)] }), 400)).error.field).toBe("token");
    expect((await json(await post("evals", { token, evals: [evalBody(r0, 32)] }), 400)).error.field).toBe("evals[0].freqs");
    expect((await json(await post("evals", { token, evals: [{ ...evalBody(r0), freqs: evalBody(r0).freqs.map(() => 2) }] }), 400)).error.field).toBe("evals[0].freqs[0]");
    expect((await json(await post("heartbeat", { token, progress: { step: -1, n_steps: 10 } }), 400)).error.field).toBe("progress.step");
    expect((await json(await post("fail", { token }), 400)).error.field).toBe("error");
    expect((await json(await putCheckpoint(id, token, r0, "kind=final", new TextEncoder().encode("not safetensors at all")), 400)).error).toMatchObject({ code: "invalid_checkpoint", field: "body" });
    expect((await json(await putCheckpoint(id, token, r0, "kind=best", safetensors()), 400)).error.field).toBe("kind");
    expect((await json(await putCheckpoint(id, token, r0, "kind=resume", safetensors()), 400)).error.field).toBe("step");
    expect((await json(await putCheckpoint(id, token, r0, "kind=resume&step=11", safetensors()), 400)).error.field).toBe("step");
    expect((await json(await call("PUT", `/v1/leases/${id}/checkpoints/${r0}?kind=final`, { body: safetensors() }), 400)).error.field).toBe("x-lease-token");
    expect((await json(await call("POST", `/v1/leases/ls_nope/heartbeat`, { json: { token, progress: { step: 0, n_steps: 1 } } }), 404)).error.field).toBe("lease_id");
    expect(await count("metrics")).toBe(0);
    expect(await count("evals")).toBe(0);
    expect(await count("checkpoints")).toBe(0);
    // Oversized runner bodies.
    expect((await call("POST", `/v1/leases/${id}/heartbeat`, { json: { token, progress: { step: 0, n_steps: 1, pad: "x".repeat(70_000) } } })).status).toBe(413);
  });

  it("chunks a group to what the runner's adapter holds", async () => {
    const s = await submit();
    const a = (await claim("a", 2))!;
    const b = (await claim("b", 2))!;
    const c = (await claim("c", 4))!; // room for 4, only 2 left
    expect([a, b, c].map((x) => x.group.cfgs.map((r) => r.run_id))).toEqual([[0, 1], [2, 3], [4, 5]].map((p) => p.map((i) => `${s.id}-r${i}`)));
    expect(await claim("d", 4)).toBeNull();
    // An adapter that cannot hold one SAE gets nothing, even when runs wait.
    await submit();
    expect(await claim("tiny", 0)).toBeNull();
    // the lease keeps the budget its chunk was sized for
    const budgets = await env.DB.prepare("SELECT memory_budget FROM leases ORDER BY created_at").all<{ memory_budget: number }>();
    expect(budgets.results.map((r) => r.memory_budget)).toEqual([adapter(2).memoryBudget, adapter(2).memoryBudget, adapter(4).memoryBudget]);
    await finishLease(a);
    await finishLease(b);
    const mid = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(mid.groups[0]).toMatchObject({ status: "running", progress: { done: 4, leased: 2 } });
    expect(mid.sweep.status).toBe("running");
    await finishLease(c);
    expect((await json(await call("GET", `/v1/sweeps/${s.id}`), 200)).sweep.status).toBe("done");
  });

  it("sizes a BatchTopK group's chunk with its select buffers (the plan the engine allocates)", async () => {
    const s = await submit(SMALL_SWEEP.replace("sae = { exp_factor = 4 }", 'sae = { exp_factor = 4, kind = "batchtopk", k = 4, aux_coeff = 0 }'));
    // a budget for 2 ReLU SAEs of this tiny shape holds no BatchTopK one: its 65 536-bin histogram is larger
    expect(await claim("a", 2)).toBeNull();
    const size = 2 ** 28;
    const memoryBudget = planMemory({ maxStorageBufferBindingSize: size, maxBufferSize: size }, { d_vit: 16, d_sae: 64, batch_size: 64, batchtopk: true }, { saes: 2 }).totalBytes;
    const got = await json<ClaimResponse>(await call("POST", "/v1/claims", { json: { runner_id: "b", adapter: { ...adapter(), memoryBudget } } }), 200);
    expect(got.group.cfgs.map((r) => r.run_id)).toEqual([`${s.id}-r0`, `${s.id}-r1`]);
  });

  it("sizes an AuxK group's chunk with its dead counters and working set (the plan the engine allocates)", async () => {
    // TopK with AuxK's default aux_coeff (1/32): auxAct is as large as H, so a budget for 2 plain TopK SAEs holds 1
    const s = await submit(SMALL_SWEEP.replace("sae = { exp_factor = 4 }", 'sae = { exp_factor = 4, kind = "topk", k = 4 }'));
    const one = (await claim("a", 2))!;
    expect(one.group.cfgs.map((r) => r.run_id)).toEqual([`${s.id}-r0`]);
    const size = 2 ** 28;
    const memoryBudget = planMemory({ maxStorageBufferBindingSize: size, maxBufferSize: size }, { d_vit: 16, d_sae: 64, batch_size: 64, auxk: true }, { saes: 2 }).totalBytes;
    const got = await json<ClaimResponse>(await call("POST", "/v1/claims", { json: { runner_id: "b", adapter: { ...adapter(), memoryBudget } } }), 200);
    expect(got.group.cfgs.map((r) => r.run_id)).toEqual([`${s.id}-r1`, `${s.id}-r2`]);
  });

  it("sizes the chunk with the runner's memory budget and the group's Matryoshka prefixes; refuses a bad budget", async () => {
    // SMALL_SWEEP's shape with 10 prefixes: each SAE's residuals take 10× the memory, so a budget for 2 Vanilla SAEs holds 1
    const s = await submit(SMALL_SWEEP.replace("objective = {", 'objective = { kind = "matryoshka", n_prefixes = 10,'));
    const one = (await claim("a", 2))!;
    expect(one.group.cfgs.map((r) => r.run_id)).toEqual([`${s.id}-r0`]);
    // without a budget the Worker assumes the default (2 GiB): the rest of the group
    const { memoryBudget: _b, memorySource: _s, ...plain } = adapter();
    const rest = await json<ClaimResponse>(await call("POST", "/v1/claims", { json: { runner_id: "b", adapter: plain } }), 200);
    expect(rest.group.cfgs.length).toBe(s.n_runs - 1);
    const budgets = await env.DB.prepare("SELECT memory_budget FROM leases ORDER BY created_at").all<{ memory_budget: number }>();
    expect(budgets.results.map((r) => r.memory_budget)).toEqual([adapter(2).memoryBudget, 2 * 2 ** 30]);
    for (const [bad, message] of [[-1, /must be > 0/], [1.5, /must be an integer/], ["80", /must be a number, got string/]] as const) {
      const e = await json(await call("POST", "/v1/claims", { json: { runner_id: "c", adapter: { ...adapter(), memoryBudget: bad } } }), 400);
      expect(e.error.field).toBe("adapter.memoryBudget");
      expect(e.error.message).toMatch(message);
    }
    expect(await count("leases")).toBe(2);
  });

  it("many claims at once over many groups: each gets its own group, none answers 204 while work waits", async () => {
    // 12 groups (one per data seed), 2 runs each; 6 runners claim at once. The losers of a race retry among a
    // widening set of the oldest groups, so all 6 get one (a fixed order made most of them lose every try).
    const seeds = Array.from({ length: 12 }, (_, i) => `{ kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05, seed = ${i + 1} }`);
    const s = await submit(`data = [${seeds.join(", ")}]\nn_train = 640\nbatch_size = 64\nlr = [1e-4, 3e-4]\nsae = { exp_factor = 4 }\n`);
    expect(s.n_groups).toBe(12);
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => claim(`r${i}`)));
    expect(results.every((r) => r !== null)).toBe(true);
    expect(new Set(results.map((r) => r!.group.id)).size).toBe(6);
    expect(results.every((r) => r!.group.cfgs.length === 2)).toBe(true);
    expect(await count("leases")).toBe(6);
  });

  it("two claims racing for one group: exactly one wins", async () => {
    await submit();
    for (let round = 0; round < 3; round++) {
      await resetDb();
      await submit();
      const results = await Promise.all([claim("a"), claim("b"), claim("c")]);
      const winners = results.filter((r) => r !== null);
      expect(winners).toHaveLength(1);
      expect(winners[0]!.group.cfgs).toHaveLength(6);
      expect(await count("leases")).toBe(1);
      const leased = await env.DB.prepare(`SELECT DISTINCT lease_id FROM runs`).all<{ lease_id: string }>();
      expect(leased.results.map((r) => r.lease_id)).toEqual([winners[0]!.lease.id]);
    }
  });

  it("an expired lease is taken over with its resume checkpoints, and its stale token is refused everywhere", async () => {
    // Long enough that the writes below finish on a loaded 2-core machine before it expires.
    const vars = { LEASE_TTL_MS: "3000" };
    await submit();
    const old = (await claim("a", 1024, vars))!;
    expect(old.lease.heartbeat_ms).toBe(1000);
    const [r0, r1] = old.group.cfgs.map((r) => r.run_id);
    const ck = checkpointFor(r0, "resume", 5, 3);
    expect((await json(await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=resume&step=5", ck, vars), 201))).toMatchObject({ kind: "resume", step: 5 });
    await json(await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=resume&step=2", checkpointFor(r0, "resume", 2), vars), 201);
    await json(await call("POST", `/v1/leases/${old.lease.id}/metrics`, { json: { token: old.lease.token, rows: [metricRow(r0, 4)] }, vars }), 200);
    // The runner fetches its own resume checkpoint back while the lease is valid.
    const own = await call("GET", `/v1/leases/${old.lease.id}/checkpoints/${r0}?kind=resume`, { headers: { "x-lease-token": old.lease.token }, vars });
    expect(own.status).toBe(200);
    expect(own.headers.get("x-checkpoint-step")).toBe("5");
    expect(await claim("b", 1024, vars)).toBeNull(); // still held

    await sleep(Math.max(0, old.lease.expires_at - Date.now()) + 50);
    const hb = await call("POST", `/v1/leases/${old.lease.id}/heartbeat`, { json: { token: old.lease.token, progress: { step: 6, n_steps: 10 } }, vars });
    expect((await json(hb, 409)).error).toMatchObject({ code: "stale_lease", field: "token" });
    const expired = await json(await call("GET", `/v1/sweeps/${old.group.sweep_id}`), 200);
    expect(expired.groups[0].leases[0].status).toBe("expired");

    const neu = (await claim("b", 1024, { LEASE_TTL_MS: "60000" }))!;
    expect(neu.group.id).toBe(old.group.id);
    expect(neu.group.cfgs.map((r) => r.run_id)).toEqual(old.group.cfgs.map((r) => r.run_id));
    expect(neu.group.attempt).toBe(2);
    expect(neu.group.resume).toEqual([{ run_id: r0, step: 5, checkpoint_path: `/v1/leases/${neu.lease.id}/checkpoints/${r0}?kind=resume&step=5` }]);
    const back = await call("GET", neu.group.resume[0].checkpoint_path, { headers: { "x-lease-token": neu.lease.token } });
    expect(back.status).toBe(200);
    expect(new Uint8Array(await back.arrayBuffer())).toEqual(ck);

    // Every write and read under the old lease is refused now, and stores nothing.
    const stale = { token: old.lease.token };
    for (const res of [
      await call("POST", `/v1/leases/${old.lease.id}/metrics`, { json: { ...stale, rows: [metricRow(r1, 5)] } }),
      await call("POST", `/v1/leases/${old.lease.id}/evals`, { json: { ...stale, evals: [evalBody(r1)] } }),
      await putCheckpoint(old.lease.id, old.lease.token, r1, "kind=final", safetensors()),
      await call("GET", `/v1/leases/${old.lease.id}/checkpoints/${r0}?kind=resume`, { headers: { "x-lease-token": old.lease.token } }),
      await call("POST", `/v1/leases/${old.lease.id}/complete`, { json: stale }),
      await call("POST", `/v1/leases/${old.lease.id}/fail`, { json: { ...stale, error: "late" } }),
      await call("POST", `/v1/leases/${neu.lease.id}/metrics`, { json: { ...stale, rows: [metricRow(r1, 5)] } }), // right lease, wrong token
    ]) {
      expect(res.status).toBe(409);
      expect((await res.json<any>()).error.code).toBe("stale_lease");
    }
    expect(await count("evals")).toBe(0);
    expect((await env.DB.prepare(`SELECT count(*) AS n FROM metrics WHERE run_id = ?`).bind(r1).first<{ n: number }>())!.n).toBe(0);
    expect((await env.DB.prepare(`SELECT count(*) AS n FROM checkpoints WHERE kind = 'final'`).first<{ n: number }>())!.n).toBe(0);

    // The new runner re-posts the step the old one stored: nothing doubles; then it finishes the sweep.
    await finishLease(neu);
    expect((await env.DB.prepare(`SELECT count(*) AS n FROM metrics WHERE run_id = ?`).bind(r0).first<{ n: number }>())!.n).toBe(2);
    expect((await json(await call("GET", `/v1/sweeps/${old.group.sweep_id}`), 200)).sweep.status).toBe("done");
  }, 30_000); // sleeps out a 3 s lease, then ~20 requests: over the 5 s default on a loaded machine

  it("a checkpoint is stored once: a repeat (same lease, or a later one after a takeover) is a duplicate and leaves no object behind; a body cut short is refused", async () => {
    const vars = { LEASE_TTL_MS: "3000" };
    const s = await submit();
    const old = (await claim("a", 1024, vars))!;
    const r0 = old.group.cfgs[0].run_id;
    const objects = async () => (await env.CHECKPOINTS.list({ prefix: `${s.id}/` })).objects.map((o) => o.key);
    const first = checkpointFor(r0, "final", 10, 1);
    const cut = await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=final", first.slice(0, first.byteLength - 5), vars);
    expect((await json(cut, 400)).error).toMatchObject({ code: "invalid_checkpoint", field: "body" });
    expect(await objects()).toEqual([]);
    expect(await json(await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=final", first, vars), 201)).toEqual({ run_id: r0, kind: "final", step: 10, bytes: first.byteLength });
    // The runner's retry after a lost answer.
    expect(await json(await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=final", first, vars), 200)).toMatchObject({ duplicate: true, bytes: first.byteLength });
    await json(await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=resume&step=5", checkpointFor(r0, "resume", 5, 5), vars), 201);
    expect(await objects()).toHaveLength(2);

    // The runner dies before it hears the answers; the next one retrains the group and uploads them again.
    await sleep(Math.max(0, old.lease.expires_at - Date.now()) + 50);
    const neu = (await claim("b", 1024, { LEASE_TTL_MS: "60000" }))!;
    expect(neu.group.resume).toEqual([expect.objectContaining({ run_id: r0, step: 5 })]);
    expect(await json(await putCheckpoint(neu.lease.id, neu.lease.token, r0, "kind=final", checkpointFor(r0, "final", 10, 2)), 200)).toMatchObject({ duplicate: true, bytes: first.byteLength });
    expect(await json(await putCheckpoint(neu.lease.id, neu.lease.token, r0, "kind=resume&step=5", checkpointFor(r0, "resume", 5, 6)), 200)).toMatchObject({ duplicate: true });
    expect(await objects()).toHaveLength(2);
    const run = await json(await call("GET", `/v1/runs/${r0}`), 200);
    expect(run.run.checkpoints.map((k: { kind: string; step: number }) => [k.kind, k.step])).toEqual([["final", 10], ["resume", 5]]);
    expect(new Uint8Array(await (await call("GET", `/v1/runs/${r0}/checkpoint`)).arrayBuffer())).toEqual(first);
    // The dead runner's late repeat is refused, and the object it stored stays.
    expect((await putCheckpoint(old.lease.id, old.lease.token, r0, "kind=final", first)).status).toBe(409);
    expect(await objects()).toHaveLength(2);
    expect(new Uint8Array(await (await call("GET", `/v1/runs/${r0}/checkpoint`)).arrayBuffer())).toEqual(first);
  });

  it("fail puts the group back until MAX_ATTEMPTS, then fails group, runs and sweep with the error", async () => {
    const vars = { MAX_ATTEMPTS: "2" };
    const s = await submit();
    const first = (await claim("a", 1024, vars))!;
    const f1 = await json(await call("POST", `/v1/leases/${first.lease.id}/fail`, { json: { token: first.lease.token, error: "device lost" }, vars }), 200);
    expect(f1).toMatchObject({ status: "failed", group_status: "waiting", failures: 1, max_attempts: 2 });
    // A repeated fail (lost answer) is answered and counts nothing.
    expect(await json(await call("POST", `/v1/leases/${first.lease.id}/fail`, { json: { token: first.lease.token, error: "again" }, vars }), 200)).toMatchObject({ repeated: true, failures: 1 });
    const second = (await claim("b", 1024, vars))!;
    expect(second.group.id).toBe(first.group.id);
    expect(second.group.attempt).toBe(2);
    const f2 = await json(await call("POST", `/v1/leases/${second.lease.id}/fail`, { json: { token: second.lease.token, error: "out of memory" }, vars }), 200);
    expect(f2).toMatchObject({ group_status: "failed", failures: 2 });
    expect(await claim("c", 1024, vars)).toBeNull();
    const detail = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(detail.sweep.status).toBe("failed");
    expect(detail.groups[0]).toMatchObject({ status: "failed", last_error: "out of memory", failures: 2 });
    expect(detail.runs.every((r: any) => r.status === "failed" && r.error === "out of memory")).toBe(true);
    expect(sent.filter((m) => m.kind === "finish").map((m) => m.kind === "finish" && m.exit_code)).toEqual([1, 1, 1, 1, 1, 1]);
  });
});
