#!/usr/bin/env node
// `npm start`: sets the machine up, starts the local Worker (wrangler dev: local D1, R2, Queue) and a runner,
// prints where to look, and serves until Ctrl-C. `npm start -- --once` exits when the work is done: 0 when the demo
// sweep finished, 1 when it failed.
//
// Stopping (Ctrl-C, SIGTERM, or --once at the end): the runner and the demo first (the runner gives its group back
// to the Worker, which must still be up to hear it), then the Worker; each gets a bounded time before SIGKILL, and
// this process exits only when all are gone. A second Ctrl-C kills everything at once.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { OFFLINE_ENV, applyMigrations, setup } from "./setup.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const once = process.argv.includes("--once");
const port = Number(process.env.SAE_SWARM_PORT ?? 8787);
const server = `http://127.0.0.1:${port}`;
// Where wrangler keeps local D1/R2 (default: its own .wrangler/state); tests point it at a temp dir.
const persistTo = process.env.SAE_SWARM_PERSIST_TO;
const log = (msg) => console.log(`[start] ${msg}`);

const vars = setup({ migrations: !persistTo });
if (persistTo) applyMigrations(persistTo);
/** name → child; each leads its own process group, so a signal to the group reaches what it spawned (workerd). */
const children = new Map();
let stopping = null;

function start(name, cmd, args, extraEnv = {}) {
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
  child.closed = new Promise((r) => child.on("close", r));
  children.set(name, child);
  return child;
}

const alive = (c) => c && c.exitCode === null && c.signalCode === null;
function signal(c, sig) {
  try {
    process.kill(-c.pid, sig);
  } catch {
    /* already gone */
  }
}

/** SIGTERM to these children's groups; SIGKILL to what is left after `graceMs`; resolves when all are gone. */
async function halt(names, graceMs) {
  const cs = names.map((n) => children.get(n)).filter(alive);
  for (const c of cs) signal(c, "SIGTERM");
  const t = setTimeout(() => cs.filter(alive).forEach((c) => signal(c, "SIGKILL")), graceMs);
  await Promise.all(cs.map((c) => c.closed));
  clearTimeout(t);
  // Anything a child left in its group (it exited, its group lives on) goes too.
  for (const c of cs) signal(c, "SIGKILL");
}

/** Stops everything in order (runner and demo, then the Worker) and exits with `code`. */
function stopAll(code) {
  stopping ??= (async () => {
    await halt(["demo", "runner"], 30_000);
    await halt(["worker"], 10_000);
    process.exit(code);
  })();
  return stopping;
}

for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"])
  process.on(sig, () => {
    if (stopping) {
      // Asked twice: no more waiting.
      for (const c of children.values()) if (alive(c)) signal(c, "SIGKILL");
      process.exit(130);
    }
    log(`${sig}: stopping the runner (it gives its group back), then the Worker`);
    void stopAll(130);
  });

async function waitHealthy(ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline && !stopping) {
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
const wranglerArgs = ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--show-interactive-dev-session=false"];
if (persistTo) wranglerArgs.push("--persist-to", persistTo);
start("worker", path.join(root, "node_modules/.bin/wrangler"), wranglerArgs);
if (!(await waitHealthy(120_000))) {
  if (!stopping) console.error(`[start] the Worker did not answer ${server}/health within 120 s`);
  await stopAll(1);
}
log(`Worker up: ${server} (dashboard ${server}/)`);

// The runner keeps claiming (backing off while nothing waits); the demo submits the sweep and follows it. Tokens go
// through the environment, not the command lines that `ps` shows.
const runner = start("runner", process.execPath, ["bin/sae-swarm.js", "runner", "--server", server, "--allow-software-adapter"], { SAE_SWARM_RUNNER_TOKEN: vars.RUNNER_TOKEN });
runner.on("close", (code) => {
  if (!stopping) log(`the runner exited (${code}); the Worker keeps serving ${server}`);
});
const demoFile = process.env.SAE_SWARM_DEMO ?? path.join(root, "examples/demo.toml");
const demo = start("demo", process.execPath, ["--import", "tsx", "scripts/demo.ts", "--server", server, demoFile], { SAE_SWARM_TOKEN: vars.SUBMIT_TOKEN });
const code = await demo.closed;
if (stopping) await stopping;
log(code === 0 ? `demo sweep done. Dashboard: ${server}/#token=${vars.SUBMIT_TOKEN}` : `demo sweep failed (exit ${code})`);
if (once) await stopAll(code === 0 ? 0 : 1);
log(`serving ${server} until Ctrl-C (submit more: npx sae-swarm submit SWEEP.toml)`);
