/**
 * The runner's cache of autotuned matmul kernels (shaders/autotune.ts), on disk: one JSON file,
 * $SAE_SWARM_CACHE/kernels.json (default ~/.cache/sae-swarm/kernels.json), keyed by adapter (vendor, architecture,
 * device, description, and the runtime: Chrome and Dawn compile WGSL differently) and then by tuning shape. A runner
 * tunes a shape once per adapter; every later group of that shape, in this session or the next, reuses the choice.
 * Tests point SAE_SWARM_CACHE at a temp dir (test/helpers/tune-cache-env.ts).
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import path from "node:path";
import type { KernelReport, TuneResult } from "../shaders/autotune";
import type { AdapterReport } from "../shaders/device";

const VERSION = 1;

interface CacheFile {
  version: number;
  adapters: Record<string, Record<string, TuneResult & { at?: string }>>;
}

export function cacheDir(): string {
  return process.env.SAE_SWARM_CACHE || path.join(homedir(), ".cache", "sae-swarm");
}

export const cachePath = () => path.join(cacheDir(), "kernels.json");

/** The adapter's key in the cache. */
export function adapterKey(r: Pick<AdapterReport, "vendor" | "architecture" | "device" | "description">, runtime: string): string {
  return [runtime, r.vendor, r.architecture, r.device, r.description].map((s) => s || "-").join(" | ");
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
export function kernelCacheFor(adapter: Pick<AdapterReport, "vendor" | "architecture" | "device" | "description">, runtime: "chrome" | "dawn", log: (s: string) => void) {
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
      if (e.kind === "kernels" && e.report?.source === "tuned" && runtime === "chrome") {
        const { key: shape, source: _, ...result } = e.report;
        save(shape, result);
      }
    },
  };
}
