// The fetch-based W&B client against the protocol stand-in: auth, UpsertBucket, file_stream, limits, retries.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  appUrlFor, backoffMs, MAX_LINES_PER_PUSH, parseRetryAfter, WandbClient, WandbError, type WandbClientOptions,
} from "../../worker/wandb/client";
import { WandbStandin } from "./standin";

const KEY = "local-test-key-0123456789";
let standin: WandbStandin;
let sleeps: number[];

function client(opts: Partial<WandbClientOptions> = {}): WandbClient {
  return new WandbClient({
    apiKey: KEY,
    baseUrl: standin.url,
    sleep: async (ms) => void sleeps.push(ms),
    random: () => 0.5,
    ...opts,
  });
}

const line = (step: number, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ _step: step, _timestamp: 1_700_000_000 + step, _runtime: step, loss: 1 / (step + 1), ...extra });

beforeAll(async () => {
  standin = await WandbStandin.start({ apiKey: KEY, defaultEntity: "alice" });
});
afterAll(() => standin.close());
beforeEach(() => {
  standin.reset();
  sleeps = [];
});

describe("W&B client", () => {
  it("creates a run with Basic api:KEY, reads the default entity back, wraps the config, sends tags", async () => {
    const up = await client().upsertRun({
      name: "abc123", project: "sae-sweep", entity: null, displayName: "lr=3e-4", groupName: "sweep_1",
      jobType: "train", tags: ["baseline", "v1"], config: { lr: 3e-4, sae: { kind: "relu", exp_factor: 8 }, wandb_entity: null },
    });
    expect(up).toEqual({
      entity: "alice", project: "sae-sweep", name: "abc123", url: `${standin.url}/alice/sae-sweep/runs/abc123`,
      historyLineCount: 0, inserted: true,
    });
    expect(standin.requests[0].authorization).toBe(`Basic ${Buffer.from(`api:${KEY}`).toString("base64")}`);
    const run = standin.run("alice", "sae-sweep", "abc123")!;
    expect(JSON.parse(run.configRaw!)).toEqual({
      lr: { value: 3e-4 }, sae: { value: { kind: "relu", exp_factor: 8 } }, wandb_entity: { value: null },
    });
    expect([run.displayName, run.groupName, run.jobType, run.tags]).toEqual(["lr=3e-4", "sweep_1", "train", ["baseline", "v1"]]);
    // An update of the same run: not inserted, and the line count is where its history continues.
    await client().appendHistory(up, 0, [line(4), line(9)]);
    const again = await client().upsertRun({ name: "abc123", project: "sae-sweep", entity: "alice" });
    expect([again.inserted, again.historyLineCount]).toEqual([false, 2]);
  });

  it("derives the app URL as W&B does", () => {
    expect(appUrlFor("https://api.wandb.ai")).toBe("https://wandb.ai");
    expect(appUrlFor("https://api.wandb.ai/")).toBe("https://wandb.ai");
    expect(appUrlFor("https://api.wandb.example.com")).toBe("https://wandb.example.com");
    expect(appUrlFor("https://api.corp.example")).toBe("https://app.corp.example");
    expect(appUrlFor("http://127.0.0.1:8080")).toBe("http://127.0.0.1:8080");
  });

  it("refuses run names W&B refuses before sending anything", async () => {
    await expect(client().upsertRun({ name: "Run/1", project: "p", entity: null })).rejects.toMatchObject({ retryable: false });
    expect(standin.requests.length).toBe(0);
  });

  it("streams history by offset, the summary with bare NaN, and completion", async () => {
    const c = client();
    const run = await c.upsertRun({ name: "hist1", project: "p", entity: "bob" });
    await c.appendHistory(run, 0, [line(4), line(9)]);
    await c.push(run, { history: { offset: 2, lines: [line(14)] }, summary: { loss: NaN, best: Infinity, _step: 14 } });
    await c.heartbeat(run);
    await c.finish(run, 0);
    const got = standin.run("bob", "p", "hist1")!;
    expect(standin.historyOf(got).map((l) => l._step)).toEqual([4, 9, 14]);
    expect(got.summary!.loss).toBeNaN();
    expect(got.summary!.best).toBe(Infinity);
    expect([got.complete, got.exitcode, got.heartbeats, got.violations]).toEqual([true, 0, 1, []]);
  });

  it("splits pushes at 10,000 lines and puts the summary and completion on the last request", async () => {
    const c = client();
    const run = await c.upsertRun({ name: "big1", project: "p", entity: "bob" });
    const lines = Array.from({ length: 2 * MAX_LINES_PER_PUSH + 17 }, (_, i) => line(i));
    const requests = await c.push(run, { history: { offset: 0, lines }, summary: { n: lines.length }, complete: { exitCode: 1 } });
    expect(requests).toBe(3);
    const got = standin.run("bob", "p", "big1")!;
    expect(got.history).toEqual(lines);
    expect([got.summary, got.complete, got.exitcode, got.violations]).toEqual([{ n: lines.length }, true, 1, []]);
  });

  it("splits pushes at 10 MiB", async () => {
    const c = client();
    const run = await c.upsertRun({ name: "big2", project: "p", entity: "bob" });
    const pad = "x".repeat(1024 * 1024);
    const lines = Array.from({ length: 25 }, (_, i) => line(i, { pad }));
    expect(await c.appendHistory(run, 0, lines)).toBe(3); // 9 + 9 + 7 lines of ~1 MiB each
    expect(standin.run("bob", "p", "big2")!.history).toEqual(lines);
    await expect(c.appendHistory(run, 25, [line(25, { pad: "y".repeat(11 * 1024 * 1024) })])).rejects.toMatchObject({
      status: null, retryable: false,
    });
  });

  it("honours Retry-After on 429 and backs off 2 s·2ⁿ (+ jitter) on 500 and dropped connections", async () => {
    const c = client();
    const run = await c.upsertRun({ name: "retry1", project: "p", entity: "bob" });
    standin.inject(
      { on: "file_stream", kind: "status", status: 429, retryAfter: "3" },
      { on: "file_stream", kind: "status", status: 500 },
      { on: "file_stream", kind: "drop" },
      { on: "file_stream", kind: "status", status: 503 },
    );
    await c.appendHistory(run, 0, [line(0)]);
    expect(sleeps).toEqual([3000, 4500, 9000, 18000]); // random() = 0.5 → +12.5 %
    expect(standin.run("bob", "p", "retry1")!.history).toEqual([line(0)]);
    expect(standin.requests.filter((r) => r.op === "file_stream").map((r) => r.status)).toEqual([429, 500, "dropped", 503, 200]);
  });

  it("resends a request whose reply was lost onto the same offset: the line is overwritten, never doubled", async () => {
    const c = client();
    const run = await c.upsertRun({ name: "lost1", project: "p", entity: "bob" });
    standin.inject({ on: "file_stream", kind: "drop-after-apply" });
    await c.appendHistory(run, 0, [line(0), line(1)]);
    const got = standin.run("bob", "p", "lost1")!;
    expect([got.history.length, got.overwrites, got.violations]).toEqual([2, 2, []]);
  });

  it("never retries a 400, 401, 403, 404, 410, 413, 422 or 501; errors carry the status and the body", async () => {
    const c = client();
    const run = await c.upsertRun({ name: "noretry", project: "p", entity: "bob" });
    for (const status of [400, 401, 403, 404, 409, 410, 413, 422, 501]) {
      standin.reset();
      await c.upsertRun({ name: "noretry", project: "p", entity: "bob" });
      standin.inject({ on: "file_stream", kind: "status", status, body: `{"error":"nope ${status}"}` });
      const err = await c.appendHistory(run, 0, [line(0)]).catch((e) => e);
      expect(err).toBeInstanceOf(WandbError);
      expect(err).toMatchObject({ op: "file_stream", status, retryable: false, attempts: 1, body: `{"error":"nope ${status}"}` });
      expect(standin.requests.filter((r) => r.op === "file_stream").length).toBe(1);
    }
    expect(sleeps).toEqual([]);
    // A wrong key is a 401 from the server itself.
    const bad = await client({ apiKey: "wrong" }).upsertRun({ name: "x1", project: "p", entity: null }).catch((e) => e);
    expect(bad).toMatchObject({ status: 401, retryable: false });
    expect(bad.message).toContain("not logged in");
  });

  it("retries a GraphQL 409 (W&B's GraphQL client does) and reports GraphQL errors without retrying", async () => {
    standin.inject({ on: "graphql", kind: "status", status: 409 });
    const up = await client().upsertRun({ name: "gql1", project: "p", entity: null });
    expect(up.name).toBe("gql1");
    expect(sleeps).toEqual([2250]);
    const err = await client().upsertRun({ name: "gql2", project: "", entity: null }).catch((e) => e);
    expect(err).toMatchObject({ status: 200, retryable: false });
    expect(err.body).toContain("project is required");
  });

  it("gives up after maxAttempts with a retryable error, and hands back a Retry-After longer than it will sleep", async () => {
    const c = client({ maxAttempts: 3 });
    const run = await c.upsertRun({ name: "giveup", project: "p", entity: "bob" });
    standin.inject(...Array.from({ length: 3 }, () => ({ on: "file_stream" as const, kind: "status" as const, status: 502, body: "bad gateway" })));
    const err = await c.appendHistory(run, 0, [line(0)]).catch((e) => e);
    expect(err).toMatchObject({ status: 502, retryable: true, attempts: 3, body: "bad gateway" });
    expect(sleeps).toEqual([2250, 4500]);
    standin.inject({ on: "file_stream", kind: "status", status: 429, retryAfter: "600" });
    const slow = await c.appendHistory(run, 0, [line(0)]).catch((e) => e);
    expect(slow).toMatchObject({ status: 429, retryable: true, retryAfterMs: 600_000 });
    expect(standin.run("bob", "p", "giveup")!.history).toEqual([]);
  });

  it("computes backoff and Retry-After as W&B's policy says", () => {
    expect([0, 1, 2, 3, 4, 5, 9].map((n) => backoffMs(n, () => 0))).toEqual([2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    expect(backoffMs(0, () => 0.999)).toBeCloseTo(2499.5, 6);
    expect(backoffMs(5, () => 0.999)).toBe(60000);
    expect(parseRetryAfter("7", 0)).toBe(7000);
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 4_000)).toBe(6000);
    expect(parseRetryAfter("soon", 0)).toBeNull();
    expect(parseRetryAfter(null, 0)).toBeNull();
  });
});
