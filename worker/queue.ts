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

export async function enqueue(env: Env, messages: WandbMessage[]): Promise<void> {
  let batch: { body: WandbMessage; contentType: "json" }[] = [];
  let bytes = 0;
  for (const m of messages) {
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
