/**
 * Simulated runners for the load test (scripts/load.ts): many runners in one Node process, no GPU, speaking the
 * runner protocol through the runner's own client (runner/api.ts: WorkerClient, MetricsQueue, its retry and 409
 * rules). Every HTTP attempt is written to a call log (route, lease, send and receive times, status, bodies); the
 * invariant checks (checks.ts) read only that log and what the Worker stored.
 *
 * A simulated runner loops: claim → fetch resume checkpoints (after a takeover) → "train" (a sleep per step),
 * heartbeating every heartbeat_ms and posting deterministic metric rows every log_every steps through a
 * MetricsQueue → resume checkpoints every checkpoint_every steps → evals → final checkpoints → complete. Per group
 * it draws a behaviour: most finish; some vanish mid-group (stop heartbeating, never write again: the lease expires
 * and another runner takes the group over), some turn zombie (go quiet past their lease's expiry, then write with
 * the old token, which must get 409), some give the group back with `fail`. Some posts are sent twice on purpose
 * (metrics, evals, complete, fail), and some runners write again after their lease ended (must get 409).
 */
import type { TrainConfig } from "../../shaders/config";
import type { FetchFn } from "../../runner/api";
import { LeaseLost, MetricsQueue, WorkerClient } from "../../runner/api";
import { mulberry32 } from "../../runner/data/random";
import { decodeSafetensors, encodeFinalCheckpoint, encodeResumeCheckpoint, type SaeWeights } from "../../runner/safetensors";
import type { AdapterReport } from "../../shaders/device";
import type { ClaimResponse, EvalsRequest, Lease, MetricRow } from "../../worker/protocol";

/** One HTTP attempt (a retried call is several). Times are Date.now() on this machine, the Worker's clock too. */
export interface Call {
  /** Route template, e.g. "POST /v1/leases/:id/metrics". */
  route: string;
  runner: string;
  leaseId?: string;
  /** Sent / answered (body read). */
  t0: number;
  t1: number;
  /** HTTP status; 0 for a network error. */
  status: number;
  /** Parsed JSON request body (metrics rows, evals, token), or the checkpoint's query and size. */
  req?: any;
  /** Parsed JSON answer (error bodies included). */
  res?: any;
  /** What the simulated runner meant: "stale" (expects 409), "repeat" (a repeated complete/fail: expects 200). */
  tag?: string;
}

export interface SwarmOptions {
  server: string;
  runnerToken: string;
  runners: number;
  /** When runners stop claiming and leave their groups (Date.now()). */
  deadline: number;
  /** Simulated training time per step. */
  stepMs: number;
  seed: number;
  /** Per group: probability to vanish, to turn zombie, to give the group back (fail). */
  pVanish: number;
  pZombie: number;
  pAbandon: number;
  /** Per logged step: probability to post the rows twice more on purpose; per end: to write again after it. */
  pDouble: number;
  pLate: number;
  /** The first group of runner i misbehaves as force[i] says, early in the group (so that even a short run has
   * takeovers, stale writes and give-backs). */
  force: Behaviour[];
  /** Called when a claim gets 204 (the orchestrator may submit more work). */
  onIdle?: () => void;
  /** Called when a claim succeeds (for the backlog estimate). */
  onClaim?: (c: ClaimResponse) => void;
}

/** What a simulated runner does with a group: train it to the end, or misbehave part way. */
export type Behaviour = "finish" | "vanish" | "zombie" | "abandon";

/** What the swarm saw, besides the call log. */
export interface SwarmStats {
  groups: Record<"completed" | "vanished" | "zombie" | "abandoned" | "lost" | "stopped" | "error", number>;
  /** Errors that are neither a 2xx nor a 409 after the client's retries, and content mismatches. */
  errors: string[];
}

/** An adapter report with limits large enough that every group of the load sweep fits one lease (no chunking). */
export const LOAD_ADAPTER: AdapterReport = {
  vendor: "load-test",
  architecture: "simulated",
  device: "none",
  description: "scripts/load.ts simulated runner (no GPU)",
  isFallbackAdapter: false,
  features: [],
  limits: { maxBufferSize: 2 ** 31, maxStorageBufferBindingSize: 2 ** 31 - 4 } as AdapterReport["limits"],
};


function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** The metric row of (run, step): the same whoever posts it (training is deterministic), so stored values can be checked. */
export function metricRow(runId: string, step: number, batchSize: number): MetricRow {
  const h = (hash(runId) % 9973) / 9973;
  return {
    run_id: runId,
    step,
    loss: 1 / (1 + step) + h,
    mse: 0.5 / (1 + step) + h / 2,
    l0: (step % 17) + h,
    l1: 2 * h,
    sparsity: 0.1,
    "progress/n_patches_seen": (step + 1) * batchSize,
    "progress/learning_rate": 1e-3,
    "progress/sparsity_coeff": 4e-4,
  };
}

export function evalOf(runId: string, dSae: number): EvalsRequest["evals"][number] {
  const h = (hash(runId) % 9973) / 9973;
  return {
    run_id: runId,
    l0: 3 + h,
    l1: h,
    mse: 0.01 + h / 100,
    fvu: 0.1,
    explained_variance: 0.9,
    n_dead: 1,
    n_almost_dead: 2,
    n_dense: 0,
    n_examples: 64,
    freqs: Array.from({ length: dSae }, (_, i) => ((i + 1) % 7) / 10),
    mean_values: Array.from({ length: dSae }, (_, i) => (i % 5 === 0 ? null : i / 10)),
  };
}

/**
 * A checkpoint of the run's shape (the Worker checks every tensor against the config), its values from the step, and
 * metadata that says whose it is (checked when a resume checkpoint is fetched back).
 */
export function checkpointBytes(runId: string, kind: "final" | "resume", step: number, cfg: TrainConfig): Uint8Array {
  const d = cfg.sae.d_vit;
  const k = d * cfg.sae.exp_factor;
  const w = (): SaeWeights => ({
    W_enc: new Float32Array(d * k).fill(step),
    b_enc: new Float32Array(k),
    W_dec: new Float32Array(k * d),
    b_dec: new Float32Array(d),
    ...(cfg.sae.kind === "jumprelu" ? { threshold: new Float32Array(k) } : {}),
  });
  const info = { run_id: runId, cfg, step };
  const norm = { mean: new Float32Array(d), scale: 1 };
  return kind === "final" ? encodeFinalCheckpoint(info, w(), norm) : encodeResumeCheckpoint(info, w(), norm, { m: w(), v: w(), step });
}

/** "POST /v1/leases/:id/metrics" and the lease id, from a request URL. */
export function routeOf(method: string, url: string): { route: string; leaseId?: string } {
  const p = new URL(url).pathname.split("/").filter(Boolean);
  if (p[0] === "v1" && p[1] === "leases" && p[2]) {
    const rest = p[3] === "checkpoints" ? "checkpoints/:run_id" : p.slice(3).join("/");
    return { route: `${method} /v1/leases/:id/${rest}`, leaseId: decodeURIComponent(p[2]) };
  }
  if (p[0] === "v1" && p[1] === "runs" && p[2]) return { route: `${method} /v1/runs/:id${p[3] ? `/${p[3]}` : ""}` };
  if (p[0] === "v1" && p[1] === "sweeps" && p[2]) return { route: `${method} /v1/sweeps/:id` };
  return { route: `${method} /${p.join("/")}` };
}

/** A fetch that logs every attempt into `log`; `tap.tag` (set around a call) is copied into its records. */
export function loggingFetch(log: Call[], runner: string): { fetch: FetchFn; tap: { tag?: string } } {
  const tap: { tag?: string } = {};
  const fetchFn: FetchFn = async (url, init) => {
    const method = init?.method ?? "GET";
    const { route, leaseId } = routeOf(method, url);
    const rec: Call = { route, runner, leaseId, t0: Date.now(), t1: 0, status: 0, tag: tap.tag };
    if (typeof init?.body === "string") rec.req = JSON.parse(init.body);
    else if (init?.body instanceof Uint8Array) rec.req = { query: Object.fromEntries(new URL(url).searchParams), bytes: init.body.byteLength };
    log.push(rec);
    let res: Response;
    try {
      res = await fetch(url, init);
    } catch (e) {
      rec.t1 = Date.now();
      rec.res = { network_error: String(e) };
      throw e;
    }
    const buf = await res.arrayBuffer();
    rec.t1 = Date.now();
    rec.status = res.status;
    if ((res.headers.get("content-type") ?? "").includes("json") && buf.byteLength) {
      try {
        rec.res = JSON.parse(new TextDecoder().decode(buf));
      } catch {
        /* not JSON after all */
      }
    } else if (!res.ok && buf.byteLength) rec.res = { text: new TextDecoder().decode(buf.slice(0, 300)) };
    return new Response(res.status === 204 || res.status === 304 ? null : buf, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  return { fetch: fetchFn, tap };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/** Runs the swarm until the deadline; resolves once every runner has finished its last request. */
export async function runSwarm(o: SwarmOptions, log: Call[]): Promise<SwarmStats> {
  const stats: SwarmStats = { groups: { completed: 0, vanished: 0, zombie: 0, abandoned: 0, lost: 0, stopped: 0, error: 0 }, errors: [] };
  const over = () => Date.now() >= o.deadline;
  const retry = { baseMs: 100, maxMs: 2000, maxAttempts: 8 };

  const client = (runner: string) => {
    const { fetch, tap } = loggingFetch(log, runner);
    return { api: new WorkerClient({ server: o.server, token: o.runnerToken, fetch, retry }), tap };
  };

  async function runner(i: number): Promise<void> {
    const rand = mulberry32(o.seed * 1000 + i);
    let generation = 0;
    let first = true;
    let idleMs = 50;
    while (!over()) {
      const id = `load-${i}.${generation}`;
      const main = client(id);
      let claim: ClaimResponse | null;
      try {
        claim = await main.api.claim({ runner_id: id, adapter: LOAD_ADAPTER });
      } catch (e) {
        stats.errors.push(`${id} claim: ${(e as Error).message}`);
        await sleep(200);
        continue;
      }
      if (!claim) {
        o.onIdle?.();
        await sleep(idleMs * (0.5 + rand()));
        idleMs = Math.min(1000, idleMs * 2);
        continue;
      }
      idleMs = 50;
      o.onClaim?.(claim);
      const forced = first ? o.force[i] : undefined;
      first = false;
      const outcome = await group(id, claim, main, rand, forced);
      stats.groups[outcome]++;
      if (outcome === "vanished") generation++; // a runner that died: its replacement has a new id
    }
  }

  async function group(id: string, claim: ClaimResponse, main: ReturnType<typeof client>, rand: () => number, forced?: Behaviour): Promise<keyof SwarmStats["groups"]> {
    const lease: Lease = claim.lease;
    const g = claim.group;
    const runIds = g.cfgs.map((c) => c.run_id);
    const cfg = g.cfgs[0].cfg;
    const total = Math.ceil(cfg.n_patches / cfg.sae_batch_size);
    const every = cfg.log_every;
    const ckEvery = g.checkpoint_every > 0 ? g.checkpoint_every : Infinity;
    const dSae = cfg.sae.d_vit * cfg.sae.exp_factor;
    const hb = client(id);
    const mqClient = client(id);
    const queue = new MetricsQueue(mqClient.api, lease);
    let step = 0;
    let lost = false;
    let quiet = false; // heartbeats stopped (vanish, zombie, or the group is over)
    let maxExpiry = lease.expires_at;

    const heartbeats = (async () => {
      const ms = Math.max(100, lease.heartbeat_ms);
      while (!quiet && !lost) {
        const until = Date.now() + ms;
        while (!quiet && !lost && Date.now() < until) await sleep(Math.min(50, until - Date.now()));
        if (quiet || lost) return;
        try {
          const r = await hb.api.heartbeat(lease, { step, n_steps: total }, { maxAttempts: 3 });
          if (typeof r.expires_at === "number") maxExpiry = Math.max(maxExpiry, r.expires_at);
        } catch (e) {
          if (e instanceof LeaseLost) lost = true;
          else stats.errors.push(`${id} heartbeat: ${(e as Error).message}`);
        }
      }
    })();
    const stopHeartbeats = async () => {
      quiet = true;
      await heartbeats;
    };
    const checkLost = () => {
      if (lost || queue.error instanceof LeaseLost) throw new LeaseLost(lease.id, "lost");
      if (queue.error) throw queue.error;
    };
    const tagged = async <T>(tag: string, f: () => Promise<T>): Promise<T> => {
      main.tap.tag = tag;
      try {
        return await f();
      } finally {
        main.tap.tag = undefined;
      }
    };
    /** Writes that must be refused (409): anything else is recorded (checks.ts also finds it in the log). */
    const expectLost = async (what: string, f: () => Promise<unknown>) => {
      try {
        await tagged("stale", f);
        stats.errors.push(`${id} ${what} under ${lease.id}: answered 2xx with a stale token`);
      } catch (e) {
        if (!(e instanceof LeaseLost)) stats.errors.push(`${id} ${what} under ${lease.id}: ${(e as Error).message}`);
      }
    };
    const logged = (s: number) => s % every === 0;

    const r = rand();
    const behaviour: Behaviour = forced ?? (r < o.pVanish ? "vanish" : r < o.pVanish + o.pZombie ? "zombie" : r < o.pVanish + o.pZombie + o.pAbandon ? "abandon" : "finish");

    try {
      // A takeover resumes at the latest resume checkpoint every run has, as the real runner (runner/page/loop.ts).
      if (g.resume.length === runIds.length) {
        const at = Math.min(...g.resume.map((p) => p.step));
        for (const p of g.resume) {
          const [route, query = ""] = p.checkpoint_path.split("?", 2);
          const q = new URLSearchParams(query);
          q.set("step", String(at));
          const bytes = await main.api.getCheckpoint(lease, `${route}?${q}`);
          const meta = decodeSafetensors(bytes).metadata;
          if (meta.run_id !== p.run_id || meta.kind !== "resume" || meta.step !== String(at))
            stats.errors.push(`${id}: resume checkpoint of ${p.run_id} at step ${at} holds ${JSON.stringify(meta)}`);
        }
        step = at;
      }
      const stopAt = behaviour === "finish" ? total : forced ? Math.min(total - 1, step + 1) : Math.min(total - 1, step + Math.floor(rand() * (total - step)));

      for (; step < stopAt; ) {
        if (over()) {
          await stopHeartbeats();
          await queue.flush().catch(() => {});
          return "stopped";
        }
        checkLost();
        await sleep(o.stepMs);
        const done = step++;
        if (logged(done)) {
          const rows = runIds.map((run) => metricRow(run, done, cfg.sae_batch_size));
          queue.push(rows);
          if (rand() < o.pDouble) {
            // On purpose: the same rows twice more, straight through the client (idempotent per run and step).
            await main.api.postMetrics(lease, rows);
            await main.api.postMetrics(lease, rows);
          }
        }
        if (step % ckEvery === 0 && step < total) {
          await queue.flush();
          for (const run of runIds) await main.api.putCheckpoint(lease, run, "resume", step, checkpointBytes(run, "resume", step, cfg));
        }
      }

      if (behaviour === "vanish") {
        // Dies without a word: no more heartbeats, no more writes; the lease runs out and someone takes over.
        await stopHeartbeats();
        await queue.flush().catch(() => {});
        return "vanished";
      }
      if (behaviour === "zombie") {
        // Goes quiet past its lease's expiry (sometimes long enough for a takeover), then writes with the old token.
        await stopHeartbeats();
        await queue.flush().catch(() => {});
        const ttl = lease.heartbeat_ms * 3;
        await sleep(maxExpiry - Date.now() + 250 + rand() * ttl);
        const s = Math.min(total - 1, step);
        await expectLost("metrics", () => main.api.postMetrics(lease, runIds.map((run) => metricRow(run, s, cfg.sae_batch_size))));
        await expectLost("heartbeat", () => main.api.heartbeat(lease, { step, n_steps: total }, { maxAttempts: 1 }));
        await expectLost("checkpoint", () => main.api.putCheckpoint(lease, runIds[0], "resume", s + 1, checkpointBytes(runIds[0], "resume", s + 1, cfg)));
        return "zombie";
      }
      if (behaviour === "abandon") {
        // Gives the group back, as the real runner on Ctrl-C twice: flush, resume checkpoints at this step, release.
        await queue.flush();
        if (step > 0) for (const run of runIds) await main.api.putCheckpoint(lease, run, "resume", step, checkpointBytes(run, "resume", step, cfg));
        await stopHeartbeats();
        checkLost();
        await main.api.release(lease, "load test: abandoned on purpose", { maxAttempts: 5 });
        if (rand() < o.pLate) {
          await tagged("repeat", () => main.api.release(lease, "load test: abandoned on purpose (repeat)", { maxAttempts: 5 }));
          await expectLost("metrics after release", () => main.api.postMetrics(lease, runIds.map((run) => metricRow(run, 0, cfg.sae_batch_size))));
        }
        return "abandoned";
      }

      await queue.flush();
      const evals = runIds.map((run) => evalOf(run, dSae));
      await main.api.postEvals(lease, evals);
      if (rand() < o.pDouble) await main.api.postEvals(lease, evals);
      for (const run of runIds) await main.api.putCheckpoint(lease, run, "final", total, checkpointBytes(run, "final", total, cfg));
      await stopHeartbeats();
      checkLost();
      await main.api.complete(lease);
      if (rand() < o.pLate) {
        await tagged("repeat", () => main.api.complete(lease));
        await expectLost("heartbeat after complete", () => main.api.heartbeat(lease, { step: total, n_steps: total }, { maxAttempts: 1 }));
        await expectLost("evals after complete", () => main.api.postEvals(lease, evals.slice(0, 1)));
      }
      return "completed";
    } catch (e) {
      if (e instanceof LeaseLost) return "lost";
      stats.errors.push(`${id} group ${g.id} (lease ${lease.id}): ${(e as Error).message}`);
      return "error";
    } finally {
      await stopHeartbeats();
      await queue.flush().catch(() => {});
    }
  }

  await Promise.all(Array.from({ length: o.runners }, (_, i) => runner(i)));
  return stats;
}
