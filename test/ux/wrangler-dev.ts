/**
 * A real `wrangler dev` for the dashboard and CLI tests: free ports, a temporary --persist-to directory with the
 * D1 migrations applied, fresh tokens through an env file (so the checkout's .dev.vars is not used), offline.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));
const OFFLINE = { WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false", CI: "1" };

export interface WranglerDev {
  url: string;
  submitToken: string;
  runnerToken: string;
  /** The last lines wrangler printed (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startWranglerDev(): Promise<WranglerDev> {
  const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-ux-"));
  const persist = path.join(dir, "state");
  const submitToken = `sub_${randomBytes(12).toString("hex")}`;
  const runnerToken = `run_${randomBytes(12).toString("hex")}`;
  const envFile = path.join(dir, "vars.env");
  writeFileSync(envFile, `SUBMIT_TOKEN=${submitToken}\nRUNNER_TOKEN=${runnerToken}\n`);
  const wrangler = path.join(root, "node_modules/.bin/wrangler");
  const env = { ...process.env, ...OFFLINE };
  const mig = spawnSync(wrangler, ["d1", "migrations", "apply", "DB", "--local", "--persist-to", persist], { cwd: root, env, encoding: "utf8" });
  if (mig.status !== 0) throw new Error(`wrangler d1 migrations apply failed:\n${mig.stdout}\n${mig.stderr}`);

  const port = await freePort();
  const inspector = await freePort();
  const child: ChildProcess = spawn(
    wrangler,
    ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector), "--persist-to", persist, "--env-file", envFile, "--show-interactive-dev-session=false"],
    { cwd: root, env, stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  const lines: string[] = [];
  const keep = (b: Buffer) => {
    lines.push(...b.toString().split("\n").filter(Boolean));
    if (lines.length > 200) lines.splice(0, lines.length - 200);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      try {
        process.kill(-child.pid!, "SIGTERM"); // its process group: wrangler and its workerd
      } catch {
        /* gone */
      }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited (${child.exitCode}):\n${lines.join("\n")}`);
    const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`wrangler dev did not answer /health in 90 s:\n${lines.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  return { url, submitToken, runnerToken, log: () => lines.join("\n"), stop };
}
