/**
 * `sae-swarm <command>`: the CLI a user types. Commands grow with the project; each has --help.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type { Page } from "puppeteer-core";
import { launchChrome, type LaunchedChrome } from "./chrome";
import { bundleForBrowser, servePage, type PageServer } from "./serve";
import { WorkerClient } from "./api";
import { EVENT_BINDING, type RunnerEvent, type StopMode } from "./events";
import { ProgressDisplay, duration } from "./progress";
import { apiProxy } from "./proxy";
import { FAULT_ENV, FaultInjector, parseFault } from "./fault";
import { sparseFeatureGenerator, writeShards } from "./data/write-shards";
import type { AdapterReport } from "../shaders/device";
import type { Lease } from "../worker/protocol";
import { submit } from "./commands/submit";
import { status } from "./commands/status";
import { deleteCommand } from "./commands/delete";
import { download } from "./commands/download";
import { fit } from "./commands/fit";
import { detectGpuMemory, describeGpuMemory, GPU_MEMORY_ENV, type GpuMemory } from "./gpu-memory";

const here = path.dirname(new URL(import.meta.url).pathname);

const USAGE = `usage: sae-swarm <command> [options]

commands:
  submit    submit a sweep file (TOML or JSON) to a sae-swarm server
  status    show sweeps, or one sweep's groups, leases and runs with their latest metrics
  delete    cancel a sweep and delete its runs, metrics, evals and checkpoints from the server
  download  download finished runs: SAELens directories (default) or the native checkpoints
  runner    train groups from a sae-swarm server on this machine's GPU, in headless Chrome
  shards    write synthetic activation shards in saev's layout (metadata.json + acts*.bin)
  fit       how many SAEs of a shape fit one runner's GPU (plan a sweep)

run 'sae-swarm <command> --help' for a command's options`;

const RUNNER_USAGE = `usage: sae-swarm runner --server URL [--token T] [options]

  --server URL               the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T                  the runner token (env SAE_SWARM_RUNNER_TOKEN)
  --allow-software-adapter   train even on a software (CPU-emulated) WebGPU adapter such as SwiftShader
  --once                     exit when no group is waiting, instead of polling for more
  --runner-id ID             how this runner names itself to the server (default host-pid)
  --gpu-memory GB            device memory the engine may use, in GB of 10^9 bytes (env ${GPU_MEMORY_ENV};
                             default: 90 % of the free memory nvidia-smi or rocm-smi reports, else 2 GiB)
  --probe                    check the server and the GPU adapter, print them, and exit
  -h, --help                 this help

Ctrl-C once: finish the current group, then exit. Twice: checkpoint the group and give it back now.
Three times (or SIGTERM twice): give the lease back and exit at once. SIGTERM: like Ctrl-C twice.
Chrome: CHROME_PATH, else /usr/bin/chromium.`;

const SHARDS_USAGE = `usage: sae-swarm shards --out DIR [options]

Writes seeded synthetic activations (sparse sums of random unit features, plus noise) in saev's shard layout.

  --out DIR                    where to write metadata.json, shards.json and acts000000.bin, ...
  --d-vit N                    activation width (default 64)
  --layers L1,L2,...           layer ids recorded (default 6,12)
  --n-patches-per-img N        patches per image, CLS excluded (default 16)
  --no-cls                     write no CLS token (default: token 0 is CLS)
  --n-imgs N                   images (default 1024)
  --max-patches-per-shard N    saev's shard budget in vectors (default 65536)
  --n-features N               ground-truth features (default 256)
  --sparsity P                 firing probability of a feature per token (default 0.02)
  --noise S                    Gaussian noise std per coordinate (default 0.01)
  --seed N                     seed (default 1)
  -h, --help                   this help`;

export function describeReport(r: AdapterReport): string {
  const kind = r.isFallbackAdapter ? "software adapter (CPU emulation)" : "GPU";
  const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;
  return `${r.vendor || "?"} ${r.architecture || ""} ${r.description || r.device} — ${kind}; max buffer ${mib(r.limits.maxBufferSize)}, max storage binding ${mib(r.limits.maxStorageBufferBindingSize)}`;
}

/** Page restarts allowed within RESTART_WINDOW_MS before the runner gives up (a machine that keeps crashing). */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 10 * 60_000;

export type PageOutcome = "no-work" | "stopped" | "crashed" | "device-lost" | "refused" | "probed";

async function runner(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: "string", default: process.env.SAE_SWARM_SERVER ?? "http://127.0.0.1:8787" },
      token: { type: "string", default: process.env.SAE_SWARM_RUNNER_TOKEN },
      "allow-software-adapter": { type: "boolean", default: false },
      once: { type: "boolean", default: false },
      "runner-id": { type: "string", default: `${hostname()}-${process.pid}` },
      probe: { type: "boolean", default: false },
      "gpu-memory": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(RUNNER_USAGE);
    return 0;
  }
  const memory = await detectGpuMemory(values["gpu-memory"]);
  const server = values.server!.replace(/\/$/, "");
  const health = await fetch(`${server}/health`).catch((e) => e as Error);
  if (health instanceof Error || !health.ok) {
    console.error(`[runner] cannot reach the server at ${server}/health: ${health instanceof Error ? health.message : health.status}`);
    return 1;
  }
  console.log(`[runner] server ${server} is healthy`);
  const fault = parseFault(process.env[FAULT_ENV]);
  if (fault) console.log(`[runner] fault injection armed: ${FAULT_ENV}=${fault.spec} (this runner kills itself there)`);

  const display = new ProgressDisplay();
  const log = (s: string) => display.log(s);
  // Node's own client: gives a lease back when the page that held it died.
  const api = new WorkerClient({ server, token: values.token, retry: { maxAttempts: 5 } });
  let lease: Lease | null = null;
  let stopMode: StopMode | null = null;
  let activeTab: Page | null = null;
  let signals = 0;
  let hardExit: (() => void) | null = null;
  const hardExitP = new Promise<"hard">((r) => (hardExit = () => r("hard")));

  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    const mode: StopMode | "hard" = sig === "SIGTERM" ? (signals === 1 ? "abandon" : "hard") : signals === 1 ? "drain" : signals === 2 ? "abandon" : "hard";
    if (mode === "hard") {
      log(`[runner] ${sig}: giving the lease back and exiting now`);
      hardExit?.();
      return;
    }
    stopMode = mode;
    log(mode === "drain" ? `[runner] ${sig}: finishing the current group, then exiting (Ctrl-C again to abandon it)` : `[runner] ${sig}: checkpointing the current group and giving it back`);
    void activeTab?.evaluate((m) => window.__runner.stop(m), mode).catch(() => {});
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const onEvent = (e: RunnerEvent) => {
    switch (e.kind) {
      case "claimed":
        lease = e.lease;
        log(`[runner] claimed group ${e.group_id} of sweep ${e.sweep_id}: ${e.runs.length} SAEs, ${e.n_steps} steps${e.resume_step ? `, resuming at step ${e.resume_step}` : ""}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`);
        break;
      case "phase":
        if (e.phase !== "train") display.status(`group ${e.group_id}: ${e.phase}`, true);
        break;
      case "progress":
        display.progress(e);
        break;
      case "done":
        lease = null;
        display.clear();
        log(`[runner] group ${e.group_id}: ${e.outcome}${e.message ? ` — ${e.message}` : ""}`);
        break;
      case "idle":
        display.status(`[runner] no group waiting; next claim in ${duration(e.wait_ms / 1000)}`, true);
        break;
      case "log":
        (e.level === "error" ? console.error : log)(`[page] ${e.message}`);
        break;
      case "device-lost":
      case "exit":
        break;
    }
  };

  let page: PageServer | null = null;
  let chrome: LaunchedChrome | null = null;
  try {
    const key = randomBytes(24).toString("hex");
    page = await servePage(await bundleForBrowser(path.join(here, "page/main.ts")), "sae-swarm runner", apiProxy({ server, token: values.token, key, fault: fault && new FaultInjector(fault) }));
    chrome = await launchChrome();
    const restarts: number[] = [];
    for (;;) {
      const outcome = await Promise.race([
        runPage(chrome, `${page.url}#k=${key}`, {
          runnerId: values["runner-id"]!,
          once: values.once!,
          probe: values.probe!,
          allowSoftware: values["allow-software-adapter"]!,
          memory,
          onEvent,
          log,
          onTab: (t) => {
            activeTab = t;
            if (stopMode) void t.evaluate((m) => window.__runner.stop(m), stopMode).catch(() => {});
          },
        }),
        hardExitP,
      ]);
      activeTab = null;
      if (outcome === "hard") {
        await giveBack(api, lease, "runner killed", log);
        return 130;
      }
      if (outcome === "refused") return 2;
      if (outcome === "probed" || outcome === "no-work") return 0;
      if (outcome === "stopped") return stopMode ? 130 : 0;
      // crashed or device-lost: give the group back at once (a second runner resumes it), then a fresh page.
      await giveBack(api, lease, outcome === "crashed" ? "runner page crashed" : "GPU device lost", log);
      lease = null;
      if (stopMode) return 1;
      const t = Date.now();
      restarts.push(t);
      while (restarts.length && t - restarts[0] > RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS) {
        console.error(`[runner] the page failed ${restarts.length} times in ${RESTART_WINDOW_MS / 60_000} minutes; giving up`);
        return 1;
      }
      log(`[runner] ${outcome === "crashed" ? "page crashed" : "GPU device lost"}; restarting the page`);
    }
  } finally {
    display.clear();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await chrome?.close();
    await page?.close();
  }
}

async function giveBack(api: WorkerClient, lease: Lease | null, why: string, log: (s: string) => void): Promise<void> {
  if (!lease) return;
  await api.fail(lease, why).then(
    () => log(`[runner] gave lease ${lease.id} back (${why})`),
    (e) => log(`[runner] could not give lease ${lease.id} back (${(e as Error).message}); it expires on its own`),
  );
}

export interface PageOptions {
  runnerId: string;
  once: boolean;
  probe: boolean;
  allowSoftware: boolean;
  /** Device memory the engine may use; it goes with every claim. */
  memory?: GpuMemory;
  onEvent(e: RunnerEvent): void;
  log(s: string): void;
  onTab(tab: Page): void;
}

/** One page lifetime: load, check the adapter, run the loop until it ends, the page crashes or the device is lost. */
export async function runPage(chrome: LaunchedChrome, url: string, o: PageOptions): Promise<PageOutcome> {
  const tab = await chrome.browser.newPage();
  let failed: ((why: "crashed" | "device-lost") => void) | null = null;
  const failure = new Promise<"crashed" | "device-lost">((r) => (failed = r));
  // The loop's end comes as an "exit" event, not as the result of one long `evaluate`: a runner trains for hours,
  // and a CDP call outlives no protocolTimeout.
  let exited: ((e: Extract<RunnerEvent, { kind: "exit" }>) => void) | null = null;
  const exit = new Promise<Extract<RunnerEvent, { kind: "exit" }>>((r) => (exited = r));
  try {
    await tab.exposeFunction(EVENT_BINDING, (json: string) => {
      const e = JSON.parse(json) as RunnerEvent;
      o.onEvent(e);
      if (e.kind === "device-lost") failed?.("device-lost");
      if (e.kind === "exit") exited?.(e);
    });
    tab.on("console", (m) => o.log(`[page] ${m.text()}`));
    tab.on("pageerror", (e) => o.log(`[page] ${String(e)}`));
    tab.on("error", () => failed?.("crashed")); // the renderer crashed
    await tab.goto(url);
    await tab.waitForFunction(() => window.__runner !== undefined);
    const report = (await tab.evaluate(() => window.__runner.ready)) as AdapterReport;
    o.log(`[runner] WebGPU adapter: ${describeReport(report)}`);
    if (o.memory) o.log(`[runner] GPU memory budget: ${describeGpuMemory(o.memory)}`);
    if (report.isFallbackAdapter && !o.allowSoftware) {
      console.error("[runner] refusing to train on a software adapter; pass --allow-software-adapter to use it anyway");
      return "refused";
    }
    if (o.probe) return "probed";
    o.onTab(tab);
    await tab.evaluate((opts) => {
      void window.__runner.start(opts).catch(() => {}); // its end (or error) arrives as the "exit" event
    }, { runnerId: o.runnerId, once: o.once, memoryBudget: o.memory?.bytes, memorySource: o.memory?.source });
    const end = await Promise.race([exit, failure]);
    if (typeof end === "string") return end;
    if (end.reason === "error") throw new Error(end.message ?? "the runner loop failed");
    return end.reason;
  } catch (e) {
    // A target that closed under us is a crash; anything else is a real error.
    if (/Target closed|Session closed|crash/i.test(String(e))) return "crashed";
    throw e;
  } finally {
    await tab.close().catch(() => {});
  }
}

async function shards(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: "string" },
      "d-vit": { type: "string", default: "64" },
      layers: { type: "string", default: "6,12" },
      "n-patches-per-img": { type: "string", default: "16" },
      "no-cls": { type: "boolean", default: false },
      "n-imgs": { type: "string", default: "1024" },
      "max-patches-per-shard": { type: "string", default: "65536" },
      "n-features": { type: "string", default: "256" },
      sparsity: { type: "string", default: "0.02" },
      noise: { type: "string", default: "0.01" },
      seed: { type: "string", default: "1" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(SHARDS_USAGE);
    return 0;
  }
  if (!values.out) {
    console.error(`[shards] --out DIR is required\n\n${SHARDS_USAGE}`);
    return 1;
  }
  const int = (name: keyof typeof values, min: number) => {
    const v = Number(values[name]);
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer ≥ ${min} (got '${values[name]}')`);
    return v;
  };
  const real = (name: keyof typeof values, lo: number, hi: number) => {
    const v = Number(values[name]);
    if (!Number.isFinite(v) || v < lo || v > hi) throw new Error(`--${name} must be a number in [${lo}, ${hi}] (got '${values[name]}')`);
    return v;
  };
  const layers = values.layers!.split(",").map((s) => Number(s.trim()));
  if (layers.length === 0 || !layers.every(Number.isInteger)) throw new Error(`--layers must be comma-separated integers (got '${values.layers}')`);
  const d_vit = int("d-vit", 1);
  const seed = int("seed", 0);
  const n_features = int("n-features", 1);
  const sparsity = real("sparsity", 0, 1);
  const noise = real("noise", 0, 1e6);
  const started = Date.now();
  const w = await writeShards({
    out: values.out,
    d_vit,
    layers,
    n_patches_per_img: int("n-patches-per-img", 1),
    cls_token: !values["no-cls"],
    n_imgs: int("n-imgs", 1),
    max_patches_per_shard: int("max-patches-per-shard", 1),
    generator: sparseFeatureGenerator({ d_vit, n_features, sparsity, seed, noise }),
    description: { n_features, sparsity, noise, seed },
  });
  console.log(`[shards] wrote ${w.shards.length} shards (${(w.bytes / 2 ** 20).toFixed(1)} MiB, ${w.metadata.n_imgs} images) to ${values.out} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}

const commands: Record<string, (argv: string[]) => Promise<number>> = { submit, status, download, delete: deleteCommand, runner, shards, fit };

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "-h" || cmd === "--help") {
    console.log(USAGE);
    return cmd ? 0 : 1;
  }
  const fn = commands[cmd];
  if (!fn) {
    console.error(`unknown command '${cmd}'\n\n${USAGE}`);
    return 1;
  }
  try {
    return await fn(rest);
  } catch (e) {
    console.error(`[${cmd}] ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}
