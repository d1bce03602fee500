/**
 * An eval's per-feature arrays (freqs, mean_values: d_sae entries each) in D1 rows of EVAL_CHUNK features
 * (eval_arrays), so that no row passes D1's 2 MB limit whatever d_sae is: a chunk is at most 16 384 · 2 numbers of
 * ≤ 24 characters, under 800 KB. The evals row itself keeps the scalars, with freqs = '' marking this layout (rows
 * written before it hold the arrays inline).
 */
import type { EvalMetrics } from "../shaders/config";

export const EVAL_CHUNK = 16_384;

/** evals.freqs / mean_values of an eval whose arrays are in eval_arrays. */
export const CHUNKED = "";

/**
 * The statements that store `e`'s arrays, for the batch that inserts its evals row: each applies only where that
 * row was inserted by this very post (lease `leaseId` at `ts`), so a duplicate post adds nothing.
 */
export function evalArrayInserts(db: D1Database, runId: string, leaseId: string, ts: number, e: Pick<EvalMetrics, "freqs" | "mean_values">): D1PreparedStatement[] {
  const insert = db.prepare(
    `INSERT INTO eval_arrays (run_id, chunk, freqs, mean_values)
     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM evals WHERE run_id = ?1 AND lease_id = ?5 AND ts = ?6 AND freqs = '')
     ON CONFLICT (run_id, chunk) DO NOTHING`,
  );
  const out: D1PreparedStatement[] = [];
  for (let i = 0, k = 0; i < Math.max(1, e.freqs.length); i += EVAL_CHUNK, k++)
    out.push(insert.bind(runId, k, JSON.stringify(e.freqs.slice(i, i + EVAL_CHUNK)), JSON.stringify(e.mean_values.slice(i, i + EVAL_CHUNK)), leaseId, ts));
  return out;
}

/** freqs and mean_values of a stored eval (its evals row's columns as read), from eval_arrays or inline. */
export async function readEvalArrays(db: D1Database, runId: string, row: { freqs: string; mean_values: string }): Promise<Pick<EvalMetrics, "freqs" | "mean_values">> {
  if (row.freqs !== CHUNKED) return { freqs: JSON.parse(row.freqs), mean_values: JSON.parse(row.mean_values) };
  const { results } = await db.prepare(`SELECT freqs, mean_values FROM eval_arrays WHERE run_id = ?1 ORDER BY chunk`).bind(runId).all<{ freqs: string; mean_values: string }>();
  const freqs: number[] = [];
  const mean_values: (number | null)[] = [];
  for (const r of results) {
    for (const v of JSON.parse(r.freqs) as number[]) freqs.push(v);
    for (const v of JSON.parse(r.mean_values) as (number | null)[]) mean_values.push(v);
  }
  return { freqs, mean_values };
}
