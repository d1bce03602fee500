/**
 * Artifacts several times the body limit, end to end: the real Worker under `wrangler dev` with MAX_BODY_BYTES at
 * 1 MiB, and real runners (`sae-swarm runner`, headless Chromium). One group of two SAEs (d_vit 64, d_sae 4096):
 * each resume checkpoint is ~6 MiB (7 parts), each final one ~2 MiB (3 parts). The first runner is killed in the
 * middle of an upload in parts (SAE_SWARM_FAULT=part-cut, runner/fault.ts: half a part sent, then SIGKILL); once its
 * lease expires a second runner resumes the group from its resume checkpoints, uploads the finals again and
 * completes. Then: the sweep is done, every R2 object has its D1 row (no part left behind), and every download is
 * the checkpoint the runner exported (the size D1 recorded, and a strict decode: names, shapes, metadata, values).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { decodeCheckpoint } from "../../runner/safetensors";
import { killTree, until } from "../helpers/e2e";
import { ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";

const MiB = 1 << 20;
// Long enough that a loaded machine heartbeats through the uploads of a checkpoint round (12 s was not, here).
const LEASE_TTL_MS = 30_000;
const N_STEPS = 20;
const CHECKPOINT_EVERY = 10;
const SWEEP = `
data = { kind = "synthetic", d_vit = 64, n_features = 32, sparsity = 0.1, seed = 3, n_examples = 2048 }
n_train = ${N_STEPS * 32}
batch_size = 32
log_every = 5
n_eval = 64
seed = 7
lr = [1e-3, 2e-3]
sae = { exp_factor = 64 }
`;
// Uploads in parts, in order: run 0's resume (parts 1–7), run 1's resume (8–14), run 0's final (15–17), run 1's
// final (18–20). Cut the second part of run 0's final: both resume checkpoints are stored, one final upload is
// half done (part 15 stored, 16 cut).
const CUT_PART = 16;

let worker: WorkerDev;
const children: ChildProcess[] = [];

beforeAll(async () => {
  worker = await startWorkerDev({ vars: { MAX_BODY_BYTES: String(MiB), LEASE_TTL_MS: String(LEASE_TTL_MS), CHECKPOINT_EVERY: String(CHECKPOINT_EVERY) } });
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) killTree(c.pid!);
  await worker?.stop();
});

async function api<T>(method: string, route: string, body?: string): Promise<T> {
  const res = await fetch(worker.url + route, { method, body, headers: { ...worker.submitAuth, ...(body ? { "content-type": "application/toml" } : {}) } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

function startRunner(name: string, fault?: string) {
  const args = [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--server", worker.url, "--token", worker.runnerToken, "--allow-software-adapter", "--runner-id", name, "--once"];
  const env = { ...process.env };
  delete env.SAE_SWARM_FAULT;
  if (fault) env.SAE_SWARM_FAULT = fault;
  const child = spawn(process.execPath, args, { cwd: ROOT, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.once("exit", (code, signal) => res({ code, signal })));
  return { log: () => out, exit };
}

/** Objects in the local R2 bucket (one blob file each under Miniflare's persistence dir), once the count settles. */
async function r2Objects(): Promise<number> {
  const dir = path.join(worker.persistTo, "v3/r2/sae-swarm-checkpoints/blobs");
  if (!existsSync(dir)) throw new Error(`no R2 blob directory at ${dir}: Miniflare's layout changed`);
  let last = -1;
  for (let i = 0; i < 20; i++) {
    const n = readdirSync(dir).length;
    if (n === last) return n;
    last = n;
    await new Promise((r) => setTimeout(r, 250));
  }
  return last;
}

it("checkpoints several times a 1 MiB body limit: a runner killed mid-upload, the next resumes, everything stored once and downloads intact", async () => {
  const s = await api<{ id: string; n_runs: number; n_groups: number }>("POST", "/v1/sweeps", SWEEP);
  expect([s.n_groups, s.n_runs]).toEqual([1, 2]);

  const a = startRunner("cut", `part-cut:${CUT_PART}`);
  const aExit = await a.exit;
  console.log(`[storage] the killed runner's log:\n${a.log()}`);
  expect(aExit.signal, `the runner should have died at its fault:\n${a.log()}`).toBe("SIGKILL");
  expect(a.log()).toContain(`[fault] SAE_SWARM_FAULT=part-cut:${CUT_PART}`);

  await until("the dead runner's lease to expire", async () => (await api<{ groups: Array<{ leases: Array<{ status: string }> }> }>("GET", `/v1/sweeps/${s.id}`)).groups.every((g) => g.leases.every((l) => l.status !== "active")), 4 * LEASE_TTL_MS);
  const b = startRunner("rescuer");
  const bExit = await b.exit;
  const blog = b.log();
  expect(bExit.code, blog).toBe(0);
  expect(blog).toMatch(new RegExp(`claimed group \\S+ of sweep ${s.id}: 2 SAEs, ${N_STEPS} steps, resuming at step ${CHECKPOINT_EVERY} \\(attempt 2\\)`));
  expect(blog.match(/: completed/g)?.length, blog).toBe(1);

  const view = await api<{ sweep: { status: string }; runs: Array<{ id: string }> }>("GET", `/v1/sweeps/${s.id}`);
  expect(view.sweep.status).toBe("done");
  let rows = 0;
  for (const { id } of view.runs) {
    const { run } = await api<{ run: { status: string; checkpoints: Array<{ kind: string; step: number; bytes: number }> } }>("GET", `/v1/runs/${id}`);
    expect(run.status).toBe("done");
    expect(run.checkpoints.map((k) => [k.kind, k.step])).toEqual([["final", N_STEPS], ["resume", CHECKPOINT_EVERY]]);
    rows += run.checkpoints.length;
    for (const k of run.checkpoints) {
      expect(k.bytes, `${id} ${k.kind}: several times the body limit`).toBeGreaterThan((k.kind === "final" ? 2 : 6) * MiB);
      const res = await fetch(`${worker.url}/v1/runs/${id}/checkpoint?kind=${k.kind}`, { headers: worker.submitAuth });
      expect(res.status).toBe(200);
      const bytes = new Uint8Array(await res.arrayBuffer());
      expect(bytes.byteLength).toBe(k.bytes);
      const ck = decodeCheckpoint(bytes);
      expect([ck.kind, ck.run_id, ck.step]).toEqual([k.kind, id, k.step]);
      expect(ck.weights.W_enc.length).toBe(64 * 4096);
      expect(ck.weights.W_dec.every(Number.isFinite), `${id} ${k.kind}: finite weights`).toBe(true);
      if (k.kind === "resume") expect(ck.adam!.v.W_enc.some((v) => v > 0), `${id}: Adam moments`).toBe(true);
    }
    const ev = await api<{ freqs: number[] }>("GET", `/v1/runs/${id}/eval`);
    expect(ev.freqs).toHaveLength(4096);
  }
  // R2 holds exactly the checkpoints D1 knows: no part of the cut upload, none of the completed ones.
  expect(await r2Objects(), "objects in R2 vs checkpoints in D1").toBe(rows);
});
