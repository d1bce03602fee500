/**
 * The Dawn backend end to end (issue 16): `sae-swarm runner --backend dawn` (the loop in Node on the `webgpu`
 * package, SwiftShader's Vulkan driver here, no Chrome) against the real Worker under `wrangler dev`.
 *
 * 1. --probe prints the adapter and exits.
 * 2. One runner (--once) trains a synthetic group and a shards group (served with Range requests) to completion.
 * 3. SIGTERM while training: the group is checkpointed and released (failures 0), the runner gone within 10 s; a
 *    second runner resumes at that checkpoint and ends with weights bit-identical to the same configs trained in
 *    one go (part 2's synthetic group).
 * 4. One SIGTERM stops it within 10 s in the other states, the lease released when it holds one: idle, claiming
 *    (the claim hangs), loading data (the data host hangs; the stop grace is left at its 20 s default, so it is
 *    the aborted fetch that makes it fast, not the grace).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sparseFeatureGenerator, writeShards } from "../../runner/data/write-shards";
import { decodeCheckpoint } from "../../runner/safetensors";
import { claimAsRunner, hangingServer, killTree, loggedSteps, until } from "../helpers/e2e";
import { ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";
import { serveDirWithRanges, type RangeServer } from "../runner/range-server";
import type { TrainConfig } from "../../shaders/config";

// Long: a lease still live proves the group came back by a release, not by expiring.
const LEASE_TTL_MS = 120_000;
const CHECKPOINT_EVERY = 10;

// One group of two ReLU runs, 300 steps of 64: trained in one go (control), and stopped and resumed.
const SWEEP_RESUME = `
data = { kind = "synthetic", d_vit = 16, n_features = 24, sparsity = 0.1, seed = 3, n_examples = 4096 }
n_train = 19200
batch_size = 64
log_every = 10
n_eval = 256
seed = 11
lr = [1e-3, 2e-3]
sae = { exp_factor = 2 }
`;

let worker: WorkerDev;
let tmp: string;
let shards: RangeServer;
const children: ChildProcess[] = [];
const servers: Server[] = [];

beforeAll(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), "sae-swarm-dawn-"));
  await writeShards({
    out: path.join(tmp, "shards"),
    d_vit: 16,
    layers: [6],
    n_patches_per_img: 16,
    cls_token: false,
    n_imgs: 64,
    max_patches_per_shard: 32 * 16,
    generator: sparseFeatureGenerator({ d_vit: 16, n_features: 24, sparsity: 0.1, seed: 5, noise: 0.01 }),
  });
  shards = await serveDirWithRanges(path.join(tmp, "shards"));
  worker = await startWorkerDev({ vars: { LEASE_TTL_MS: String(LEASE_TTL_MS), CHECKPOINT_EVERY: String(CHECKPOINT_EVERY) } });
}, 180_000);
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) killTree(c.pid!);
  for (const s of servers) s.closeAllConnections(), s.close();
  await worker?.stop();
  await shards?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

interface Runner {
  child: ChildProcess;
  log(): string;
  exit: Promise<number | null>;
}

/** `sae-swarm runner --backend dawn` as a user starts it, its token in the environment. */
function startRunner(id: string, extra: string[] = [], server = worker.url): Runner {
  const args = [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--backend", "dawn", "--server", server, "--allow-software-adapter", "--allow-data-host", "127.0.0.1", "--runner-id", id, ...extra];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, SAE_SWARM_RUNNER_TOKEN: worker.runnerToken, SAE_SWARM_CACHE: path.join(tmp, "cache") },
  });
  children.push(child);
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  return { child, log: () => out, exit: new Promise((r) => child.once("exit", (code) => r(code))) };
}

/** SIGTERM to the runner; its exit code, or a failure naming its log when it is still there after 10 s. */
async function stopWithin10s(r: Runner): Promise<number | null> {
  const t0 = Date.now();
  r.child.kill("SIGTERM");
  const code = await Promise.race([r.exit, new Promise<"late">((res) => setTimeout(() => res("late"), 10_000))]);
  if (code === "late") throw new Error(`the runner was still running 10 s after SIGTERM:\n${r.log()}`);
  console.log(`[dawn] SIGTERM: exited ${code} in ${Date.now() - t0} ms`);
  return code;
}

async function api<T>(method: string, route: string, body?: string): Promise<T> {
  const res = await fetch(worker.url + route, { method, body, headers: { ...worker.submitAuth, ...(body ? { "content-type": "application/toml" } : {}) } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}
interface SweepView {
  sweep: { status: string };
  groups: Array<{ id: string; status: string; failures: number; leases: Array<{ status: string; progress: { step: number } | null }> }>;
  runs: Array<{ id: string; status: string }>;
}
interface RunView {
  id: string;
  status: string;
  n_steps: number;
  cfg: TrainConfig;
  eval: { mse: number } | null;
  checkpoints: Array<{ kind: string; step: number }>;
}
const submit = (toml: string) => api<{ id: string; n_groups: number }>("POST", "/v1/sweeps", toml);
const sweep = (id: string) => api<SweepView>("GET", `/v1/sweeps/${id}`);
const run = async (id: string) => (await api<{ run: RunView }>("GET", `/v1/runs/${id}`)).run;
async function finalWeights(runId: string) {
  const res = await fetch(`${worker.url}/v1/runs/${runId}/checkpoint?kind=final`, { headers: worker.submitAuth });
  if (!res.ok) throw new Error(`checkpoint of ${runId}: ${res.status}`);
  return decodeCheckpoint(new Uint8Array(await res.arrayBuffer()));
}

/** Done, each logged step once, one eval, one final checkpoint at n_steps. */
async function expectRunComplete(id: string): Promise<void> {
  const r = await run(id);
  expect(r.status, id).toBe("done");
  const { rows } = await api<{ rows: Array<{ step: number; mse: number }> }>("GET", `/v1/runs/${id}/metrics?limit=100000`);
  expect(rows.map((m) => m.step), id).toEqual(loggedSteps(r.cfg));
  for (const m of rows) expect(Number.isFinite(m.mse), `${id} step ${m.step}`).toBe(true);
  expect(r.eval, id).not.toBeNull();
  expect(r.checkpoints.filter((k) => k.kind === "final").map((k) => k.step), id).toEqual([r.n_steps]);
}

/** Released: the group waits with failures 0 and no live lease, and the next claim gets it at once (then held by
 *  the test's lease, so a later runner does not take it). */
async function expectGivenBack(sweepId: string): Promise<void> {
  const g = (await sweep(sweepId)).groups[0];
  expect(g).toMatchObject({ status: "waiting", failures: 0 });
  expect(g.leases.filter((l) => l.status === "active")).toEqual([]);
  expect((await claimAsRunner(worker.url, worker.runnerToken, "test"))?.group.id).toBe(g.id);
}


describe("sae-swarm runner --backend dawn", () => {
  let control: string[] = [];

  it("--probe prints the Dawn adapter and exits", async () => {
    const r = startRunner("probe", ["--probe"]);
    expect(await r.exit, r.log()).toBe(0);
    expect(r.log()).toMatch(/WebGPU adapter \(Dawn\): .*SwiftShader.*software adapter/);
  });

  it("trains a synthetic group and a shards group to completion (--once)", async () => {
    const synth = await submit(SWEEP_RESUME);
    const shard = await submit(`
data = { kind = "shards", url = "${shards.url}", layer = 0 }
n_train = 1280
batch_size = 64
log_every = 10
n_eval = 256
lr = 1e-3
sae = { d_vit = 16, exp_factor = 2 }
`);
    const t0 = Date.now();
    const r = startRunner("complete", ["--once"]);
    expect(await r.exit, r.log()).toBe(0);
    console.log(`[dawn] one runner trained 2 groups (300 + 20 steps) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(r.log().match(/: completed/g)?.length, r.log()).toBe(2);
    for (const s of [synth, shard]) {
      const v = await sweep(s.id);
      expect(v.sweep.status).toBe("done");
      for (const { id } of v.runs) await expectRunComplete(id);
    }
    control = (await sweep(synth.id)).runs.map((r) => r.id);
  });

  it("SIGTERM while training checkpoints and releases; a second runner resumes to the same weights", async () => {
    expect(control.length, "the test before trains the control group").toBe(2);
    const s = await submit(SWEEP_RESUME);
    const runIds = (await sweep(s.id)).runs.map((r) => r.id);
    const a = startRunner("stopped");
    // A resume checkpoint of every run: past the data and the init, training (heartbeats come too rarely to tell).
    await until(
      "runner A's first resume checkpoints",
      async () => {
        if (a.child.exitCode !== null) throw new Error(`runner A exited early:\n${a.log()}`);
        return (await Promise.all(runIds.map(run))).every((v) => v.checkpoints.some((k) => k.kind === "resume"));
      },
      120_000,
      200,
    );
    expect(await stopWithin10s(a)).toBe(130);
    expect(a.log()).toMatch(/group \S+: abandoned/);
    const g = (await sweep(s.id)).groups[0];
    expect(g).toMatchObject({ status: "waiting", failures: 0 });
    expect(g.leases.filter((l) => l.status === "active")).toEqual([]);
    const stoppedAt = Math.min(...(await Promise.all(runIds.map(run))).map((v) => Math.max(...v.checkpoints.filter((k) => k.kind === "resume").map((k) => k.step))));
    expect(stoppedAt).toBeGreaterThanOrEqual(CHECKPOINT_EVERY);
    expect(stoppedAt).toBeLessThan(300);

    const b = startRunner("resumer", ["--once"]);
    expect(await b.exit, b.log()).toBe(0);
    expect(b.log()).toContain(`resuming at step ${stoppedAt}`);
    expect(b.log()).toMatch(/: completed/);
    for (const [i, id] of runIds.entries()) {
      await expectRunComplete(id);
      const [mine, ref] = [await finalWeights(id), await finalWeights(control[i])];
      expect(mine.cfg).toEqual(ref.cfg);
      for (const name of ["W_enc", "b_enc", "W_dec", "b_dec"] as const) expect(mine.weights[name], `${id} ${name}`).toEqual(ref.weights[name]);
      expect((await run(id)).eval!.mse).toBe((await run(control[i])).eval!.mse);
    }
  });

  it("SIGTERM while idle", async () => {
    const r = startRunner("idle");
    await until("the runner to go idle", async () => /no group waiting/.test(r.log()), 60_000, 100);
    expect(await stopWithin10s(r)).toBe(130);
  });

  it("SIGTERM while the claim hangs", async () => {
    const r = startRunner("claiming", [], await hangingServer(servers));
    await until("the adapter check", async () => /WebGPU adapter/.test(r.log()), 60_000, 100);
    await new Promise((res) => setTimeout(res, 1000)); // the claim is in flight, unanswered
    expect(await stopWithin10s(r)).toBe(130);
  });

  it("SIGTERM while the data host hangs: the fetch is aborted, the lease released", async () => {
    const host = await hangingServer(servers);
    const s = await submit(`
data = { kind = "shards", url = "${host}/acts/", layer = 0 }
n_train = 6400
batch_size = 64
log_every = 10
lr = 1e-3
sae = { exp_factor = 2 }
`);
    const r = startRunner("loading");
    await until("the runner to load data", async () => /claimed group/.test(r.log()), 60_000, 100);
    await new Promise((res) => setTimeout(res, 1000));
    expect(await stopWithin10s(r)).toBe(130);
    expect(r.log()).toMatch(/gave lease \S+ back \(runner stopped\)/);
    await expectGivenBack(s.id);
  });
});
