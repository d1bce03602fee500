/**
 * `npm run bench:e2e`: end-to-end throughput through the real system: the Worker under `wrangler dev` (local D1,
 * R2, Queue) and one runner as a user starts it (`sae-swarm runner --once`: headless Chrome, WebGPU, the WGSL
 * engine). Three workloads, each submitted and then trained by its own runner session:
 *
 * 1. the demo: examples/demo.toml (24 runs in 2 groups of 12, synthetic data), its n_train and n_eval scaled by
 *    BENCH_DEMO_SCALE (default 1/8 so it stays short on a software adapter; 1 is the demo as `npm start` runs it;
 *    BENCH_DEMO=0 skips it);
 * 2. grouped: K configs (BENCH_E2E_K, default 4; d_vit 32, expansion 4, batch 1024, BENCH_E2E_STEPS steps, default
 *    16) that differ only in sparsity_coeff, so one group trains them in lock-step on one data stream;
 * 3. sequential: the same K configs (same seeds, same coefficients) as K sweeps of one run each, hence K groups
 *    trained one after another, each opening the data, computing its normalization and b_dec, and evaluating.
 * The data of 2 and 3 are activation shards in saev's layout (256 images of 16 patches + CLS, 4 shards), written with the project's shard writer and served
 * over HTTP on 127.0.0.1 (the runner reads them with Range requests through its /data proxy, as any shard URL).
 *
 * SAE-samples/s = Σ over runs of the vectors trained (n_steps · batch_size) / wall time from the first claim to the
 * last completion, both as the Worker stored them (leases.created_at, leases.ended_at in D1). The phase split
 * (open data, init, steps, eval, checkpoints + complete, gaps between groups) comes from the runner's output,
 * stamped here as it arrives (the whole output goes to out/bench-e2e-runner.log); "steps' SAE-samples/s" is the
 * training rate between the first and the last logged step of each group, from the metrics' stored times (steady
 * training, no fixed costs). Not a test: nothing asserts a speed. Printed last: one table, ratios from this one run.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parse as parseToml } from "smol-toml";
import { killTree } from "../helpers/e2e";
import { OFFLINE_ENV, ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";
import { serveDirWithRanges, servedStats, type RangeServer } from "../runner/range-server";
import { configsDiffer, groupedAndSequential } from "./e2e-specs";
import { writeBenchShards, type BenchShards } from "./shards";

const env = (k: string, d: number) => (process.env[k] ? Number(process.env[k]) : d);
const DEMO_SCALE = env("BENCH_DEMO_SCALE", 1 / 8);
const K = env("BENCH_E2E_K", 4);
const STEPS = env("BENCH_E2E_STEPS", 16);
const B = 1024;
const D_VIT = 32;
const EXP = 4;
const TIMEOUT_S = env("BENCH_E2E_TIMEOUT_S", 900);
const log = (m: string) => console.log(`[bench:e2e] ${m}`);
/** The runners' whole output, each line stamped with seconds since its session started. */
const RUNNER_LOG = path.join(ROOT, "out/bench-e2e-runner.log");

interface Submitted {
  id: string;
  n_runs: number;
  n_groups: number;
}

interface SweepView {
  sweep: { id: string; status: string };
  groups: Array<{ id: string; status: string; n_runs: number }>;
  runs: Array<{ id: string; status: string; group_id: string; n_steps: number; cfg: { sae_batch_size: number; [k: string]: unknown } }>;
}

let worker: WorkerDev | null = null;
let shards: BenchShards | null = null;
let server: RangeServer | null = null;
let runner: ChildProcess | null = null;
let persistTo: string | null = null;

async function api<T>(method: string, route: string, body?: unknown): Promise<T> {
  const send = () =>
    fetch(worker!.url + route, {
      method,
      headers: { ...worker!.submitAuth, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
  // A GET is retried once when the connection drops (a kept-alive socket closed under a loaded machine).
  const res = await send().catch((e) => (method === "GET" ? new Promise((r) => setTimeout(r, 500)).then(send) : Promise.reject(e)));
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

function killRunner(): void {
  if (!runner || runner.exitCode !== null || runner.signalCode !== null) return;
  killTree(runner.pid!);
}

async function cleanup(): Promise<void> {
  killRunner();
  await worker?.stop().catch(() => {});
  await server?.close().catch(() => {});
  shards?.remove();
  if (persistTo) rmSync(persistTo, { recursive: true, force: true });
}
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => void cleanup().then(() => process.exit(130)));

/** Rows of a SELECT on the Worker's local D1 (the same SQLite files wrangler dev serves). */
function d1(sql: string): Array<Record<string, unknown>> {
  const r = spawnSync(path.join(ROOT, "node_modules/.bin/wrangler"), ["d1", "execute", "DB", "--local", "--persist-to", persistTo!, "--json", "--command", sql], {
    cwd: ROOT,
    encoding: "utf8",
    env: { ...process.env, ...OFFLINE_ENV, CI: "1" },
  });
  if (r.status !== 0) throw new Error(`wrangler d1 execute failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
  const out = JSON.parse(r.stdout) as Array<{ results: Array<Record<string, unknown>> }>;
  return out[0].results;
}

interface GroupTimes {
  claimed?: number;
  phases: Record<string, number>;
  done?: number;
  outcome?: string;
}

/** Runs `sae-swarm runner --once` to its end; stamps claims, phases and completions per group as lines arrive. */
async function runRunner(w: WorkerDev, name: string, times: Map<string, GroupTimes>): Promise<string> {
  const at = (id: string) => times.get(id) ?? (times.set(id, { phases: {} }), times.get(id)!);
  let output = "";
  const started = Date.now();
  runner = spawn(process.execPath, [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--server", w.url, "--token", w.runnerToken, "--allow-software-adapter", "--once", "--runner-id", "bench-e2e", "--allow-data-host", "127.0.0.1"], {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let partial = "";
  runner.stdout!.on("data", (chunk: Buffer) => {
    const now = Date.now();
    output += chunk;
    appendFileSync(RUNNER_LOG, String(chunk).replace(/^(?=.)/gm, `${((now - started) / 1000).toFixed(3).padStart(8)} `));
    const lines = (partial + chunk).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      let m: RegExpExecArray | null;
      if ((m = /^\[runner\] claimed group (\S+) of sweep/.exec(line))) at(m[1]).claimed = now;
      else if ((m = /^\[runner\] group (\S+): (completed|failed|lease-lost|abandoned)/.exec(line))) Object.assign(at(m[1]), { done: now, outcome: m[2] });
      else if ((m = /^group (\S+): (\w+)$/.exec(line))) at(m[1]).phases[m[2]] = now;
      if (/^\[runner\] (claimed|group \S+: )/.test(line)) log(`${name}: +${((now - started) / 1000).toFixed(1)} s ${line.slice(9)}`);
      else if (/\[runner\] WebGPU adapter/.test(line)) log(line);
    }
  });
  runner.stderr!.on("data", (c: Buffer) => (output += c));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      log(`the runner did not finish within ${TIMEOUT_S} s; killing it`);
      killRunner();
    }, TIMEOUT_S * 1000);
    runner!.once("exit", (c) => (clearTimeout(timer), resolve(c)));
  });
  if (code !== 0) throw new Error(`the runner exited with ${code}:\n${output.slice(-4000)}`);
  appendFileSync(RUNNER_LOG, `(${name}: runner exited ${code})\n`);
  log(`${name}: runner done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return output;
}

async function main(): Promise<void> {
  const t0 = Date.now();
  mkdirSync(path.dirname(RUNNER_LOG), { recursive: true });
  writeFileSync(RUNNER_LOG, "");
  shards = await writeBenchShards({ d_vit: D_VIT, n_imgs: 256, imgsPerShard: 64 });
  server = await serveDirWithRanges(shards.dir);
  log(`shards: ${shards.written.shards.length} files, ${(shards.written.bytes / 2 ** 20).toFixed(1)} MiB (${shards.written.metadata.n_imgs} images × 16 patches + CLS, d_vit ${D_VIT}) at ${server.url}`);
  // Our own persistence directory, so that D1 can be read after wrangler dev has stopped (no second writer).
  persistTo = mkdtempSync(path.join(tmpdir(), "sae-swarm-bench-worker-"));
  worker = await startWorkerDev({ persistTo });
  log(`wrangler dev up at ${worker.url} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);

  // 1. The demo, scaled.
  const demo = parseToml(readFileSync(path.join(ROOT, "examples/demo.toml"), "utf8")) as Record<string, any>;
  const round = (n: number) => Math.max(demo.batch_size, Math.round((n * DEMO_SCALE) / demo.batch_size) * demo.batch_size);
  demo.n_train = round(demo.n_train);
  demo.n_eval = round(demo.n_eval);
  // 2 and 3: K configs on the shards, the same seeds and coefficients either way.
  const specs = groupedAndSequential({ url: server.url, k: K, steps: STEPS, batch: B, dVit: D_VIT, exp: EXP, seed: 100 });
  const all: Array<{ key: string; name: string; specs: unknown[]; sweeps: Submitted[] }> = [
    { key: "demo", name: `demo${DEMO_SCALE === 1 ? "" : ` (n_train ${demo.n_train}, n_eval ${demo.n_eval})`}`, specs: [demo], sweeps: [] },
    { key: "grouped", name: `grouped: 1 group of ${K}`, specs: specs.grouped, sweeps: [] },
    { key: "sequential", name: `sequential: ${K} groups of 1`, specs: specs.sequential, sweeps: [] },
  ];
  const sets = all.filter((w) => w.key !== "demo" || process.env.BENCH_DEMO !== "0");
  const grouped = all[1], sequential = all[2];

  // Each workload is submitted, then trained by its own runner, as a user starts it (--once: it exits when nothing
  // is left to claim). One runner session per workload keeps them apart, and each session well under Puppeteer's
  // protocol timeout (600 s), which a runner page cannot outlive (see BENCHMARKS.md).
  const times = new Map<string, GroupTimes>();
  let output = "";
  const fetched = new Map<string, { requests: number; bytes: number }>();
  for (const set of sets) {
    for (const spec of set.specs) set.sweeps.push(await api<Submitted>("POST", "/v1/sweeps", spec));
    log(`submitted ${set.name}: ${set.sweeps.map((w) => `${w.id} (${w.n_runs} runs, ${w.n_groups} groups)`).join(", ")}`);
    const before = server.log.length;
    output += await runRunner(worker, set.name, times);
    fetched.set(set.key, servedStats(server.log.slice(before)));
  }

  // The grouped and the sequential configs must be the same configs, in one group and in K groups.
  const cfgsOf = async (ids: string[]) => (await Promise.all(ids.map((id) => api<SweepView>("GET", `/v1/sweeps/${id}`)))).flatMap((v) => v.runs.map((r) => r.cfg));
  const [g, s] = await Promise.all([cfgsOf(grouped.sweeps.map((w) => w.id)), cfgsOf(sequential.sweeps.map((w) => w.id))]);
  const differ = configsDiffer(g, s, K);
  if (differ) throw new Error(`the grouped and sequential sweeps do not resolve to the same configs: ${differ}`);
  if (grouped.sweeps[0].n_groups !== 1 || sequential.sweeps.some((w) => w.n_groups !== 1)) throw new Error("unexpected grouping");

  const views = new Map<string, SweepView[]>();
  for (const set of sets) views.set(set.key, await Promise.all(set.sweeps.map((w) => api<SweepView>("GET", `/v1/sweeps/${w.id}`))));
  await worker.stop();
  // Stored times: one lease per group (one runner, no failures), claim = created_at, completion = ended_at.
  const leases = d1("SELECT l.group_id, g.sweep_id, l.status, l.created_at, l.ended_at FROM leases l JOIN groups g ON g.id = l.group_id ORDER BY l.created_at");
  // The server's time of each logged step's metrics (posted as soon as the step's statistics are read back).
  const logged = d1("SELECT r.group_id, m.step, max(m.ts) AS ts FROM metrics m JOIN runs r ON r.id = m.run_id GROUP BY r.group_id, m.step ORDER BY r.group_id, m.step");
  const header = ["workload", "groups", "runs", "SAE-samples", "wall s", "SAE-samples/s", "open data s", "init s", "steps s", "eval s", "ckpt+done s", "between s", "steps' SAE-samples/s", "shard GETs"];
  const rows: string[][] = [header];
  const result: Record<string, { wall: number; rate: number; steady: number }> = {};
  for (const set of sets) {
    const ids = new Set(set.sweeps.map((w) => w.id));
    const mine = leases.filter((l) => ids.has(String(l.sweep_id)));
    if (mine.some((l) => l.status !== "completed")) throw new Error(`${set.name}: a lease ended ${mine.map((l) => l.status).join(", ")}`);
    const runs = views.get(set.key)!.flatMap((v) => v.runs);
    if (runs.some((r) => r.status !== "done")) throw new Error(`${set.name}: not every run is done`);
    const samples = runs.reduce((n, r) => n + r.n_steps * r.cfg.sae_batch_size, 0);
    const wall = (Math.max(...mine.map((l) => Number(l.ended_at))) - Math.min(...mine.map((l) => Number(l.created_at)))) / 1000;
    // Phases from the runner's output: claim → "data" (open the source: metadata, the normalization passes) →
    // "init" (engine and pipelines, the b_dec mean, then every step) → "eval" → "checkpoint" (final checkpoints)
    // → completed. The steps' rate comes from the stored metrics: between the first and the last logged step of a
    // group; "steps s" is n_steps at that rate and "init s" the rest of "init" → "eval".
    const groupIds = views.get(set.key)!.flatMap((v) => v.groups.map((gr) => gr.id));
    let open = 0, init = 0, steps = 0, evalS = 0, ckpt = 0, between = 0, steadySamples = 0, steadyS = 0;
    let prevDone: number | null = null;
    for (const gid of groupIds) {
      const t = times.get(gid);
      const p = t?.phases ?? {};
      if (!t?.claimed || !t.done || !p.init || !p.eval || !p.checkpoint) throw new Error(`${set.name}: no complete phase record for group ${gid}`);
      const members = runs.filter((r) => r.group_id === gid);
      const batch = members[0].cfg.sae_batch_size;
      const marks = logged.filter((m) => m.group_id === gid).map((m) => ({ step: Number(m.step), ts: Number(m.ts) }));
      const first = marks[0], last = marks[marks.length - 1];
      let stepS = NaN;
      if (first && last && last.step > first.step) {
        stepS = (last.ts - first.ts) / 1000 / (last.step - first.step);
        steadySamples += (last.step - first.step) * batch * members.length;
        steadyS += (last.ts - first.ts) / 1000;
      }
      const trainS = (p.eval - p.init) / 1000;
      open += (p.init - t.claimed) / 1000;
      steps += members[0].n_steps * stepS;
      init += trainS - members[0].n_steps * stepS;
      evalS += (p.checkpoint - p.eval) / 1000;
      ckpt += (t.done - p.checkpoint) / 1000;
      if (prevDone !== null) between += (t.claimed - prevDone) / 1000;
      prevDone = t.done;
    }
    const rate = samples / wall;
    const steady = steadyS > 0 ? steadySamples / steadyS : NaN;
    result[set.name] = { wall, rate, steady };
    const f = fetched.get(set.key)!;
    rows.push([set.name, String(groupIds.length), String(runs.length), String(samples), wall.toFixed(1), rate.toFixed(0), open.toFixed(1), init.toFixed(1), steps.toFixed(1), evalS.toFixed(1), ckpt.toFixed(1), between.toFixed(1), steady.toFixed(0), f.requests ? `${f.requests} (${(f.bytes / 2 ** 20).toFixed(1)} MiB)` : "-"]);
  }

  const adapter = /\[runner\] WebGPU adapter: (.*)/.exec(output)?.[1] ?? "?";
  console.log(`\nend to end: wrangler dev + 1 runner (Chrome), adapter ${adapter}`);
  console.log(`grouped/sequential: ${K} ReLU SAEs, d_vit ${D_VIT}, d_sae ${D_VIT * EXP}, batch ${B}, ${STEPS} steps, n_eval 4096, saev's defaults otherwise; HTTP shards on 127.0.0.1`);
  const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log(r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "));
  const gr = result[grouped.name], sq = result[sequential.name];
  console.log(
    `grouped vs sequential: wall ${sq.wall.toFixed(1)} s / ${gr.wall.toFixed(1)} s = ${(sq.wall / gr.wall).toFixed(2)}× (SAE-samples/s ${gr.rate.toFixed(0)} vs ${sq.rate.toFixed(0)}); ` +
      `training steps alone ${(gr.steady / sq.steady).toFixed(2)}× (${gr.steady.toFixed(0)} vs ${sq.steady.toFixed(0)} SAE-samples/s)`,
  );
}

try {
  await main();
} finally {
  await cleanup();
}
