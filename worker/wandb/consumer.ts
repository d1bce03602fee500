/**
 * The W&B queue consumers (wrangler.toml [[queues.consumers]]): `sae-swarm-wandb` forwards each tracked run's
 * messages with forwardRun, its state kept in D1's wandb_runs with compare-and-swap on `version`;
 * `sae-swarm-wandb-dlq` records the messages that kept failing, so the API shows them. Also the cron heartbeat.
 */
import { readEvalArrays } from "../eval-store";
import { and, eq, isNotNull, lt, or, isNull } from "drizzle-orm";
import { runConfig } from "../run-config";
import type { Env } from "../env";
import { getDb, schema } from "../db";
import type { WandbMessage } from "../protocol";
import type { WandbStatus } from "../../db/schema";
import { WandbClient, type WandbClientOptions } from "./client";
import {
  describeFailure,
  forwardRun,
  initialForwardState,
  wandbRunName,
  wandbRunRef,
  type ForwardMessage,
  type ForwardOptions,
  type WandbForwardState,
  type WandbRunInfo,
} from "./forward";

export const WANDB_QUEUE_NAME = "sae-swarm-wandb";
export const WANDB_DLQ_NAME = "sae-swarm-wandb-dlq";
export const NO_API_KEY =
  "WANDB_API_KEY is not set on the Worker (wrangler secret put WANDB_API_KEY): W&B forwarding is skipped and the messages dropped";
/**
 * Wait before redelivering a message that is held back (rows waiting for earlier ones, a finish for the last rows,
 * or a run whose send another consumer may still be making): 2 s·2ⁿ⁻¹, capped at 60 s, so the 8 retries span
 * ~4 min, longer than INFLIGHT_TIMEOUT_MS: a message never dead-letters only because a consumer crashed mid-send.
 */
const heldBackDelay = (attempts: number) => Math.min(60, 2 * 2 ** Math.max(0, attempts - 1));
/** A write-ahead record this old belongs to a consumer that died (a delivery's W&B calls take well under this). */
export const INFLIGHT_TIMEOUT_MS = 120_000;
/** A live run not written to for this long gets a heartbeat from the cron trigger. */
export const HEARTBEAT_IDLE_MS = 25_000;

export interface ConsumerOptions {
  /** Overrides for the W&B client (tests: no sleeping). */
  client?: Partial<WandbClientOptions>;
  forward?: ForwardOptions;
  now?: () => number;
}

/** Tried this many times inside one delivery; longer outages go back to the queue with a delay (no idle wall time). */
const CLIENT_DEFAULTS: Partial<WandbClientOptions> = { maxAttempts: 3, maxWaitMs: 10_000 };

class StaleStateError extends Error {
  override name = "StaleStateError";
}

function makeClient(env: Env, opts: ConsumerOptions): WandbClient {
  return new WandbClient({ ...CLIENT_DEFAULTS, ...opts.client, apiKey: env.WANDB_API_KEY!, baseUrl: env.WANDB_BASE_URL || undefined });
}

/** The queue() handler: routes a batch to the forwarder or the dead-letter recorder by queue name. */
export async function consumeQueue(batch: MessageBatch<unknown>, env: Env, opts: ConsumerOptions = {}): Promise<void> {
  if (batch.queue === WANDB_DLQ_NAME || batch.queue.endsWith("-dlq")) return recordDeadLetters(batch as MessageBatch<WandbMessage>, env, opts);
  return forwardBatch(batch as MessageBatch<WandbMessage>, env, opts);
}

function isWandbMessage(b: unknown): b is WandbMessage {
  const m = b as WandbMessage | null;
  return !!m && typeof m === "object" && typeof m.run_id === "string" && (m.kind === "metrics" || m.kind === "eval" || m.kind === "finish");
}

/** Creates the run's wandb_runs row if missing (no overwrite: a concurrent creator wins) and returns it. */
async function ensureRow(env: Env, runId: string, now: number) {
  const db = getDb(env);
  await db
    .insert(schema.wandbRuns)
    .values({ runId, name: await wandbRunName(runId), status: "pending", updatedAt: now })
    .onConflictDoNothing();
  return (await db.query.wandbRuns.findFirst({ where: eq(schema.wandbRuns.runId, runId) }))!;
}

const statusOf = (s: WandbForwardState): WandbStatus => (s.finished ? "finished" : s.url ? "live" : "pending");

export async function forwardBatch(batch: MessageBatch<WandbMessage>, env: Env, opts: ConsumerOptions = {}): Promise<void> {
  const now = opts.now ?? Date.now;
  const db = getDb(env);
  const byRun = new Map<string, Message<WandbMessage>[]>();
  for (const m of batch.messages) {
    if (!isWandbMessage(m.body)) {
      console.error("W&B queue: dropping a message that is not a WandbMessage", JSON.stringify(m.body).slice(0, 200));
      m.ack();
      continue;
    }
    const list = byRun.get(m.body.run_id) ?? [];
    list.push(m);
    byRun.set(m.body.run_id, list);
  }
  const client = env.WANDB_API_KEY ? makeClient(env, opts) : null;

  await Promise.all(
    [...byRun].map(async ([runId, msgs]) => {
      const run = await db.query.runs.findFirst({ where: eq(schema.runs.id, runId) });
      if (!run || !run.track) {
        for (const m of msgs) m.ack(); // nothing to forward (an unknown run cannot become known later)
        return;
      }
      if (!client) {
        await ensureRow(env, runId, now());
        await db
          .update(schema.wandbRuns)
          .set({ status: "skipped", lastError: NO_API_KEY, lastErrorAt: now(), updatedAt: now() })
          .where(eq(schema.wandbRuns.runId, runId));
        for (const m of msgs) m.ack();
        return;
      }
      const maxAttempts = Math.max(...msgs.map((m) => m.attempts));
      try {
        const row = await ensureRow(env, runId, now());
        const cfg = (await runConfig(env.DB, run.id))!;
        let state: WandbForwardState = row.state ? JSON.parse(row.state) : { ...initialForwardState(row.name, cfg), version: row.version };
        if (state.version !== row.version) state = { ...state, version: row.version };
        const info: WandbRunInfo = {
          run_id: run.id,
          cfg,
          group_name: run.sweepId,
          display_name: `${run.sweepId} #${run.idx}`,
          config_extra: { sae_swarm: { sweep_id: run.sweepId, group_id: run.groupId, run_id: run.id } },
        };
        const messages: ForwardMessage[] = await Promise.all(msgs.map(async (m) => ({ body: await withArrays(env, m.body), attempts: m.attempts })));
        const persist = async (next: WandbForwardState, prev: WandbForwardState) => {
          const res = await env.DB.prepare(
            `UPDATE wandb_runs SET state = ?1, version = ?2, url = ?3, status = ?4, updated_at = ?5,
               last_error = CASE WHEN ?4 = 'finished' THEN NULL ELSE last_error END
             WHERE run_id = ?6 AND version = ?7`,
          )
            .bind(JSON.stringify(next), next.version, next.url, statusOf(next), now(), runId, prev.version)
            .run();
          if (res.meta.changes !== 1) throw new StaleStateError(`W&B state of run ${runId} changed under this consumer (version ${prev.version})`);
        };
        const out = await forwardRun(client, state, info, messages, persist, { inflightTimeoutMs: INFLIGHT_TIMEOUT_MS, now, ...opts.forward });
        if (out.recovered) console.log(`W&B run ${runId}: reconciled an unfinished send`, JSON.stringify(out.recovered));
        msgs.forEach((m, i) => (out.verdicts[i] === "ack" ? m.ack() : m.retry({ delaySeconds: heldBackDelay(m.attempts) })));
      } catch (err) {
        const f = describeFailure(err, maxAttempts);
        const message = `${f.retryable ? "" : "not retryable: "}${f.message}`.slice(0, 4000);
        console.error(`W&B run ${runId}: ${message}`);
        await db
          .update(schema.wandbRuns)
          .set({ status: "retrying", lastError: message, lastErrorAt: now(), updatedAt: now() })
          .where(eq(schema.wandbRuns.runId, runId))
          .catch((e) => console.error("W&B: could not store the error", e));
        // Not retryable too: the message goes round until max_retries, then to the dead-letter queue (visible).
        for (const m of msgs) m.retry({ delaySeconds: f.delay_s });
      }
    }),
  );
}

/** An eval whose arrays did not fit the message: read them from D1. */
async function withArrays(env: Env, m: WandbMessage): Promise<WandbMessage> {
  if (m.kind !== "eval" || !m.arrays_omitted) return m;
  const e = await getDb(env).query.evals.findFirst({ where: eq(schema.evals.runId, m.run_id) });
  if (!e) throw new Error(`eval of run ${m.run_id} has arrays_omitted but is not in D1`);
  return { ...m, eval: { ...m.eval, ...(await readEvalArrays(env.DB, m.run_id, { freqs: e.freqs, mean_values: e.meanValues })) }, arrays_omitted: false };
}

/** The dead-letter consumer: one wandb_dead_letters row per message, and the run marked dead_lettered. */
export async function recordDeadLetters(batch: MessageBatch<WandbMessage>, env: Env, opts: ConsumerOptions = {}): Promise<void> {
  const now = (opts.now ?? Date.now)();
  const db = getDb(env);
  for (const m of batch.messages) {
    if (!isWandbMessage(m.body)) {
      m.ack();
      continue;
    }
    const body = m.body;
    const run = await db.query.runs.findFirst({ where: eq(schema.runs.id, body.run_id) });
    let error: string | null = null;
    if (run) {
      const row = await ensureRow(env, body.run_id, now);
      error = row.lastError ?? "the message was retried until the queue's max_retries without a recorded error";
    }
    const steps = body.kind === "metrics" ? body.rows.map((r) => r.step) : [];
    const stmts = [
      env.DB.prepare(`INSERT INTO wandb_dead_letters (run_id, kind, steps, attempts, error, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)`).bind(
        body.run_id,
        body.kind,
        JSON.stringify(steps),
        m.attempts,
        error,
        now,
      ),
    ];
    if (run) {
      stmts.push(
        env.DB.prepare(
          `UPDATE wandb_runs SET status = 'dead_lettered', dead_letters = dead_letters + 1, last_error = ?2, last_error_at = ?3, updated_at = ?3 WHERE run_id = ?1`,
        ).bind(body.run_id, `dead-lettered a ${body.kind} message${steps.length ? ` (steps ${steps.join(", ")})` : ""}: ${error}`, now),
      );
    }
    await env.DB.batch(stmts);
    m.ack();
  }
}

/**
 * The cron trigger: a `{}` file_stream heartbeat for every live (created, unfinished) W&B run not written to for
 * HEARTBEAT_IDLE_MS, so W&B does not mark runs crashed while a group waits for a runner.
 */
export async function heartbeatIdleRuns(env: Env, opts: ConsumerOptions = {}): Promise<number> {
  if (!env.WANDB_API_KEY) return 0;
  const now = (opts.now ?? Date.now)();
  const db = getDb(env);
  const idle = await db
    .select()
    .from(schema.wandbRuns)
    .where(
      and(
        or(eq(schema.wandbRuns.status, "live"), eq(schema.wandbRuns.status, "retrying")),
        isNotNull(schema.wandbRuns.url),
        lt(schema.wandbRuns.updatedAt, now - HEARTBEAT_IDLE_MS),
        or(isNull(schema.wandbRuns.heartbeatAt), lt(schema.wandbRuns.heartbeatAt, now - HEARTBEAT_IDLE_MS)),
      ),
    )
    .limit(500);
  const client = makeClient(env, opts);
  let sent = 0;
  await Promise.all(
    idle.map(async (r) => {
      const state = r.state ? (JSON.parse(r.state) as WandbForwardState) : null;
      if (!state || state.finished || state.url === null) return;
      try {
        await client.heartbeat(wandbRunRef(state));
        sent++;
        await db.update(schema.wandbRuns).set({ heartbeatAt: now }).where(eq(schema.wandbRuns.runId, r.runId));
      } catch (err) {
        console.error(`W&B heartbeat for run ${r.runId} failed`, err);
      }
    }),
  );
  return sent;
}

/** What the API shows about a run's W&B side (never the key). */
export function wandbView(row: typeof schema.wandbRuns.$inferSelect | undefined, track: boolean, hasKey: boolean) {
  if (!track) return null;
  if (!row) return { name: null, url: null, status: hasKey ? ("pending" as const) : ("skipped" as const), last_error: hasKey ? null : NO_API_KEY, dead_letters: 0 };
  return { name: row.name, url: row.url, status: row.status, last_error: row.lastError, last_error_at: row.lastErrorAt, dead_letters: row.deadLetters };
}
