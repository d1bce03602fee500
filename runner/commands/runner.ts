/** `sae-swarm runner`: trains groups from a sae-swarm server on this machine's GPU, in headless Chrome. */
import { describeKernels } from "../../shaders/autotune";
import { kernelCacheFor } from "../tune-cache";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type { Page } from "puppeteer-core";
import { launchChrome, launchProfiles, type LaunchedChrome, type LaunchProfile } from "../chrome";
import { bundleForBrowser, servePage, type PageServer } from "../serve";
import { WorkerClient } from "../api";
import { EVENT_BINDING, type RunnerEvent, type StopMode } from "../events";
import { ProgressDisplay, duration } from "../progress";
import { apiProxy } from "../proxy";
import { FAULT_ENV, FaultInjector, parseFault } from "../fault";
import type { AdapterReport } from "../../shaders/device";
import type { Lease } from "../../worker/protocol";
import { devVar } from "./server";
import { detectGpuMemory, describeGpuMemory, GPU_MEMORY_ENV, type GpuMemory } from "../gpu-memory";

const here = path.dirname(new URL(import.meta.url).pathname);

export const RUNNER_USAGE = `usage: sae-swarm runner --server URL [options]

  --server URL               the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T                  the runner token; better from env SAE_SWARM_RUNNER_TOKEN or RUNNER_TOKEN in ./.dev.vars,
                             which \`ps\` does not show
  --allow-software-adapter   train even on a software (CPU-emulated) WebGPU adapter such as SwiftShader
  --once                     exit when no group is waiting, instead of polling for more
  --runner-id ID             how this runner names itself to the server (default host-pid)
  --gpu-memory GB            device memory the engine may use, in GB of 10^9 bytes (env ${GPU_MEMORY_ENV};
                             default: 90 % of the free memory nvidia-smi or rocm-smi reports, else 2 GiB)
  --probe                    check the server and the GPU adapter of each launch profile, print them, and exit
  --launch-profile NAME      launch Chrome only this way (env SAE_SWARM_LAUNCH_PROFILE): vulkan, xvfb-vulkan or
                             default; without it, each is tried in that order until one gives a GPU
  -h, --help                 this help

Ctrl-C once: finish the current group, then exit. Twice: checkpoint the group and give it back now.
Three times (or SIGTERM twice): give the lease back and exit at once. SIGTERM: like Ctrl-C twice.
A give-back is not a failure: the group is claimable at once and resumes from its last checkpoint. A stop that
takes longer than SAE_SWARM_STOP_GRACE_MS (default 20000) gives the lease back from here and exits.
Groups that fail here several times in a row make the runner back off, then stop claiming (exit 1).
Chrome: CHROME_PATH, else /usr/bin/chromium.`;

export function describeReport(r: AdapterReport): string {
  const kind = r.isFallbackAdapter ? "software adapter (CPU emulation)" : "GPU";
  const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;
  return `${r.vendor || "?"} ${r.architecture || ""} ${r.description || r.device} — ${kind}; max buffer ${mib(r.limits.maxBufferSize)}, max storage binding ${mib(r.limits.maxStorageBufferBindingSize)}`;
}

/** Page restarts allowed within RESTART_WINDOW_MS before the runner gives up (a machine that keeps crashing). */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 10 * 60_000;

/** How long an abandon (SIGTERM, Ctrl-C twice) may take in the page before the CLI gives the lease back itself. */
const stopGraceMs = () => Number(process.env.SAE_SWARM_STOP_GRACE_MS) || 20_000;

export type PageOutcome = "no-work" | "stopped" | "failing" | "crashed" | "device-lost" | "refused" | "probed";

export async function runner(argv: string[]): Promise<number> {
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
      "launch-profile": { type: "string", default: process.env.SAE_SWARM_LAUNCH_PROFILE || undefined },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(RUNNER_USAGE);
    return 0;
  }
  const memory = await detectGpuMemory(values["gpu-memory"]);
  const server = values.server!.replace(/\/$/, "");
  let profiles = launchProfiles();
  if (values["launch-profile"]) {
    profiles = profiles.filter((p) => p.name === values["launch-profile"]);
    if (!profiles.length) {
      console.error(`[runner] --launch-profile must be one of ${launchProfiles().map((p) => p.name).join(", ")} on this machine (got '${values["launch-profile"]}')`);
      return 1;
    }
  }
  const token = values.token ?? devVar("RUNNER_TOKEN");
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
  // Node's own client: gives a lease back when the page that held it died or did not stop in time.
  const api = new WorkerClient({ server, token, retry: { maxAttempts: 5 } });
  let lease: Lease | null = null;
  let stopMode: StopMode | null = null;
  let activeTab: Page | null = null;
  let signals = 0;
  let hardExit: ((why: string) => void) | null = null;
  const hardExitP = new Promise<{ hard: string }>((r) => (hardExit = (why) => r({ hard: why })));
  let grace: NodeJS.Timeout | null = null;

  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    const mode: StopMode | "hard" = sig === "SIGINT" ? (signals === 1 ? "drain" : signals === 2 ? "abandon" : "hard") : signals === 1 ? "abandon" : "hard";
    if (mode === "hard") {
      log(`[runner] ${sig}: giving the lease back and exiting now`);
      hardExit?.("runner killed");
      return;
    }
    stopMode = mode;
    log(mode === "drain" ? `[runner] ${sig}: finishing the current group, then exiting (Ctrl-C again to abandon it)` : `[runner] ${sig}: checkpointing the current group and giving it back`);
    // An abandon is bounded: a page stuck in a data fetch or a long eval does not hold the runner up.
    if (mode === "abandon" && !grace) grace = setTimeout(() => hardExit?.("runner stopped (the page did not stop in time)"), stopGraceMs());
    void activeTab?.evaluate((m) => window.__runner.stop(m), mode).catch(() => {});
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("SIGHUP", onSignal);

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
      case "kernels": {
        const r = e.report;
        log(`[runner] matmul kernels for ${r.key} (${r.source === "tuned" ? `tuned in ${(r.tuned_ms / 1000).toFixed(1)} s, ${r.candidates} candidates, ${r.timing} timing` : "cached"}): ${describeKernels(r).join("; ")}`);
        break;
      }
      case "backoff":
        log(`[runner] ${e.failures} group${e.failures > 1 ? "s" : ""} failed here in a row; next claim in ${duration(e.wait_ms / 1000)}`);
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
    page = await servePage(await bundleForBrowser(path.join(here, "../page/main.ts")), "sae-swarm runner", apiProxy({ server, token, key, fault: fault && new FaultInjector(fault) }));
    const pageUrl = `${page.url}#k=${key}`;
    const picked = await Promise.race([chooseChrome(pageUrl, profiles, values["allow-software-adapter"]!, values.probe!, log), hardExitP]);
    if ("hard" in picked) return 130;
    chrome = picked.chrome;
    if (!chrome) {
      console.error(
        picked.sawSoftware
          ? "[runner] refusing to train on a software adapter (no launch profile found a GPU); pass --allow-software-adapter to use it anyway"
          : "[runner] no launch profile gave a WebGPU adapter",
      );
      return 2;
    }
    log(`[runner] Chrome launch profile: ${chrome.profile.name}`);
    if (values.probe) return 0;
    const restarts: number[] = [];
    for (;;) {
      if (stopMode === "abandon") return 130;
      // A Chrome that died under us (killed, out of memory) is started again; a live one keeps serving pages.
      if (!chrome?.browser.connected) {
        const profile: LaunchProfile = chrome!.profile;
        await chrome?.close();
        chrome = null;
        const launched = await Promise.race([launchChrome([], profile), hardExitP]);
        if ("hard" in launched) return 130;
        chrome = launched;
      }
      const outcome = await Promise.race([
        runPage(chrome, pageUrl, {
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
        }).catch((e: unknown) => (stopMode ? "stopped" : Promise.reject(e))),
        hardExitP,
      ]);
      activeTab = null;
      if (typeof outcome === "object") {
        await giveBack(api, lease, outcome.hard, log);
        return 130;
      }
      if (outcome === "refused") return 2;
      if (outcome === "probed" || outcome === "no-work") return 0;
      if (outcome === "failing") return 1;
      if (outcome === "stopped") {
        await giveBack(api, lease, "runner stopped", log); // only when the page could not (it normally has)
        return stopMode ? 130 : 0;
      }
      // crashed or device-lost: give the group back at once (a second runner resumes it), then a fresh page.
      await giveBack(api, lease, outcome === "crashed" ? "runner page crashed" : "GPU device lost", log);
      lease = null;
      if (stopMode) return 130;
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
    if (grace) clearTimeout(grace);
    display.clear();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("SIGHUP", onSignal);
    await chrome?.close();
    await page?.close();
  }
}

/**
 * Launches Chrome with each profile in turn until one gives a hardware adapter, and returns that Chrome (kept
 * open). With none, the first one that gave a software adapter when `allowSoftware`, else null. Logs each try.
 */
export async function chooseChrome(
  url: string,
  profiles: LaunchProfile[],
  allowSoftware: boolean,
  probe: boolean,
  log: (s: string) => void,
): Promise<{ chrome: LaunchedChrome | null; sawSoftware: boolean }> {
  let fallback: LaunchedChrome | null = null;
  let sawSoftware = false;
  for (const profile of profiles) {
    let chrome: LaunchedChrome | null = null;
    try {
      chrome = await launchChrome([], profile);
      const report = await adapterOf(chrome, url);
      log(`[runner] launch profile ${profile.name}: ${describeReport(report)}`);
      if (!report.isFallbackAdapter) {
        await fallback?.close();
        return { chrome, sawSoftware };
      }
      sawSoftware = true;
      if (allowSoftware && !fallback) {
        fallback = chrome; // kept, in case no later profile finds a GPU
        chrome = null;
      }
    } catch (e) {
      log(`[runner] launch profile ${profile.name}: no adapter (${(e as Error).message.split("\n")[0]})`);
    }
    await chrome?.close();
  }
  if (probe && !fallback && sawSoftware) log("[runner] only software adapters; a runner would need --allow-software-adapter");
  return { chrome: fallback, sawSoftware };
}

/** The adapter a runner page reports in this Chrome (bounded: a profile that hangs is a profile that failed). */
async function adapterOf(chrome: LaunchedChrome, url: string): Promise<AdapterReport> {
  const tab = await chrome.browser.newPage();
  try {
    const deadline = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no answer within 60 s")), 60_000).unref());
    return await Promise.race([
      (async () => {
        await tab.goto(url);
        await tab.waitForFunction(() => window.__runner !== undefined);
        return (await tab.evaluate(() => window.__runner.ready)) as AdapterReport;
      })(),
      deadline,
    ]);
  } finally {
    await tab.close().catch(() => {});
  }
}

/** Releases the lease this runner still holds (not a failure: the group is claimable at once). */
async function giveBack(api: WorkerClient, lease: Lease | null, why: string, log: (s: string) => void): Promise<void> {
  if (!lease) return;
  await api.release(lease, why).then(
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
  const gone = () => failed?.("crashed");
  const failure = new Promise<"crashed" | "device-lost">((r) => (failed = r));
  // The loop's end comes as an "exit" event, not as the result of one long `evaluate`: a runner trains for hours,
  // and a CDP call outlives no protocolTimeout.
  let exited: ((e: Extract<RunnerEvent, { kind: "exit" }>) => void) | null = null;
  const exit = new Promise<Extract<RunnerEvent, { kind: "exit" }>>((r) => (exited = r));
  let tune: ReturnType<typeof kernelCacheFor> | null = null;
  try {
    await tab.exposeFunction(EVENT_BINDING, (json: string) => {
      const e = JSON.parse(json) as RunnerEvent;
      o.onEvent(e);
      // a newly tuned shape goes into the disk cache, for every later group and runner session on this adapter
      tune?.onEvent(e);
      if (e.kind === "device-lost") failed?.("device-lost");
      if (e.kind === "exit") exited?.(e);
    });
    tab.on("console", (m) => o.log(`[page] ${m.text()}`));
    tab.on("pageerror", (e) => o.log(`[page] ${String(e)}`));
    tab.on("error", () => failed?.("crashed")); // the renderer crashed
    // Chrome itself gone (killed, out of memory): no event from the page will ever come.
    chrome.browser.once("disconnected", gone);
    if (!chrome.browser.connected) gone();
    await tab.goto(url);
    await tab.waitForFunction(() => window.__runner !== undefined);
    const report = (await tab.evaluate(() => window.__runner.ready)) as AdapterReport;
    o.log(`[runner] WebGPU adapter: ${describeReport(report)}`);
    tune = kernelCacheFor(report, "chrome", o.log);
    if (o.memory) o.log(`[runner] GPU memory budget: ${describeGpuMemory(o.memory)}`);
    if (report.isFallbackAdapter && !o.allowSoftware) {
      console.error("[runner] refusing to train on a software adapter; pass --allow-software-adapter to use it anyway");
      return "refused";
    }
    if (o.probe) return "probed";
    o.onTab(tab);
    await tab.evaluate((opts) => {
      void window.__runner.start(opts).catch(() => {}); // its end (or error) arrives as the "exit" event
    }, { runnerId: o.runnerId, once: o.once, memoryBudget: o.memory?.bytes, memorySource: o.memory?.source, tuned: tune.tuned, tuneBudgetMs: tune.budgetMs });
    const end = await Promise.race([exit, failure]);
    if (typeof end === "string") return end;
    if (end.reason === "error") throw new Error(end.message ?? "the runner loop failed");
    if (end.reason === "failing") console.error(`[runner] ${end.message}`);
    return end.reason;
  } catch (e) {
    // A target that closed under us is a crash; anything else is a real error.
    if (/Target closed|Session closed|Connection closed|crash/i.test(String(e))) return "crashed";
    throw e;
  } finally {
    chrome.browser.off("disconnected", gone);
    await tab.close().catch(() => {});
  }
}
