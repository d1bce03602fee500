/**
 * The demo half of `npm start`: submits a sweep file, follows it to the end, and prints one row per run
 * (L0, MSE, FVU, dead/dense counts, and feature recovery against the synthetic ground truth).
 *   SAE_SWARM_TOKEN=SUBMIT_TOKEN node --import tsx scripts/demo.ts --server URL SWEEP.toml   (or --token T)
 * Exits 0 when the sweep finished, 1 when it failed.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { SyntheticData, TrainConfig } from "../shaders/config";
import { dSae } from "../shaders/config";
import { decodeCheckpoint } from "../runner/safetensors";
import { meanMaxCosine, SyntheticDataset } from "../runner/data/synthetic";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { server: { type: "string" }, token: { type: "string" }, "timeout-s": { type: "string", default: "1800" } },
});
const server = (values.server ?? "http://127.0.0.1:8787").replace(/\/$/, "");
const file = positionals[0];
// The token from the environment (npm start passes it so), not the command line that `ps` shows.
values.token ??= process.env.SAE_SWARM_TOKEN;
if (!file || !values.token) {
  console.error("usage: SAE_SWARM_TOKEN=SUBMIT_TOKEN demo.ts --server URL SWEEP.toml");
  process.exit(2);
}
const auth = { authorization: `Bearer ${values.token}` };
const log = (m: string) => console.log(`[demo] ${m}`);

async function api<T>(path: string): Promise<T> {
  const res = await fetch(`${server}${path}`, { headers: auth });
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

const body = readFileSync(file, "utf8");
const submitted = await fetch(`${server}/v1/sweeps`, {
  method: "POST",
  headers: { ...auth, "content-type": file.endsWith(".json") ? "application/json" : "application/toml" },
  body,
});
if (submitted.status !== 201) {
  console.error(`[demo] the Worker refused ${file}: ${submitted.status} ${await submitted.text()}`);
  process.exit(1);
}
const sweep = (await submitted.json()) as { id: string; n_runs: number; n_groups: number };
log(`submitted ${file}: sweep ${sweep.id}, ${sweep.n_runs} runs in ${sweep.n_groups} groups`);
log(`dashboard: ${server}/#sweep=${sweep.id}`);

interface SweepView {
  sweep: { id: string; status: string; progress: unknown };
  groups: Array<{ id: string; status: string; n_runs: number; last_error: string | null }>;
  runs: Array<{ id: string; status: string; group_id: string; cfg: TrainConfig; error: string | null }>;
}
const deadline = Date.now() + Number(values["timeout-s"]) * 1000;
let view: SweepView;
let last = "";
for (;;) {
  view = await api<SweepView>(`/v1/sweeps/${sweep.id}`);
  const counts: Record<string, number> = {};
  for (const g of view.groups) counts[g.status] = (counts[g.status] ?? 0) + 1;
  const line = `sweep ${view.sweep.status}; groups ${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ")}`;
  if (line !== last) log(line);
  last = line;
  if (view.sweep.status === "done" || view.sweep.status === "failed") break;
  if (Date.now() > deadline) {
    console.error(`[demo] the sweep did not finish within ${values["timeout-s"]} s`);
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 2000));
}

const rows: string[][] = [["run", "sae", "objective", "coeff / k", "lr", "L0", "MSE", "FVU", "dead", "dense", "recovery"]];
for (const run of view.runs) {
  const c = run.cfg;
  // TopK/BatchTopK have no sparsity coefficient (it is ignored): their k is what sets L0.
  const sparsity = c.sae.k !== null && (c.sae.kind === "topk" || c.sae.kind === "batchtopk") ? `k=${c.sae.k}` : String(c.objective.sparsity_coeff);
  const row = [run.id, c.sae.kind, c.objective.kind, sparsity, String(c.lr)];
  if (run.status !== "done") {
    rows.push([...row, run.status, run.error ?? "", "", "", "", ""]);
    continue;
  }
  const { run: detail } = await api<{ run: { eval: { l0: number; mse: number; fvu: number; n_dead: number; n_dense: number } } }>(`/v1/runs/${run.id}`);
  const e = detail.eval;
  let recovery = "";
  if (c.data.kind === "synthetic") {
    const res = await fetch(`${server}/v1/runs/${run.id}/checkpoint`, { headers: auth });
    const ck = decodeCheckpoint(new Uint8Array(await res.arrayBuffer()));
    const truth = new SyntheticDataset(c.data as SyntheticData).features();
    recovery = meanMaxCosine(truth, (c.data as SyntheticData).n_features, ck.weights.W_dec, dSae(c), c.sae.d_vit).toFixed(3);
  }
  rows.push([...row, e.l0.toFixed(2), e.mse.toExponential(2), e.fvu.toFixed(3), String(e.n_dead), String(e.n_dense), recovery]);
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
console.log("");
for (const r of rows) console.log(r.map((cell, i) => cell.padEnd(widths[i])).join("  "));
console.log("\nrecovery: mean over the true features of the best cosine with a learned decoder row (1 = all found)");
process.exit(view.sweep.status === "done" ? 0 : 1);
