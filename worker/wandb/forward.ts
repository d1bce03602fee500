/**
 * Forwarding one run to W&B from the queue, independent of D1: given the run's stored forwarding state and a
 * batch of its WandbMessages, send each history row exactly once and in step order, and return the new state
 * and, per message, whether to ack it or let the queue deliver it again.
 *
 * Exactly once, in order, across duplicate or out-of-order deliveries and consumer crashes:
 * - A row is sent only if its step is above the last step sent (duplicates and replays drop out), and only when
 *   it is the next row expected (steps are logged at k·log_every − 1): a row that came early waits (its message is
 *   retried) until the rows before it arrive, or until it has waited `gapPatience` deliveries.
 * - Before sending, the state is persisted with an `inflight` record (offset and steps of the send: a write-ahead
 *   log). After the send it is persisted without it. A consumer that died in between leaves `inflight` behind;
 *   the next one asks W&B how many history lines it holds (UpsertBucket's historyLineCount) and so knows exactly
 *   which of those steps landed. Resending a line rewrites the same offset, so a retried request never doubles one.
 * - Persisting is compare-and-swap on `version`, which also keeps two consumers from sending for one run at once.
 */
import { nSteps, type TrainConfig } from "../../shaders/config";
import type { WandbMessage } from "../protocol";
import { WandbError, type UpsertedRun, type WandbClient, type WandbRunRef } from "./client";
import { encodeHistoryLine, evalSummary, historyLine, type QueuedRow } from "./rows";

/** A send that was started and not yet known to have finished (the write-ahead record). */
export interface WandbInflight {
  /** 0-based history line of the send's first row. */
  offset: number;
  /** The steps of the send's lines, in order. */
  steps: number[];
  /** last_step before the send. */
  prev_last_step: number | null;
  /** The whole summary the send carries. */
  summary: Record<string, unknown>;
  /** Unix ms when the send began; 0 when it is known to have stopped (failed) and only needs reconciling. */
  started_at: number;
}

/** What the D1 layer persists per tracked run (one row per run; every field plain JSON). */
export interface WandbForwardState {
  /** W&B run id used in URLs (lowercase base-36; see wandbRunName). Never changes. */
  name: string;
  project: string;
  /** The entity asked for (null: the API key's default) until the run exists, then the one W&B reports. */
  entity: string | null;
  /** The run's W&B page; null until the run has been created on W&B. */
  url: string | null;
  /** Unix ms the run started (the base of `_runtime`); null until known. */
  start_ts: number | null;
  /** The next history line's 0-based offset = lines W&B holds. */
  next_offset: number;
  /** The last step sent (null: none yet). */
  last_step: number | null;
  /** The whole summary as last sent (or to send when summary_dirty). */
  summary: Record<string, unknown>;
  summary_dirty: boolean;
  has_eval: boolean;
  finished: boolean;
  exit_code: number | null;
  inflight: WandbInflight | null;
  /** Bumped on every persist; the D1 layer writes only where the stored version is the previous one. */
  version: number;
}

/** What the upsert needs about the run, from D1. */
export interface WandbRunInfo {
  run_id: string;
  cfg: TrainConfig;
  /** W&B group: the sweep, so a sweep's runs show together. */
  group_name: string;
  display_name: string;
  job_type?: string;
  /** Added to the config next to the TrainConfig keys (e.g. sae_swarm ids). */
  config_extra?: Record<string, unknown>;
  /** Unix ms the run started (the lease's claim); else the first row's ts is taken. */
  started_at?: number;
}

/** One delivery, as Cloudflare's queue Message gives it (attempts starts at 1). */
export interface ForwardMessage {
  body: WandbMessage;
  attempts: number;
}

export type Verdict = "ack" | "retry";

export interface ForwardOptions {
  now?: () => number;
  /** Deliveries a message waits for missing earlier rows (or a finish for the rest of its run) before going anyway. */
  gapPatience?: number;
  /** An inflight send younger than this belongs to a consumer that may still be running: leave the run alone. */
  inflightTimeoutMs?: number;
}

export interface ForwardPlan {
  history: { offset: number; steps: number[]; lines: string[] } | null;
  /** The whole summary to send, or null when it has not changed. */
  summary: Record<string, unknown> | null;
  complete: { exitCode: number } | null;
  verdicts: Verdict[];
  /** The state once the send has been accepted (inflight null; version not yet bumped). */
  after: WandbForwardState;
}

export interface ForwardOutcome {
  state: WandbForwardState;
  verdicts: Verdict[];
  sent: { lines: number; requests: number; summary: boolean; complete: boolean };
  /** Set when an unfinished send was reconciled: how many of its lines W&B turned out to hold. */
  recovered?: { offset: number; landed: number; of: number };
}

/** Persists `next` where the stored version is still `prev.version`; must throw when it is not. */
export type PersistState = (next: WandbForwardState, prev: WandbForwardState) => Promise<void>;

/** The forwarding state cannot be reconciled with what W&B holds; retrying will not help. */
export class WandbStateError extends Error {
  override name = "WandbStateError";
}

export const DEFAULT_GAP_PATIENCE = 4;
export const DEFAULT_INFLIGHT_TIMEOUT_MS = 10 * 60_000;

/**
 * The W&B run id for one of our runs: 20 lowercase base-36 characters of SHA-256(salt + run id). Deterministic,
 * so a consumer that lost everything still finds the same W&B run; `salt` tells apart databases whose run ids
 * could repeat.
 */
export async function wandbRunName(runId: string, salt = ""): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`${salt}\u0000${runId}`)));
  let hex = "";
  for (const b of digest) hex += b.toString(16).padStart(2, "0");
  // Two 52-bit slices, each exactly representable as a double.
  const part = (h: string) => parseInt(h, 16).toString(36).padStart(11, "0").slice(-10);
  return part(hex.slice(0, 13)) + part(hex.slice(13, 26));
}

export function initialForwardState(name: string, cfg: TrainConfig, startTs: number | null = null): WandbForwardState {
  return {
    name,
    project: cfg.wandb_project,
    entity: cfg.wandb_entity,
    url: null,
    start_ts: startTs,
    next_offset: 0,
    last_step: null,
    summary: {},
    summary_dirty: false,
    has_eval: false,
    finished: false,
    exit_code: null,
    inflight: null,
    version: 0,
  };
}

/** The tags W&B shows: the sweep's `tags`, and its `tag` when set (saev's single tag). */
export function wandbTags(cfg: TrainConfig): string[] {
  return [...new Set([...cfg.tags, ...(cfg.tag ? [cfg.tag] : [])])];
}

/** The steps a run logs: (step + 1) % log_every == 0. The next logged step after `step`. */
export function nextLoggedStep(step: number | null, logEvery: number): number {
  if (step === null) return logEvery - 1;
  return (Math.floor((step + 1) / logEvery) + 1) * logEvery - 1;
}

/** The run's last logged step, or null when it logs none. */
export function finalLoggedStep(cfg: TrainConfig): number | null {
  const k = Math.floor(nSteps(cfg) / cfg.log_every);
  return k > 0 ? k * cfg.log_every - 1 : null;
}

/** Decides what to send for one run's batch. Pure: no I/O, nothing mutated. */
export function planForward(
  state: WandbForwardState,
  info: WandbRunInfo,
  messages: readonly ForwardMessage[],
  opts: ForwardOptions = {},
): ForwardPlan {
  const patience = opts.gapPatience ?? DEFAULT_GAP_PATIENCE;
  for (const m of messages) {
    if (m.body.run_id !== info.run_id) throw new Error(`message for run ${m.body.run_id} in run ${info.run_id}'s batch`);
  }
  if (state.inflight) throw new Error("planForward needs a reconciled state (inflight is set)");
  const after: WandbForwardState = { ...state, summary: { ...state.summary } };
  if (state.finished) {
    return { history: null, summary: null, complete: null, verdicts: messages.map(() => "ack"), after };
  }

  // Rows not yet sent, one per step (a duplicate delivery carries the same rows), in step order.
  const byStep = new Map<number, { row: QueuedRow; attempts: number }>();
  for (const m of messages) {
    if (m.body.kind !== "metrics") continue;
    for (const row of m.body.rows) {
      if (state.last_step !== null && row.step <= state.last_step) continue;
      const seen = byStep.get(row.step);
      if (!seen) byStep.set(row.step, { row, attempts: m.attempts });
      else seen.attempts = Math.max(seen.attempts, m.attempts);
    }
  }
  const pending = [...byStep.values()].sort((a, b) => a.row.step - b.row.step);
  const sendRows: QueuedRow[] = [];
  let expected = nextLoggedStep(state.last_step, info.cfg.log_every);
  for (const p of pending) {
    // In order when nothing can still be missing before it; else only once it has waited long enough.
    if (p.row.step > expected && p.attempts < patience) break;
    sendRows.push(p.row);
    expected = nextLoggedStep(p.row.step, info.cfg.log_every);
  }

  // Finish last: it waits while rows are held back, and a clean one also for the run's last row and its eval
  // (each up to the patience); once it goes, the rows still held go first, since no earlier one can come now.
  const hasEval = state.has_eval || messages.some((m) => m.body.kind === "eval");
  const lastStep = sendRows.length > 0 ? sendRows[sendRows.length - 1].step : state.last_step;
  const finalStep = finalLoggedStep(info.cfg);
  const allIn = (finalStep === null || (lastStep !== null && lastStep >= finalStep)) && hasEval;
  const held = pending.length > sendRows.length;
  let complete: ForwardPlan["complete"] = null;
  for (const m of messages) {
    if (m.body.kind !== "finish") continue;
    if (m.attempts >= patience || (!held && (m.body.exit_code !== 0 || allIn))) {
      complete = { exitCode: m.body.exit_code };
      break;
    }
  }
  if (complete) {
    sendRows.length = 0;
    for (const p of pending) sendRows.push(p.row);
    after.finished = true;
    after.exit_code = complete.exitCode;
  }

  let history: ForwardPlan["history"] = null;
  if (sendRows.length > 0) {
    after.start_ts = state.start_ts ?? info.started_at ?? sendRows[0].ts;
    const startTs = after.start_ts;
    history = {
      offset: state.next_offset,
      steps: sendRows.map((r) => r.step),
      lines: sendRows.map((r) => encodeHistoryLine(r, startTs)),
    };
    after.next_offset = state.next_offset + sendRows.length;
    after.last_step = sendRows[sendRows.length - 1].step;
    // W&B's summary holds each history key's latest value.
    Object.assign(after.summary, historyLine(sendRows[sendRows.length - 1], startTs));
    after.summary_dirty = true;
  }
  for (const m of messages) {
    if (m.body.kind !== "eval") continue;
    Object.assign(after.summary, evalSummary(m.body.eval));
    after.has_eval = true;
    after.summary_dirty = true;
  }

  const summary = after.summary_dirty ? after.summary : null;
  after.summary_dirty = false;
  const verdicts: Verdict[] = messages.map((m) => {
    switch (m.body.kind) {
      case "metrics":
        // Every row sent now or before (or given up on once a later row went ahead).
        return complete || m.body.rows.every((r) => after.last_step !== null && r.step <= after.last_step) ? "ack" : "retry";
      case "eval":
        return "ack"; // its summary goes out with this send
      case "finish":
        return complete ? "ack" : "retry";
    }
  });
  return { history, summary, complete, verdicts, after };
}

/** The upsert that creates (or finds) the run, as W&B's client sends it. */
export function upsertInput(state: WandbForwardState, info: WandbRunInfo) {
  return {
    name: state.name,
    project: state.project,
    entity: state.entity,
    displayName: info.display_name,
    groupName: info.group_name,
    jobType: info.job_type ?? "train",
    tags: wandbTags(info.cfg),
    config: { ...info.cfg, ...info.config_extra },
  };
}

/** Takes the created run's entity and URL, checking W&B holds exactly the lines the state accounts for. */
export function adoptRun(state: WandbForwardState, up: UpsertedRun): WandbForwardState {
  if (up.historyLineCount !== state.next_offset) {
    throw new WandbStateError(
      `W&B run ${up.entity}/${up.project}/${up.name} holds ${up.historyLineCount} history lines but ${state.next_offset} ` +
        "were sent from here: the run name is shared with another run (set a salt for wandbRunName) or its history was changed on W&B",
    );
  }
  return { ...state, entity: up.entity, project: up.project, url: up.url };
}

/** Settles an unfinished send from W&B's line count: the first (count − offset) of its steps landed. */
export function reconcileInflight(state: WandbForwardState, up: UpsertedRun): { state: WandbForwardState; landed: number } {
  const inflight = state.inflight;
  if (!inflight) return { state: adoptRun(state, up), landed: 0 };
  const landed = up.historyLineCount - inflight.offset;
  if (landed < 0 || landed > inflight.steps.length) {
    throw new WandbStateError(
      `W&B run ${up.entity}/${up.project}/${up.name} holds ${up.historyLineCount} history lines; an unfinished send covered ` +
        `lines ${inflight.offset}..${inflight.offset + inflight.steps.length - 1}`,
    );
  }
  return {
    landed,
    state: {
      ...state,
      entity: up.entity,
      project: up.project,
      url: up.url,
      next_offset: inflight.offset + landed,
      last_step: landed > 0 ? inflight.steps[landed - 1] : inflight.prev_last_step,
      // The summary may or may not have landed: send it again (it replaces the whole summary, so that is safe).
      summary: inflight.summary,
      summary_dirty: true,
      inflight: null,
    },
  };
}

/** Where the run lives on W&B (for heartbeats); the run must have been created (state.url set). */
export function wandbRunRef(state: WandbForwardState): WandbRunRef {
  if (state.entity === null || state.url === null) throw new Error("the W&B run has not been created yet");
  return { entity: state.entity, project: state.project, name: state.name };
}

/** What a consumer stores and shows when forwarding a run failed, and how long the queue should wait to retry. */
export interface ForwardFailure {
  /** Whether a later delivery may succeed; if not, the messages still go round until the queue dead-letters them. */
  retryable: boolean;
  status: number | null;
  message: string;
  /** For message.retry({ delaySeconds }): the server's Retry-After, else 2 s·2ⁿ by delivery, capped at 60 s. */
  delay_s: number;
}

export function describeFailure(err: unknown, attempts: number): ForwardFailure {
  const backoff = Math.min(60, 2 * 2 ** Math.max(0, attempts - 1));
  if (err instanceof WandbError) {
    return {
      retryable: err.retryable,
      status: err.status,
      message: err.message,
      delay_s: err.retryAfterMs !== undefined ? Math.ceil(err.retryAfterMs / 1000) : err.retryable ? backoff : 60,
    };
  }
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return { retryable: !(err instanceof WandbStateError), status: null, message, delay_s: err instanceof WandbStateError ? 60 : backoff };
}

/**
 * Forwards one run's batch: reconciles an unfinished send, creates the run on first use, plans, persists the
 * write-ahead record, sends, persists the result. Throws WandbError (see .retryable) or WandbStateError; the
 * messages are then to be retried (or dead-lettered), and the persisted state stays consistent.
 */
export async function forwardRun(
  client: WandbClient,
  state: WandbForwardState,
  info: WandbRunInfo,
  messages: readonly ForwardMessage[],
  persist: PersistState,
  opts: ForwardOptions = {},
): Promise<ForwardOutcome> {
  const now = opts.now ?? Date.now;
  const nothing = { lines: 0, requests: 0, summary: false, complete: false };
  if (!info.cfg.track || state.finished) return { state, verdicts: messages.map(() => "ack"), sent: nothing };

  let s = state;
  let recovered: ForwardOutcome["recovered"];
  const save = async (next: WandbForwardState) => {
    const bumped = { ...next, version: s.version + 1 };
    await persist(bumped, s);
    s = bumped;
  };

  if (s.inflight) {
    if (s.inflight.started_at > 0 && now() - s.inflight.started_at < (opts.inflightTimeoutMs ?? DEFAULT_INFLIGHT_TIMEOUT_MS)) {
      return { state: s, verdicts: messages.map(() => "retry"), sent: nothing }; // another consumer is sending
    }
    const { offset, steps } = s.inflight;
    const r = reconcileInflight(s, await client.upsertRun(upsertInput(s, info)));
    recovered = { offset, landed: r.landed, of: steps.length };
    await save(r.state);
  } else if (s.url === null) {
    await save(adoptRun(s, await client.upsertRun(upsertInput(s, info))));
  }

  const plan = planForward(s, info, messages, opts);
  if (!plan.history && !plan.summary && !plan.complete) {
    if (plan.after.start_ts !== s.start_ts || plan.after.has_eval !== s.has_eval) await save(plan.after);
    return { state: s, verdicts: plan.verdicts, sent: nothing, recovered };
  }

  const before = s;
  await save({
    ...s,
    start_ts: plan.after.start_ts,
    inflight: {
      offset: s.next_offset,
      steps: plan.history?.steps ?? [],
      prev_last_step: s.last_step,
      summary: plan.summary ?? s.summary,
      started_at: now(),
    },
  });
  let requests: number;
  try {
    requests = await client.push(wandbRunRef(before), {
      history: plan.history ? { offset: plan.history.offset, lines: plan.history.lines } : undefined,
      summary: plan.summary ?? undefined,
      complete: plan.complete ?? undefined,
    });
  } catch (err) {
    // The send stopped: mark the record as needing reconciliation now rather than after the timeout.
    await save({ ...s, inflight: { ...s.inflight!, started_at: 0 } }).catch(() => {});
    throw err;
  }
  await save({ ...plan.after, inflight: null });
  return {
    state: s,
    verdicts: plan.verdicts,
    sent: { lines: plan.history?.lines.length ?? 0, requests, summary: plan.summary !== null, complete: plan.complete !== null },
    recovered,
  };
}
