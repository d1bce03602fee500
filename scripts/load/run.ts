/**
 * The load test, as a function (scripts/load.ts is its command line; test/e2e/load.e2e.test.ts runs a short one):
 * starts its own `wrangler dev` (local D1, R2, Queue; a temp persistence dir; loopback only), keeps a backlog of
 * small groups submitted, runs the simulated runners of swarm.ts for the given time, reads back what was stored
 * (the submitter API while the Worker runs, then D1 itself with `wrangler d1 execute --local --persist-to`), checks
 * the invariants (checks.ts) and reports throughput and latency per route.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import path from "node:path";
import { decodeSafetensors } from "../../runner/safetensors";
import type { ClaimResponse, SubmitResponse } from "../../worker/protocol";
import { runConfigValueSql } from "../../worker/run-config";
import { OFFLINE_ENV, ROOT, startWorkerDev } from "../../test/helpers/worker-dev";
import { checkInvariants, type Db } from "./checks";
import { loggingFetch, runSwarm, type Call, type SwarmOptions, type SwarmStats } from "./swarm";

/** The swarm's own knobs (runners, step time, seed, misbehaviour odds, forced first behaviours), and the test's. */
type SwarmKnobs = "runners" | "stepMs" | "seed" | "pVanish" | "pZombie" | "pAbandon" | "pDouble" | "pLate" | "force";

export interface LoadOptions extends Pick<SwarmOptions, SwarmKnobs> {
  /** How long the runners work (then they stop where they are; the read-back and checks follow). */
  seconds: number;
  /** The Worker's LEASE_TTL_MS: short, so that leases of vanished runners expire and are taken over. */
  leaseTtlMs: number;
  /** Steps per run. */
  steps: number;
  logEvery: number;
  checkpointEvery: number;
  /** Groups per submitted sweep. */
  groupsPerSweep: number;
  /** track = true: every metric post also goes through the W&B outbox and queue (no W&B key: dropped there). */
  track: boolean;
  /** Runs per group: 1, 2 (two learning rates) or 4 (× two sparsity coefficients). */
  runsPerGroup: 1 | 2 | 4;
  /** Keep the persistence dir (D1, R2) for inspection. */
  keep: boolean;
  log: (msg: string) => void;
}

export const DEFAULT_LOAD: LoadOptions = {
  runners: 50,
  seconds: 60,
  leaseTtlMs: 10_000,
  stepMs: 40,
  steps: 48,
  logEvery: 4,
  checkpointEvery: 24,
  groupsPerSweep: 200,
  seed: 1,
  track: false,
  pVanish: 0.06,
  pZombie: 0.04,
  pAbandon: 0.04,
  pDouble: 0.1,
  pLate: 0.25,
  force: ["vanish", "zombie", "abandon", "vanish"],
  runsPerGroup: 4,
  keep: false,
  log: (m) => console.log(`[load] ${m}`),
};

export interface RouteStats {
  route: string;
  calls: number;
  by: Record<string, number>;
  p50: number;
  p99: number;
  max: number;
}

export interface LoadResult {
  options: Omit<LoadOptions, "log">;
  /** Seconds from the first claim to the last runner done (the load window plus the drain). */
  elapsedS: number;
  figures: {
    claims_per_s: number;
    metric_rows_per_s: number;
    metric_rows_stored_per_s: number;
    heartbeats_per_s: number;
    requests_per_s: number;
  };
  routes: RouteStats[];
  facts: Record<string, number>;
  groups: SwarmStats["groups"];
  sweeps: number;
  violations: string[];
  /** The report as text (tables and figures). */
  text: string;
  /** What wrangler dev printed (its errors explain a 5xx). */
  workerOutput: string;
}

const quantile = (sorted: number[], q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);

export function routeTable(log: Call[]): RouteStats[] {
  const by = new Map<string, Call[]>();
  for (const c of log) by.set(c.route, [...(by.get(c.route) ?? []), c]);
  return [...by]
    .map(([route, calls]) => {
      const ms = calls.map((c) => c.t1 - c.t0).sort((a, b) => a - b);
      const counts: Record<string, number> = {};
      for (const c of calls) {
        const k = c.status === 0 ? "err" : c.status >= 200 && c.status < 300 && c.status !== 204 ? "2xx" : String(c.status);
        counts[k] = (counts[k] ?? 0) + 1;
      }
      return { route, calls: calls.length, by: counts, p50: quantile(ms, 0.5), p99: quantile(ms, 0.99), max: ms[ms.length - 1] ?? 0 };
    })
    .sort((a, b) => b.calls - a.calls);
}

function formatTable(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ")).join("\n");
}

/** Reads the local D1 under `persistTo` (the Worker stopped). */
function readD1(persistTo: string): Db {
  const queries = [
    "SELECT id, group_id, run_ids, status, created_at, expires_at, ended_at FROM leases",
    "SELECT run_id, step, lease_id, ts, loss FROM metrics",
    "SELECT run_id, lease_id, ts, l0 FROM evals",
    "SELECT run_id, kind, step, bytes, lease_id FROM checkpoints",
    // a run's cfg holds only what differs from its sweep's shared keys (worker/run-config.ts)
    `SELECT r.id, r.group_id, r.status, r.n_steps, ${runConfigValueSql("$.log_every")} AS log_every FROM runs r`,
  ];
  const r = spawnSync(path.join(ROOT, "node_modules/.bin/wrangler"), ["d1", "execute", "DB", "--local", "--persist-to", persistTo, "--json", "--command", queries.join("; ")], {
    cwd: ROOT,
    encoding: "utf8",
    maxBuffer: 1 << 30,
    env: { ...process.env, ...OFFLINE_ENV, CI: "1", WRANGLER_LOG: "log" },
  });
  if (r.status !== 0) throw new Error(`wrangler d1 execute failed (exit ${r.status}):\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
  const out = JSON.parse(r.stdout) as Array<{ results: any[] }>;
  const [leases, metrics, evals, checkpoints, runs] = out.map((o) => o.results);
  return { leases, metrics, evals, checkpoints, runs };
}

async function pool<T>(items: T[], n: number, f: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await f(items[next++]);
  }));
}

export async function runLoad(opts: Partial<LoadOptions> = {}): Promise<LoadResult> {
  const o: LoadOptions = { ...DEFAULT_LOAD, ...opts };
  const load0 = loadavg()[0];
  const persistTo = mkdtempSync(path.join(tmpdir(), "sae-swarm-load-"));
  o.log(`starting wrangler dev (persist ${persistTo}; LEASE_TTL_MS ${o.leaseTtlMs})`);
  const worker = await startWorkerDev({
    persistTo,
    vars: { LEASE_TTL_MS: String(o.leaseTtlMs), CHECKPOINT_EVERY: String(o.checkpointEvery), MAX_ATTEMPTS: "1000000" },
  });
  const log: Call[] = [];
  const adminLog: Call[] = [];
  const admin = loggingFetch(adminLog, "submitter");
  const errors: string[] = [];
  let stats: SwarmStats;
  let t0 = 0;
  let t1 = 0;
  let sweeps = 0;
  let deadline = Infinity;
  let workerOutput = "";
  const api = new Map<string, Array<{ step: number; loss: number }>>();
  try {
    // ---- the backlog: sweeps of many small groups, topped up while runners claim
    let submitted = 0;
    const claimed = new Set<string>();
    let submitting: Promise<void> | null = null;
    const submit = async () => {
      const k = sweeps++;
      const spec = {
        data: Array.from({ length: o.groupsPerSweep }, (_, g) => ({ kind: "synthetic", d_vit: 8, n_features: 16, sparsity: 0.1, seed: o.seed * 1_000_000 + k * 10_000 + g, n_examples: 256 })),
        n_train: o.steps * 16,
        batch_size: 16,
        log_every: o.logEvery,
        n_eval: 64,
        lr: o.runsPerGroup >= 2 ? [1e-3, 2e-3] : 1e-3,
        sae: { exp_factor: 2 },
        objective: { sparsity_coeff: o.runsPerGroup === 4 ? [4e-4, 8e-4] : 4e-4 },
        track: o.track,
        wandb_project: "sae-swarm-load",
      };
      const res = await admin.fetch(`${worker.url}/v1/sweeps`, { method: "POST", headers: { ...worker.submitAuth, "content-type": "application/json" }, body: JSON.stringify(spec) });
      if (res.status !== 201) throw new Error(`POST /v1/sweeps: ${res.status} ${await res.text()}`);
      const body = (await res.json()) as SubmitResponse;
      submitted += body.n_groups;
    };
    const topUp = () => {
      if (submitting || Date.now() > deadline - 1000 || submitted - claimed.size >= 2 * o.runners) return;
      submitting = submit()
        .catch((e) => void errors.push(`submit: ${(e as Error).message}`))
        .finally(() => (submitting = null));
    };
    while (submitted < 3 * o.runners) await submit();
    o.log(`submitted ${submitted} groups in ${sweeps} sweeps; ${o.runners} runners for ${o.seconds} s`);

    t0 = Date.now();
    deadline = t0 + o.seconds * 1000;
    const progress = setInterval(() => {
      const n = log.filter((c) => c.route === "POST /v1/claims" && c.status === 200).length;
      o.log(`${((Date.now() - t0) / 1000).toFixed(0)} s: ${log.length} requests, ${n} claims, ${claimed.size} groups touched`);
    }, 10_000);
    stats = await runSwarm(
      {
        server: worker.url,
        runnerToken: worker.runnerToken,
        runners: o.runners,
        deadline,
        stepMs: o.stepMs,
        seed: o.seed,
        pVanish: o.pVanish,
        pZombie: o.pZombie,
        pAbandon: o.pAbandon,
        pDouble: o.pDouble,
        pLate: o.pLate,
        force: o.force,
        onIdle: topUp,
        onClaim: (c: ClaimResponse) => {
          claimed.add(c.group.id);
          topUp();
        },
      },
      log,
    ).finally(() => clearInterval(progress));
    t1 = Date.now();
    await submitting;
    errors.push(...stats.errors);
    o.log(`runners done after ${((t1 - t0) / 1000).toFixed(1)} s; reading back`);

    // ---- read back through the submitter API: every run a lease touched, and a sample of final checkpoints
    const runIds = new Set<string>();
    for (const c of log) if (c.route === "POST /v1/claims" && c.status === 200) for (const r of (c.res as ClaimResponse).group.cfgs) runIds.add(r.run_id);
    await pool([...runIds], 8, async (id) => {
      const res = await admin.fetch(`${worker.url}/v1/runs/${id}/metrics?limit=100000`, { headers: worker.submitAuth });
      if (!res.ok) return void errors.push(`GET /v1/runs/${id}/metrics: ${res.status}`);
      api.set(id, ((await res.json()) as { rows: Array<{ step: number; loss: number }> }).rows.map((r) => ({ step: r.step, loss: r.loss })));
    });
    const finals = log.filter((c) => c.route.startsWith("PUT ") && c.status === 201 && c.res?.kind === "final").map((c) => c.res.run_id as string);
    await pool([...new Set(finals)].slice(0, 40), 4, async (id) => {
      const res = await admin.fetch(`${worker.url}/v1/runs/${id}/checkpoint`, { headers: worker.submitAuth });
      if (!res.ok) return void errors.push(`GET /v1/runs/${id}/checkpoint: ${res.status}`);
      const meta = decodeSafetensors(new Uint8Array(await res.arrayBuffer())).metadata;
      if (meta.run_id !== id || meta.kind !== "final") errors.push(`GET /v1/runs/${id}/checkpoint holds ${JSON.stringify(meta)}`);
    });
  } finally {
    await worker.stop();
    workerOutput = worker.output();
  }

  let result: LoadResult;
  try {
    o.log("reading D1 (wrangler d1 execute --local)");
    const db = readD1(persistTo);
    const { violations, facts } = checkInvariants({ log, ttlMs: o.leaseTtlMs, db, api, errors });
    for (const c of adminLog) if (c.status >= 500 || c.status === 0) violations.push(`submitter API: ${c.route} → ${c.status}`);

    // Rates over the load window (the runners' working time, not the drain after it): calls sent inside it.
    const secs = (t1 - t0) / 1000;
    const inWindow = log.filter((c) => c.t0 < deadline);
    const win = (deadline - t0) / 1000;
    const count = (f: (c: Call) => boolean) => inWindow.filter(f).length;
    const rows = (f: (c: Call) => boolean) => inWindow.filter((c) => c.route.endsWith("/metrics") && c.status === 200 && f(c));
    const figures = {
      claims_per_s: count((c) => c.route === "POST /v1/claims" && c.status === 200) / win,
      metric_rows_per_s: rows(() => true).reduce((n, c) => n + c.req.rows.length, 0) / win,
      metric_rows_stored_per_s: rows(() => true).reduce((n, c) => n + c.res.stored, 0) / win,
      heartbeats_per_s: count((c) => c.route.endsWith("/heartbeat") && c.status === 200) / win,
      requests_per_s: inWindow.length / win,
    };
    const routes = routeTable(log);
    const statusCols = [...new Set(routes.flatMap((r) => Object.keys(r.by)))].sort();
    const table = formatTable([
      ["route", "calls", ...statusCols, "p50 ms", "p99 ms", "max ms"],
      ...routes.map((r) => [r.route, String(r.calls), ...statusCols.map((k) => String(r.by[k] ?? 0)), String(r.p50), String(r.p99), String(r.max)]),
    ]);
    const f = (x: number) => x.toFixed(1);
    const { log: _log, ...options } = o;
    const text = [
      `${o.runners} runners for ${win.toFixed(0)} s (drained after ${secs.toFixed(1)} s), LEASE_TTL_MS ${o.leaseTtlMs}, ${o.steps} steps × ${o.stepMs} ms per group of ${o.runsPerGroup} runs, metrics every ${o.logEvery} steps`,
      `machine: ${cpus().length} cores, load average ${load0.toFixed(1)} before, ${loadavg()[0].toFixed(1)} after (1 min)`,
      "",
      table,
      "",
      `claims/s ${f(figures.claims_per_s)}   metric rows/s ${f(figures.metric_rows_per_s)} acknowledged (${f(figures.metric_rows_stored_per_s)} stored)   heartbeats/s ${f(figures.heartbeats_per_s)}   requests/s ${f(figures.requests_per_s)}`,
      `transport: ${facts.dev_proxy_503} answers were wrangler dev's proxy 503 "worker restarted mid-request" (its connection to the Worker dropped; the Worker did not restart), ${facts.network_errors} network errors; the runner client retried both`,
      `groups: ${Object.entries(stats!.groups).map(([k, v]) => `${k} ${v}`).join(", ")}; ${sweeps} sweeps submitted`,
      `facts: ${Object.entries(facts).map(([k, v]) => `${k} ${v}`).join(", ")}`,
      violations.length ? `VIOLATIONS (${violations.length}):\n${violations.map((v) => `  - ${v}`).join("\n")}` : "invariants: all hold (no lost or doubled rows, no overlapping leases, stale tokens refused, no 5xx)",
    ].join("\n");
    result = { options, elapsedS: secs, figures, routes, facts, groups: stats!.groups, sweeps, violations, text, workerOutput };
  } finally {
    if (!o.keep) rmSync(persistTo, { recursive: true, force: true });
    else o.log(`kept ${persistTo} (wrangler d1 execute DB --local --persist-to ${persistTo} --command "…")`);
  }
  return result;
}
