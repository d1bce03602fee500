/**
 * Sweep submit CPU (issue 15's ~50 ms): planSweep on the heaviest accepted bodies (4096 datasets in JSON and TOML,
 * the product at the cap), each measurement in a fresh Node process (test/bench/sweep-submit-child.ts), cold and
 * warm, process CPU (every thread: V8's background compiles and parallel GC included) and the main thread's own.
 * With SWEEP_BASELINE=DIR (another checkout, its node_modules reachable), the same for that tree's planSweep,
 * interleaved run by run with this tree's, so both see the same load (2 cores shared: only ratios within one run
 * mean much). Prints median (min–max) per body, mode and tree, and the load average.
 *   node --import tsx test/bench/sweep-submit.ts     (SWEEP_RUNS=7, SWEEP_BODIES=json,toml,product, SWEEP_MODES=cold,warm)
 */
import { spawnSync } from "node:child_process";
import { loadavg } from "node:os";
import path from "node:path";

const here = path.resolve(import.meta.dirname, "../..");
const trees: [string, string][] = [["this", here]];
if (process.env.SWEEP_BASELINE) trees.unshift(["baseline", path.resolve(process.env.SWEEP_BASELINE)]);
const runs = Number(process.env.SWEEP_RUNS ?? 7);
const bodies = (process.env.SWEEP_BODIES ?? "json,toml,product").split(",");
const modes = (process.env.SWEEP_MODES ?? "cold,warm").split(",");
const flags = (process.env.SWEEP_NODE_FLAGS ?? "").split(" ").filter(Boolean);

type M = { proc_ms: number; main_ms: number; bytes: number; phases?: Record<string, [number, number]> };
const got = new Map<string, M[]>();
const loads: number[] = [];
for (let r = 0; r < runs; r++) {
  for (const body of bodies)
    for (const mode of modes) {
      // Alternate which tree goes first, so neither always runs right after the other.
      const order = r % 2 ? [...trees].reverse() : trees;
      for (const [name, root] of order) {
        const p = spawnSync(process.execPath, ["--expose-gc", ...flags, "--import", "tsx", path.join(here, "test/bench/sweep-submit-child.ts"), root, body, mode], { cwd: here, encoding: "utf8" });
        if (p.status !== 0) throw new Error(`${name} ${body} ${mode}: ${p.stderr.slice(-2000)}`);
        const m = JSON.parse(p.stdout.trim().split("\n").pop()!) as M;
        const key = `${body} ${mode} ${name}`;
        got.set(key, [...(got.get(key) ?? []), m]);
      }
    }
  loads.push(loadavg()[0]);
}
const fmt = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return `${s[s.length >> 1].toFixed(1)} (${s[0].toFixed(1)}–${s[s.length - 1].toFixed(1)})`;
};
console.log(`load average ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}, ${runs} runs each`);
console.log("body mode tree | process CPU ms | main thread ms | bytes of rows");
for (const [key, ms] of got) console.log(`${key} | ${fmt(ms.map((m) => m.proc_ms))} | ${fmt(ms.map((m) => m.main_ms))} | ${ms[0].bytes}`);
// Per phase of planSweep (the child's probe): median process / main-thread ms.
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1].toFixed(1);
console.log("phases (median process/main ms):");
for (const [key, ms] of got) {
  const names = Object.keys(ms[0].phases ?? {});
  console.log(`${key} | ${names.map((n) => `${n} ${med(ms.map((m) => m.phases![n][0]))}/${med(ms.map((m) => m.phases![n][1]))}`).join(", ")}`);
}
