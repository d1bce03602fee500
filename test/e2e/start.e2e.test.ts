/**
 * `npm start` as a new user runs it (issue 16): `npm start -- --once` trains the demo (here a small one, through
 * SAE_SWARM_DEMO), exits 0 and leaves no process behind; Ctrl-C while the runner trains stops the runner, Chrome
 * and the Worker, and leaves no process behind either. Each on its own port and its own local D1/R2.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { descendants } from "../../runner/fault";
import { killTree, until } from "../helpers/e2e";
import { ROOT, freePort } from "../helpers/worker-dev";

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) killTree(c.pid!);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
};

/** `node scripts/start.mjs ARGS` (what `npm start -- ARGS` runs) on a free port with a fresh state dir and `demo`. */
async function npmStart(demo: string, args: string[]) {
  const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-start-"));
  dirs.push(dir);
  writeFileSync(path.join(dir, "demo.toml"), demo);
  const port = await freePort();
  const child = spawn(process.execPath, ["scripts/start.mjs", ...args], {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, SAE_SWARM_PORT: String(port), SAE_SWARM_PERSIST_TO: path.join(dir, "state"), SAE_SWARM_DEMO: path.join(dir, "demo.toml") },
  });
  children.push(child);
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  // Every process it started, as it runs (they lead process groups of their own, so a tree snapshot is the way).
  const seen = new Set<number>();
  const watch = setInterval(() => descendants(child.pid!).forEach((p) => seen.add(p)), 200);
  const exit = new Promise<number | null>((r) => child.once("exit", (code) => (clearInterval(watch), r(code))));
  return { child, log: () => out, exit, seen };
}

const SMALL_DEMO = `
data = { kind = "synthetic", d_vit = 16, n_features = 24, sparsity = 0.1, seed = 1, n_examples = 2048 }
n_train = 1280
batch_size = 64
log_every = 5
n_eval = 256
lr = 1e-2
sae = [{ kind = "relu", exp_factor = 2 }, { kind = "jumprelu", exp_factor = 2, init_threshold = 0.1, bandwidth = 0.1 }]
`;

describe("npm start", () => {
  it("--once trains the demo, exits 0, and leaves no process behind", async () => {
    const s = await npmStart(SMALL_DEMO, ["--once"]);
    const code = await Promise.race([s.exit, new Promise((r) => setTimeout(() => r("timeout"), 400_000))]);
    expect(code, s.log()).toBe(0);
    expect(s.log()).toMatch(/demo sweep done/);
    expect(s.seen.size).toBeGreaterThan(3); // wrangler, workerd, the runner, Chrome, the demo …
    await until("every process npm start started to be gone", async () => [...s.seen].every((p) => !isAlive(p)), 5_000, 100).catch(() => {
      throw new Error(`alive after exit: ${[...s.seen].filter(isAlive).map((p) => readFileSync(`/proc/${p}/cmdline`, "utf8").replace(/\0/g, " ").slice(0, 120)).join("\n")}`);
    });
  });

  it("Ctrl-C while the runner trains stops the runner, Chrome and the Worker, and leaves no process behind", async () => {
    // long enough to be mid-training at Ctrl-C; log_every keeps the metric rows under the per-run cap (issue 15)
    const s = await npmStart(SMALL_DEMO.replace("n_train = 1280", "n_train = 6_400_000").replace("log_every = 5", "log_every = 1000"), []);
    await until("the runner to train", async () => /\[runner\] .*claimed group/.test(s.log()), 240_000, 250).catch((e) => {
      throw new Error(`${e}\n${s.log()}`);
    });
    await new Promise((r) => setTimeout(r, 2000));
    const t0 = Date.now();
    s.child.kill("SIGINT");
    const code = await Promise.race([s.exit, new Promise((r) => setTimeout(() => r("timeout"), 30_000))]);
    expect(code, s.log()).toBe(130);
    await until("every process npm start started to be gone", async () => [...s.seen].every((p) => !isAlive(p)), 5_000, 100);
    console.log(`[start] Ctrl-C: ${s.seen.size} processes gone in ${Date.now() - t0} ms`);
    // The runner gave its group back before the Worker stopped.
    expect(s.log()).toMatch(/\[runner\] .*group \S+: abandoned/);
  });
});
