/**
 * The runner's cache of autotuned matmul kernels (shaders/autotune.ts), on disk: one JSON file,
 * $SAE_SWARM_CACHE/kernels.json (default ~/.cache/sae-swarm/kernels.json), keyed by what the timings depend on and
 * then by tuning shape: the adapter (vendor, architecture, device, description), its driver (shaders/device.ts
 * driverOf), the runtime and its version (Chrome's or the `webgpu` package's: they compile WGSL differently), and a
 * hash of the candidates' WGSL (shaders/autotune.ts candidateWgsl). A runner tunes a shape once per key; every later
 * group of that shape, in this session or the next, reuses the choice, until a driver, runtime or kernel change
 * makes a new key (old keys' entries are then left unused).
 * Tests point SAE_SWARM_CACHE at a temp dir (test/helpers/tune-cache-env.ts).
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import path from "node:path";
import { candidateWgsl, type KernelReport, type TuneResult } from "../shaders/autotune";
import type { AdapterReport } from "../shaders/device";

// 2: keys name the driver, the runtime's version and the kernels' hash (version 1's keys named none of them)
const VERSION = 2;

interface CacheFile {
  version: number;
  adapters: Record<string, Record<string, TuneResult & { at?: string }>>;
}

export function cacheDir(): string {
  return process.env.SAE_SWARM_CACHE || path.join(homedir(), ".cache", "sae-swarm");
}

export const cachePath = () => path.join(cacheDir(), "kernels.json");

/** An adapter as the cache tells adapters apart: its report's names and its driver (shaders/device.ts driverOf). */
export type AdapterIdentity = Pick<AdapterReport, "vendor" | "architecture" | "device" | "description"> & { driver: string };

/** What compiles the WGSL: the backend and its version (Chrome's browser.version(), the `webgpu` package's). */
export interface Runtime {
  name: "chrome" | "dawn";
  version: string;
}

let kernelsHash: string | null = null;

/** 12 hex digits of the SHA-256 of the candidates' WGSL (computed once: ~1 MB of WGSL, ~20 ms). */
export function kernelsVersion(): string {
  return (kernelsHash ??= createHash("sha256").update(candidateWgsl()).digest("hex").slice(0, 12));
}

/** The key of an adapter's entries in the cache. */
export function adapterKey(a: AdapterIdentity, runtime: Runtime): string {
  return [runtime.name, runtime.version, a.vendor, a.architecture, a.device, a.description, a.driver, `kernels ${kernelsVersion()}`].map((s) => s || "-").join(" | ");
}

function read(): CacheFile {
  try {
    const f = JSON.parse(readFileSync(cachePath(), "utf8")) as CacheFile;
    if (f && f.version === VERSION && f.adapters && typeof f.adapters === "object") return f;
  } catch {
    // no cache yet, or unreadable: start afresh (it is only a cache)
  }
  return { version: VERSION, adapters: {} };
}

/** Every tuned shape of this adapter (shape key → result). */
export function loadTuned(adapter: string): Record<string, TuneResult> {
  return read().adapters[adapter] ?? {};
}

/** Records a tuned shape (read, merge, write to a temp file, rename: a concurrent runner's entries are kept). */
export function saveTuned(adapter: string, shapeKey: string, result: TuneResult): void {
  const f = read();
  (f.adapters[adapter] ??= {})[shapeKey] = { ...result, at: new Date().toISOString() };
  mkdirSync(cacheDir(), { recursive: true });
  const tmp = `${cachePath()}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(f, null, 1));
  renameSync(tmp, cachePath());
}

/**
 * The runner side of the cache for one adapter, whichever backend runs the loop: `tuned` (this adapter's entries,
 * for the Chrome page's start options), `cache` (a KernelCache for a loop in this process: Dawn), and `onEvent`,
 * which writes a newly tuned shape (a loop's "kernels" event) to disk.
 */
export function kernelCacheFor(adapter: AdapterIdentity, runtime: Runtime, log: (s: string) => void) {
  const key = adapterKey(adapter, runtime);
  const tuned = loadTuned(key);
  const save = (shape: string, result: TuneResult) => {
    tuned[shape] = result;
    try {
      saveTuned(key, shape, result);
    } catch (err) {
      log(`[runner] could not write the kernel cache ${cachePath()}: ${(err as Error).message}`);
    }
  };
  // SAE_SWARM_TUNE_BUDGET_MS: how long tuning may try candidates past the defaults (the tests keep it short)
  const budget = Number(process.env.SAE_SWARM_TUNE_BUDGET_MS);
  const budgetMs = process.env.SAE_SWARM_TUNE_BUDGET_MS && Number.isFinite(budget) && budget >= 0 ? budget : undefined;
  return {
    tuned,
    budgetMs,
    cache: { get: (shape: string) => tuned[shape], put: save, budgetMs },
    onEvent(e: { kind: string; report?: KernelReport }): void {
      if (e.kind === "kernels" && e.report?.source === "tuned" && runtime.name === "chrome") {
        const { key: shape, source: _, ...result } = e.report;
        save(shape, result);
      }
    },
  };
}
