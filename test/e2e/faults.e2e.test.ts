/**
 * Fault tests: the real Worker under `wrangler dev` and real runners (`sae-swarm runner`, headless Chromium), with
 * faults at chosen points. Nothing may be lost or doubled: every run ends with each logged step exactly once, exactly
 * one eval, exactly one final checkpoint (one in D1, one object in R2), and its sweep done.
 *
 * 1. Four runners die without a word (SIGKILL to the CLI and its Chrome, from inside: SAE_SWARM_FAULT, see
 *    runner/fault.ts), one group each, at four points: (a) mid-training, as the metrics of a drawn step are posted;
 *    (b) mid-upload of a drawn checkpoint (half its body sent); (c) after the evals were stored, before complete;
 *    (d) after a drawn checkpoint was stored, before its answer reached the runner (one the next runner uploads again:
 *    it must stay stored once, in D1 and in R2). Once their leases expire a fifth runner takes every group over,
 *    resumes each at the step its fault left (checked against the draw), and finishes the sweep.
 *    The same on Dawn (`--backend dawn`: the fault fires in the runner's own client, runner/fault-fetch.ts), with
 *    one runner killed at one of the four points (drawn), and a rescuer.
 * 2. The Worker is restarted twice while a runner trains (SIGTERM, then SIGKILL of wrangler and workerd), on the same
 *    port and persisted D1/R2: the runner rides through (its requests retry with backoff, its queued metrics wait)
 *    and finishes the group under its first lease.
 *
 * The drawn steps and uploads come from a seed printed first (TEST_SEED=… reproduces them).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TrainConfig } from "../../shaders/config";
import { descendants } from "../../runner/fault";
import { mulberry32, testSeed } from "../helpers/random";
import { killTree, loggedSteps, until } from "../helpers/e2e";
import { ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";

const CHECKPOINT_EVERY = 20;
// Short, so the killed runners' groups are free again soon; long enough (heartbeats every third) for a loaded machine,
// and for every runner of part 1 to claim its group before the first one killed loses its lease.
const LEASE_TTL_MS = 12_000;
// Part 2: longer than the Worker's restarts (about 5 s here), so the runner keeps its lease through them.
const RESTART_LEASE_TTL_MS = 60_000;

// Four groups (data seeds), two ReLU runs each (lr): 120 steps of 64, metrics every 10 steps, checkpoints every 20.
const N_STEPS = 120;
const RUNS_PER_GROUP = 2;
const DAWN_STEPS = 60;
const sweepToml = (seeds: number[], nSteps = N_STEPS) => `
data = [${seeds.map((s) => `{ kind = "synthetic", d_vit = 16, n_features = 24, sparsity = 0.1, seed = ${s}, n_examples = 4096 }`).join(", ")}]
n_train = ${nSteps * 64}
batch_size = 64
log_every = 10
n_eval = 256
seed = 5
lr = [1e-3, 2e-3]
sae = { exp_factor = 4 }
`;

const seed = testSeed();
const rand = mulberry32(seed);
const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];

let worker: WorkerDev;

beforeAll(async () => {
  console.log(`[faults] TEST_SEED=${seed}`);
  worker = await startWorkerDev({ vars: { CHECKPOINT_EVERY: String(CHECKPOINT_EVERY), LEASE_TTL_MS: String(LEASE_TTL_MS) } });
});
afterAll(async () => {
  for (const r of runners) if (r.child.exitCode === null && r.child.signalCode === null) killTree(r.child.pid!);
  await worker?.stop();
});

async function api<T>(method: string, route: string, body?: string): Promise<T> {
  const res = await fetch(worker.url + route, { method, body, headers: { ...worker.submitAuth, ...(body ? { "content-type": "application/toml" } : {}) } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

interface RunView {
  id: string;
  group_id: string;
  status: string;
  n_steps: number;
  attempts: number;
  cfg: TrainConfig;
  latest: { step: number } | null;
  eval: { mse: number; l0: number; n_examples: number } | null;
  checkpoints: Array<{ kind: string; step: number; bytes: number }>;
}
interface SweepView {
  sweep: { id: string; status: string };
  groups: Array<{ id: string; status: string; leases: Array<{ id: string; runner_id: string; status: string }> }>;
  runs: Array<{ id: string; group_id: string; status: string }>;
}

const submit = (toml: string) => api<{ id: string; n_runs: number; n_groups: number }>("POST", "/v1/sweeps", toml);
const sweep = (id: string) => api<SweepView>("GET", `/v1/sweeps/${id}`);
const run = async (id: string) => (await api<{ run: RunView }>("GET", `/v1/runs/${id}`)).run;

interface Runner {
  name: string;
  child: ChildProcess;
  log(): string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}
const runners: Runner[] = [];

/** `sae-swarm runner` as a user starts it, in its own process group; `fault` arms SAE_SWARM_FAULT. */
function startRunner(name: string, opts: { once?: boolean; fault?: string; backend?: "dawn" } = {}): Runner {
  const args = [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--server", worker.url, "--token", worker.runnerToken, "--allow-software-adapter", "--runner-id", name];
  if (opts.once) args.push("--once");
  if (opts.backend) args.push("--backend", opts.backend);
  const env = { ...process.env };
  delete env.SAE_SWARM_FAULT;
  if (opts.fault) env.SAE_SWARM_FAULT = opts.fault;
  const child = spawn(process.execPath, args, { cwd: ROOT, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const r: Runner = { name, child, log: () => out, exit: new Promise((res) => child.once("exit", (code, signal) => res({ code, signal }))) };
  runners.push(r);
  return r;
}

/** Whether a process still runs (a zombie waiting for its parent counts as gone). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Each logged step exactly once, one eval, exactly one final checkpoint (at n_steps), resume checkpoints once each. */
async function expectRunComplete(r: RunView): Promise<void> {
  expect(r.status, r.id).toBe("done");
  const { rows } = await api<{ rows: Array<{ step: number; mse: number }> }>("GET", `/v1/runs/${r.id}/metrics?limit=100000`);
  expect(rows.map((m) => m.step), `${r.id}: logged steps`).toEqual(loggedSteps(r.cfg));
  for (const m of rows) expect(Number.isFinite(m.mse), `${r.id} step ${m.step}`).toBe(true);
  expect(r.eval, `${r.id}: eval`).not.toBeNull();
  const evalRes = await api<{ n_examples: number; freqs: number[] }>("GET", `/v1/runs/${r.id}/eval`);
  expect(evalRes.n_examples).toBe(r.eval!.n_examples);
  const finals = r.checkpoints.filter((k) => k.kind === "final");
  expect(finals, `${r.id}: final checkpoints`).toEqual([expect.objectContaining({ kind: "final", step: r.n_steps })]);
  const resumes = r.checkpoints.filter((k) => k.kind === "resume").map((k) => k.step);
  expect(resumes, `${r.id}: resume checkpoints`).toEqual(Array.from({ length: Math.ceil(r.n_steps / CHECKPOINT_EVERY) - 1 }, (_, i) => (i + 1) * CHECKPOINT_EVERY));
}

/** expectRunComplete for each run, trained over `attempts` attempts; the checkpoints D1 holds for them. */
async function expectRunsComplete(runIds: string[], attempts: number): Promise<number> {
  let rows = 0;
  for (const id of runIds) {
    const rv = await run(id);
    await expectRunComplete(rv);
    expect(rv.attempts, id).toBe(attempts);
    rows += rv.checkpoints.length;
  }
  return rows;
}

/**
 * The objects in the local R2 bucket (Miniflare keeps one blob file per stored object under the persistence dir),
 * once their count has settled (Miniflare deletes replaced blobs in the background). `nothingYet`: no directory is
 * no object (nothing stored yet: a test run alone).
 */
async function r2Objects(nothingYet = false): Promise<number> {
  const dir = path.join(worker.persistTo, "v3/r2/sae-swarm-checkpoints/blobs");
  if (nothingYet && !existsSync(dir)) return 0;
  if (!existsSync(dir)) throw new Error(`no R2 blob directory at ${dir}: Miniflare's layout changed; update r2Objects()`);
  let last = -1;
  for (let i = 0; i < 20; i++) {
    const n = readdirSync(dir).length;
    if (n === last) return n;
    last = n;
    await new Promise((r) => setTimeout(r, 250));
  }
  return last;
}

/** The four kill points, drawn from the seed, each with the step the next runner must resume its group at. */
function drawFaults(nSteps = N_STEPS): Array<{ name: string; fault: string; resumeAt: number }> {
  // Uploads of one group: a resume checkpoint per run every CHECKPOINT_EVERY steps, then the finals (run order).
  const rounds = nSteps / CHECKPOINT_EVERY - 1;
  const uploads = rounds * RUNS_PER_GROUP + RUNS_PER_GROUP;
  const metricsStep = pick(Array.from({ length: nSteps / 10 - 1 }, (_, i) => i * 10 + 9)); // not the last
  const cutUpload = 1 + Math.floor(rand() * uploads);
  // (d) dies after an upload the next runner makes again (so that it meets the stored one): a run's resume
  // checkpoint of a round its partner never finished, or a final one.
  const storedUpload = pick(Array.from({ length: uploads }, (_, i) => i + 1).filter((u) => u > rounds * RUNS_PER_GROUP || u % RUNS_PER_GROUP !== 0));
  // The step the next runner resumes at: the latest round of resume checkpoints every run of the group has.
  const roundOf = (upload: number, stored: boolean) => Math.min(rounds, Math.floor((upload - (stored ? 0 : 1)) / RUNS_PER_GROUP)) * CHECKPOINT_EVERY;
  return [
    { name: "killed-training", fault: `metrics:${metricsStep}`, resumeAt: Math.floor(metricsStep / CHECKPOINT_EVERY) * CHECKPOINT_EVERY },
    { name: "killed-upload", fault: `checkpoint-cut:${cutUpload}`, resumeAt: roundOf(cutUpload, false) },
    { name: "killed-after-evals", fault: "evals", resumeAt: rounds * CHECKPOINT_EVERY },
    { name: "killed-after-stored", fault: `checkpoint-stored:${storedUpload}`, resumeAt: roundOf(storedUpload, true) },
  ];
}

/** The rescuer's claim line of a group: a second attempt, resuming where the fault left it. */
function expectTakenOver(blog: string, groupId: string, k: { name: string; fault: string; resumeAt: number }): void {
  const line = blog.split("\n").find((l) => l.includes(`claimed group ${groupId} `));
  expect(line, `rescuer's claim of ${groupId}:\n${blog}`).toBeDefined();
  expect(line, `${k.name} (${k.fault})`).toContain("(attempt 2)");
  if (k.resumeAt > 0) expect(line, `${k.name} (${k.fault})`).toContain(`resuming at step ${k.resumeAt}`);
  else expect(line, `${k.name} (${k.fault})`).not.toContain("resuming");
}

describe("faults: nothing lost or doubled", () => {
  it("runners killed mid-training, mid-upload, after the evals, after a stored checkpoint: a fifth runner finishes every group", async () => {
    const faults = drawFaults();
    console.log(`[faults] kill points (TEST_SEED=${seed}): ${faults.map((f) => `${f.name} at ${f.fault} (resume at ${f.resumeAt})`).join("; ")}`);

    const s = await submit(sweepToml([1, 2, 3, 4]));
    expect([s.n_groups, s.n_runs]).toEqual([4, 4 * RUNS_PER_GROUP]);
    const t0 = Date.now();

    // All four at once, so each claims its own group well before any killed runner's lease could expire.
    const killed = faults.map((f) => ({ ...f, runner: startRunner(f.name, { fault: f.fault }), tree: [] as number[] }));
    // The processes of each runner (Chromium's among them), seen once it has claimed, to check they all die.
    await Promise.all(
      killed.map((k) =>
        until(`${k.name}'s claim`, async () => k.runner.log().includes("claimed group") || k.runner.child.exitCode !== null || k.runner.child.signalCode !== null, 180_000, 50).then(() => {
          k.tree = descendants(k.runner.child.pid!);
        }),
      ),
    );
    const groupOf = new Map<string, (typeof killed)[number]>();
    for (const k of killed) {
      const { code, signal } = await k.runner.exit;
      const log = k.runner.log();
      expect(signal, `${k.name} should have been killed by its fault (exit ${code}):\n${log}`).toBe("SIGKILL");
      expect(log, log).toContain(`[fault] SAE_SWARM_FAULT=${k.fault}`);
      const claims = [...log.matchAll(/claimed group (\S+) of sweep/g)].map((m) => m[1]);
      expect(claims, `${k.name} claims:\n${log}`).toHaveLength(1);
      expect(log, `${k.name} took a group over (a killed runner's lease expired before every runner had claimed):\n${log}`).not.toContain("(attempt");
      groupOf.set(claims[0], k);
      // Chromium died with it.
      expect(k.tree.length, `${k.name}: its processes, seen while it trained`).toBeGreaterThan(0);
      // (SIGKILLed processes take a moment to go; give them a few seconds.)
      await until(`${k.name}'s processes to die`, async () => k.tree.every((p) => !alive(p)), 10_000, 100).catch(() => {});
      expect(k.tree.filter(alive), `${k.name}: its processes still alive`).toEqual([]);
    }
    expect(groupOf.size).toBe(4);
    console.log(`[faults] four runners killed at their points in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    let view = await sweep(s.id);
    expect(view.sweep.status).not.toBe("done");
    // Each group is still held by the lease of the runner that died with it, until that lease expires.
    for (const g of view.groups) expect(g.leases.map((l) => l.runner_id), g.id).toEqual([groupOf.get(g.id)!.name]);
    // (c) and (d): what the runner stored before it died is there, nothing more.
    const afterEvals = [...groupOf].find(([, k]) => k.fault === "evals")![0];
    for (const r of view.runs.filter((r) => r.group_id === afterEvals)) {
      const rv = await run(r.id);
      expect(rv.eval, `${r.id}: the eval stored before the kill`).not.toBeNull();
      expect(rv.checkpoints.filter((k) => k.kind === "final"), r.id).toEqual([]);
    }

    await until("the killed runners' leases to expire", async () => (await sweep(s.id)).groups.every((g) => g.leases.every((l) => l.status !== "active")), 4 * LEASE_TTL_MS);
    const t1 = Date.now();
    const b = startRunner("rescuer", { once: true });
    const bExit = await b.exit;
    expect(bExit.code, b.log()).toBe(0);
    const blog = b.log();
    expect(blog.match(/: completed/g)?.length, blog).toBe(4);
    expect(blog).not.toMatch(/failed|lease-lost/);
    console.log(`[faults] the rescuer finished the four groups in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
    for (const [groupId, k] of groupOf) expectTakenOver(blog, groupId, k);

    view = await sweep(s.id);
    expect(view.sweep.status).toBe("done");
    expect(view.groups.map((g) => g.status)).toEqual(["done", "done", "done", "done"]);
    const rows = await expectRunsComplete(view.runs.map((r) => r.id), 2);
    // R2 holds exactly the checkpoints D1 knows: no object of a cut upload, none left behind by a replaced one.
    expect(await r2Objects(), "objects in R2 vs checkpoints in D1").toBe(rows);
  });

  it("the same on Dawn (SAE_SWARM_FAULT in its own client, no proxy): a runner killed at one drawn point, a rescuer finishes its group", async () => {
    // half the steps of part 1 (three rounds of checkpoints), to keep this case short
    const k = pick(drawFaults(DAWN_STEPS));
    console.log(`[faults] Dawn kill point (TEST_SEED=${seed}): ${k.fault} (resume at ${k.resumeAt})`);
    const before = await r2Objects(true);
    const s = await submit(sweepToml([5], DAWN_STEPS));
    const t0 = Date.now();
    const a = startRunner(`dawn-${k.name}`, { fault: k.fault, backend: "dawn" });
    const { code, signal } = await a.exit;
    const log = a.log();
    expect(signal, `the Dawn runner should have been killed by its fault (exit ${code}):\n${log}`).toBe("SIGKILL");
    expect(log, log).toContain(`[fault] SAE_SWARM_FAULT=${k.fault}`);
    const claims = [...log.matchAll(/claimed group (\S+) of sweep/g)].map((m) => m[1]);
    expect(claims, log).toHaveLength(1);
    console.log(`[faults] the Dawn runner died at ${k.fault} ${((Date.now() - t0) / 1000).toFixed(1)} s after it started`);

    await until("the killed runner's lease to expire", async () => (await sweep(s.id)).groups.every((g) => g.leases.every((l) => l.status !== "active")), 4 * LEASE_TTL_MS);
    const b = startRunner("dawn-rescuer", { once: true, backend: "dawn" });
    const bExit = await b.exit;
    const blog = b.log();
    expect(bExit.code, blog).toBe(0);
    expect(blog.match(/: completed/g)?.length, blog).toBe(1);
    expect(blog).not.toMatch(/failed|lease-lost/);
    expectTakenOver(blog, claims[0], k);
    console.log(`[faults] Dawn: killed and finished by a rescuer in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const view = await sweep(s.id);
    expect(view.sweep.status).toBe("done");
    const rows = await expectRunsComplete(view.runs.map((r) => r.id), 2);
    expect((await r2Objects()) - before, "objects in R2 vs checkpoints in D1").toBe(rows);
  });

  it("the Worker restarted twice (SIGTERM, SIGKILL) while a runner trains: the runner rides through, nothing lost or doubled", async () => {
    // Keep the lease through the outages; the checkpoints of part 1 stay in R2 and are counted from here.
    await worker.restart({ vars: { LEASE_TTL_MS: String(RESTART_LEASE_TTL_MS) } });
    const before = await r2Objects();
    const s = await submit(sweepToml([9]));
    const runIds = (await sweep(s.id)).runs.map((r) => r.id);
    const t0 = Date.now();
    const a = startRunner("rides-through", { once: true });
    const atStep = async (step: number) =>
      until(
        `the runner's metrics of step ${step}`,
        async () => {
          if (a.child.exitCode !== null) throw new Error(`the runner exited early:\n${a.log()}`);
          const latest = (await run(runIds[0])).latest;
          return latest && latest.step >= step ? latest.step : null;
        },
        180_000,
        100,
      );

    const outages: string[] = [];
    for (const [step, hard] of [
      [29, false],
      [69, true],
    ] as const) {
      const seen = await atStep(step);
      const t = Date.now();
      let stopped = 0;
      await worker.restart({ hard, beforeStart: () => void (stopped = Date.now()) });
      outages.push(`${hard ? "SIGKILL" : "SIGTERM"} at step ${seen}: stopped in ${((stopped - t) / 1000).toFixed(1)} s, down ${((Date.now() - t) / 1000).toFixed(1)} s`);
      expect((await run(runIds[0])).status, "the runner was still training at the restart").not.toBe("done");
    }
    const { code } = await a.exit;
    const log = a.log();
    expect(code, log).toBe(0);
    console.log(`[faults] the Worker restarted twice (${outages.join("; ")}); the runner finished in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(log.match(/claimed group/g), log).toHaveLength(1);
    expect(log.match(/: completed/g), log).toHaveLength(1);
    expect(log).not.toMatch(/failed —|lease-lost|gave lease/);
    expect(log, "the runner saw the Worker go away and retried").toMatch(/retry \d+ in \d+ ms/);

    const view = await sweep(s.id);
    expect(view.sweep.status).toBe("done");
    const rows = await expectRunsComplete(runIds, 1);
    expect((await r2Objects()) - before, "objects in R2 vs checkpoints in D1").toBe(rows);
  });
});
