/**
 * The runner loop's protocol behaviour, in Node, against the protocol test server and real shards over HTTP, with
 * the RecordingEngine standing in for the WGSL engine (so the protocol is tested exactly, without a GPU; the real
 * engine is exercised by test/runner/cli.test.ts and test/e2e).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ShardData, TrainConfig } from "../../shaders/config";
import type { AdapterReport } from "../../shaders/device";
import type { ClaimResponse, ResumePoint } from "../../worker/protocol";
import { WorkerClient } from "../../runner/api";
import { ShardSource } from "../../runner/data/shards";
import { sparseFeatureGenerator, writeShards } from "../../runner/data/write-shards";
import type { RunnerEvent } from "../../runner/events";
import { metricRows, RunnerLoop } from "../../runner/page/loop";
import { decodeCheckpoint } from "../../runner/safetensors";
import { trainConfig } from "./fixtures";
import { serveProtocol, type ProtocolServer } from "./protocol-server";
import { serveDirWithRanges, type RangeServer } from "./range-server";
import { RecordingEngine } from "./recording-engine";

const D = 8, B = 16, STEPS = 10;
let dir: string, files: RangeServer, srv: ProtocolServer, data: ShardData;
const adapter: AdapterReport = { vendor: "test", architecture: "", device: "", description: "", isFallbackAdapter: true, features: [], limits: {} as AdapterReport["limits"] };

function cfgs(): TrainConfig[] {
  return [0, 1].map((i) => {
    const c = trainConfig({ d_vit: D, exp_factor: 2, seed: 42 + i, kind: i === 0 ? "relu" : "jumprelu" });
    c.data = data;
    c.n_patches = STEPS * B;
    c.sae_batch_size = B;
    c.log_every = 3;
    c.lr = [1e-3, 3e-4][i];
    return c;
  });
}

function claim(leaseId: string, resume: ResumePoint[] = []): ClaimResponse {
  const cs = cfgs();
  return {
    lease: { id: leaseId, token: `tok-${leaseId}`, expires_at: Date.now() + 60_000, heartbeat_ms: 60_000 },
    group: { id: "g1", sweep_id: "s1", cfgs: [{ run_id: "ra", cfg: cs[0] }, { run_id: "rb", cfg: cs[1] }], data, resume, checkpoint_every: 4, attempt: resume.length ? 2 : 1 },
  };
}

function newLoop(engines: RecordingEngine[], events: RunnerEvent[] = []) {
  const api = new WorkerClient({ server: srv.url, token: "t", retry: { baseMs: 1, maxMs: 5 } });
  return new RunnerLoop({
    api, adapter, runnerId: "loop-test", device: {} as GPUDevice, emit: (e) => events.push(e), progressEveryMs: 0,
    createEngine: async (_device, cs) => {
      const e = new RecordingEngine(cs);
      engines.push(e);
      return e;
    },
  });
}

const leaseRequests = (id: string) => srv.requests.filter((r) => r.path.startsWith(`/v1/leases/${id}/`));

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-loop-"));
  await writeShards({ out: dir, d_vit: D, layers: [1, 2], n_patches_per_img: 4, cls_token: true, n_imgs: 30, max_patches_per_shard: 100, generator: sparseFeatureGenerator({ d_vit: D, n_features: 12, sparsity: 0.3, seed: 5, noise: 0.01 }) });
  files = await serveDirWithRanges(dir);
  srv = await serveProtocol();
  data = { kind: "shards", url: files.url, layer: -1, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 80, seed: 11 };
});
afterAll(async () => {
  await srv?.close();
  await files?.close();
  rmSync(dir, { recursive: true, force: true });
});

let reference: RecordingEngine;

describe("RunnerLoop", () => {
  it("trains a group: metrics every log_every, resume checkpoints after flushing, evals, final checkpoints, complete", async () => {
    const engines: RecordingEngine[] = [];
    const events: RunnerEvent[] = [];
    expect(await newLoop(engines, events).trainGroup(claim("L-full"))).toBe("completed");
    reference = engines[0];
    expect(reference.stepsTaken).toBe(STEPS);
    expect(reference.initMean).toHaveLength(D);
    expect(reference.destroyed).toBe(true);

    const reqs = leaseRequests("L-full").map((r) => ({ ...r, path: r.path.replace("/v1/leases/L-full", "") }));
    const metricSteps = srv.metrics.filter((m) => m.run_id === "ra").map((m) => m.step);
    expect(metricSteps).toEqual([2, 5, 8]);
    expect(srv.metrics.filter((m) => m.run_id === "rb").map((m) => m.step)).toEqual([2, 5, 8]);
    const puts = reqs.filter((r) => r.method === "PUT").map((r) => r.path);
    expect(puts).toEqual([
      "/checkpoints/ra?kind=resume&step=4", "/checkpoints/rb?kind=resume&step=4",
      "/checkpoints/ra?kind=resume&step=8", "/checkpoints/rb?kind=resume&step=8",
      "/checkpoints/ra?kind=final&step=10", "/checkpoints/rb?kind=final&step=10",
    ]);
    // Metrics of the steps a checkpoint covers are acknowledged before it is uploaded.
    const idx = (p: string) => reqs.findIndex((r) => r.path === p);
    const lastMetricsBefore = (i: number) => reqs.slice(0, i).filter((r) => r.path === "/metrics").flatMap((r) => JSON.parse(r.body).rows.map((x: { step: number }) => x.step));
    expect(lastMetricsBefore(idx("/checkpoints/ra?kind=resume&step=4"))).toContain(2);
    expect(lastMetricsBefore(idx("/checkpoints/ra?kind=resume&step=8"))).toContain(5);
    expect(reqs.at(-1)!.path).toBe("/complete");
    const evals = JSON.parse(reqs.find((r) => r.path === "/evals")!.body);
    expect(evals.token).toBe("tok-L-full");
    expect(evals.evals.map((e: { run_id: string; n_examples: number }) => [e.run_id, e.n_examples])).toEqual([["ra", 120], ["rb", 120]]);

    const final = decodeCheckpoint(new Uint8Array(srv.checkpoints.get("L-full/rb")!.bytes));
    expect(final).toMatchObject({ kind: "final", run_id: "rb", step: STEPS });
    expect(final.weights.threshold).toHaveLength(D * 2);
    const src = await ShardSource.open(data, { batchSize: B });
    expect(final.norm.mean).toEqual(src.normalization.mean);
    expect(final.norm.scale).toBe(src.normalization.scale);
    src.close();

    const progress = events.filter((e) => e.kind === "progress");
    expect(progress.at(-1)).toMatchObject({ step: STEPS, n_steps: STEPS, saes: [{ run_id: "ra" }, { run_id: "rb" }] });
    expect(events.at(-1)).toMatchObject({ kind: "done", outcome: "completed" });
  });

  it("abandons on purpose with a resume checkpoint, and a second runner resumes exactly where it stopped", async () => {
    const engines: RecordingEngine[] = [];
    const loop = newLoop(engines);
    const stopped = loop.trainGroup(claim("L-ab"));
    await new Promise((r) => setTimeout(r, 0));
    // Stop after 6 steps: hooked on the engine, so the point is exact.
    await new Promise<void>((resolve) => {
      const wait = () => (engines[0] ? ((engines[0].onStep = (n) => n === 6 && loop.stop("abandon")), resolve()) : setTimeout(wait, 1));
      wait();
    });
    expect(await stopped).toBe("abandoned");
    const reqs = leaseRequests("L-ab");
    expect(reqs.filter((r) => r.method === "PUT").map((r) => r.path.split("/").pop())).toEqual(["ra?kind=resume&step=4", "rb?kind=resume&step=4", "ra?kind=resume&step=6", "rb?kind=resume&step=6"]);
    // A give-back, not a failure.
    expect(JSON.parse(reqs.at(-1)!.body)).toMatchObject({ reason: expect.stringContaining("gave the group back") });
    expect(reqs.at(-1)!.path).toBe("/v1/leases/L-ab/release");

    const resumed: RecordingEngine[] = [];
    const r = await newLoop(resumed).trainGroup(
      claim("L-res", [
        { run_id: "ra", step: 6, checkpoint_path: "/v1/leases/L-ab/checkpoints/ra" },
        { run_id: "rb", step: 6, checkpoint_path: "/v1/leases/L-ab/checkpoints/rb" },
      ]),
    );
    expect(r).toBe("completed");
    expect(resumed[0].initMean).toBeNull(); // b_dec came from the checkpoint
    expect(engines[0].batchesSeen).toEqual(reference.batchesSeen.slice(0, 6));
    expect(resumed[0].batchesSeen).toEqual(reference.batchesSeen.slice(6));
    for (const run of ["ra", "rb"]) {
      const a = decodeCheckpoint(new Uint8Array(srv.checkpoints.get(`L-full/${run}`)!.bytes));
      const b = decodeCheckpoint(new Uint8Array(srv.checkpoints.get(`L-res/${run}`)!.bytes));
      expect(b.weights.b_dec).toEqual(a.weights.b_dec); // same batches, same order, same state
      expect(b.norm).toEqual(a.norm);
    }
    const resumedMetrics = leaseRequests("L-res").filter((q) => q.path.endsWith("/metrics")).flatMap((q) => JSON.parse(q.body).rows.map((x: { step: number }) => x.step));
    expect([...new Set(resumedMetrics)]).toEqual([8]);
  });

  it("resumes at the latest step every run has a checkpoint for when a kill left the runs a round apart", async () => {
    // L-ab (above) stored resume checkpoints at steps 4 and 6 for both runs; claim as if rb's step-6 upload was lost.
    const resumed: RecordingEngine[] = [];
    const events: RunnerEvent[] = [];
    const r = await newLoop(resumed, events).trainGroup(
      claim("L-uneven", [
        { run_id: "ra", step: 6, checkpoint_path: "/v1/leases/L-ab/checkpoints/ra?kind=resume&step=6" },
        { run_id: "rb", step: 4, checkpoint_path: "/v1/leases/L-ab/checkpoints/rb?kind=resume&step=4" },
      ]),
    );
    expect(r).toBe("completed");
    expect(events.find((e) => e.kind === "claimed")).toMatchObject({ resume_step: 4 });
    const gets = srv.requests.filter((q) => q.method === "GET" && q.path.startsWith("/v1/leases/L-ab/checkpoints/"));
    expect(gets.slice(-2).map((q) => q.path)).toEqual(["/v1/leases/L-ab/checkpoints/ra?kind=resume&step=4", "/v1/leases/L-ab/checkpoints/rb?kind=resume&step=4"]);
    expect(resumed[0].batchesSeen).toEqual(reference.batchesSeen.slice(4));
    for (const run of ["ra", "rb"]) {
      const a = decodeCheckpoint(new Uint8Array(srv.checkpoints.get(`L-full/${run}`)!.bytes));
      const b = decodeCheckpoint(new Uint8Array(srv.checkpoints.get(`L-uneven/${run}`)!.bytes));
      expect(b.weights.b_dec).toEqual(a.weights.b_dec);
    }
  });

  it("a resume checkpoint that does not load is rejected, and the group falls back to the one before in the same lease", async () => {
    // L-ab (above) stored resume checkpoints at steps 4 and 6; rb's at 6 gets a step tensor that disagrees with its
    // metadata (a valid header: the Worker stored it; only loading it finds the fault).
    const key = "L-ab/rb@6";
    const good = srv.checkpoints.get(key)!;
    const bad = Buffer.from(good.bytes);
    bad.writeBigInt64LE(5n, bad.length - 8); // `step` is the last tensor
    srv.checkpoints.set(key, { ...good, bytes: bad });
    srv.rejectAnswer = [
      { run_id: "ra", step: 6, checkpoint_path: "/v1/leases/L-ab/checkpoints/ra?kind=resume&step=6" },
      { run_id: "rb", step: 4, checkpoint_path: "/v1/leases/L-ab/checkpoints/rb?kind=resume&step=4" },
    ];
    try {
      const resumed: RecordingEngine[] = [];
      const events: RunnerEvent[] = [];
      const r = await newLoop(resumed, events).trainGroup(
        claim("L-fb", [
          { run_id: "ra", step: 6, checkpoint_path: "/v1/leases/L-ab/checkpoints/ra?kind=resume&step=6" },
          { run_id: "rb", step: 6, checkpoint_path: "/v1/leases/L-ab/checkpoints/rb?kind=resume&step=6" },
        ]),
      );
      expect(r).toBe("completed");
      const reject = leaseRequests("L-fb").filter((q) => q.path.endsWith("/reject"));
      expect(reject.map((q) => q.path)).toEqual(["/v1/leases/L-fb/checkpoints/rb/reject"]);
      expect(JSON.parse(reject[0].body)).toMatchObject({ token: "tok-L-fb", step: 6, error: expect.stringMatching(/tensor step 5 differs from metadata step 6/) });
      expect(events.some((e) => e.kind === "log" && /falling back/.test(e.message))).toBe(true);
      expect(resumed[0].batchesSeen).toEqual(reference.batchesSeen.slice(4));
      for (const run of ["ra", "rb"]) {
        const a = decodeCheckpoint(new Uint8Array(srv.checkpoints.get(`L-full/${run}`)!.bytes));
        const b = decodeCheckpoint(new Uint8Array(srv.checkpoints.get(`L-fb/${run}`)!.bytes));
        expect(b.weights.b_dec).toEqual(a.weights.b_dec);
      }
    } finally {
      srv.checkpoints.set(key, good);
    }
  });

  it("stops a group at once when the lease is lost (409): nothing more is written under it", async () => {
    srv.inject(/L-lost\/metrics$/, "409");
    const engines: RecordingEngine[] = [];
    const events: RunnerEvent[] = [];
    expect(await newLoop(engines, events).trainGroup(claim("L-lost"))).toBe("lease-lost");
    const paths = leaseRequests("L-lost").map((r) => r.path.replace("/v1/leases/L-lost", ""));
    const first409 = paths.indexOf("/metrics");
    expect(first409).toBeGreaterThanOrEqual(0);
    expect(paths.slice(first409 + 1).filter((p) => p !== "/metrics")).toEqual([]);
    expect(paths).not.toContain("/complete");
    expect(paths).not.toContain("/evals");
    expect(paths).not.toContain("/fail");
    expect(engines[0].stepsTaken).toBeLessThan(STEPS);
    expect(events.at(-1)).toMatchObject({ kind: "done", outcome: "lease-lost" });
  });

  it("claims again after a group, backs off on 204, and stops when told to drain", async () => {
    srv.claimQueue.push(claim("L-next"));
    const engines: RecordingEngine[] = [];
    const events: RunnerEvent[] = [];
    const loop = newLoop(engines, events);
    (loop as unknown as { o: { idleMinMs: number } }).o.idleMinMs = 20;
    const run = loop.run();
    while (!events.some((e) => e.kind === "idle")) await new Promise((r) => setTimeout(r, 5));
    loop.stop("drain");
    expect(await run).toBe("stopped");
    expect(events.find((e) => e.kind === "done")).toMatchObject({ group_id: "g1", outcome: "completed" });
    expect(leaseRequests("L-next").at(-1)!.path).toBe("/v1/leases/L-next/complete");
  });

  it("a group failing here is reported with fail; failures in a row back off, then stop claiming and say why", async () => {
    srv.claimQueue.push(claim("L-f1"), claim("L-f2"), claim("L-f3"), claim("L-never"));
    const events: RunnerEvent[] = [];
    const api = new WorkerClient({ server: srv.url, token: "t", retry: { baseMs: 1, maxMs: 5 } });
    const loop = new RunnerLoop({
      api, adapter, runnerId: "loop-fail", device: {} as GPUDevice, emit: (e) => events.push(e), failureBackoffMs: 20, maxConsecutiveFailures: 3,
      createEngine: async () => {
        throw new Error("out of GPU memory");
      },
    });
    expect(await loop.run()).toBe("failing");
    expect(loop.failing).toMatch(/3 groups failed here in a row \(last: Error: out of GPU memory\); stopped claiming/);
    for (const id of ["L-f1", "L-f2", "L-f3"]) {
      expect(leaseRequests(id).at(-1)!.path).toBe(`/v1/leases/${id}/fail`);
      expect(JSON.parse(leaseRequests(id).at(-1)!.body)).toMatchObject({ error: "Error: out of GPU memory" });
    }
    // Backoffs between the failures (doubling), none after the last; the fourth group was never claimed.
    const backoffs = events.filter((e): e is Extract<RunnerEvent, { kind: "backoff" }> => e.kind === "backoff");
    expect(backoffs.map((b) => b.failures)).toEqual([1, 2]);
    expect(backoffs[0].wait_ms).toBeGreaterThanOrEqual(10);
    expect(backoffs[1].wait_ms).toBeGreaterThanOrEqual(20);
    expect(srv.claimQueue).toHaveLength(1);
    srv.claimQueue.length = 0;
  });

  it("a stop during the backoff after a failed group ends the loop at once", async () => {
    srv.claimQueue.push(claim("L-g1"));
    const events: RunnerEvent[] = [];
    const api = new WorkerClient({ server: srv.url, token: "t", retry: { baseMs: 1, maxMs: 5 } });
    const loop = new RunnerLoop({
      api, adapter, runnerId: "loop-fail2", device: {} as GPUDevice, emit: (e) => events.push(e), failureBackoffMs: 60_000, maxConsecutiveFailures: 3,
      createEngine: async () => {
        throw new Error("boom");
      },
    });
    const run = loop.run();
    while (!events.some((e) => e.kind === "backoff")) await new Promise((r) => setTimeout(r, 5));
    const t0 = Date.now();
    loop.stop("drain");
    expect(await run).toBe("stopped");
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});

describe("metricRows", () => {
  it("posts AuxK's optional aux_loss and n_dead_train with the step's metrics, and nothing of them for other SAEs", () => {
    const base = { loss: 1.5, mse: 1, l0: 4, l1: 2, sparsity: 0, "progress/n_patches_seen": 64, "progress/learning_rate": 1e-3, "progress/sparsity_coeff": 0 };
    const rows = metricRows(["a", "b"], 7, [{ ...base, aux_loss: 0.5, n_dead_train: 12 }, base]);
    expect(rows[0]).toEqual({ run_id: "a", step: 7, ...base, aux_loss: 0.5, n_dead_train: 12 });
    expect(rows[1]).toEqual({ run_id: "b", step: 7, ...base });
    expect("aux_loss" in rows[1] || "n_dead_train" in rows[1]).toBe(false);
  });
});
