/**
 * The Chrome backend: the loop runs in a runner page (runner/page/main.ts) in headless Chrome under Puppeteer,
 * served with the API and data proxies (runner/proxy.ts) on 127.0.0.1. Launch profiles are tried in turn until one
 * gives a GPU; a Chrome that died is launched again for the next session.
 */
import { kernelCacheFor } from "../tune-cache";
import { randomBytes } from "node:crypto";
import path from "node:path";
import type { Page } from "puppeteer-core";
import { launchChrome, type LaunchedChrome, type LaunchProfile } from "../chrome";
import { bundleForBrowser, servePage, type PageServer } from "../serve";
import { EVENT_BINDING, type RunnerEvent, type StopMode } from "../events";
import { apiProxy } from "../proxy";
import type { AdapterReport } from "../../shaders/device";
import { describeGpuMemory, type GpuMemory } from "../gpu-memory";
import type { BackendOptions, RunnerBackend, SessionOptions, SessionOutcome } from "./backend";
import { describeReport } from "./report";

const here = path.dirname(new URL(import.meta.url).pathname);

export class ChromeBackend implements RunnerBackend {
  readonly name = "chrome";
  private page: PageServer | null = null;
  private pageUrl = "";
  private chrome: LaunchedChrome | null = null;
  private activeTab: Page | null = null;
  private stopMode: StopMode | null = null;

  constructor(
    private readonly o: BackendOptions,
    private readonly profiles: LaunchProfile[],
  ) {}

  async open(): Promise<boolean> {
    const key = randomBytes(24).toString("hex");
    this.page = await servePage(await bundleForBrowser(path.join(here, "../page/main.ts")), "sae-swarm runner", apiProxy({ server: this.o.server, token: this.o.token, key, fault: this.o.fault, allowDataHosts: this.o.allowDataHosts }));
    this.pageUrl = `${this.page.url}#k=${key}`;
    const picked = await chooseChrome(this.pageUrl, this.profiles, this.o.allowSoftware, this.o.probe, this.o.log);
    this.chrome = picked.chrome;
    if (!this.chrome) {
      console.error(
        picked.sawSoftware
          ? "[runner] refusing to train on a software adapter (no launch profile found a GPU); pass --allow-software-adapter to use it anyway"
          : "[runner] no launch profile gave a WebGPU adapter",
      );
      return false;
    }
    this.o.log(`[runner] Chrome launch profile: ${this.chrome.profile.name}`);
    return true;
  }

  async session(s: SessionOptions): Promise<SessionOutcome> {
    // A Chrome that died under us (killed, out of memory) is started again; a live one keeps serving pages.
    if (!this.chrome?.browser.connected) {
      const profile: LaunchProfile = this.chrome!.profile;
      await this.chrome?.close();
      this.chrome = null;
      this.chrome = await launchChrome([], profile);
    }
    try {
      const outcome = await runPage(this.chrome, this.pageUrl, {
        ...s,
        probe: false,
        allowSoftware: this.o.allowSoftware,
        onTab: (t) => {
          this.activeTab = t;
          if (this.stopMode) void t.evaluate((m) => window.__runner.stop(m), this.stopMode).catch(() => {});
        },
      });
      if (outcome === "probed") throw new Error("the runner page only probed its adapter"); // probe is false above
      return outcome;
    } finally {
      this.activeTab = null;
    }
  }

  stop(mode: StopMode): void {
    if (this.stopMode !== "abandon") this.stopMode = mode;
    void this.activeTab?.evaluate((m) => window.__runner.stop(m), mode).catch(() => {});
  }

  async close(): Promise<void> {
    await this.chrome?.close();
    await this.page?.close();
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

export type PageOutcome = SessionOutcome | "probed";

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
    const driver = await tab.evaluate(() => window.__runner.driver());
    tune = kernelCacheFor({ ...report, driver }, { name: "chrome", version: await chrome.browser.version() }, o.log);
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
