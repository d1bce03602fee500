/**
 * The Dawn backend: the loop (runner/page/loop.ts) runs in this Node process on the `webgpu` package's
 * navigator.gpu (Dawn over Vulkan; needs the Vulkan loader, libvulkan1), with no browser: for headless GPU servers.
 * It talks to the Worker directly with the runner token (no proxy: no page to keep the token from), and fetches
 * data with `dataFetch`. SAE_SWARM_FAULT fires in its WorkerClient's fetch, at the requests Chrome's proxy fires at.
 *
 * Stops: the loop's own stop (drain / abandon: checkpoint, release) as in Chrome. What Chrome gets from closing
 * its tab, this gets from aborting: an abandon while the data is loading aborts its fetches (a data host that hangs
 * must not hold the stop up), and a lost device or close() aborts every request of the session, so a loop left
 * behind can write nothing more under its lease.
 */
import { kernelCacheFor } from "../tune-cache";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { requestSaeDevice, type AdapterReport, type SaeDevice } from "../../shaders/device";
import { Aborted, WorkerClient, type FetchFn } from "../api";
import { faultyFetch } from "../fault-fetch";
import type { RunnerEvent, StopMode } from "../events";
import { describeGpuMemory } from "../gpu-memory";
import { RunnerLoop } from "../page/loop";
import type { BackendOptions, RunnerBackend, SessionOptions, SessionOutcome } from "./backend";
import { describeReport } from "./report";
import { dawnRobustnessFlags } from "../robustness";

/** SwiftShader's Vulkan driver, shipped with Debian's chromium: the software adapter when no GPU driver is there. */
export const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";

let dawnGpu: GPU | null = null;

/**
 * navigator.gpu from the `webgpu` package; one Dawn instance per process (a second one crashes SwiftShader's
 * threads at exit). Unless the Vulkan drivers are chosen by the environment already, SwiftShader's is added to
 * the system's (VK_ADD_DRIVER_FILES keeps a GPU's own driver visible, and Dawn prefers it).
 */
export async function dawnNavigatorGpu(): Promise<GPU> {
  if (dawnGpu) return dawnGpu;
  const chosen = ["VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES"].some((k) => process.env[k]);
  if (!chosen && existsSync(SWIFTSHADER_ICD)) process.env.VK_ADD_DRIVER_FILES = SWIFTSHADER_ICD;
  const { create, globals } = await import("webgpu");
  Object.assign(globalThis, globals); // GPUBufferUsage, GPUMapMode, ... as the engine uses them
  dawnGpu = create(dawnRobustnessFlags()); // SAE_SWARM_ROBUSTNESS: off unless `on` (runner/robustness.ts)
  return dawnGpu;
}

/** The `webgpu` package's version, i.e. its Dawn build, which compiles the WGSL (the kernel cache keys on it). */
export function dawnVersion(): string {
  try {
    return `webgpu ${(createRequire(import.meta.url)("webgpu/package.json") as { version: string }).version}`;
  } catch {
    return "webgpu (version unknown)";
  }
}

export interface DawnOptions extends BackendOptions {
  /** How data (shards) are fetched; default global fetch. The CLI may pass one that refuses private hosts. */
  dataFetch?: FetchFn;
}

export class DawnBackend implements RunnerBackend {
  readonly name = "dawn";
  private gpu: SaeDevice | null = null;
  private loop: RunnerLoop | null = null;
  private stopMode: StopMode | null = null;
  /** The loop's current phase ("data": an abandon aborts the data fetches). */
  private phase: string | null = null;
  /** Aborts the data fetches of the current session. */
  private dataAbort: AbortController | null = null;
  /** Aborts every request of the current session (device lost, close). */
  private sessionAbort: AbortController | null = null;
  /** After close(), a loop still unwinding (its requests aborted, its device destroyed) reports nothing more. */
  private closed = false;

  constructor(private readonly o: DawnOptions) {}

  async open(): Promise<boolean> {
    let report: AdapterReport;
    try {
      report = (await this.device()).report;
    } catch (e) {
      console.error(`[runner] Dawn found no WebGPU adapter (${(e as Error).message.split("\n")[0]}); Dawn needs the Vulkan loader (libvulkan1) and a Vulkan driver`);
      return false;
    }
    this.o.log(`[runner] WebGPU adapter (Dawn): ${describeReport(report)}`);
    if (report.isFallbackAdapter && !this.o.allowSoftware) {
      console.error("[runner] refusing to train on a software adapter; pass --allow-software-adapter to use it anyway");
      return false;
    }
    return true;
  }

  /** The device, or a fresh one after the last was lost. */
  private async device(): Promise<SaeDevice> {
    if (!this.gpu) {
      const gpu = await requestSaeDevice(await dawnNavigatorGpu());
      this.gpu = gpu;
      void gpu.device.lost.then(() => {
        if (this.gpu === gpu) this.gpu = null;
      });
    }
    return this.gpu;
  }

  async session(s: SessionOptions): Promise<SessionOutcome> {
    const gpu = await this.device();
    if (s.memory) s.log(`[runner] GPU memory budget: ${describeGpuMemory(s.memory)}`);
    const all = (this.sessionAbort = new AbortController());
    const data = (this.dataAbort = new AbortController());
    const lost = gpu.device.lost.then((info) => {
      if (info.reason === "destroyed") return new Promise<never>(() => {}); // our own close()
      s.log(`[runner] GPU device lost: ${info.reason}: ${info.message}`);
      return "device-lost" as const;
    });
    const emit = (e: RunnerEvent) => {
      if (this.closed) return;
      if (e.kind === "phase") this.phase = e.phase;
      if (e.kind === "claimed" || e.kind === "done") this.phase = null;
      s.onEvent(e);
    };
    const api = new WorkerClient({
      server: this.o.server,
      token: this.o.token,
      signal: all.signal,
      ...(this.o.fault ? { fetch: faultyFetch((u, i) => fetch(u, i), this.o.fault, this.o.server) } : {}),
      onRetry: (what, attempt, delay, why) => emit({ kind: "log", level: "warn", message: `${what} failed (${why}); retry ${attempt} in ${Math.round(delay)} ms` }),
    });
    const dataFetch = abortable(this.o.dataFetch ?? ((u, i) => fetch(u, i)), AbortSignal.any([data.signal, all.signal]));
    const adapter: AdapterReport = { ...gpu.report, ...(s.memory ? { memoryBudget: s.memory.bytes, memorySource: s.memory.source } : {}) };
    // tuned kernels per shape: read from and written to the disk cache directly (the loop runs in this process)
    const kernelCache = kernelCacheFor({ ...gpu.report, driver: gpu.driver }, { name: "dawn", version: dawnVersion() }, s.log).cache;
    const loop = (this.loop = new RunnerLoop({ api, dataFetch, device: gpu.device, adapter, runnerId: s.runnerId, emit, once: s.once, kernelCache }));
    if (this.stopMode) this.stop(this.stopMode);
    try {
      const end = await Promise.race([loop.run(), lost]);
      if (end === "device-lost") all.abort(); // the loop may not write another byte under its lease
      if (end === "failing") console.error(`[runner] ${loop.failing}`);
      return end;
    } catch (e) {
      if (e instanceof Aborted) return "stopped";
      throw e;
    } finally {
      this.loop = null;
      this.phase = null;
      data.abort();
    }
  }

  stop(mode: StopMode): void {
    if (this.stopMode !== "abandon") this.stopMode = mode;
    this.loop?.stop(mode);
    // Checkpoints come after the data: nothing to save yet, so the fetches need not finish (the lease is released).
    if (mode === "abandon" && this.phase === "data") this.dataAbort?.abort();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.loop?.stop("abandon");
    this.sessionAbort?.abort();
    this.dataAbort?.abort();
    this.gpu?.device.destroy();
    this.gpu = null;
  }
}

/** `f` under `signal`: once it aborts, every fetch (in flight or later) fails with Aborted, which the loop passes up
 *  instead of failing the group. */
export function abortable(f: FetchFn, signal: AbortSignal): FetchFn {
  return async (url, init) => {
    if (signal.aborted) throw new Aborted();
    try {
      return await f(url, { ...init, signal: init?.signal ? AbortSignal.any([init.signal, signal]) : signal });
    } catch (e) {
      if (signal.aborted) throw new Aborted();
      throw e;
    }
  };
}
