/** What goes on WANDB_QUEUE (worker/protocol.ts WandbMessage): only newly stored rows, only for tracked runs. */
import type { WandbMessage } from "./protocol";
import type { Env } from "./env";

/** Cloudflare Queues take at most 128 KB per message; keep a margin for the envelope. */
export const MAX_MESSAGE_BYTES = 120_000;
const MAX_BATCH_MESSAGES = 100;
const MAX_BATCH_BYTES = 250_000;

const size = (m: WandbMessage) => new TextEncoder().encode(JSON.stringify(m)).byteLength;

/** An eval with thousands of features can pass the message limit; then its arrays stay in D1 (GET /v1/runs/:id/eval). */
export function fitEval(m: Extract<WandbMessage, { kind: "eval" }>): WandbMessage {
  if (size(m) <= MAX_MESSAGE_BYTES) return m;
  return { ...m, eval: { ...m.eval, freqs: [], mean_values: [] }, arrays_omitted: true };
}

/**
 * A message as one or more that each fit MAX_MESSAGE_BYTES: a metrics message is cut into consecutive runs of rows
 * (in step order; the consumer sends every row once and in step order whatever order they arrive in), an eval
 * loses its arrays (fitEval). Rows are measured one by one, so this is linear in the message's size.
 */
export function splitMessage(m: WandbMessage): WandbMessage[] {
  if (m.kind === "eval") return [fitEval(m)];
  if (m.kind !== "metrics" || size(m) <= MAX_MESSAGE_BYTES) return [m];
  const envelope = size({ ...m, rows: [] });
  const out: WandbMessage[] = [];
  let rows: typeof m.rows = [];
  let bytes = envelope;
  for (const r of m.rows) {
    const n = new TextEncoder().encode(JSON.stringify(r)).byteLength + 1; // the comma
    if (rows.length && bytes + n > MAX_MESSAGE_BYTES) {
      out.push({ ...m, rows });
      rows = [];
      bytes = envelope;
    }
    rows.push(r);
    bytes += n;
  }
  if (rows.length) out.push({ ...m, rows });
  return out;
}

export async function enqueue(env: Env, messages: WandbMessage[]): Promise<void> {
  let batch: { body: WandbMessage; contentType: "json" }[] = [];
  let bytes = 0;
  for (const m of messages.flatMap(splitMessage)) {
    const n = size(m);
    if (batch.length && (batch.length >= MAX_BATCH_MESSAGES || bytes + n > MAX_BATCH_BYTES)) {
      await env.WANDB_QUEUE.sendBatch(batch);
      batch = [];
      bytes = 0;
    }
    batch.push({ body: m, contentType: "json" });
    bytes += n;
  }
  if (batch.length) await env.WANDB_QUEUE.sendBatch(batch);
}
