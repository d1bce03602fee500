/**
 * A clean stop in every state (issue 16): one signal to a real runner (`sae-swarm runner`: headless Chromium,
 * WebGPU on SwiftShader) against the real Worker under `wrangler dev`, and within 10 s the runner's whole process
 * tree (Chrome included) is gone, with the group given back (released: claimable at once, failures 0).
 *
 * States: idle (backing off), claiming (the claim hangs), loading data (the data host hangs), training, training
 * with its Chrome already dead, uploading (a checkpoint upload hangs); and a runner killed outright (SIGKILL to the
 * runner alone) leaves no Chrome behind.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { descendants } from "../../runner/fault";
import { claimAsRunner, hangingServer, killTree, until } from "../helpers/e2e";
import { ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";

// Long: a lease that is still live proves the group came back by a release, not by expiring.
const LEASE_TTL_MS = 120_000;
const CHECKPOINT_EVERY = 10;

let worker: WorkerDev;
const children: ChildProcess[] = [];
const servers: Server[] = [];

beforeAll(async () => {
  worker = await startWorkerDev({ vars: { LEASE_TTL_MS: String(LEASE_TTL_MS), CHECKPOINT_EVERY: String(CHECKPOINT_EVERY) } });
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) killTree(c.pid!);
  for (const s of servers) s.closeAllConnections(), s.close();
  await worker?.stop();
});

interface Runner {
  child: ChildProcess;
  log(): string;
  exit: Promise<number | null>;
}

/** `sae-swarm runner` as a user starts it, its token in the environment. */
function startRunner(id: string, server = worker.url, env: Record<string, string> = {}): Runner {
  const args = [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--server", server, "--allow-software-adapter", "--runner-id", id];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, SAE_SWARM_RUNNER_TOKEN: worker.runnerToken, ...env },
  });
  children.push(child);
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  return { child, log: () => out, exit: new Promise((r) => child.once("exit", (code) => r(code))) };
}

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8")); // a zombie is gone
  } catch {
    return false;
  }
};
const chromes = (pid: number) => descendants(pid).filter((p) => /chrom/i.test(readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0")[0] ?? ""));

/**
 * Sends `sig` to the runner (not its group: only what the runner does about it counts), then expects its whole tree
 * gone within 10 s. `chromeAlive` false: the test killed Chrome itself, so the tree may already be the runner alone
 * (Chrome's processes reaped) or hold a relaunching Chrome: either way it must all be gone.
 */
async function expectStopsWithin10s(r: Runner, sig: NodeJS.Signals, chromeAlive = true): Promise<number | null> {
  const tree = [r.child.pid!, ...descendants(r.child.pid!)];
  if (chromeAlive) expect(tree.length, "the runner runs Chrome").toBeGreaterThan(2);
  const t0 = Date.now();
  r.child.kill(sig);
  await until("the runner's process tree to be gone", async () => tree.every((p) => !isAlive(p)), 10_000, 100).catch((e) => {
    throw new Error(`${(e as Error).message}: alive ${tree.filter(isAlive).join(", ")}\n${r.log()}`);
  });
  console.log(`[stop] ${sig}: ${tree.length} processes gone in ${Date.now() - t0} ms`);
  return r.exit;
}

async function api<T>(method: string, route: string, body?: string): Promise<T> {
  const res = await fetch(worker.url + route, { method, body, headers: { ...worker.submitAuth, ...(body ? { "content-type": "application/toml" } : {}) } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}
interface SweepView {
  groups: Array<{ id: string; status: string; failures: number; leases: Array<{ id: string; runner_id: string; status: string; progress: { step: number } | null }> }>;
  runs: Array<{ id: string; status: string }>;
}
const sweep = (id: string) => api<SweepView>("GET", `/v1/sweeps/${id}`);
const submit = (toml: string) => api<{ id: string }>("POST", "/v1/sweeps", toml);

/** Long enough not to finish while the test stops it (SwiftShader trains a few hundred steps of this a minute). */
const LONG_SWEEP = (seed: number) => `
data = { kind = "synthetic", d_vit = 16, n_features = 24, sparsity = 0.1, seed = ${seed}, n_examples = 4096 }
n_train = 6_400_000
batch_size = 64
log_every = 10
n_eval = 256
lr = 1e-3
sae = { exp_factor = 2 }
`;

/** The group was given back: waiting, failures 0, no live lease, its runs claimable. */
async function expectGivenBack(sweepId: string, runnerId: string) {
  const v = await sweep(sweepId);
  const g = v.groups[0];
  expect(g).toMatchObject({ status: "waiting", failures: 0 });
  expect(g.leases.filter((l) => l.status === "active")).toEqual([]);
  expect(v.runs.every((r) => r.status === "waiting")).toBe(true);
  // The next claim gets it at once (with the test's own runner token, as a runner would).
  expect((await claimAsRunner(worker.url, worker.runnerToken, `after-${runnerId}`))?.group.id).toBe(g.id);
  // The test's lease keeps holding it (long TTL), so the next test's runner claims its own group.
  return v;
}


/**
 * The Worker behind a loopback proxy that forwards every request but leaves checkpoint uploads (PUT or POST under
 * /v1/leases/:id/checkpoints/ or /uploads) unanswered; `held()` counts the uploads it holds.
 */
async function stallingUploads(): Promise<{ url: string; held: () => number }> {
  let held = 0;
  const s = createServer(async (req, res) => {
    const route = req.url ?? "/";
    if ((req.method === "PUT" || req.method === "POST") && /^\/v1\/leases\/[^/]+\/(checkpoints\/|uploads)/.test(route)) {
      held++;
      return; // never answered
    }
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string" && !["host", "connection", "content-length", "transfer-encoding"].includes(k)) headers[k] = v;
    try {
      const r = await fetch(worker.url + route, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined });
      const out: Record<string, string> = {};
      r.headers.forEach((v, k) => void (["content-encoding", "content-length", "transfer-encoding", "connection"].includes(k) || (out[k] = v)));
      res.writeHead(r.status, out).end(Buffer.from(await r.arrayBuffer()));
    } catch {
      res.destroy();
    }
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, held: () => held };
}

/** Training: a runner holding `sweepId`'s group past step 0 of its lease. */
async function trainingRunner(sweepId: string, id: string, env: Record<string, string> = {}): Promise<Runner> {
  const r = startRunner(id, worker.url, env);
  await until(`${id} to train`, async () => /claimed group/.test(r.log()) && (await sweep(sweepId)).groups[0].leases.some((l) => l.status === "active" && (l.progress?.step ?? 0) > 0), 180_000, 500).catch((e) => {
    throw new Error(`${(e as Error).message}\n${r.log()}`);
  });
  return r;
}

describe("one signal stops a runner in every state within 10 s, its Chrome with it", () => {
  it("idle (backing off): SIGTERM", async () => {
    const r = startRunner("idle");
    await until("the runner to go idle", async () => /no group waiting/.test(r.log()), 120_000, 100);
    expect(await expectStopsWithin10s(r, "SIGTERM")).toBe(130);
  });

  it("claiming (the claim hangs): SIGTERM", async () => {
    const r = startRunner("claiming", await hangingServer(servers));
    await until("the adapter check", async () => /WebGPU adapter/.test(r.log()), 120_000, 100);
    await new Promise((res) => setTimeout(res, 1000)); // the claim is in flight, unanswered
    expect(await expectStopsWithin10s(r, "SIGTERM")).toBe(130);
  });

  it("training: SIGTERM checkpoints and releases; the group is claimable at once with failures 0", async () => {
    const s = await submit(LONG_SWEEP(1));
    const r = await trainingRunner(s.id, "training");
    expect(await expectStopsWithin10s(r, "SIGTERM")).toBe(130);
    expect(r.log()).toMatch(/group \S+: abandoned/);
    const v = await expectGivenBack(s.id, "training");
    const run = await api<{ run: { checkpoints: Array<{ kind: string; step: number }> } }>("GET", `/v1/runs/${v.runs[0].id}`);
    expect(run.run.checkpoints.some((k) => k.kind === "resume" && k.step > 0)).toBe(true);
  });

  it("training, its Chrome already dead: SIGTERM; the runner gives the lease back itself", async () => {
    const s = await submit(LONG_SWEEP(2));
    const r = await trainingRunner(s.id, "chrome-dead");
    const cs = chromes(r.child.pid!);
    expect(cs.length).toBeGreaterThan(0);
    for (const p of cs) process.kill(p, "SIGKILL");
    expect(await expectStopsWithin10s(r, "SIGTERM", false)).toBe(130);
    await expectGivenBack(s.id, "chrome-dead");
  });

  it("loading data (the data host hangs): SIGTERM; the stop is bounded, the lease released", async () => {
    const host = await hangingServer(servers);
    const s = await submit(`
data = { kind = "shards", url = "${host}/acts/", layer = 0 }
n_train = 6400
batch_size = 64
log_every = 10
lr = 1e-3
sae = { exp_factor = 2 }
`);
    const r = startRunner("loading", worker.url, { SAE_SWARM_STOP_GRACE_MS: "4000", SAE_SWARM_ALLOW_DATA_HOSTS: "127.0.0.1" });
    await until("the runner to load data", async () => /claimed group/.test(r.log()), 120_000, 100);
    await new Promise((res) => setTimeout(res, 1000));
    expect(await expectStopsWithin10s(r, "SIGTERM")).toBe(130);
    await expectGivenBack(s.id, "loading");
  });

  it("uploading (the checkpoint upload hangs): SIGTERM; the stop is bounded, the lease released", async () => {
    const s = await submit(LONG_SWEEP(3));
    const stall = await stallingUploads();
    const r = startRunner("uploading", stall.url, { SAE_SWARM_STOP_GRACE_MS: "4000" });
    // The first resume checkpoint (step CHECKPOINT_EVERY) goes up and never comes back.
    await until("a checkpoint upload to hang", async () => stall.held() > 0, 180_000, 100).catch((e) => {
      throw new Error(`${(e as Error).message}\n${r.log()}`);
    });
    await new Promise((res) => setTimeout(res, 1000));
    expect(r.log()).toMatch(/claimed group/);
    expect(await expectStopsWithin10s(r, "SIGTERM")).toBe(130);
    await expectGivenBack(s.id, "uploading");
  });

  it("a runner killed outright (SIGKILL to it alone) leaves no Chrome behind", async () => {
    const r = startRunner("killed", await hangingServer(servers));
    await until("the adapter check", async () => /WebGPU adapter/.test(r.log()), 120_000, 100);
    const cs = chromes(r.child.pid!);
    expect(cs.length).toBeGreaterThan(0);
    r.child.kill("SIGKILL");
    await until("Chrome to end with the runner", async () => cs.every((p) => !isAlive(p)), 10_000, 100).catch((e) => {
      throw new Error(`${(e as Error).message}: ${cs.filter(isAlive).length} Chrome processes alive`);
    });
  });

  it("no token on any command line the runner starts", async () => {
    const r = startRunner("ps", await hangingServer(servers));
    await until("the adapter check", async () => /WebGPU adapter/.test(r.log()), 120_000, 100);
    for (const p of [r.child.pid!, ...descendants(r.child.pid!)]) {
      let cmd = "";
      try {
        cmd = readFileSync(`/proc/${p}/cmdline`, "utf8");
      } catch {
        continue;
      }
      expect(cmd).not.toContain(worker.runnerToken);
      expect(cmd).not.toMatch(/--remote-debugging-port/);
    }
    await expectStopsWithin10s(r, "SIGINT");
  });
});
