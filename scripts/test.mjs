#!/usr/bin/env node
// `npm test`: sets the machine up, then runs the Worker suite (workerd) and the Node suite (Chromium, Dawn,
// end to end) in parallel: they share no ports. Exits non-zero when either fails.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { OFFLINE_ENV, setup } from "./setup.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
setup({ migrations: false }); // test suites apply migrations to their own databases

const extra = process.argv.slice(2); // e.g. `npm test -- test/gpu` narrows both vitest suites
const suites = [
  ["types", ["tsc", "-p", "tsconfig.json"]],
  ["worker", ["vitest", "run", "-c", "vitest.workers.config.ts", ...extra]],
  ["node", ["vitest", "run", "-c", "vitest.config.ts", ...extra]],
];

const started = Date.now();
const results = await Promise.all(
  suites.map(
    ([name, args]) =>
      new Promise((resolve) => {
        const child = spawn("npx", args, { cwd: root, env: { ...process.env, ...OFFLINE_ENV, FORCE_COLOR: "0" } });
        const prefix = (chunk) =>
          chunk
            .toString()
            .split("\n")
            .filter((l) => l.length)
            .map((l) => `[${name}] ${l}\n`)
            .join("");
        child.stdout.on("data", (c) => process.stdout.write(prefix(c)));
        child.stderr.on("data", (c) => process.stderr.write(prefix(c)));
        child.on("close", (code) => resolve([name, code]));
      }),
  ),
);
const secs = ((Date.now() - started) / 1000).toFixed(0);
for (const [name, code] of results) console.log(`[test] ${name} suite: ${code === 0 ? "passed" : `FAILED (exit ${code})`}`);
console.log(`[test] done in ${secs}s`);
process.exit(results.every(([, code]) => code === 0) ? 0 : 1);
