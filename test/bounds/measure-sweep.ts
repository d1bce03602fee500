/**
 * Child process for sweep-bounds.test.ts: reads one sweep body (file argv[2], content type argv[3]) and does what
 * POST /v1/sweeps does before D1 (parse, validate, expand, group, split into shared + per-run parts, serialize the
 * rows), then prints one JSON line: the outcome, the CPU time it took and the heap it grew by. Run with
 * --expose-gc (a clean heap before) and a capped old space, so a body that needs far more memory dies here.
 */
import { readFileSync } from "node:fs";
import { ApiError } from "../../worker/errors";
import { fullConfig, splitShared } from "../../worker/run-config";
import { expandSweep, groupKey, parseSweepText, sortedJson, splitCfgs } from "../../worker/sweep";

const text = readFileSync(process.argv[2], "utf8");
const contentType = process.argv[3];
const gc = (globalThis as { gc?: () => void }).gc!;

// Warm up the code paths once on a tiny sweep, so the measurement is the body's cost, not compiling the parser.
expandSweep(parseSweepText(`lr = [1e-4, 2e-4]\ndata = { kind = "synthetic", d_vit = 8, n_features = 8, sparsity = 0.1 }`, "application/toml").raw);

gc();
const heap0 = process.memoryUsage().heapUsed;
let peak = heap0;
const sample = () => (peak = Math.max(peak, process.memoryUsage().heapUsed));
const cpu0 = process.cpuUsage();
let outcome: Record<string, unknown>;
try {
  const { raw } = parseSweepText(text, contentType);
  sample();
  const { configs } = expandSweep(raw, 4096);
  sample();
  const groups = splitCfgs(configs);
  const keys = groups.map((g) => groupKey(g[0]));
  const { shared, deltas } = splitShared(configs.map((c) => c.cfg));
  const stored = JSON.stringify(shared).length + deltas.reduce((n, d) => n + JSON.stringify(d).length, 0) + keys.reduce((n, k) => n + k.length, 0);
  sample();
  // The round trip the claim does: the last run's full config equals the expanded one.
  const last = configs.length - 1;
  const g = groups.find((m) => m.includes(configs[last]))!;
  const back = fullConfig({ shared: JSON.stringify(shared), cfg: JSON.stringify(deltas[last]), data: JSON.stringify(g[0].cfg.data) });
  outcome = { ok: true, n_runs: configs.length, n_groups: groups.length, stored_bytes: stored, roundtrip: sortedJson(back) === sortedJson(configs[last].cfg) };
} catch (e) {
  if (!(e instanceof ApiError)) throw e;
  outcome = { ok: false, status: e.status, code: e.code, field: e.field, message: e.message.slice(0, 300), n_issues: e.issues?.length ?? 0 };
}
sample();
const cpu = process.cpuUsage(cpu0);
console.log(JSON.stringify({ ...outcome, body_bytes: Buffer.byteLength(text), cpu_ms: (cpu.user + cpu.system) / 1000, heap_growth_mib: (peak - heap0) / 2 ** 20 }));
