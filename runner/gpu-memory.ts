/**
 * How much device memory this runner's engine may use. WebGPU does not say, so the runner takes, in order:
 * `--gpu-memory GB`, the SAE_SWARM_GPU_MEMORY environment variable (GB), what nvidia-smi or rocm-smi report (90 %
 * of the free memory of the smallest GPU, leaving room for the driver, Chrome and other contexts), else
 * DEFAULT_MEMORY_BUDGET. The budget goes with every claim (AdapterReport.memoryBudget): the Worker sizes the group
 * chunk it leases with it, and the engine plans its row chunks and slabs with the same number.
 * GB here are 10^9 bytes (as GPUs are sold: "80 GB").
 */
import { execFile } from "node:child_process";
import { DEFAULT_MEMORY_BUDGET } from "../shaders/fit";
import type { MemorySource } from "../shaders/device";

export const GPU_MEMORY_ENV = "SAE_SWARM_GPU_MEMORY";
const GB = 1e9;
const MIB = 2 ** 20;
/** Share of the free memory a reporting tool shows that the engine takes. */
export const SMI_SHARE = 0.9;
const TOOL_TIMEOUT_MS = 5000;

export interface GpuMemory {
  bytes: number;
  source: MemorySource;
}

/** A memory size in GB ("80", "23.5") as bytes; throws naming `what` when it is not a positive number. */
export function parseGigabytes(value: string, what: string): number {
  const v = Number(value.trim());
  if (value.trim() === "" || !Number.isFinite(v) || v <= 0) throw new Error(`${what} must be a positive number of GB (10^9 bytes), got '${value}'`);
  return Math.floor(v * GB);
}

/** Runs a tool; its stdout, or null when it is absent, fails or takes longer than the timeout. */
export type RunTool = (cmd: string, args: string[]) => Promise<string | null>;

export const runTool: RunTool = (cmd, args) =>
  new Promise((resolve) => {
    execFile(cmd, args, { timeout: TOOL_TIMEOUT_MS, maxBuffer: 1 << 20 }, (err, stdout) => resolve(err ? null : stdout));
  });

/** nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits: "81559, 3" per GPU (MiB). */
export function parseNvidiaSmi(out: string): number | null {
  const free: number[] = [];
  for (const line of out.split("\n")) {
    const parts = line.split(",").map((s) => Number(s.trim()));
    if (parts.length === 2 && parts.every((v) => Number.isFinite(v) && v >= 0) && parts[0] > 0) free.push((parts[0] - parts[1]) * MIB);
  }
  return free.length ? Math.min(...free) : null;
}

/** rocm-smi --showmeminfo vram --json: {"card0": {"VRAM Total Memory (B)": "…", "VRAM Total Used Memory (B)": "…"}}. */
export function parseRocmSmi(out: string): number | null {
  let json: unknown;
  try {
    json = JSON.parse(out);
  } catch {
    return null;
  }
  if (!json || typeof json !== "object") return null;
  const free: number[] = [];
  for (const card of Object.values(json as Record<string, unknown>)) {
    if (!card || typeof card !== "object") continue;
    const entries = Object.entries(card as Record<string, unknown>);
    const find = (re: RegExp) => Number(entries.find(([k]) => re.test(k))?.[1]);
    const total = find(/total memory/i);
    const used = find(/used/i);
    if (Number.isFinite(total) && total > 0) free.push(total - (Number.isFinite(used) ? used : 0));
  }
  return free.length ? Math.min(...free) : null;
}

/** The budget from the flag, the environment, the GPU's tool, or the default (see the file comment). */
export async function detectGpuMemory(flag: string | undefined, env: NodeJS.ProcessEnv = process.env, run: RunTool = runTool): Promise<GpuMemory> {
  if (flag !== undefined) return { bytes: parseGigabytes(flag, "--gpu-memory"), source: "flag" };
  const fromEnv = env[GPU_MEMORY_ENV];
  if (fromEnv !== undefined && fromEnv !== "") return { bytes: parseGigabytes(fromEnv, GPU_MEMORY_ENV), source: "env" };
  const nvidia = await run("nvidia-smi", ["--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"]);
  const nv = nvidia === null ? null : parseNvidiaSmi(nvidia);
  if (nv !== null) return { bytes: Math.floor(SMI_SHARE * nv), source: "nvidia-smi" };
  const rocm = await run("rocm-smi", ["--showmeminfo", "vram", "--json"]);
  const amd = rocm === null ? null : parseRocmSmi(rocm);
  if (amd !== null) return { bytes: Math.floor(SMI_SHARE * amd), source: "rocm-smi" };
  return { bytes: DEFAULT_MEMORY_BUDGET, source: "default" };
}

export function describeGpuMemory(m: GpuMemory): string {
  const from = { flag: "--gpu-memory", env: GPU_MEMORY_ENV, "nvidia-smi": `${SMI_SHARE * 100} % of the free memory nvidia-smi reports`, "rocm-smi": `${SMI_SHARE * 100} % of the free memory rocm-smi reports`, default: "the default; set --gpu-memory GB" }[m.source];
  return `${(m.bytes / GB).toFixed(1)} GB (${from})`;
}
