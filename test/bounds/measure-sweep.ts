/**
 * Child process for sweep-bounds.test.ts: reads one sweep body (file argv[2], content type argv[3]) and runs what
 * POST /v1/sweeps does before D1 (planSweep: parse, validate, expand, group, split into shared + per-run parts,
 * serialize the rows), then prints one JSON line: the outcome, the CPU time it took (the process's, and the main
 * thread's alone: main_thread_ms) and the heap it grew by. Run
 * with --expose-gc (a clean heap before), a capped old space (a body that needs far more memory dies here) and a
 * 1 MiB young generation, so that short-lived garbage is collected as it would be in a busy isolate: the heap is
 * sampled between planSweep's phases (parse, expand, group and split, rows) and at the end; heap_growth_mib is the
 * highest sample above the clean heap (what the plan holds live, plus at most ~1 MiB of young garbage); gcs counts
 * the collections that ran meanwhile. calib_ms is a fixed piece of work measured after it (calibrate), which the test
 * bounds the CPU by.
 * D1's own time is not in it (the Worker does not pay for it in CPU); serializing the rows it binds is.
 */
import { existsSync, readFileSync } from "node:fs";
import { PerformanceObserver, performance } from "node:perf_hooks";
import { ApiError } from "../../worker/errors";
import { fullConfig } from "../../worker/run-config";
import { expandSweep, parseSweepText, sortedJson } from "../../worker/sweep";
import { planSweep } from "../../worker/routes/sweeps-plan";
import type { Env } from "../../worker/env";

const text = readFileSync(process.argv[2], "utf8");
const contentType = process.argv[3];
const gc = (globalThis as { gc?: () => void }).gc!;
const env = {} as Env;

// Warm up the code paths once on a tiny sweep of each format, so the measurement is the body's cost, not compiling
// the parser (a Worker isolate serves many requests).
const tiny = `{"lr": [1e-4, 2e-4], "data": {"kind": "synthetic", "d_vit": 8, "n_features": 8, "sparsity": 0.1}}`;
planSweep(tiny, "application/json", "sw_warm", 0, env);
planSweep(`lr = [1e-4, 2e-4]\ndata = { kind = "synthetic", d_vit = 8, n_features = 8, sparsity = 0.1 }`, "application/toml", "sw_warm", 0, env);

gc();
const gcTimes: number[] = [];
const observer = new PerformanceObserver((list) => gcTimes.push(...list.getEntries().map((e) => e.startTime)));
observer.observe({ entryTypes: ["gc"] });
const heap0 = process.memoryUsage().heapUsed;
let peak = heap0;
const sample = () => void (peak = Math.max(peak, process.memoryUsage().heapUsed));
// The main thread's own CPU (Linux: /proc/self/task/<pid>/schedstat, ns on CPU), beside the process's: a Worker's
// CPU limit counts the isolate's thread (see sweep-bounds.test.ts), V8's background compiles and GC helpers aside.
const schedstat = `/proc/self/task/${process.pid}/schedstat`;
const mainNs = () => (existsSync(schedstat) ? Number(readFileSync(schedstat, "utf8").split(" ")[0]) : NaN);
let main = 0;
let cpu = { user: 0, system: 0 };
let outcome: Record<string, unknown>;
const t0 = performance.now();
let t1 = t0;
const main0 = mainNs();
const cpu0 = process.cpuUsage();
try {
  const p = planSweep(text, contentType, "sw_0123456789abcdef", 1_700_000_000_000, env, sample);
  cpu = process.cpuUsage(cpu0);
  main = mainNs() - main0;
  t1 = performance.now();
  peak = Math.max(peak, process.memoryUsage().heapUsed);
  const stored = p.shared.length + [...p.groupChunks, ...p.runChunks].reduce((n, s) => n + s.length, 0);
  // Outside the measurement: the last run's config read back as a claim does equals the expanded one.
  const runs = p.runChunks.flatMap((s) => JSON.parse(s) as [number, number, object][]);
  const groups = new Map(p.groupChunks.flatMap((s) => JSON.parse(s) as [number, object, object][]).map((g) => [g[0], g]));
  const last = runs.find((r) => r[0] === p.nRuns - 1)!;
  const back = fullConfig({ shared: p.shared, cfg: JSON.stringify(last[2]), data: JSON.stringify(groups.get(last[1])![2]) });
  const want = expandSweep(parseSweepText(text, contentType).raw).configs[p.nRuns - 1].cfg;
  outcome = { ok: true, n_runs: p.nRuns, n_groups: p.groups.length, stored_bytes: stored, roundtrip: sortedJson(back) === sortedJson(want) };
} catch (e) {
  cpu = process.cpuUsage(cpu0);
  main = mainNs() - main0;
  t1 = performance.now();
  peak = Math.max(peak, process.memoryUsage().heapUsed);
  if (!(e instanceof ApiError)) throw e;
  outcome = { ok: false, status: e.status, code: e.code, field: e.field, message: e.message.slice(0, 300), n_issues: e.issues?.length ?? 0 };
}
await new Promise((r) => setTimeout(r, 10)); // GC entries arrive asynchronously
observer.disconnect();
const gcs = gcTimes.filter((t) => t >= t0 && t <= t1).length;
const heap_growth_mib = (peak - heap0) / 2 ** 20;
// After the measurement, not before: work done before it grows V8's young generation, which makes the plan cheaper
// (fewer scavenges): 76 → 51 ms for the 4096 datasets in JSON at load 4.5.
gc();
const calib_ms = calibrate();
console.log(JSON.stringify({ ...outcome, gcs, body_bytes: Buffer.byteLength(text), cpu_ms: (cpu.user + cpu.system) / 1000, main_thread_ms: main / 1e6, calib_ms, heap_growth_mib }));

/**
 * CPU ms of a fixed piece of work of planSweep's kind (JSON of 4096 small tables with a 200-character string each, a
 * Map over them, a loop of arithmetic), the median of five rounds (the first compile it): the test bounds a body's CPU
 * as a multiple of it, so that the bound moves with what load does to this machine's CPU time (1.5-3× between idle
 * and loaded).
 */
function calibrate(): number {
  const times: number[] = [];
  for (let round = 0; round < 5; round++) {
    const c0 = process.cpuUsage();
    const rows = Array.from({ length: 4096 }, (_, i) => ({ i, url: `https://calibration.example/${i}/`.padEnd(200, "c"), x: i / 3 }));
    const back = JSON.parse(JSON.stringify(rows)) as typeof rows;
    const byUrl = new Map<string, number>();
    for (const r of back) byUrl.set(r.url, r.i);
    let acc = 0;
    for (let k = 0; k < 1_000_000; k++) acc = (acc * 31 + k) % 1_000_003;
    if (byUrl.size !== 4096 || acc < 0) throw new Error("calibration");
    const c = process.cpuUsage(c0);
    times.push((c.user + c.system) / 1000);
  }
  return times.sort((a, b) => a - b)[2];
}
