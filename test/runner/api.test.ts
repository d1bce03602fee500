import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiError, backoffMs, LeaseLost, MetricsQueue, WorkerClient, DEFAULT_RETRY, Aborted } from "../../runner/api";
import type { Lease, MetricRow } from "../../worker/protocol";
import { mulberry32, testSeed } from "../helpers/random";
import { serveProtocol, type ProtocolServer, type Fault } from "./protocol-server";

const seed = testSeed();
let srv: ProtocolServer;
const lease: Lease = { id: "L1", token: "tok-1", expires_at: 0, heartbeat_ms: 10_000 };
const fast = { baseMs: 1, maxMs: 5 };

function row(step: number, run = "r1"): MetricRow {
  return { run_id: run, step, loss: 1, mse: 1, l0: 1, l1: 1, sparsity: 0, "progress/n_patches_seen": step, "progress/learning_rate": 1e-4, "progress/sparsity_coeff": 4e-4 };
}

beforeAll(async () => {
  srv = await serveProtocol();
});
afterAll(async () => srv?.close());

describe(`WorkerClient (TEST_SEED=${seed})`, () => {
  it("claims: 204 → null, 200 → the claim; sends the bearer token", async () => {
    const client = new WorkerClient({ server: srv.url + "/", token: "runner-secret", retry: fast });
    expect(await client.claim({ runner_id: "x", adapter: {} as never })).toBeNull();
    srv.claimQueue.push({ lease, group: { id: "g" } });
    srv.inject(/claims/, "503", "reset-before");
    expect(await client.claim({ runner_id: "x", adapter: {} as never })).toMatchObject({ lease: { id: "L1" }, group: { id: "g" } });
    expect(srv.requests.filter((r) => r.path === "/v1/claims").every((r) => r.auth === "Bearer runner-secret")).toBe(true);
  });

  it("backoff doubles from base, is capped, and jitters within [½, 1)", () => {
    const p = { ...DEFAULT_RETRY, baseMs: 100, maxMs: 1000 };
    expect(backoffMs(p, 1, () => 0)).toBe(50);
    expect(backoffMs(p, 3, () => 0.999999)).toBeCloseTo(400, 0);
    expect(backoffMs(p, 10, () => 0)).toBe(500);
  });

  it("keeps every metric row, once and in order, through resets, 5xx and lost responses", async () => {
    const rand = mulberry32(seed);
    const retries: string[] = [];
    const client = new WorkerClient({ server: srv.url, token: "t", retry: fast, onRetry: (_w, _a, _d, why) => retries.push(why) });
    const q = new MetricsQueue(client, lease, 7);
    const kinds: Fault[] = ["503", "500", "429", "reset-before", "reset-after"];
    for (let i = 0; i < 12; i++) srv.inject(/metrics$/, kinds[Math.floor(rand() * kinds.length)]);
    srv.inject(/metrics$/, "reset-after"); // at least one stored-but-unacknowledged post
    const before = srv.metrics.length;
    for (let step = 0; step < 100; step += 4) {
      q.push([row(step, "a"), row(step, "b")]);
      if (rand() < 0.3) await new Promise((r) => setTimeout(r, 1));
    }
    await q.flush();
    expect(q.pending).toBe(0);
    expect(q.acknowledged).toBe(50);
    const got = srv.metrics.slice(before).map((m) => `${m.run_id}${m.step}`);
    const want = Array.from({ length: 25 }, (_, i) => [`a${i * 4}`, `b${i * 4}`]).flat();
    expect(got).toEqual(want);
    expect(retries.length).toBeGreaterThanOrEqual(13);
  });

  it("a 409 raises LeaseLost, stops the queue and keeps the unsent rows", async () => {
    const client = new WorkerClient({ server: srv.url, retry: fast });
    const q = new MetricsQueue(client, lease);
    srv.inject(/metrics$/, "503", "409");
    q.push([row(1000), row(1001)]);
    await expect(q.flush()).rejects.toBeInstanceOf(LeaseLost);
    expect(q.error).toBeInstanceOf(LeaseLost);
    expect((q.error as LeaseLost).leaseId).toBe("L1");
    expect(q.pending).toBe(2);
    q.push([row(1002)]); // a stopped queue sends nothing more
    expect(q.pending).toBe(3);
    srv.inject(/heartbeat$/, "409");
    await expect(client.heartbeat(lease, { step: 1, n_steps: 2 })).rejects.toThrow(/lease L1 lost: lease expired/);
  });

  it("a 404 naming the lease (its sweep was deleted) is a lost lease too", async () => {
    const client = new WorkerClient({ server: srv.url, retry: fast });
    srv.inject(/heartbeat$/, "404-lease");
    await expect(client.heartbeat(lease, { step: 1, n_steps: 2 })).rejects.toBeInstanceOf(LeaseLost);
    const q = new MetricsQueue(client, lease);
    srv.inject(/metrics$/, "404-lease");
    q.push([row(2000)]);
    await expect(q.flush()).rejects.toThrow(/lease L1 lost: lease L1 not found/);
  });

  it("other 4xx raise ApiError naming the field; a bounded policy gives up", async () => {
    const client = new WorkerClient({ server: srv.url, retry: fast });
    srv.inject(/evals$/, "400");
    const err = await client.postEvals(lease, []).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 400, field: "rows[0].step" });
    srv.inject(/fail$/, "503", "503", "503");
    await expect(client.fail(lease, "boom", { maxAttempts: 2 })).rejects.toThrow(/gave up after 2 attempts: HTTP 503/);
    srv.inject(/fail$/, "503"); // the third injected 503 is still queued: consume it
    await client.fail(lease, "boom");
  });

  it("PUTs and GETs checkpoints with the lease token, kind and step", async () => {
    const client = new WorkerClient({ server: srv.url, token: "t", retry: fast });
    const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 255);
    srv.inject(/checkpoints/, "reset-before");
    await client.putCheckpoint(lease, "run/1", "resume", 250, bytes);
    const stored = srv.checkpoints.get("L1/run/1")!;
    expect(stored.query).toBe("?kind=resume&step=250");
    expect(stored.leaseToken).toBe("tok-1");
    expect(new Uint8Array(stored.bytes)).toEqual(bytes);
    expect(await client.getCheckpoint(lease, `/v1/leases/L1/checkpoints/${encodeURIComponent("run/1")}`)).toEqual(bytes);
  });

  it("an abort ends a retry loop at once", async () => {
    const ac = new AbortController();
    const client = new WorkerClient({ server: srv.url, retry: { baseMs: 60_000, maxMs: 60_000 }, signal: ac.signal });
    srv.inject(/complete$/, "503");
    const p = client.complete(lease);
    setTimeout(() => ac.abort(), 50);
    await expect(p).rejects.toBeInstanceOf(Aborted);
  });
});
