/**
 * The real Worker under `wrangler dev` (local D1, R2 and Queues in Miniflare) for Node-side tests, scripts and
 * load runs: free ports (HTTP and inspector, so sibling servers never collide), its own persistence directory with
 * the D1 migrations applied, and tokens and settings passed through an env file, which also makes wrangler ignore
 * the developer's `.dev.vars` (wrangler reads `.dev.vars` only when no --env-file is given).
 *
 *   const worker = await startWorkerDev({ vars: { LEASE_TTL_MS: "5000" } });
 *   await fetch(worker.url + "/v1/sweeps", { headers: worker.submitAuth, ... });
 *   await worker.restart({ hard: true });   // same port, same D1/R2 state
 *   await worker.stop();
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

// import.meta.url, not __dirname: scripts (scripts/load.ts, test/bench/e2e.ts) run this module as plain ESM under tsx.
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WRANGLER = path.join(ROOT, "node_modules/.bin/wrangler");

/** Wrangler offline: no telemetry, no fetches of Cloudflare's request metadata. */
export const OFFLINE_ENV = { WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" } as const;

/** A port the OS just handed out on 127.0.0.1 (bound to port 0, then released). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export interface WorkerDevOptions {
  /** Worker vars ([vars] of wrangler.toml and secrets), e.g. LEASE_TTL_MS, CHECKPOINT_EVERY. */
  vars?: Record<string, string>;
  /** Persistence directory (default: a fresh temp dir, removed by stop()). */
  persistTo?: string;
  /** How long to wait for /health (default 120 s). */
  startTimeoutMs?: number;
}

export interface WorkerDev {
  url: string;
  submitToken: string;
  runnerToken: string;
  /** `Authorization` header for the submitter routes. */
  submitAuth: Record<string, string>;
  persistTo: string;
  /** Everything wrangler printed so far (for failure messages). */
  output(): string;
  /** Stops wrangler (its whole process group) and removes the temp persistence dir if it made one. */
  stop(): Promise<void>;
  /**
   * Stops wrangler (SIGTERM, or SIGKILL with `hard`) and starts it again on the same port with the same persistence
   * directory and tokens (D1 and R2 keep their state); resolves once /health answers again.
   */
  restart(opts?: WorkerDevRestart): Promise<void>;
}

export interface WorkerDevRestart {
  /** SIGKILL wrangler's process group (workerd included) instead of SIGTERM. */
  hard?: boolean;
  /** Vars changed for the new process (merged over the current ones). */
  vars?: Record<string, string>;
  /** Runs while the Worker is down, before it is started again. */
  beforeStart?: () => Promise<void> | void;
}

/** Applies db/migrations to the local D1 under persistTo (non-interactive). */
export function applyMigrations(persistTo: string): void {
  const r = spawnSync(WRANGLER, ["d1", "migrations", "apply", "DB", "--local", "--persist-to", persistTo], {
    cwd: ROOT,
    encoding: "utf8",
    env: { ...process.env, ...OFFLINE_ENV, CI: "1" },
  });
  if (r.status !== 0) throw new Error(`wrangler d1 migrations apply failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
}

export async function startWorkerDev(opts: WorkerDevOptions = {}): Promise<WorkerDev> {
  const ownDir = !opts.persistTo;
  const persistTo = opts.persistTo ?? mkdtempSync(path.join(tmpdir(), "sae-swarm-worker-"));
  const submitToken = `sub_${randomBytes(12).toString("base64url")}`;
  const runnerToken = `run_${randomBytes(12).toString("base64url")}`;
  let vars: Record<string, string> = { SUBMIT_TOKEN: submitToken, RUNNER_TOKEN: runnerToken, ...opts.vars };
  const envFile = path.join(persistTo, "worker.env");
  const writeEnv = () => {
    for (const [k, v] of Object.entries(vars))
      if (!/^[A-Z0-9_]+$/.test(k) || /[\n"]/.test(v)) throw new Error(`worker-dev: var ${k} cannot go in an env file`);
    writeFileSync(envFile, Object.entries(vars).map(([k, v]) => `${k}="${v}"\n`).join(""), { mode: 0o600 });
  };
  writeEnv();
  applyMigrations(persistTo);

  const port = await freePort();
  const inspector = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let out = "";
  let child!: ChildProcess;
  let exited!: Promise<void>;
  const launch = () => {
    child = spawn(
      WRANGLER,
      ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector), "--persist-to", persistTo,
        "--env-file", envFile, "--show-interactive-dev-session=false", "--live-reload=false"],
      { cwd: ROOT, env: { ...process.env, ...OFFLINE_ENV, CI: "1" }, detached: true, stdio: ["ignore", "pipe", "pipe"] },
    );
    child.stdout!.on("data", (d) => (out += d));
    child.stderr!.on("data", (d) => (out += d));
    const c = child;
    exited = new Promise<void>((r) => c.once("exit", () => r()));
  };

  /** Signals wrangler's whole process group (workerd included) and waits for wrangler to exit; SIGKILL after 5 s. */
  const halt = async (signal: "SIGTERM" | "SIGKILL") => {
    const c = child;
    if (c.exitCode !== null || c.signalCode !== null) return;
    const kill = (s: NodeJS.Signals) => {
      try {
        process.kill(-c.pid!, s);
      } catch {
        /* already gone */
      }
    };
    kill(signal);
    const t = setTimeout(() => kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(t);
  };

  const stop = async () => {
    await halt("SIGTERM");
    if (ownDir) rmSync(persistTo, { recursive: true, force: true });
  };

  const waitHealthy = async () => {
    const deadline = Date.now() + (opts.startTimeoutMs ?? 120_000);
    for (;;) {
      if (child.exitCode !== null) {
        await stop();
        throw new Error(`wrangler dev exited (${child.exitCode}) before answering /health:\n${out}`);
      }
      const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
      if (ok) return;
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`wrangler dev did not answer ${url}/health in time:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  };

  const restart = async (o: WorkerDevRestart = {}) => {
    await halt(o.hard ? "SIGKILL" : "SIGTERM");
    // workerd (same process group) can hold the ports a moment longer than wrangler lives.
    for (const p of [port, inspector]) await untilFree(p);
    if (o.vars) {
      vars = { ...vars, ...o.vars };
      writeEnv();
    }
    if (o.beforeStart) await o.beforeStart();
    launch();
    await waitHealthy();
  };

  launch();
  await waitHealthy();
  return { url, submitToken, runnerToken, submitAuth: { authorization: `Bearer ${submitToken}` }, persistTo, output: () => out, stop, restart };
}

/** Waits (up to 15 s) until `port` on 127.0.0.1 can be bound again. */
async function untilFree(port: number): Promise<void> {
  for (let i = 0; ; i++) {
    const srv = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (ok) return await new Promise<void>((r) => srv.close(() => r()));
    if (i >= 300) throw new Error(`worker-dev: port ${port} still busy after wrangler stopped`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
