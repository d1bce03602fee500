/** One line about a WebGPU adapter, as both backends log it. */
import type { AdapterReport } from "../../shaders/device";
import { robustness } from "../robustness";

export function describeReport(r: AdapterReport): string {
  const kind = r.isFallbackAdapter ? "software adapter (CPU emulation)" : "GPU";
  const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;
  // robustness: the setting both backends launched with (SAE_SWARM_ROBUSTNESS; not sent to the Worker)
  return `${r.vendor || "?"} ${r.architecture || ""} ${r.description || r.device} — ${kind}; max buffer ${mib(r.limits.maxBufferSize)}, max storage binding ${mib(r.limits.maxStorageBufferBindingSize)}; robustness ${robustness()}`;
}
