/**
 * Child of test/bench/sweep-submit.ts: plans one sweep body with the planSweep of the tree at argv[2] (its
 * worker/routes/sweeps-plan.ts), as POST /v1/sweeps does before D1, and prints one JSON line: process CPU (every
 * thread: process.cpuUsage) and the main thread's own (/proc/self/task/<pid>/schedstat) around that one call.
 *   argv[3]: the body ("json": 4096 datasets in JSON, "toml": the same in TOML, "product": 64 lr × 64 seeds)
 *   argv[4]: "cold" (after the warm-up test/bounds' harness does: a 2-run sweep of each format, as an isolate's
 *            first big submit) or "warm" (after two rounds of planSweep on 4096 datasets of other URLs in both
 *            formats, a gc() and 200 ms for V8's background jobs to finish: an isolate that took big submits before)
 *   argv[5]: "prof": run with --cpu-prof to see where the time goes (the figures then include the profiler).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { sweepBody } from "./sweep-bodies";

const [root, kind, mode] = process.argv.slice(2);
const { planSweep } = (await import(pathToFileURL(path.join(root, "worker/routes/sweeps-plan.ts")).href)) as typeof import("../../worker/routes/sweeps-plan");
const env = {} as never;
const gc = (globalThis as { gc?: () => void }).gc;

const mainNs = () => Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]);

const tiny = `{"lr": [1e-4, 2e-4], "data": {"kind": "synthetic", "d_vit": 8, "n_features": 8, "sparsity": 0.1}}`;
planSweep(tiny, "application/json", "sw_warm", 0, env);
planSweep(`lr = [1e-4, 2e-4]\ndata = { kind = "synthetic", d_vit = 8, n_features = 8, sparsity = 0.1 }`, "application/toml", "sw_warm", 0, env);
if (mode === "warm") {
  for (let round = 0; round < 2; round++)
    for (const k of ["json", "toml"] as const) {
      const b = sweepBody(k, `w${round}`);
      planSweep(b.text, b.contentType, "sw_warm", 0, env);
    }
}
gc?.();
if (mode === "warm") await new Promise((r) => setTimeout(r, 200));
const body = sweepBody(kind as "json" | "toml" | "product");
const m0 = mainNs();
const c0 = process.cpuUsage();
// planSweep calls the probe between its phases (parse, expand, group and split, rows; chunks follow the last).
const marks: [number, number][] = [];
const probe = () => void marks.push([process.cpuUsage(c0).user + process.cpuUsage(c0).system, mainNs()]);
const p = planSweep(body.text, body.contentType, "sw_0123456789abcdef", 1_700_000_000_000, env, probe);
const c = process.cpuUsage(c0);
const m = mainNs() - m0;
const phases: Record<string, [number, number]> = {};
let prev: [number, number] = [0, m0];
["parse", "expand", "group_split", "rows"].forEach((name, k) => {
  if (!marks[k]) return;
  phases[name] = [(marks[k][0] - prev[0]) / 1000, (marks[k][1] - prev[1]) / 1e6];
  prev = marks[k];
});
phases.chunks = [(c.user + c.system - prev[0]) / 1000, (m0 + m - prev[1]) / 1e6];
const bytes = p.shared.length + [...p.groupChunks, ...p.runChunks].reduce((n, s) => n + s.length, 0);
console.log(JSON.stringify({ proc_ms: (c.user + c.system) / 1000, main_ms: m / 1e6, n_runs: p.nRuns, n_groups: p.groups.length, bytes, phases }));
