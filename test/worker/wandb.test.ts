// The W&B queue consumer inside workerd, with real local D1, against the W&B stand-in (test/wandb/standin.ts),
// a real HTTP server started by the suite's globalSetup. Messages come from the real API routes (captured on their
// way to the queue); the test plays the queue's delivery rules (redelivery of retried messages with attempts + 1,
// dead-lettering after max_retries) and hands each batch to the Worker's own queue() handler.
import { createExecutionContext, createMessageBatch, env, getQueueResult } from "cloudflare:test";
import { beforeEach, describe, expect, inject, it } from "vitest";
import worker from "../../worker/index";
import type { Env } from "../../worker/env";
import type { ClaimResponse, WandbMessage } from "../../worker/protocol";
import { INFLIGHT_TIMEOUT_MS, NO_API_KEY, WANDB_DLQ_NAME, WANDB_QUEUE_NAME, consumeQueue, heartbeatIdleRuns } from "../../worker/wandb/consumer";
import type { StandinRun } from "../wandb/standin";
import { call, checkpointFor, claim, evalBody, json, metricRow, putCheckpoint, resetDb, submit } from "./helpers";
import { STANDIN_KEY } from "./wandb-standin.setup";

const W = inject("wandbStandinUrl");
/** wrangler.toml's max_retries for sae-swarm-wandb: a message is delivered at most this + 1 times. */
const MAX_RETRIES = 8;

/** 2 runs, 10 steps each, every step logged. */
const TRACKED = `
data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 640
batch_size = 64
log_every = 1
lr = 1e-3
sae = { exp_factor = 4 }
objective = { sparsity_coeff = [4e-4, 8e-4] }
wandb_project = "swarm-test"
tags = ["edge"]
`;

let captured: WandbMessage[] = [];
const capture = {
  send: async (body: WandbMessage) => void captured.push(body),
  sendBatch: async (msgs: Iterable<MessageSendRequest<WandbMessage>>) => void captured.push(...[...msgs].map((m) => m.body)),
} as unknown as Queue<unknown>;
const vars = { WANDB_QUEUE: capture };
const wandbEnv = { ...env, WANDB_API_KEY: STANDIN_KEY, WANDB_BASE_URL: W } as Env;

const standin = async (path: string, body?: unknown) => {
  const res = await fetch(`${W}/_standin/${path}`, body === undefined ? {} : { method: "POST", body: JSON.stringify(body) });
  return res.json() as Promise<any>;
};
const standinRuns = async () => (await standin("runs")).runs as Array<StandinRun & { summary: any }>;

interface Pending {
  id: string;
  body: WandbMessage;
  attempts: number;
}

/** Hands one batch to the Worker's queue() and returns the ids it retried (and with what delays). */
async function deliver(queue: string, items: Pending[], e: Env = wandbEnv) {
  const batch = createMessageBatch<WandbMessage>(
    queue,
    items.map((p) => ({ id: p.id, timestamp: new Date(), attempts: p.attempts, body: p.body })),
  );
  const ctx = createExecutionContext();
  await worker.queue(batch as MessageBatch<unknown>, e);
  const result = await getQueueResult(batch, ctx);
  expect(result.ackAll || result.retryBatch.retry).toBe(false); // verdicts are per message
  const retried = new Map<string, number>(result.retryMessages.map((m: { msgId: string; delaySeconds?: number }) => [m.msgId, m.delaySeconds ?? 0]));
  for (const p of items) expect(retried.has(p.id) || result.explicitAcks.includes(p.id)).toBe(true);
  return retried;
}

/** Delivers until every message is acked; a message retried past MAX_RETRIES goes to the dead-letter queue. */
async function drain(items: Pending[], perBatch = 50) {
  let pending = items;
  const dead: Pending[] = [];
  const delays: number[] = [];
  let deliveries = 0;
  while (pending.length) {
    if (++deliveries > 60) throw new Error("the queue does not drain");
    const batch = pending.slice(0, perBatch);
    const retried = await deliver(WANDB_QUEUE_NAME, batch);
    const next = pending.slice(perBatch);
    for (const p of batch) {
      if (!retried.has(p.id)) continue;
      delays.push(retried.get(p.id)!);
      if (p.attempts >= MAX_RETRIES + 1) dead.push(p);
      else next.push({ ...p, attempts: p.attempts + 1 });
    }
    pending = next;
  }
  if (dead.length) expect((await deliver(WANDB_DLQ_NAME, dead)).size).toBe(0);
  return { deliveries, dead, delays };
}

/** Runs the whole sweep through the API as a runner would (metrics posted in 3 chunks per run), returning the claim. */
async function runSweep(text: string, row: (run_id: string, step: number) => object = metricRow) {
  const s = await submit(text);
  const c = (await claim("runner-w", 1024, vars as Partial<Env>)) as ClaimResponse;
  const { id, token } = c.lease;
  for (const chunk of [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]) {
    const rows = c.group.cfgs.flatMap(({ run_id }) => chunk.map((step) => row(run_id, step)));
    await json(await call("POST", `/v1/leases/${id}/metrics`, { json: { token, rows }, vars }), 200);
  }
  await json(await call("POST", `/v1/leases/${id}/evals`, { json: { token, evals: c.group.cfgs.map(({ run_id }) => evalBody(run_id)) }, vars }), 200);
  for (const { run_id } of c.group.cfgs) await json(await putCheckpoint(id, token, run_id, "kind=final", checkpointFor(run_id, "final", 10, 2), vars), 201);
  await json(await call("POST", `/v1/leases/${id}/complete`, { json: { token }, vars }), 200);
  return { sweepId: s.id, runIds: c.group.cfgs.map((r) => r.run_id) };
}

beforeEach(async () => {
  await resetDb();
  captured = [];
  await standin("reset", {});
});

describe("W&B queue consumer against the stand-in", () => {
  it("a tracked sweep's rows arrive complete, in order, once, through 429s, 500s, lost replies and duplicate deliveries", async () => {
    const { sweepId, runIds } = await runSweep(TRACKED);
    expect(captured.map((m) => m.kind).sort()).toEqual([...Array(6).fill("metrics"), "eval", "eval", "finish", "finish"].sort());

    // One eval as a large one arrives: arrays left in D1.
    const evalIdx = captured.findIndex((m) => m.kind === "eval" && m.run_id === runIds[1]);
    const big = captured[evalIdx] as Extract<WandbMessage, { kind: "eval" }>;
    captured[evalIdx] = { ...big, eval: { ...big.eval, freqs: [], mean_values: [] }, arrays_omitted: true };

    await standin("faults", [
      { on: "graphql", kind: "status", status: 500 },
      { on: "file_stream", kind: "status", status: 429, retryAfter: "1" },
      { on: "file_stream", kind: "status", status: 500 },
      // Three lost replies in a row: the client gives up (3 tries) after W&B applied the lines; the next delivery
      // must learn from W&B's line count what landed, as after a consumer crash mid-send.
      { on: "file_stream", kind: "drop-after-apply" },
      { on: "file_stream", kind: "drop-after-apply" },
      { on: "file_stream", kind: "drop-after-apply" },
      { on: "file_stream", kind: "status", status: 503 },
      { on: "file_stream", kind: "status", status: 503 },
      { on: "file_stream", kind: "status", status: 503 },
    ]);
    // Out of order (finish first, later chunks before earlier), the first two messages delivered twice, and in small
    // batches so runs see several deliveries.
    const items: Pending[] = [...captured].reverse().map((body, i) => ({ id: `m${i}`, body, attempts: 1 }));
    items.push({ ...items[items.length - 1], id: "dup-a" }, { ...items[items.length - 2], id: "dup-b" });
    const { deliveries } = await drain(items, 3);
    expect(deliveries).toBeGreaterThan(4);
    expect((await standin("faults", [])).pending).toBe(0);

    const runs = await standinRuns();
    expect(runs).toHaveLength(2);
    for (const runId of runIds) {
      const api = (await json(await call("GET", `/v1/runs/${runId}`), 200)).run;
      expect(api.wandb).toMatchObject({ status: "finished", last_error: null, dead_letters: 0, dead_lettered: [] });
      const r = runs.find((x) => x.name === api.wandb.name)!;
      expect(api.wandb.url).toBe(`${W}/swarm/swarm-test/runs/${r.name}`);
      expect(r.violations).toEqual([]);
      expect(r.history.map((l) => JSON.parse(l)._step)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(JSON.parse(r.history[3])).toMatchObject({ loss: 0.25, "progress/n_patches_seen": 256 });
      expect([r.complete, r.exitcode, r.tags, r.groupName, r.entity, r.project]).toEqual([true, 0, ["edge"], sweepId, "swarm", "swarm-test"]);
      expect(r.config).toMatchObject({ lr: 1e-3, sae_swarm: { run_id: runId, sweep_id: sweepId } });
      expect(r.summary).toMatchObject({ _step: 9, "eval/fvu": 0.1, "eval/n_dead": 16, "eval/freqs": { _type: "histogram" } });
      expect(JSON.stringify(api)).not.toContain(STANDIN_KEY);
    }
    // The eval read back from D1 gives the same histograms as the one that carried its arrays.
    const [s0, s1] = runIds.map((id) => runs.find((r) => (r.config as any).sae_swarm.run_id === id)!.summary);
    expect(s1["eval/freqs"].values.length).toBeGreaterThan(0);
    expect(s1["eval/freqs"]).toEqual(s0["eval/freqs"]);
    expect(s1["eval/mean_values"]).toEqual(s0["eval/mean_values"]);

    const sweep = await json(await call("GET", `/v1/sweeps/${sweepId}`), 200);
    expect(sweep.runs.map((r: any) => r.wandb.status)).toEqual(["finished", "finished"]);
    expect(sweep.runs[0].wandb.url).toMatch(new RegExp(`^${W}/swarm/swarm-test/runs/[a-z0-9]{20}$`));

    // Delivering everything again (a replay) sends nothing more.
    const before = (await standinRuns()).map((r) => r.fileStreamRequests);
    await drain(captured.map((body, i) => ({ id: `again${i}`, body, attempts: 1 })));
    expect((await standinRuns()).map((r) => r.fileStreamRequests)).toEqual(before);
  }, 60_000);

  it("TopK runs: AuxK's aux_loss and n_dead_train reach W&B as history columns", async () => {
    const topk = TRACKED.replace("sae = { exp_factor = 4 }", 'sae = { kind = "topk", k = 8, exp_factor = 4 }');
    await runSweep(topk, (run_id, step) => ({ ...metricRow(run_id, step), aux_loss: step / 8, n_dead_train: 20 - step }));
    await drain(captured.map((body, i) => ({ id: `m${i}`, body, attempts: 1 })));
    const runs = await standinRuns();
    expect(runs).toHaveLength(2);
    for (const r of runs) {
      expect(r.violations).toEqual([]);
      const lines = r.history.map((l) => JSON.parse(l));
      expect(lines.map((l) => [l._step, l.aux_loss, l.n_dead_train])).toEqual(Array.from({ length: 10 }, (_, t) => [t, t / 8, 20 - t]));
    }
  });

  it("a consumer that dies between sending and recording it: the next one learns from W&B what landed", async () => {
    const { runIds } = await runSweep(TRACKED);
    const r0 = captured.filter((m) => m.run_id === runIds[0]);
    const [chunk1, chunk2, chunk3] = r0.filter((m) => m.kind === "metrics");
    // The crash: from the moment the write-ahead record is stored, no further write of this row succeeds
    // (a SQLite trigger aborts them), so the sent rows stay recorded only as "inflight", as after a dead consumer.
    await env.DB.prepare(
      `CREATE TRIGGER crash BEFORE UPDATE ON wandb_runs WHEN json_extract(OLD.state, '$.inflight') IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'consumer crashed'); END`,
    ).run();
    try {
      expect((await deliver(WANDB_QUEUE_NAME, [{ id: "c1", body: chunk1, attempts: 1 }])).size).toBe(1);
    } finally {
      await env.DB.prepare(`DROP TRIGGER crash`).run();
    }
    const [landed] = await standinRuns();
    expect(landed.history.map((l) => JSON.parse(l)._step)).toEqual([0, 1, 2]); // on W&B, not recorded in D1
    const row = await env.DB.prepare(`SELECT state FROM wandb_runs WHERE run_id = ?`).bind(runIds[0]).first<{ state: string }>();
    expect(JSON.parse(row!.state)).toMatchObject({ next_offset: 0, last_step: null, inflight: { offset: 0, steps: [0, 1, 2] } });
    expect(JSON.parse(row!.state).inflight.started_at).toBeGreaterThan(0);

    // While the record is young, another consumer may still be sending: the run is left alone (retried).
    const b = (id: string, body: WandbMessage, attempts = 2) => createMessageBatch<WandbMessage>(WANDB_QUEUE_NAME, [{ id, timestamp: new Date(), attempts, body }]);
    const young = b("c1", chunk1);
    await consumeQueue(young as MessageBatch<unknown>, wandbEnv);
    expect((await getQueueResult(young, createExecutionContext())).retryMessages.map((m: { msgId: string }) => m.msgId)).toEqual(["c1"]);
    // Once it is older than INFLIGHT_TIMEOUT_MS, the next delivery reconciles from W&B's line count and goes on.
    const later = { now: () => Date.now() + INFLIGHT_TIMEOUT_MS + 1000 };
    for (const [i, body] of [chunk1, chunk2, chunk1, chunk3, ...r0.filter((m) => m.kind !== "metrics")].entries()) {
      const batch = b(`d${i}`, body, 3);
      await consumeQueue(batch as MessageBatch<unknown>, wandbEnv, later);
      expect((await getQueueResult(batch, createExecutionContext())).explicitAcks).toEqual([`d${i}`]);
    }
    const [run] = await standinRuns();
    expect(run.history.map((l) => JSON.parse(l)._step)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect([run.violations, run.complete, run.overwrites]).toEqual([[], true, 0]);
  });

  it("a sweep without tracking enqueues nothing, and a stray message for it sends nothing", async () => {
    const { sweepId, runIds } = await runSweep(TRACKED + "\ntrack = false\n");
    expect(captured).toEqual([]);
    await drain([{ id: "stray", body: { kind: "metrics", run_id: runIds[0], rows: [{ ...metricRow(runIds[0], 0), ts: 1 }] }, attempts: 1 }]);
    expect(await standinRuns()).toEqual([]);
    expect((await json(await call("GET", `/v1/runs/${runIds[0]}`), 200)).run.wandb).toBeNull();
    expect((await json(await call("GET", `/v1/sweeps/${sweepId}`), 200)).runs[0].wandb).toBeNull();
  });

  it("without WANDB_API_KEY the messages are acked and the run shows W&B as skipped, with the reason", async () => {
    const { runIds } = await runSweep(TRACKED);
    const noKey = { ...env, WANDB_BASE_URL: W } as Env;
    delete (noKey as Partial<Env>).WANDB_API_KEY;
    const retried = await deliver(WANDB_QUEUE_NAME, captured.map((body, i) => ({ id: `k${i}`, body, attempts: 1 })), noKey);
    expect(retried.size).toBe(0);
    expect(await standinRuns()).toEqual([]);
    const api = (await json(await call("GET", `/v1/runs/${runIds[0]}`), 200)).run;
    expect(api.wandb).toMatchObject({ status: "skipped", last_error: NO_API_KEY, url: null });
  });

  it("a permanently failing message ends in the dead-letter queue, its error visible through the API", async () => {
    const { runIds } = await runSweep(TRACKED);
    const first = captured.find((m) => m.kind === "metrics" && m.run_id === runIds[0])!;
    // W&B refuses the run every time (400 is never retried by the client).
    await standin("faults", Array.from({ length: MAX_RETRIES + 1 }, () => ({ on: "graphql", kind: "status", status: 400, body: '{"errors":[{"message":"invalid project name"}]}' })));
    const { deliveries, dead } = await drain([{ id: "doomed", body: first, attempts: 1 }]);
    expect([deliveries, dead.map((d) => d.id)]).toEqual([MAX_RETRIES + 1, ["doomed"]]);
    const api = (await json(await call("GET", `/v1/runs/${runIds[0]}`), 200)).run;
    expect(api.wandb).toMatchObject({ status: "dead_lettered", dead_letters: 1, url: null });
    expect(api.wandb.last_error).toMatch(/dead-lettered a metrics message \(steps 0, 1, 2\).*HTTP 400.*invalid project name/);
    expect(api.wandb.dead_lettered).toEqual([
      { kind: "metrics", steps: [0, 1, 2], attempts: MAX_RETRIES + 1, error: expect.stringMatching(/not retryable: .*HTTP 400/), at: expect.any(Number) },
    ]);
    const sweep = await json(await call("GET", `/v1/sweeps/${api.sweep_id}`), 200);
    expect(sweep.runs[0].wandb).toMatchObject({ status: "dead_lettered", dead_letters: 1 });
  });

  it("the cron heartbeat pings live runs that have been idle, and only those", async () => {
    const { runIds } = await runSweep(TRACKED);
    // Only the first chunk of run 0: its W&B run is live and unfinished.
    const first = captured.find((m) => m.kind === "metrics" && m.run_id === runIds[0])!;
    await drain([{ id: "h0", body: first, attempts: 1 }]);
    expect(await heartbeatIdleRuns(wandbEnv)).toBe(0); // just written to
    expect(await heartbeatIdleRuns(wandbEnv, { now: () => Date.now() + 30_000 })).toBe(1);
    expect(await heartbeatIdleRuns(wandbEnv, { now: () => Date.now() + 35_000 })).toBe(0); // heartbeaten 5 s ago
    const [r] = await standinRuns();
    expect([r.heartbeats, r.history.length, r.complete]).toEqual([1, 3, false]);
  });
});
