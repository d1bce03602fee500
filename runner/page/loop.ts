/**
 * The runner loop (page side): claim → load data → initBDec (or resume) → train, heartbeating and posting metrics
 * every log_every steps, with a resume checkpoint every checkpoint_every steps → evaluate → evals → final
 * checkpoints → complete → claim again; back off while nothing waits.
 *
 * Durability: metrics are queued until the Worker acknowledges them, and flushed before every resume checkpoint,
 * so a runner resuming from step k never misses metrics of steps < k. A 409 anywhere (LeaseLost) drops the group
 * at once: no further write under that lease. Runtime-agnostic: a GPUDevice and a WorkerClient come in.
 */
import { nSteps, type StepMetrics, type TrainConfig } from "../../shaders/config";
import type { AdapterReport } from "../../shaders/device";
import type { ClaimResponse, Lease, MetricRow, UploadLimits } from "../../worker/protocol";
import { Aborted, ApiError, LeaseLost, MetricsQueue, type WorkerClient } from "../api";
import type { BatchSource } from "../data/source";
import type { FetchFn } from "../data/shards";
import type { RunnerEvent, SaeProgress, StopMode } from "../events";
import { decodeCheckpoint, encodeFinalCheckpoint, encodeResumeCheckpoint, type Normalization } from "../safetensors";
import { createGroupEngine, openBatchSource, type GroupEngine } from "./engine-port";
import type { KernelCache } from "../../shaders/autotune";

export interface LoopOptions {
  api: WorkerClient;
  device: GPUDevice;
  adapter: AdapterReport;
  runnerId: string;
  emit: (e: RunnerEvent) => void;
  /** How the data is fetched (the page: through the CLI's /data proxy); default global fetch. */
  dataFetch?: FetchFn;
  /** Return from the loop when a claim finds nothing waiting, instead of polling. */
  once?: boolean;
  /** Backoff while nothing waits (ms). */
  idleMinMs?: number;
  idleMaxMs?: number;
  /** Groups failing here this many times in a row stop the loop ("failing"); before that it backs off. */
  maxConsecutiveFailures?: number;
  /** First backoff after a failed group (ms); doubles per failure in a row. */
  failureBackoffMs?: number;
  /** Progress events at most this often (ms). */
  progressEveryMs?: number;
  /** Default: engine-port.ts (the WGSL engine and the data sources); tests of the loop's protocol pass their own. */
  createEngine?: typeof createGroupEngine;
  openSource?: typeof openBatchSource;
  /** Tuned matmul kernels per shape (the runner's disk cache): with it, each new shape is autotuned once. */
  kernelCache?: KernelCache;
}

export type GroupOutcome = "completed" | "lease-lost" | "abandoned" | "failed";

export class RunnerLoop {
  private stopMode: StopMode | null = null;
  private wake: (() => void) | null = null;
  /** Aborts a claim in flight when the runner stops (a claim retries while the Worker is unreachable). */
  private claiming: AbortController | null = null;
  /** Why the loop stopped claiming on its own (groups kept failing here), for the exit event. */
  failing: string | null = null;
  /** The current claim's upload limits (part size, body limit), for its checkpoint uploads. */
  private limits: UploadLimits | undefined;

  constructor(private readonly o: LoopOptions) {}

  /** drain: finish the current group, claim no more; abandon: checkpoint and give the current group back now. */
  stop(mode: StopMode): void {
    if (this.stopMode !== "abandon") this.stopMode = mode;
    this.wake?.();
    this.claiming?.abort();
  }

  async run(): Promise<"no-work" | "stopped" | "failing"> {
    const min = this.o.idleMinMs ?? 1000;
    const max = this.o.idleMaxMs ?? 30_000;
    const maxFailures = this.o.maxConsecutiveFailures ?? 3;
    let idle = 0;
    let failures = 0;
    let lastError = "";
    while (!this.stopMode) {
      this.claiming = new AbortController();
      let claim: ClaimResponse | null;
      try {
        claim = await this.o.api.claim({ runner_id: this.o.runnerId, adapter: this.o.adapter }, this.claiming.signal);
      } catch (e) {
        if (e instanceof Aborted && this.stopMode) break;
        throw e;
      } finally {
        this.claiming = null;
      }
      if (!claim) {
        if (this.o.once) return "no-work";
        await this.pause(Math.min(max, min * 2 ** idle++) * (0.5 + Math.random() / 2), (wait_ms) => ({ kind: "idle", wait_ms }));
        continue;
      }
      idle = 0;
      const outcome = await this.trainGroup(claim);
      if (outcome !== "failed") {
        failures = 0;
        continue;
      }
      // Failing group after group is most likely this machine's fault (its data host, its GPU): back off, and
      // after a few in a row stop claiming rather than spend every group's failures.
      failures++;
      lastError = this.lastFailure ?? "";
      if (failures >= maxFailures) {
        this.failing = `${failures} groups failed here in a row (last: ${lastError}); stopped claiming — check this machine, then start the runner again`;
        return "failing";
      }
      const base = this.o.failureBackoffMs ?? 5000;
      await this.pause(base * 2 ** (failures - 1) * (0.5 + Math.random() / 2), (wait_ms) => ({ kind: "backoff", failures, wait_ms }));
    }
    return "stopped";
  }

  private lastFailure: string | null = null;

  /** A method, not a field read: the runner's stop arrives while trainGroup awaits (TypeScript would narrow a read). */
  private abandoning(): boolean {
    return this.stopMode === "abandon";
  }

  /** Waits `ms` (announced with `event`), or less when the runner stops. */
  private async pause(ms: number, event: (wait_ms: number) => RunnerEvent): Promise<void> {
    if (this.stopMode) return; // a stopped loop ends now: no timer may keep the runner's process alive
    this.o.emit(event(Math.round(ms)));
    await new Promise<void>((r) => {
      this.wake = r;
      setTimeout(r, ms);
    });
    this.wake = null;
  }

  /** Trains one claimed group to its end (or until the lease is lost or the runner stops). */
  async trainGroup(claim: ClaimResponse): Promise<GroupOutcome> {
    const { lease, group } = claim;
    this.limits = claim.limits;
    const cfgs = group.cfgs.map((c) => c.cfg);
    const runIds = group.cfgs.map((c) => c.run_id);
    const first = cfgs[0];
    const total = nSteps(first);
    const emit = this.o.emit;
    const lost = new AbortController();
    const queue = new MetricsQueue(this.o.api, lease);
    let step = 0;
    let engine: GroupEngine | null = null;
    let source: BatchSource | null = null;
    const latest: SaeProgress[] = runIds.map((run_id) => ({ run_id, mse: null, l0: null }));
    const heartbeat = this.heartbeats(lease, () => ({ step, n_steps: total }), lost);
    const phase = (p: Extract<RunnerEvent, { kind: "phase" }>["phase"]) => emit({ kind: "phase", group_id: group.id, phase: p });
    const check = () => {
      if (lost.signal.aborted || queue.error instanceof LeaseLost) throw queue.error ?? new LeaseLost(lease.id, "heartbeat refused");
    };
    try {
      // The runs share one batch stream, so they resume at one step: the latest that every run has a checkpoint
      // for. A runner killed between the uploads of one round leaves some runs a round ahead; their checkpoints
      // of the round before are still stored (asked for with &step=), and metrics re-posted from there are
      // stored once (duplicates change nothing).
      let resume = group.resume;
      const commonStep = () => (resume.length === runIds.length ? Math.min(...resume.map((r) => r.step)) : 0);
      let resumeStep = commonStep();
      emit({ kind: "claimed", lease, group_id: group.id, sweep_id: group.sweep_id, runs: runIds, n_steps: total, resume_step: resumeStep, attempt: group.attempt });
      if (group.resume.length > 0 && resumeStep === 0) emit({ kind: "log", level: "warn", message: `group ${group.id}: not every run has a resume checkpoint; starting fresh` });

      let norm: Normalization | undefined;
      let states: Awaited<ReturnType<GroupEngine["exportState"]>> | null = null;
      // A checkpoint that does not load is reported (the Worker deletes it) and the group falls back to the
      // previous one, so one bad checkpoint can never fail every later attempt of the group.
      while (resumeStep > 0 && !states) {
        phase("resume");
        const byRun = new Map(resume.map((r) => [r.run_id, r]));
        const loaded: Awaited<ReturnType<GroupEngine["exportState"]>> = [];
        norm = undefined;
        for (const id of runIds) {
          let ck: ReturnType<typeof decodeCheckpoint>;
          try {
            ck = decodeCheckpoint(await this.o.api.getCheckpoint(lease, atStep(byRun.get(id)!.checkpoint_path, resumeStep)));
            if (ck.kind !== "resume" || !ck.adam || ck.step !== resumeStep || ck.run_id !== id) throw new Error(`it is not the resume checkpoint of run ${id} at step ${resumeStep}`);
          } catch (e) {
            if (e instanceof LeaseLost || e instanceof Aborted || e instanceof ApiError) throw e;
            const why = e instanceof Error ? e.message : String(e);
            emit({ kind: "log", level: "warn", message: `resume checkpoint of run ${id} at step ${resumeStep} does not load (${why}); falling back to the one before` });
            resume = await this.o.api.rejectCheckpoint(lease, id, resumeStep, why);
            break;
          }
          loaded.push({ weights: ck.weights, adam: ck.adam });
          norm ??= ck.norm;
        }
        if (loaded.length === runIds.length) states = loaded;
        else resumeStep = commonStep();
      }
      step = resumeStep;

      phase("data");
      source = await (this.o.openSource ?? openBatchSource)(group.data, first.sae_batch_size, norm, this.o.dataFetch);
      norm = source.normalization;
      check();

      if (this.abandoning()) return await this.release(lease, group.id, queue);

      phase("init");
      const tune = this.o.kernelCache && { cache: this.o.kernelCache, software: this.o.adapter.isFallbackAdapter };
      engine = await (this.o.createEngine ?? createGroupEngine)(this.o.device, cfgs, { memoryBudget: this.o.adapter.memoryBudget }, tune);
      if (engine.kernels) {
        // the kernels go with the lease's adapter report (a heartbeat now carries them to the Worker)
        emit({ kind: "kernels", group_id: group.id, report: engine.kernels });
        await this.o.api.heartbeat(lease, { step, n_steps: total }, { maxAttempts: 3 }, engine.kernels).catch((e) => {
          if (e instanceof LeaseLost) throw e;
          emit({ kind: "log", level: "warn", message: `could not report the kernels: ${(e as Error).message}` });
        });
      }
      if (states) {
        await engine.importState(states);
        source.skip(resumeStep);
      } else {
        await engine.initBDec(await meanOf(source, first.sae.n_reinit_samples));
      }
      check();

      const trainedFrom = step;
      phase("train");
      const every = group.checkpoint_every > 0 ? group.checkpoint_every : Infinity;
      const progressEvery = this.o.progressEveryMs ?? 1000;
      let lastEmit = 0;
      let rateFrom = { t: now(), step };
      let rate = 0;
      for (; step < total; ) {
        if (this.abandoning()) {
          // Nothing trained since the claim: its checkpoints are the ones it resumed from.
          if (step > trainedFrom) {
            phase("checkpoint");
            await this.resumeCheckpoints(lease, engine, queue, runIds, cfgs, norm, step);
          }
          return await this.release(lease, group.id, queue);
        }
        check();
        const batch = await source.next();
        const metrics = await engine.step(batch);
        const done = step; // the 0-based index of the step just taken
        step++;
        if (metrics) {
          queue.push(metricRows(runIds, done, metrics));
          metrics.forEach((m, i) => Object.assign(latest[i], { mse: m.mse, l0: m.l0 }));
        }
        if (step % every === 0 && step < total) {
          phase("checkpoint");
          await this.resumeCheckpoints(lease, engine, queue, runIds, cfgs, norm, step);
          phase("train");
        }
        const t = now();
        if (t - lastEmit >= progressEvery || step === total) {
          if (t - rateFrom.t > 0) rate = ((step - rateFrom.step) * first.sae_batch_size * 1000) / (t - rateFrom.t);
          if (t - rateFrom.t > 10_000) rateFrom = { t, step };
          const eta = rate > 0 ? ((total - step) * first.sae_batch_size) / rate : null;
          emit({ kind: "progress", group_id: group.id, step, n_steps: total, samples_per_s: rate, eta_s: eta, saes: latest.map((s) => ({ ...s })) });
          lastEmit = t;
        }
      }

      phase("eval");
      const evals = await engine.evaluate(source.ordered(first.sae_batch_size, first.n_eval));
      check();
      await queue.flush();
      await this.o.api.postEvals(lease, evals.map((e, i) => ({ run_id: runIds[i], ...e })), claim.limits);

      phase("checkpoint");
      const weights = await engine.exportWeights();
      for (let i = 0; i < runIds.length; i++) {
        const bytes = encodeFinalCheckpoint({ run_id: runIds[i], cfg: cfgs[i], step: total, data_origin: source.origin }, weights[i], norm);
        await this.o.api.uploadCheckpoint(lease, runIds[i], "final", total, bytes, claim.limits);
      }

      phase("complete");
      await this.o.api.complete(lease);
      emit({ kind: "done", group_id: group.id, lease_id: lease.id, outcome: "completed" });
      return "completed";
    } catch (e) {
      if (e instanceof LeaseLost) {
        emit({ kind: "done", group_id: group.id, lease_id: lease.id, outcome: "lease-lost", message: e.message });
        return "lease-lost";
      }
      if (e instanceof Aborted) throw e;
      const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      this.lastFailure = message;
      emit({ kind: "done", group_id: group.id, lease_id: lease.id, outcome: "failed", message });
      // Reported as a failure of the group (the Worker counts it once per runner, so a machine with a local fault
      // cannot fail a group alone); the run loop backs off, and stops after a few in a row.
      await this.o.api.fail(lease, message, { maxAttempts: 5 }).catch(() => {});
      return "failed";
    } finally {
      lost.abort();
      await heartbeat.catch(() => {});
      engine?.destroy();
      source?.close();
    }
  }

  /** Flushes metrics, then uploads a resume checkpoint per run at `step` (steps < step trained). */
  private async resumeCheckpoints(lease: Lease, engine: GroupEngine, queue: MetricsQueue, runIds: string[], cfgs: TrainConfig[], norm: Normalization, step: number): Promise<void> {
    await queue.flush();
    const states = await engine.exportState();
    for (let i = 0; i < runIds.length; i++) {
      const bytes = encodeResumeCheckpoint({ run_id: runIds[i], cfg: cfgs[i], step }, states[i].weights, norm, states[i].adam);
      await this.o.api.uploadCheckpoint(lease, runIds[i], "resume", step, bytes, this.limits);
    }
  }

  /** Gives the group back (not a failure): flushes the metrics, then releases the lease. */
  private async release(lease: Lease, groupId: string, queue: MetricsQueue): Promise<GroupOutcome> {
    this.o.emit({ kind: "phase", group_id: groupId, phase: "abandon" });
    await queue.flush();
    await this.o.api.release(lease, "runner stopped (gave the group back on purpose)", { maxAttempts: 5 });
    this.o.emit({ kind: "done", group_id: groupId, lease_id: lease.id, outcome: "abandoned" });
    return "abandoned";
  }

  /** Heartbeats every lease.heartbeat_ms until `stop` aborts; a 409 aborts `stop` itself (the lease is gone). */
  private async heartbeats(lease: Lease, progress: () => { step: number; n_steps: number }, stop: AbortController): Promise<void> {
    const every = Math.max(1000, lease.heartbeat_ms || 10_000);
    while (!stop.signal.aborted) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, every);
        stop.signal.addEventListener("abort", () => (clearTimeout(t), r()), { once: true });
      });
      if (stop.signal.aborted) return;
      try {
        await this.o.api.heartbeat(lease, progress(), { maxAttempts: 3 });
      } catch (e) {
        if (e instanceof LeaseLost) {
          stop.abort();
          return;
        }
        this.o.emit({ kind: "log", level: "warn", message: `heartbeat failed (will retry): ${(e as Error).message}` });
      }
    }
  }
}

/** A claim's checkpoint_path pointed at the resume checkpoint of `step` (same route, `step` query set). */
export function atStep(checkpointPath: string, step: number): string {
  const [route, query = ""] = checkpointPath.split("?", 2);
  const params = new URLSearchParams(query);
  params.set("step", String(step));
  return `${route}?${params}`;
}

const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

/** The rows to post for one log step: every key the engine returned, so AuxK SAEs' optional `aux_loss` and
 *  `n_dead_train` go with their step's metrics (the other SAEs' rows have neither). */
export function metricRows(runIds: string[], step: number, metrics: StepMetrics[]): MetricRow[] {
  if (metrics.length !== runIds.length) throw new Error(`engine returned ${metrics.length} metric sets for ${runIds.length} runs`);
  return metrics.map((m, i) => ({ run_id: runIds[i], step, ...m }));
}

/** The mean of the first min(n, N) normalized examples (in on-disk order), for the b_dec init. */
export async function meanOf(source: BatchSource, n: number): Promise<Float32Array> {
  const d = source.d_vit;
  const acc = new Float64Array(d);
  let rows = 0;
  const limit = Math.min(n, source.nExamples);
  for await (const b of source.ordered(4096, limit)) {
    const r = b.length / d;
    for (let i = 0; i < r; i++) for (let j = 0; j < d; j++) acc[j] += b[i * d + j];
    rows += r;
  }
  return Float32Array.from(acc, (v) => v / Math.max(1, rows));
}
