/**
 * The real Worker under `wrangler dev` (local D1, R2 and Queues in Miniflare) for Node-side tests, scripts and
 * load runs: free ports (HTTP and inspector, so sibling servers never collide), its own persistence directory with
 * the D1 migrations applied, and tokens and settings passed through an env file, which also makes wrangler ignore
 * the developer's `.dev.vars` (wrangler reads `.dev.vars` only when no --env-file is given).
 *
 *   const worker = await startWorkerDev({ vars: { LEASE_TTL_MS: "5000" } });
 *   await fetch(worker.url + "/v1/sweeps", { headers: worker.submitAuth, ... });
 *   await worker.stop();
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

// import.meta.url, not __dirname: scripts run this module as ESM (tsx), where __dirname is not defined.
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
  const vars = { SUBMIT_TOKEN: submitToken, RUNNER_TOKEN: runnerToken, ...opts.vars };
  for (const [k, v] of Object.entries(vars))
    if (!/^[A-Z0-9_]+$/.test(k) || /[\n"]/.test(v)) throw new Error(`worker-dev: var ${k} cannot go in an env file`);
  const envFile = path.join(persistTo, "worker.env");
  writeFileSync(envFile, Object.entries(vars).map(([k, v]) => `${k}="${v}"\n`).join(""), { mode: 0o600 });
  applyMigrations(persistTo);

  const port = await freePort();
  const inspector = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let out = "";
  const child: ChildProcess = spawn(
    WRANGLER,
    ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector), "--persist-to", persistTo,
      "--env-file", envFile, "--show-interactive-dev-session=false", "--live-reload=false"],
    { cwd: ROOT, env: { ...process.env, ...OFFLINE_ENV, CI: "1" }, detached: true, stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<void>((r) => child.once("exit", () => r()));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, "SIGTERM");
      } catch {
        /* already gone */
      }
      const t = setTimeout(() => {
        try {
          process.kill(-child.pid!, "SIGKILL");
        } catch {
          /* already gone */
        }
      }, 5000);
      await exited;
      clearTimeout(t);
    }
    if (ownDir) rmSync(persistTo, { recursive: true, force: true });
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 120_000);
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`wrangler dev exited (${child.exitCode}) before answering /health:\n${out}`);
    }
    const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`wrangler dev did not answer ${url}/health in time:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return { url, submitToken, runnerToken, submitAuth: { authorization: `Bearer ${submitToken}` }, persistTo, output: () => out, stop };
}
