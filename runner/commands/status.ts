/**
 * `sae-swarm status [SWEEP_ID]`: the sweeps (newest first), then one sweep's groups (with their leases) and runs
 * (the config keys that vary, training progress, the latest step metrics, and the eval: L0, MSE, dead/dense).
 */
import { apiJson, resolveTarget, type Target, parseClientArgs } from "./server";
import { ago, num, table } from "./table";

export const STATUS_USAGE = `usage: sae-swarm status [SWEEP_ID] [--server URL] [--token T]

Without SWEEP_ID: every sweep with its progress, then the newest sweep in detail.
With SWEEP_ID: that sweep's groups (status, runs done, live leases: runner, step, expiry) and runs (the config
keys that vary across the sweep, status, step, latest training loss/L0/MSE, eval L0/MSE/dead/dense). A sweep with
TopK or BatchTopK runs also shows their k, and AuxK's latest aux loss and latents dead in training.

  --server URL   the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T      the submitter token (env SAE_SWARM_TOKEN; default SUBMIT_TOKEN from ./.dev.vars)
  --kernels      the matmul kernels each group's runner autotuned for its adapter and shape, with their GFLOP/s
  --json         print the sweep and its runs as JSON
  -h, --help     this help`;

interface Progress {
  n_runs: number;
  waiting: number;
  leased: number;
  done: number;
  failed: number;
  fraction_done: number;
}
interface SweepSummary {
  id: string;
  status: string;
  created_at: number;
  finished_at: number | null;
  n_runs: number;
  n_groups: number;
  progress: Progress;
  warnings: string[];
}
interface LeaseView {
  id: string;
  runner_id: string;
  status: string;
  expires_at: number;
  heartbeat_at: number | null;
  progress: { step: number; n_steps: number; samples_per_s?: number } | null;
  run_ids: string[];
}
/** What the sweep view says of the kernels a group's latest runner reported (worker/routes/views.ts kernelsView). */
export interface GroupKernels {
  runner_id: string;
  adapter: string;
  key: string;
  source: "tuned" | "cache";
  timing: string;
  tuned_ms: number;
  candidates: number;
  kernels: Record<string, { choice: string; gflops: number; default_gflops: number }>;
}
interface SweepDetail {
  sweep: SweepSummary;
  groups: { id: string; idx: number; status: string; n_runs: number; failures: number; last_error: string | null; progress: Progress; leases: LeaseView[]; kernels?: GroupKernels | null }[];
  runs: { id: string; idx: number; group_id: string; status: string; n_steps: number; error: string | null; cfg: Record<string, unknown> }[];
}
export interface RunDetail {
  run: {
    id: string;
    status: string;
    n_steps: number;
    error: string | null;
    latest: { step: number; loss: number; mse: number; l0: number; aux_loss?: number; n_dead_train?: number } | null;
    eval: { l0: number; mse: number; fvu: number; n_dead: number; n_dense: number } | null;
  };
}

const isSelect = (cfg: Record<string, unknown>) => {
  const kind = (cfg.sae as { kind?: string } | undefined)?.kind;
  return kind === "topk" || kind === "batchtopk";
};

/** Flattens a config to dotted keys ("sae.kind"), lists as JSON. */
export function flatten(o: Record<string, unknown>, prefix = "", out: Record<string, string> = {}): Record<string, string> {
  for (const [k, v] of Object.entries(o)) {
    const key = prefix + k;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v as Record<string, unknown>, key + ".", out);
    else out[key] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return out;
}

/** The config keys whose values differ across runs (seeds left out: every config gets its own). */
export function varyingKeys(cfgs: Record<string, unknown>[]): string[] {
  const flat = cfgs.map((c) => flatten(c));
  const keys = [...new Set(flat.flatMap(Object.keys))];
  return keys.filter((k) => !/(^|\.)seed$/.test(k) && new Set(flat.map((f) => f[k])).size > 1);
}

/** Runs fetched a few at a time (the sweep view has no metrics; one GET per run). */
async function runDetails(t: Target, ids: string[], parallel = 8): Promise<Map<string, RunDetail["run"]>> {
  const out = new Map<string, RunDetail["run"]>();
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, ids.length) }, async () => {
      while (next < ids.length) {
        const id = ids[next++];
        out.set(id, (await apiJson<RunDetail>(t, `/v1/runs/${encodeURIComponent(id)}`)).run);
      }
    }),
  );
  return out;
}

const pct = (p: Progress) => `${p.done}/${p.n_runs}`;
const shortId = (id: string, sweep: string) => (id.startsWith(sweep + "-") ? id.slice(sweep.length + 1) : id);

export function sweepsTable(sweeps: SweepSummary[], now = Date.now()): string {
  return table(
    ["sweep", "status", "runs done", "leased", "failed", "groups", "created"],
    sweeps.map((s) => [s.id, s.status, pct(s.progress), String(s.progress.leased), String(s.progress.failed), String(s.n_groups), ago(s.created_at, now)]),
  );
}

export function sweepReport(d: SweepDetail, runs: Map<string, RunDetail["run"]>, now = Date.now()): string {
  const s = d.sweep;
  const out: string[] = [];
  out.push(`sweep ${s.id}: ${s.status}, ${s.progress.done}/${s.n_runs} runs done${s.progress.failed ? `, ${s.progress.failed} failed` : ""}, ${s.n_groups} group${s.n_groups === 1 ? "" : "s"}, created ${ago(s.created_at, now)}`);
  for (const w of s.warnings) out.push(`  warning: ${w}`);
  out.push("");
  out.push(
    table(
      ["group", "status", "runs done", "attempts failed", "leases (runner: step/steps, expiry)"],
      d.groups.map((g) => [
        shortId(g.id, s.id),
        g.status,
        pct(g.progress),
        String(g.failures),
        g.leases.map((l) => `${l.runner_id}: ${l.progress ? `${l.progress.step}/${l.progress.n_steps}` : "starting"}, ${l.status === "active" ? `expires ${ago(l.expires_at, now)}` : l.status}`).join("; ") ||
          (g.last_error ? `last error: ${g.last_error}` : "–"),
      ]),
    ),
  );
  out.push("");
  const keys = varyingKeys(d.runs.map((r) => r.cfg));
  const flat = new Map(d.runs.map((r) => [r.id, flatten(r.cfg)]));
  // TopK/BatchTopK runs: their k is a column even when every run shares it, and AuxK's metrics are columns.
  const selects = d.runs.some((r) => isSelect(r.cfg));
  if (selects && !keys.includes("sae.k")) keys.splice(keys.includes("sae.kind") ? keys.indexOf("sae.kind") + 1 : 0, 0, "sae.k");
  const short = (k: string) => k.replace(/^objective\./, "obj.").replace(/^progress\//, "");
  out.push(
    table(
      ["run", "group", ...keys.map(short), "status", "step", "loss", "L0", "MSE", ...(selects ? ["aux", "dead (train)"] : []), "eval L0", "eval MSE", "dead", "dense"],
      d.runs.map((r) => {
        const x = runs.get(r.id);
        const f = flat.get(r.id)!;
        return [
          shortId(r.id, s.id),
          shortId(r.group_id, s.id),
          ...keys.map((k) => { const v = f[k] === undefined || f[k] === "null" ? "–" : f[k]; const n = Number(v); return v !== "" && Number.isFinite(n) && !/^(true|false)$/.test(v) ? num(n) : v; }),
          r.status,
          `${r.status === "done" ? r.n_steps : (x?.latest?.step ?? 0)}/${r.n_steps}`, // the latest logged step until done
          num(x?.latest?.loss),
          num(x?.latest?.l0),
          num(x?.latest?.mse),
          ...(selects ? [num(x?.latest?.aux_loss), x?.latest?.n_dead_train === undefined ? "–" : String(x.latest.n_dead_train)] : []),
          num(x?.eval?.l0),
          num(x?.eval?.mse),
          x?.eval ? String(x.eval.n_dead) : "–",
          x?.eval ? String(x.eval.n_dense) : "–",
        ];
      }),
    ),
  );
  const errors = d.runs.filter((r) => r.error);
  for (const r of errors) out.push(`  ${shortId(r.id, s.id)} failed: ${r.error}`);
  return out.join("\n");
}

/** `status --kernels`: per group, the runner's adapter and shape, then each step matmul's kernel and rate. */
export function kernelsReport(d: Pick<SweepDetail, "sweep" | "groups">): string {
  const out: string[] = [];
  for (const g of d.groups) {
    const k = g.kernels;
    if (!k) {
      out.push(`group ${shortId(g.id, d.sweep.id)}: no kernels reported yet`);
      continue;
    }
    const how = k.source === "tuned" ? `tuned in ${(k.tuned_ms / 1000).toFixed(1)} s over ${k.candidates} candidates (${k.timing} timing)` : "from the runner's cache";
    out.push(`group ${shortId(g.id, d.sweep.id)}: ${k.runner_id} on ${k.adapter}, ${k.key}, ${how}`);
    out.push(
      table(
        ["matmul", "kernel", "GFLOP/s", "default GFLOP/s"],
        Object.entries(k.kernels).map(([m, x]) => [m, x.choice, x.gflops.toFixed(2), x.default_gflops.toFixed(2)]),
      )
        .split("\n")
        .map((l) => `  ${l}`)
        .join("\n"),
    );
  }
  return out.join("\n");
}

export async function status(argv: string[]): Promise<number> {
  const showKernels = argv.includes("--kernels");
  const args = parseClientArgs(argv.filter((a) => a !== "--kernels"), "status", STATUS_USAGE, { min: 0, max: 1, what: "at most one sweep id" });
  if (typeof args === "number") return args;
  const { values, positionals } = args;
  const t = resolveTarget(values);
  let id = positionals[0];
  if (!id) {
    const { sweeps } = await apiJson<{ sweeps: SweepSummary[] }>(t, "/v1/sweeps?limit=20");
    if (sweeps.length === 0) {
      console.log(`no sweeps on ${t.server} yet: submit one with npx sae-swarm submit examples/demo.toml`);
      return 0;
    }
    if (!values.json) console.log(sweepsTable(sweeps) + "\n");
    id = sweeps[0].id;
  }
  const detail = await apiJson<SweepDetail>(t, `/v1/sweeps/${encodeURIComponent(id)}`);
  if (showKernels && !values.json) {
    console.log(kernelsReport(detail));
    return 0;
  }
  const runs = await runDetails(t, detail.runs.map((r) => r.id));
  if (values.json) console.log(JSON.stringify({ ...detail, runs: detail.runs.map((r) => ({ ...r, ...runs.get(r.id) })) }, null, 2));
  else console.log(sweepReport(detail, runs));
  return 0;
}
