/**
 * `sae-swarm fit`: how many SAEs of one shape a runner's GPU holds in one group chunk, and how the engine lays
 * them out (row chunks, slabs, bytes per SAE), from the same plan the engine and the Worker's claim chunking use
 * (shaders/fit.ts planMemory). For planning a sweep: a group larger than N is trained N SAEs at a time.
 */
import { parseArgs } from "node:util";
import { planMemory, type BindingLimits, type MemoryPlan } from "../../shaders/fit";
import { detectGpuMemory, describeGpuMemory, GPU_MEMORY_ENV } from "../gpu-memory";

export const FIT_USAGE = `usage: sae-swarm fit --d-vit N --exp-factor E [options]

Prints how many SAEs of this shape fit one group chunk on a runner, and the memory plan behind it. The last line
is 'fit: N SAEs per chunk (M MiB each)' (M: what every SAE keeps: weights, gradients, Adam moments).

  --d-vit N          activation width (sae.d_vit)
  --exp-factor E     expansion factor (sae.exp_factor; d_sae = d_vit · E)
  --batch-size B     sae_batch_size (default 16384)
  --n-prefixes P     most Matryoshka prefixes in the group (default 1: Vanilla)
  --batchtopk        the group holds a BatchTopK SAE (its whole-batch select needs buffers of its own)
  --auxk             the group holds a TopK/BatchTopK SAE with AuxK (aux_coeff > 0: dead counters, a working set
                     as large as the pre-activations)
  --gpu-memory GB    device memory the engine may use, GB of 10^9 bytes (default as the runner finds it:
                     env ${GPU_MEMORY_ENV}, else 90 % of what nvidia-smi or rocm-smi report as free, else 2 GiB)
  --max-binding B    the adapter's maxStorageBufferBindingSize in bytes (also taken as maxBufferSize; default:
                     this machine's WebGPU adapter through Node's webgpu package, else WebGPU's minimum, 128 MiB)
  -h, --help         this help`;

/** WebGPU's guaranteed minimums: what any adapter allows. */
const WEBGPU_MIN_LIMITS: BindingLimits = { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 28 };
const ADAPTER_TIMEOUT_MS = 15_000;

/** This machine's adapter limits through Node's `webgpu` package (Dawn), or null when there is none. */
async function localAdapterLimits(): Promise<{ limits: BindingLimits; name: string } | null> {
  const query = (async () => {
    try {
      const { create } = await import("webgpu");
      const adapter = await create([]).requestAdapter({ powerPreference: "high-performance" });
      if (!adapter) return null;
      const info = adapter.info;
      return {
        limits: { maxStorageBufferBindingSize: Number(adapter.limits.maxStorageBufferBindingSize), maxBufferSize: Number(adapter.limits.maxBufferSize) },
        name: [info.vendor, info.architecture, info.description || info.device].filter(Boolean).join(" "),
      };
    } catch {
      return null;
    }
  })();
  const timeout = new Promise<null>((r) => setTimeout(() => r(null), ADAPTER_TIMEOUT_MS).unref());
  return Promise.race([query, timeout]);
}

function positiveInt(values: Record<string, unknown>, name: string, fallback?: number): number {
  const raw = values[name];
  if (raw === undefined) {
    if (fallback === undefined) throw new Error(`--${name} is required\n\n${FIT_USAGE}`);
    return fallback;
  }
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} must be a positive integer (got '${String(raw)}')`);
  return v;
}

const MIB = 2 ** 20;
const mib = (bytes: number) => (bytes / MIB).toFixed(1);

/** The plan as text; the last line is the one scripts read. */
export function describePlan(p: MemoryPlan): string[] {
  const lines = [
    `budget ${mib(p.memoryBudget)} MiB, largest buffer (binding) ${mib(p.bindingBytes)} MiB`,
    `per SAE: ${mib(p.bytesPerSae)} MiB kept (weights, gradients, Adam moments, per-latent vectors)`,
    `row chunks: ${p.rowChunks} of ${p.rowsPerChunk} rows; working set ${mib(p.workingBytesPerSae)} MiB per SAE of one slab (activations of one chunk)`,
    `slabs: ${p.slabs} of up to ${p.saesPerSlab} SAEs; shared ${mib(p.sharedBytes)} MiB (the batch); total ${mib(p.totalBytes)} MiB`,
  ];
  lines.push(`fit: ${p.maxSaes} SAEs per chunk (${Math.round(p.bytesPerSae / MIB)} MiB each)`);
  return lines;
}

export async function fit(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      "d-vit": { type: "string" },
      "exp-factor": { type: "string" },
      "batch-size": { type: "string" },
      "n-prefixes": { type: "string" },
      batchtopk: { type: "boolean", default: false },
      auxk: { type: "boolean", default: false },
      "gpu-memory": { type: "string" },
      "max-binding": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(FIT_USAGE);
    return 0;
  }
  const d_vit = positiveInt(values, "d-vit");
  const exp = positiveInt(values, "exp-factor");
  const batch_size = positiveInt(values, "batch-size", 16384);
  const n_prefixes = positiveInt(values, "n-prefixes", 1);
  const memory = await detectGpuMemory(values["gpu-memory"]);
  let limits: BindingLimits;
  let adapter: string;
  if (values["max-binding"] !== undefined) {
    const b = positiveInt(values, "max-binding");
    limits = { maxStorageBufferBindingSize: b, maxBufferSize: b };
    adapter = "--max-binding";
  } else {
    const local = await localAdapterLimits();
    limits = local?.limits ?? WEBGPU_MIN_LIMITS;
    adapter = local ? `this machine's adapter (${local.name})` : "no WebGPU adapter here: WebGPU's minimum limits";
  }
  const shape = { d_vit, d_sae: d_vit * exp, batch_size, n_prefixes, batchtopk: values.batchtopk === true, auxk: values.auxk === true };
  console.log(`shape: d_vit ${d_vit}, d_sae ${shape.d_sae}, batch ${batch_size}, ${n_prefixes} prefix${n_prefixes > 1 ? "es" : ""}${shape.batchtopk ? ", BatchTopK" : ""}${shape.auxk ? ", AuxK" : ""}`);
  console.log(`memory: ${describeGpuMemory(memory)}; limits: ${adapter}`);
  const plan = planMemory(limits, shape, { memoryBudget: memory.bytes });
  if (plan.maxSaes === 0) console.log("not even one SAE of this shape fits: lower the batch size or the expansion factor, or use a larger GPU");
  for (const line of describePlan(plan)) console.log(line);
  return 0;
}
