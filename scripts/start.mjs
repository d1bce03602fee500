#!/usr/bin/env node
// `npm start`: sets the machine up, starts the local Worker (wrangler dev: local D1, R2, Queue) and a runner,
// prints where to look, and serves until Ctrl-C. `npm start -- --once` exits when the work is done.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { OFFLINE_ENV, setup } from "./setup.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const once = process.argv.includes("--once");
const port = Number(process.env.SAE_SWARM_PORT ?? 8787);
const server = `http://127.0.0.1:${port}`;
const log = (msg) => console.log(`[start] ${msg}`);

const vars = setup();
const children = [];
let stopping = false;

function start(name, cmd, args, extraEnv = {}) {
  // Each child leads its own process group, so stopping it also stops what it spawned (workerd, Chrome).
  const child = spawn(cmd, args, { cwd: root, env: { ...process.env, ...OFFLINE_ENV, ...extraEnv }, stdio: ["ignore", "pipe", "pipe"], detached: true });
  const relay = (stream, out) =>
    stream.on("data", (c) => {
      for (const line of c.toString().split("\n")) {
        // wrangler logs every request; runners heartbeat and post often, so keep only the rest
        if (line.trim() && !/\[wrangler:info\] (GET|POST|PUT|HEAD) /.test(line)) out.write(`[${name}] ${line}\n`);
      }
    });
  relay(child.stdout, process.stdout);
  relay(child.stderr, process.stderr);
  children.push(child);
  return child;
}

function stopAll() {
  for (const c of children) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    try {
      process.kill(-c.pid, "SIGTERM");
    } catch {
      /* already gone */
    }
  }
}
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { stopping = true; stopAll(); process.exit(130); });

async function waitHealthy(ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const ok = await fetch(`${server}/health`).then((r) => r.ok, () => false);
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 500));
  }
  return false;
}

if (await fetch(`${server}/health`).then(() => true, () => false)) {
  console.error(`[start] something already answers on ${server}; stop it or set SAE_SWARM_PORT`);
  process.exit(1);
}
const worker = start("worker", path.join(root, "node_modules/.bin/wrangler"), [ "dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--show-interactive-dev-session=false"]);
if (!(await waitHealthy(120_000))) {
  console.error(`[start] the Worker did not answer ${server}/health within 120 s`);
  stopAll();
  process.exit(1);
}
log(`Worker up: ${server} (dashboard ${server}/)`);

// The runner keeps claiming (backing off while nothing waits); the demo submits the sweep and follows it.
const runner = start("runner", process.execPath, ["bin/sae-swarm.js", "runner", "--server", server, "--token", vars.RUNNER_TOKEN, "--allow-software-adapter"]);
runner.on("close", (code) => {
  if (!stopping) log(`the runner exited (${code}); the Worker keeps serving ${server}`);
});
const demoFile = process.env.SAE_SWARM_DEMO ?? path.join(root, "examples/demo.toml");
const demo = start("demo", process.execPath, ["--import", "tsx", "scripts/demo.ts", "--server", server, "--token", vars.SUBMIT_TOKEN, demoFile]);
const code = await new Promise((resolve) => demo.on("close", resolve));
log(code === 0 ? `demo sweep done. Dashboard: ${server}/#token=${vars.SUBMIT_TOKEN}` : `demo sweep failed (exit ${code})`);
if (once) {
  stopping = true;
  stopAll();
  await Promise.all(children.filter((c) => c.exitCode === null && c.signalCode === null).map((c) => new Promise((r) => c.on("close", r))));
  process.exit(code === 0 ? 0 : 1);
}
log(`serving ${server} until Ctrl-C (submit more: npx sae-swarm submit SWEEP.toml)`);
