/**
 * End to end: the real Worker under `wrangler dev` (local D1, R2, Queue) and real runners (`sae-swarm runner`:
 * headless Chromium, WebGPU on SwiftShader, the WGSL engine) training small synthetic sweeps.
 *
 * 1. One runner (--once) trains two sweeps (five groups) to completion. Through the submitter API: every run has
 *    each logged step exactly once, one eval and one final checkpoint; the final checkpoint, decoded here,
 *    reproduces the stored eval MSE (and L0) when the eval data are re-encoded in float64 in Node.
 * 2. A runner is SIGKILLed (its whole process tree, Chromium included) mid-group after a resume checkpoint is
 *    stored; once its lease expires a second runner claims the group, resumes at the latest resume checkpoint, and
 *    finishes: each logged step once, one eval, one final checkpoint, and final weights bit-identical to the same
 *    configs trained without interruption (sweep "control" of part 1).
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nSteps, type TrainConfig } from "../../shaders/config";
import { SyntheticDataset } from "../../runner/data/synthetic";
import { decodeCheckpoint, type DecodedCheckpoint } from "../../runner/safetensors";
import { killTree, loggedSteps, until } from "../helpers/e2e";
import { ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";

const CHECKPOINT_EVERY = 20;
// Short, so a killed runner's group is free again soon; long enough (heartbeats every third) for a loaded 2-core machine.
const LEASE_TTL_MS = 9000;

// Four groups (data × exp_factor), four runs each (lr × ReLU/JumpReLU): 100 steps of 64, metrics every 10 steps.
const SWEEP_MAIN = `
data = [{ kind = "synthetic", d_vit = 16, n_features = 24, sparsity = 0.1, seed = 1, n_examples = 4096 },
        { kind = "synthetic", d_vit = 32, n_features = 48, sparsity = 0.08, seed = 2, n_examples = 4096, noise = 0.01 }]
n_train = 6400
batch_size = 64
log_every = 10
n_eval = 512
lr = [1e-3, 3e-3]
sae = { exp_factor = [2, 4], kind = ["relu", "jumprelu"], init_threshold = 0.05, bandwidth = 0.05 }
`;
// One group of two ReLU runs, 120 steps: trained once without interruption (control) and once with a kill (recovery).
const SWEEP_RESUME = `
data = { kind = "synthetic", d_vit = 16, n_features = 24, sparsity = 0.1, seed = 3, n_examples = 4096 }
n_train = 7680
batch_size = 64
log_every = 10
n_eval = 256
seed = 11
lr = [1e-3, 2e-3]
sae = { exp_factor = 4 }
`;

let worker: WorkerDev;

beforeAll(async () => {
  worker = await startWorkerDev({ vars: { CHECKPOINT_EVERY: String(CHECKPOINT_EVERY), LEASE_TTL_MS: String(LEASE_TTL_MS) } });
});
afterAll(async () => {
  for (const r of runners) if (r.child.exitCode === null) killTree(r.child.pid!);
  await worker?.stop();
});

async function api<T>(method: string, route: string, body?: string, contentType = "application/toml"): Promise<T> {
  const res = await fetch(worker.url + route, { method, body, headers: { ...worker.submitAuth, ...(body ? { "content-type": contentType } : {}) } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

async function checkpointBytes(runId: string, kind: "final" | "resume" = "final"): Promise<Uint8Array> {
  const res = await fetch(`${worker.url}/v1/runs/${runId}/checkpoint?kind=${kind}`, { headers: worker.submitAuth });
  if (!res.ok) throw new Error(`checkpoint of ${runId}: ${res.status} ${await res.text()}`);
  return new Uint8Array(await res.arrayBuffer());
}

interface RunView {
  id: string;
  group_id: string;
  status: string;
  n_steps: number;
  attempts: number;
  cfg: TrainConfig;
  eval: { mse: number; l0: number; n_examples: number } | null;
  checkpoints: Array<{ kind: string; step: number; bytes: number }>;
}
interface SweepView {
  sweep: { id: string; status: string };
  groups: Array<{ id: string; status: string; leases: Array<{ id: string; runner_id: string; status: string; expires_at: number; progress: { step: number } | null }> }>;
  runs: Array<{ id: string; status: string }>;
}

const submit = (toml: string) => api<{ id: string; n_runs: number; n_groups: number }>("POST", "/v1/sweeps", toml);
const sweep = (id: string) => api<SweepView>("GET", `/v1/sweeps/${id}`);
const run = async (id: string) => (await api<{ run: RunView }>("GET", `/v1/runs/${id}`)).run;

interface Runner {
  child: ChildProcess;
  log(): string;
  exit: Promise<number | null>;
}
const runners: Runner[] = [];

/** `sae-swarm runner` as a user starts it, in its own process group. */
function startRunner(id: string, once: boolean): Runner {
  const args = [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--server", worker.url, "--token", worker.runnerToken, "--allow-software-adapter", "--runner-id", id];
  if (once) args.push("--once");
  const child = spawn(process.execPath, args, { cwd: ROOT, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const r: Runner = { child, log: () => out, exit: new Promise((res) => child.once("exit", (code) => res(code))) };
  runners.push(r);
  return r;
}

/** Each logged step exactly once, one eval, exactly one final checkpoint (at n_steps). */
async function expectRunComplete(r: RunView): Promise<void> {
  expect(r.status, r.id).toBe("done");
  const { rows } = await api<{ rows: Array<{ step: number; mse: number }> }>("GET", `/v1/runs/${r.id}/metrics?limit=100000`);
  expect(rows.map((m) => m.step), r.id).toEqual(loggedSteps(r.cfg));
  for (const m of rows) expect(Number.isFinite(m.mse), `${r.id} step ${m.step}`).toBe(true);
  expect(r.eval, r.id).not.toBeNull();
  const finals = r.checkpoints.filter((k) => k.kind === "final");
  expect(finals, r.id).toEqual([expect.objectContaining({ kind: "final", step: r.n_steps })]);
}

/** Eval MSE and L0 of a checkpoint over examples 0 .. n−1 of the synthetic data, in float64 (SAE.md forward). */
function evalInFloat64(ck: DecodedCheckpoint, n: number): { mse: number; l0: number; N: number } {
  const cfg = ck.cfg;
  if (cfg.data.kind !== "synthetic") throw new Error("synthetic data only");
  const data = new SyntheticDataset(cfg.data);
  const d = cfg.sae.d_vit;
  const k = d * cfg.sae.exp_factor;
  const N = n > 0 ? Math.min(n, data.n_examples) : data.n_examples;
  const { W_enc, b_enc, W_dec, b_dec, threshold } = ck.weights;
  const x = new Float32Array(d);
  const xn = new Float64Array(d);
  const f = new Float64Array(k);
  let sq = 0;
  let l0 = 0;
  for (let i = 0; i < N; i++) {
    data.example(i, x);
    for (let c = 0; c < d; c++) xn[c] = (x[c] - ck.norm.mean[c]) / ck.norm.scale;
    for (let j = 0; j < k; j++) {
      let h = b_enc[j];
      for (let c = 0; c < d; c++) h += (xn[c] - b_dec[c]) * W_enc[c * k + j];
      f[j] = cfg.sae.kind === "jumprelu" ? (h > threshold![j] ? h : 0) : Math.max(h, 0);
      if (f[j] > 0) l0++;
    }
    for (let c = 0; c < d; c++) {
      let y = b_dec[c];
      for (let j = 0; j < k; j++) y += f[j] * W_dec[j * d + c];
      sq += (y - xn[c]) ** 2;
    }
  }
  return { mse: sq / (N * d), l0: l0 / N, N };
}

describe("runners against the Worker under wrangler dev", () => {
  let control: { id: string; n_runs: number; n_groups: number };

  it("one runner trains a sweep of several groups; metrics, evals and checkpoints are all there and consistent", async () => {
    const main = await submit(SWEEP_MAIN);
    control = await submit(SWEEP_RESUME);
    expect([main.n_groups, main.n_runs, control.n_groups, control.n_runs]).toEqual([4, 16, 1, 2]);

    const t0 = Date.now();
    const r = startRunner("e2e-single", true);
    const code = await r.exit;
    const seconds = (Date.now() - t0) / 1000;
    expect(code, r.log()).toBe(0);
    expect(r.log().match(/: completed/g)?.length, r.log()).toBe(5);
    expect(r.log()).not.toMatch(/failed|lease-lost/);
    console.log(`[e2e] one runner trained 5 groups (18 SAEs, ${4 * 100 + 120} group-steps) in ${seconds.toFixed(1)} s`);

    for (const s of [main, control]) {
      const view = await sweep(s.id);
      expect(view.sweep.status).toBe("done");
      expect(view.groups.every((g) => g.status === "done")).toBe(true);
      for (const { id } of view.runs) {
        const rv = await run(id);
        await expectRunComplete(rv);
        // The group trained in one go: resume checkpoints every CHECKPOINT_EVERY steps, none at the end.
        expect(rv.checkpoints.filter((k) => k.kind === "resume").map((k) => k.step), id).toEqual(
          Array.from({ length: Math.ceil(rv.n_steps / CHECKPOINT_EVERY) - 1 }, (_, i) => (i + 1) * CHECKPOINT_EVERY),
        );
        const ck = decodeCheckpoint(await checkpointBytes(id));
        expect([ck.kind, ck.run_id, ck.step]).toEqual(["final", id, rv.n_steps]);
        expect(ck.cfg).toEqual(rv.cfg);
        const mine = evalInFloat64(ck, rv.cfg.n_eval);
        expect(rv.eval!.n_examples).toBe(mine.N);
        expect(Math.abs(rv.eval!.mse - mine.mse), `${id}: stored eval mse ${rv.eval!.mse}, float64 ${mine.mse}`).toBeLessThan(1e-4 * mine.mse + 1e-7);
        expect(Math.abs(rv.eval!.l0 - mine.l0), `${id}: stored eval l0 ${rv.eval!.l0}, float64 ${mine.l0}`).toBeLessThan(0.02 + 1e-3 * mine.l0);
      }
    }
  });

  it("a runner killed mid-group is recovered by a second runner that resumes from the checkpoint", async () => {
    expect(control, "the first test trains the control sweep").toBeDefined();
    const s = await submit(SWEEP_RESUME);
    const runIds = (await sweep(s.id)).runs.map((r) => r.id);
    const total = nSteps((await run(runIds[0])).cfg);

    const a = startRunner("e2e-killed", false);
    // Wait for a resume checkpoint of every run past the first one (metrics of the steps before it are flushed).
    await until(
      "runner A's resume checkpoints",
      async () => {
        if (a.child.exitCode !== null) throw new Error(`runner A exited early:\n${a.log()}`);
        const views = await Promise.all(runIds.map(run));
        return views.every((v) => v.checkpoints.some((k) => k.kind === "resume" && k.step >= 2 * CHECKPOINT_EVERY));
      },
      180_000,
    );
    const held = (await sweep(s.id)).groups[0].leases;
    expect(held.map((l) => [l.runner_id, l.status])).toEqual([["e2e-killed", "active"]]);
    killTree(a.child.pid!);
    await a.exit;
    const killedAt = await Promise.all(runIds.map(run));
    expect(killedAt.every((v) => v.status !== "done"), "runner A was killed before it finished").toBe(true);
    // A kill between the uploads of one round leaves some runs a round ahead: the group resumes at the latest step
    // every run has a checkpoint for.
    const latestResume = killedAt.map((v) => Math.max(...v.checkpoints.filter((k) => k.kind === "resume").map((k) => k.step)));
    const resumeStep = Math.min(...latestResume);
    console.log(`[e2e] runner A killed with resume checkpoints at steps ${latestResume.join(", ")} (of ${total})`);
    expect(resumeStep).toBeGreaterThanOrEqual(2 * CHECKPOINT_EVERY);
    expect(resumeStep).toBeLessThan(total);

    // The lease runs out LEASE_TTL_MS after A's last heartbeat; then B can take the group over.
    await until("runner A's lease to expire", async () => (await sweep(s.id)).groups[0].leases.every((l) => l.status !== "active"), 3 * LEASE_TTL_MS);
    const b = startRunner("e2e-rescuer", true);
    expect(await b.exit, b.log()).toBe(0);
    expect(b.log(), b.log()).toContain(`resuming at step ${resumeStep}`);
    expect(b.log()).toMatch(/: completed/);

    expect(b.log()).toContain("(attempt 2)");
    const view = await sweep(s.id);
    expect(view.sweep.status).toBe("done");
    expect(view.groups[0].leases).toEqual([]); // none left active

    const controlRuns = (await sweep(control.id)).runs.map((r) => r.id);
    for (const [i, id] of runIds.entries()) {
      const rv = await run(id);
      await expectRunComplete(rv);
      expect(rv.attempts, id).toBe(2);
      const ck = decodeCheckpoint(await checkpointBytes(id));
      const mine = evalInFloat64(ck, rv.cfg.n_eval);
      expect(Math.abs(rv.eval!.mse - mine.mse)).toBeLessThan(1e-4 * mine.mse + 1e-7);
      // Same configs (seeds included) trained without a kill: the resumed run ends with the same weights, bit for bit.
      const ref = decodeCheckpoint(await checkpointBytes(controlRuns[i]));
      expect(ck.cfg).toEqual(ref.cfg);
      for (const name of ["W_enc", "b_enc", "W_dec", "b_dec"] as const) expect(ck.weights[name], `${id} ${name}`).toEqual(ref.weights[name]);
      expect(rv.eval!.mse).toBe((await run(controlRuns[i])).eval!.mse);
    }
  });
});
