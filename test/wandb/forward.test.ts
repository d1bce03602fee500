// The forwarder as the queue consumer will drive it, against the stand-in: every row once, in order, through
// duplicate and out-of-order deliveries, injected 429s/500s/dropped replies, and a consumer that dies mid-send.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { SCHEDULE_DEFAULTS, SELECT_DEFAULTS, type EvalMetrics, type TrainConfig } from "../../shaders/config";
import type { WandbMessage } from "../../worker/protocol";
import { WandbClient, WandbError } from "../../worker/wandb/client";
import {
  describeFailure, finalLoggedStep, forwardRun, initialForwardState, planForward, wandbRunName, WandbStateError,
  type ForwardMessage, type ForwardOptions, type WandbForwardState, type WandbRunInfo,
} from "../../worker/wandb/forward";
import type { QueuedRow } from "../../worker/wandb/rows";
import { mulberry32, testSeed } from "../helpers/random";
import { WandbStandin } from "./standin";

const KEY = "forward-test-key";
const seed = testSeed();
let standin: WandbStandin;
let clock: number;

const T0 = 1_750_000_000_000;

function cfg(over: Partial<TrainConfig> = {}): TrainConfig {
  return {
    data: { kind: "synthetic", d_vit: 16, n_features: 64, sparsity: 0.05, seed: 1, noise: 0, n_examples: 4096 },
    n_patches: 64 * 100, sae_batch_size: 64, lr: 3e-4, n_lr_warmup: 10, n_sparsity_warmup: 10, log_every: 5,
    seed: 42,
    sae: {
      kind: "relu", d_vit: 16, exp_factor: 4, normalize_w_dec: true, remove_parallel_grads: true, seed: 42,
      init_threshold: 0.001, bandwidth: 0.001, n_reinit_samples: 1024, ...SELECT_DEFAULTS,
    },
    objective: { kind: "vanilla", sparsity_coeff: 4e-4, n_prefixes: 10 },
    n_eval: 0, track: true, wandb_project: "sae-swarm-test", wandb_entity: null, tag: "demo", tags: ["baseline"],
    ...SCHEDULE_DEFAULTS,
    ...over,
  };
}

function rowAt(step: number, rand: () => number): QueuedRow {
  return {
    step, ts: T0 + 1000 * (step + 1), loss: step === 14 ? NaN : rand(), mse: rand(), l0: rand() * 20, l1: rand(), sparsity: rand(),
    "progress/n_patches_seen": (step + 1) * 64, "progress/learning_rate": 3e-4, "progress/sparsity_coeff": 4e-4,
  };
}

function evalOf(dSae: number, rand: () => number): EvalMetrics {
  const freqs = Array.from({ length: dSae }, (_, i) => (i < 3 ? 0 : rand() * 0.1));
  return {
    l0: 9, l1: 2, mse: 0.1, fvu: 0.3, explained_variance: 0.7, n_dead: 3, n_almost_dead: 3, n_dense: 40, freqs,
    mean_values: freqs.map((f) => (f === 0 ? null : rand())), n_examples: 6400,
  };
}

/** D1 stand-in for the state row: compare-and-swap on version, and a switch to die at a chosen persist. */
class StateRow {
  persists = 0;
  constructor(public state: WandbForwardState, public dieWhen?: (next: WandbForwardState) => boolean) {}
  persist = async (next: WandbForwardState, prev: WandbForwardState) => {
    if (this.state.version !== prev.version) throw new Error(`stale state: stored v${this.state.version}, wrote from v${prev.version}`);
    if (this.dieWhen?.(next)) {
      this.dieWhen = undefined;
      throw new Error("consumer died");
    }
    this.persists++;
    this.state = structuredClone(next);
  };
}

/** A queue: deliveries in batches; ack removes, retry (or a throw) delivers again with attempts + 1. */
class Queue {
  pending: ForwardMessage[] = [];
  errors: string[] = [];
  send(...bodies: WandbMessage[]) {
    for (const body of bodies) this.pending.push({ body, attempts: 1 });
  }
  async drain(row: StateRow, info: WandbRunInfo, client: WandbClient, opts: ForwardOptions = {}, batch = 4, maxRounds = 100) {
    for (let round = 0; this.pending.length > 0; round++) {
      if (round >= maxRounds) throw new Error(`queue not drained: ${this.pending.length} left`);
      clock += 60_000;
      const taken = this.pending.splice(0, batch);
      let verdicts: Array<"ack" | "retry">;
      try {
        verdicts = (await forwardRun(client, row.state, info, taken, row.persist, { now: () => clock, ...opts })).verdicts;
      } catch (err) {
        this.errors.push(String(err));
        verdicts = taken.map(() => "retry");
      }
      taken.forEach((m, i) => {
        if (verdicts[i] === "retry") this.pending.push({ body: m.body, attempts: m.attempts + 1 });
      });
    }
  }
}

function rowsMsg(runId: string, rows: QueuedRow[]): WandbMessage {
  return { kind: "metrics", run_id: runId, rows };
}

beforeAll(async () => {
  standin = await WandbStandin.start({ apiKey: KEY, defaultEntity: "team" });
});
afterAll(() => standin.close());
beforeEach(() => {
  standin.reset();
  clock = T0;
});

function newClient() {
  return new WandbClient({ apiKey: KEY, baseUrl: standin.url, sleep: async () => {}, now: () => clock });
}

async function setup(runId: string, over: Partial<TrainConfig> = {}) {
  const c = cfg(over);
  const info: WandbRunInfo = {
    run_id: runId, cfg: c, group_name: "sweep_a", display_name: `${runId} lr=3e-4`, started_at: T0,
    config_extra: { sae_swarm_run_id: runId },
  };
  const name = await wandbRunName(runId, "test-db");
  return { info, name, row: new StateRow(initialForwardState(name, c)), rand: mulberry32(seed ^ runId.length) };
}

function expectComplete(name: string, steps: number[]) {
  const run = standin.run("team", "sae-swarm-test", name)!;
  expect(run).toBeDefined();
  expect(run.violations).toEqual([]);
  const hist = standin.historyOf(run);
  expect(hist.map((l) => l._step)).toEqual(steps);
  return { run, hist };
}

describe(`W&B forwarding (TEST_SEED=${seed})`, () => {
  it("derives a stable lowercase base-36 run name", async () => {
    const a = await wandbRunName("run_01HX");
    expect(a).toMatch(/^[a-z0-9]{20}$/);
    expect(await wandbRunName("run_01HX")).toBe(a);
    expect(await wandbRunName("run_01HX", "other-db")).not.toBe(a);
  });

  it("sends every row once and in order through duplicates, reordering and injected faults, then finishes", async () => {
    const { info, name, row, rand } = await setup("run-faults");
    const client = newClient();
    const final = finalLoggedStep(info.cfg)!;
    expect(final).toBe(99);
    const steps = Array.from({ length: (final + 1) / 5 }, (_, k) => 5 * k + 4);
    const rows = steps.map((s) => rowAt(s, rand));
    const q = new Queue();
    // Posts of 3 rows each; the 2nd arrives after the 3rd; the 4th is delivered twice; one post repeats a row.
    const posts = [rows.slice(0, 3), rows.slice(6, 9), rows.slice(3, 6), rows.slice(9, 12), rows.slice(9, 12), rows.slice(11, 15)];
    q.send(...posts.map((r) => rowsMsg("run-faults", r)));
    standin.inject(
      { on: "graphql", kind: "status", status: 503 },
      { on: "file_stream", kind: "status", status: 429, retryAfter: "2" },
      { on: "file_stream", kind: "status", status: 500 },
      { on: "file_stream", kind: "drop-after-apply" },
      { on: "file_stream", kind: "drop" },
    );
    await q.drain(row, info, client, {}, 2);
    q.send(rowsMsg("run-faults", rows.slice(15)), { kind: "finish", run_id: "run-faults", ts: T0 + 200_000, exit_code: 0 });
    // The finish waits for the eval, which comes after it.
    q.send({ kind: "eval", run_id: "run-faults", ts: T0 + 199_000, eval: evalOf(64, rand) });
    await q.drain(row, info, client, {}, 2);

    expect(standin.pendingFaults()).toBe(0);
    const { run, hist } = expectComplete(name, steps);
    expect(q.errors).toEqual([]);
    expect(hist[2].loss).toBeNaN(); // step 14
    expect(hist[0]).toMatchObject({ _step: 4, _timestamp: (T0 + 5000) / 1000, _runtime: 5, "progress/n_patches_seen": 320 });
    expect(hist[19]._runtime).toBe(100);
    expect([run.complete, run.exitcode]).toEqual([true, 0]);
    expect(run.displayName).toBe("run-faults lr=3e-4");
    expect(run.groupName).toBe("sweep_a");
    expect(run.tags).toEqual(["baseline", "demo"]);
    expect(run.config).toMatchObject({ lr: 3e-4, log_every: 5, sae_swarm_run_id: "run-faults", sae: { kind: "relu", exp_factor: 4 } });
    expect(run.summary).toMatchObject({ _step: 99, "eval/n_dead": 3, "eval/fvu": 0.3, loss: rows[19].loss });
    const fh = run.summary!["eval/freqs"] as { _type: string; values: number[]; bins: number[] };
    expect([fh._type, fh.values.length, fh.bins.length]).toEqual(["histogram", 50, 51]);
    expect(row.state).toMatchObject({
      finished: true, exit_code: 0, next_offset: 20, last_step: 99, inflight: null, entity: "team",
      url: `${standin.url}/team/sae-swarm-test/runs/${name}`,
    });
    // A late duplicate after the finish is acknowledged and sends nothing.
    const before = standin.requests.length;
    q.send(rowsMsg("run-faults", rows.slice(0, 2)));
    await q.drain(row, info, client);
    expect(standin.requests.length).toBe(before);
  });

  it("recovers from a consumer that died after sending, before saving: historyLineCount says what landed", async () => {
    const { info, name, row, rand } = await setup("run-crash");
    const client = newClient();
    const rows = Array.from({ length: 8 }, (_, k) => rowAt(5 * k + 4, rand));
    const q = new Queue();
    q.send(rowsMsg("run-crash", rows.slice(0, 3)));
    await q.drain(row, info, client);
    // The next send lands on W&B, then the consumer dies before recording it: the stored state still says offset 3.
    row.dieWhen = (next) => next.inflight === null && next.next_offset === 6;
    q.send(rowsMsg("run-crash", rows.slice(3, 6)));
    await q.drain(row, info, client, { inflightTimeoutMs: 5 * 60_000 }, 4, 1).catch(() => {});
    expect(row.state.next_offset).toBe(3);
    expect(row.state.inflight).toMatchObject({ offset: 3, steps: [19, 24, 29] });
    expect(standin.run("team", "sae-swarm-test", name)!.history.length).toBe(6);
    // Redelivered (with the rest) after the timeout: nothing is resent, the rest follows at offset 6.
    q.send(rowsMsg("run-crash", rows.slice(5, 8)));
    const outcome = await forwardRun(client, row.state, info, q.pending.splice(0), row.persist, { now: () => clock + 10 * 60_000 });
    expect(outcome.recovered).toEqual({ offset: 3, landed: 3, of: 3 });
    expect(outcome.verdicts).toEqual(["ack", "ack"]);
    expect(outcome.sent.lines).toBe(2);
    const { run } = expectComplete(name, rows.map((r) => r.step));
    expect(run.overwrites).toBe(0);
    expect(row.state).toMatchObject({ next_offset: 8, last_step: 39, inflight: null });
  });

  it("recovers a send that only partly landed, and waits while another consumer's send may be running", async () => {
    const { info, name, row, rand } = await setup("run-partial");
    const client = newClient();
    const rows = Array.from({ length: 6 }, (_, k) => rowAt(5 * k + 4, rand));
    // A state written ahead of a send of 6 lines, of which W&B got the first 2 before the consumer died.
    await forwardRun(client, row.state, info, [{ body: rowsMsg("run-partial", rows.slice(0, 2)), attempts: 1 }], row.persist, { now: () => clock });
    const crashed: WandbForwardState = {
      ...structuredClone(row.state), next_offset: 0, last_step: null,
      inflight: { offset: 0, steps: rows.map((r) => r.step), prev_last_step: null, summary: {}, started_at: clock },
    };
    row.state = crashed;
    const msgs = [{ body: rowsMsg("run-partial", rows), attempts: 2 }];
    const busy = await forwardRun(client, row.state, info, msgs, row.persist, { now: () => clock + 1000 });
    expect(busy.verdicts).toEqual(["retry"]);
    expect(busy.sent.lines).toBe(0);
    const out = await forwardRun(client, row.state, info, msgs, row.persist, { now: () => clock + 11 * 60_000 });
    expect(out.recovered).toEqual({ offset: 0, landed: 2, of: 6 });
    expect(out.sent.lines).toBe(4);
    expectComplete(name, rows.map((r) => r.step));
  });

  it("a send that failed after its retries is reconciled on the next delivery, without waiting out the timeout", async () => {
    const { info, name, row, rand } = await setup("run-failed-send");
    const client = new WandbClient({ apiKey: KEY, baseUrl: standin.url, sleep: async () => {}, maxAttempts: 2 });
    const msgs = [{ body: rowsMsg("run-failed-send", [rowAt(4, rand), rowAt(9, rand)]), attempts: 1 }];
    standin.inject({ on: "file_stream", kind: "status", status: 500 }, { on: "file_stream", kind: "status", status: 502 });
    const err = await forwardRun(client, row.state, info, msgs, row.persist, { now: () => clock }).catch((e) => e);
    expect(err).toMatchObject({ status: 502, retryable: true });
    expect(row.state.inflight).toMatchObject({ offset: 0, steps: [4, 9], started_at: 0 });
    const out = await forwardRun(client, row.state, info, msgs, row.persist, { now: () => clock });
    expect(out.recovered).toEqual({ offset: 0, landed: 0, of: 2 });
    expect(out.verdicts).toEqual(["ack"]);
    expectComplete(name, [4, 9]);
  });

  it("refuses to write into a W&B run whose history it cannot account for", async () => {
    const { info, name, row, rand } = await setup("run-clash");
    const client = newClient();
    await client.upsertRun({ name, project: "sae-swarm-test", entity: null });
    await client.appendHistory({ entity: "team", project: "sae-swarm-test", name }, 0, ['{"_step":0,"_timestamp":1,"_runtime":0}']);
    const err = await forwardRun(client, row.state, info, [{ body: rowsMsg("run-clash", [rowAt(4, rand)]), attempts: 1 }], row.persist).catch((e) => e);
    expect(err).toBeInstanceOf(WandbStateError);
    expect(err.message).toMatch(/holds 1 history lines but 0/);
    expect(standin.run("team", "sae-swarm-test", name)!.history.length).toBe(1);
  });

  it("holds a row that came early until the rows before it arrive, or until it has waited gapPatience deliveries", () => {
    const info: WandbRunInfo = { run_id: "r", cfg: cfg(), group_name: "g", display_name: "r" };
    const rand = mulberry32(seed);
    const s0 = { ...initialForwardState("abc", info.cfg), url: "u", entity: "team" };
    const early = { body: rowsMsg("r", [rowAt(9, rand), rowAt(14, rand)]), attempts: 1 };
    const p1 = planForward(s0, info, [early]);
    expect([p1.history, p1.verdicts]).toEqual([null, ["retry"]]);
    const p2 = planForward(s0, info, [{ ...early, attempts: 4 }]);
    expect(p2.history!.steps).toEqual([9, 14]);
    const p3 = planForward(s0, info, [early, { body: rowsMsg("r", [rowAt(4, rand)]), attempts: 1 }]);
    expect([p3.history!.steps, p3.verdicts]).toEqual([[4, 9, 14], ["ack", "ack"]]);
    // A failed run finishes at once, flushing what is held, but never before the rows in its batch.
    const fail = { body: { kind: "finish", run_id: "r", ts: 0, exit_code: 1 } as WandbMessage, attempts: 1 };
    const p4 = planForward(s0, info, [early, fail]);
    expect([p4.verdicts, p4.complete]).toEqual([["retry", "retry"], null]);
    const p5 = planForward(s0, info, [{ ...early, attempts: 4 }, fail]);
    expect([p5.history!.steps, p5.complete, p5.verdicts]).toEqual([[9, 14], { exitCode: 1 }, ["ack", "ack"]]);
  });

  it("describes failures for the consumer: what to show, and how long the queue should wait", () => {
    expect(describeFailure(new WandbError("file_stream", 429, "slow down", true, 1, 120_000), 1)).toMatchObject({
      retryable: true, status: 429, delay_s: 120,
    });
    expect(describeFailure(new WandbError("file_stream", 503, "x", true, 6), 3)).toMatchObject({ retryable: true, delay_s: 8 });
    const bad = describeFailure(new WandbError("graphql", 401, '{"errors":[{"message":"user is not logged in"}]}', false, 1), 1);
    expect(bad).toMatchObject({ retryable: false, status: 401 });
    expect(bad.message).toContain("HTTP 401");
    expect(bad.message).toContain("not logged in");
    expect(describeFailure(new WandbStateError("clash"), 9)).toMatchObject({ retryable: false, status: null, message: "WandbStateError: clash" });
  });

  it("a run without tracking sends nothing", async () => {
    const { info, row, rand } = await setup("run-untracked", { track: false });
    const q = new Queue();
    q.send(rowsMsg("run-untracked", [rowAt(4, rand)]), { kind: "finish", run_id: "run-untracked", ts: 0, exit_code: 0 });
    await q.drain(row, info, newClient());
    expect(standin.requests).toEqual([]);
    expect(row.persists).toBe(0);
  });
});
