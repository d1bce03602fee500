// The runner page: opens the WebGPU device (adapter limits at their maximum), reports the adapter to the CLI, and
// runs the training loop when the CLI says so. It reaches the Worker through the CLI's /api proxy (same origin).
import { requestSaeDevice, type AdapterReport, type SaeDevice } from "../../shaders/device";
import type { TuneResult } from "../../shaders/autotune";
import { Aborted, WorkerClient } from "../api";
import { EVENT_BINDING, type RunnerEvent, type StopMode } from "../events";
import { API_PREFIX, DATA_PATH, KEY_HEADER } from "../proxy-path";
import { RunnerLoop } from "./loop";

export interface StartOptions {
  runnerId: string;
  once: boolean;
  /** Device memory the engine may use (bytes) and where that figure came from (runner/gpu-memory.ts). */
  memoryBudget?: number;
  memorySource?: AdapterReport["memorySource"];
  /** This adapter's tuned kernels by shape, from the CLI's disk cache (runner/tune-cache.ts). */
  tuned?: Record<string, TuneResult>;
  /** SAE_SWARM_TUNE_BUDGET_MS, read by the CLI (the page has no environment). */
  tuneBudgetMs?: number;
}

declare global {
  interface Window {
    __runner: {
      ready: Promise<AdapterReport>;
      /** The adapter's driver fields (shaders/device.ts driverOf), once ready: part of the kernel cache's key. */
      driver(): string;
      start(opts: StartOptions): Promise<"no-work" | "stopped" | "failing">;
      stop(mode: StopMode): void;
    };
    [EVENT_BINDING]?: (json: string) => Promise<void>;
  }
}

function emit(e: RunnerEvent): void {
  const send = window[EVENT_BINDING];
  if (send) void send(JSON.stringify(e)).catch(() => {});
  else console.log(JSON.stringify(e));
}

let gpu: SaeDevice | null = null;
let loop: RunnerLoop | null = null;
// A stop that comes before start() has built the loop (the CLI passes a SIGTERM on as soon as the page is ready,
// which can be before start, e.g. while a crashed page is being replaced): kept and applied to the loop once built,
// else the page would train on until the CLI's grace timer.
let pendingStop: StopMode | null = null;

window.__runner = {
  ready: (async () => {
    if (!("gpu" in navigator)) throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
    gpu = await requestSaeDevice(navigator.gpu);
    gpu.device.lost.then((info) => {
      console.error(`GPU device lost: ${info.reason}: ${info.message}`);
      // The CLI restarts the page (a fresh device); the lease is given back there.
      if (info.reason !== "destroyed") emit({ kind: "device-lost", message: `${info.reason}: ${info.message}` });
    });
    return gpu.report;
  })(),

  driver: () => gpu?.driver ?? "",

  async start(opts) {
    await window.__runner.ready;
    // The CLI's session key comes in the URL fragment (never sent over the wire) and opens its proxies.
    const key = new URLSearchParams(location.hash.slice(1)).get("k") ?? "";
    const dataFetch = (url: string, init?: RequestInit) =>
      fetch(`${DATA_PATH}?url=${encodeURIComponent(url)}`, { ...init, headers: { ...(init?.headers as Record<string, string>), [KEY_HEADER]: key } });
    const api = new WorkerClient({
      server: location.origin + API_PREFIX,
      headers: { [KEY_HEADER]: key },
      onRetry: (what, attempt, delay, why) => emit({ kind: "log", level: "warn", message: `${what} failed (${why}); retry ${attempt} in ${Math.round(delay)} ms` }),
    });
    const adapter: AdapterReport = { ...gpu!.report, ...(opts.memoryBudget ? { memoryBudget: opts.memoryBudget, memorySource: opts.memorySource } : {}) };
    // shapes tuned in this page are kept here too; the CLI writes them to disk from the loop's "kernels" events
    const tuned = new Map(Object.entries(opts.tuned ?? {}));
    const kernelCache = { get: (k: string) => tuned.get(k), put: (k: string, r: TuneResult) => void tuned.set(k, r), budgetMs: opts.tuneBudgetMs };
    loop = new RunnerLoop({ api, dataFetch, device: gpu!.device, adapter, runnerId: opts.runnerId, emit, once: opts.once, kernelCache });
    if (pendingStop) loop.stop(pendingStop);
    try {
      const reason = await loop.run();
      emit({ kind: "exit", reason, ...(loop.failing ? { message: loop.failing } : {}) });
      return reason;
    } catch (e) {
      if (e instanceof Aborted) {
        emit({ kind: "exit", reason: "stopped" });
        return "stopped";
      }
      emit({ kind: "exit", reason: "error", message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
      throw e;
    }
  },

  stop(mode) {
    if (pendingStop !== "abandon") pendingStop = mode;
    loop?.stop(mode);
  },
};
