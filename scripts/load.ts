/**
 * `npm run load`: the Worker under load. Starts its own `wrangler dev` (loopback, temp persistence), runs simulated
 * runners (no GPU; the runner's own HTTP client) against it for a bounded time, and checks from what was stored
 * that no acknowledged row was lost or doubled, no run was held by two live leases at once, and stale tokens got
 * 409. Prints claims/s, metric rows/s, heartbeats/s and latency per route; exits 1 on any violation.
 *
 *   npm run load -- --runners 50 --seconds 60 [--lease-ttl-ms 10000] [--step-ms 40] [--steps 48] [--seed 1]
 *                   [--track] [--keep] [--json out/load.json] [--wrangler-log FILE]
 *
 * --track sends every metric post through the W&B outbox and queue too (no W&B key: the consumer drops them);
 * --keep keeps the temp persistence dir (D1, R2) and prints where; --json writes the figures; --wrangler-log
 * writes what wrangler dev printed.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_LOAD, runLoad } from "./load/run";

const { values } = parseArgs({
  options: {
    runners: { type: "string" },
    seconds: { type: "string" },
    "lease-ttl-ms": { type: "string" },
    "step-ms": { type: "string" },
    steps: { type: "string" },
    seed: { type: "string" },
    track: { type: "boolean" },
    keep: { type: "boolean" },
    json: { type: "string" },
    "wrangler-log": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log("usage: npm run load -- [--runners 50] [--seconds 60] [--lease-ttl-ms 10000] [--step-ms 40] [--steps 48] [--seed 1] [--track] [--keep] [--json FILE] [--wrangler-log FILE]");
  process.exit(0);
}
const num = (v: string | undefined, d: number, name: string) => {
  if (v === undefined) return d;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`--${name} must be a positive number, got ${v}`);
    process.exit(2);
  }
  return n;
};

const result = await runLoad({
  runners: Math.round(num(values.runners, DEFAULT_LOAD.runners, "runners")),
  seconds: num(values.seconds, DEFAULT_LOAD.seconds, "seconds"),
  leaseTtlMs: Math.round(num(values["lease-ttl-ms"], DEFAULT_LOAD.leaseTtlMs, "lease-ttl-ms")),
  stepMs: num(values["step-ms"], DEFAULT_LOAD.stepMs, "step-ms"),
  steps: Math.round(num(values.steps, DEFAULT_LOAD.steps, "steps")),
  checkpointEvery: values.steps ? Math.max(1, Math.floor(Number(values.steps) / 2)) : DEFAULT_LOAD.checkpointEvery,
  seed: Math.round(num(values.seed, DEFAULT_LOAD.seed, "seed")),
  track: values.track ?? false,
  keep: values.keep ?? false,
});
console.log(`\n${result.text}`);
if (result.violations.length) {
  // The Worker's own errors (stack traces of a 5xx, workerd's complaints), de-duplicated.
  const lines = [...new Set(result.workerOutput.split("\n").filter((l) => /error|✘|exception|overload|busy|reload|restart/i.test(l)))];
  if (lines.length) console.log(`\nwrangler dev said (${lines.length} distinct lines, first 40):\n${lines.slice(0, 40).join("\n")}`);
}
if (values["wrangler-log"]) writeFileSync(values["wrangler-log"], result.workerOutput);
if (values.json) {
  mkdirSync(path.dirname(path.resolve(values.json)), { recursive: true });
  const { text: _t, workerOutput: _w, ...rest } = result;
  writeFileSync(values.json, JSON.stringify(rest, null, 2));
}
process.exit(result.violations.length ? 1 : 0);
