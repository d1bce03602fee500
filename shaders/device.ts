/**
 * Adapter and device setup shared by the Chrome page, Node's `webgpu` (Dawn) and the tests.
 * The default device limits are small (128 MiB per storage binding), so we ask for the adapter's maximum.
 */

/** Limits that decide how many SAEs fit on a device; requested at the adapter's maximum. */
export const LIMIT_NAMES = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxUniformBufferBindingSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxBindGroups",
  "maxBindingsPerBindGroup",
] as const;

export type LimitName = (typeof LIMIT_NAMES)[number];
export type AdapterLimits = Record<LimitName, number>;

/** Where a runner's memory budget came from (runner/gpu-memory.ts). */
export const MEMORY_SOURCES = ["flag", "env", "nvidia-smi", "rocm-smi", "default"] as const;
export type MemorySource = (typeof MEMORY_SOURCES)[number];

/** What a runner reports about its adapter with every claim, and what is stored with every group it trains. */
export interface AdapterReport {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** True for fallback/software adapters (SwiftShader, llvmpipe, WARP): CPU emulation, not a GPU. */
  isFallbackAdapter: boolean;
  features: string[];
  limits: AdapterLimits;
  /**
   * Device memory the engine may use, in bytes (WebGPU does not expose it; the runner's CLI finds it, see
   * runner/gpu-memory.ts). The Worker sizes the group chunk with it; absent: DEFAULT_MEMORY_BUDGET (shaders/fit.ts).
   */
  memoryBudget?: number;
  memorySource?: MemorySource;
  /** Stored by the Worker once the runner reports them (a heartbeat's `kernels`): the lease's autotuned matmuls. */
  kernels?: import("./autotune").KernelReport;
}

const SOFTWARE_HINTS = /swiftshader|llvmpipe|lavapipe|softpipe|warp|microsoft basic render|cpu/i;

export function describeAdapter(adapter: GPUAdapter): AdapterReport {
  const info = adapter.info;
  const limits = {} as AdapterLimits;
  for (const name of LIMIT_NAMES) limits[name] = Number(adapter.limits[name]);
  const text = [info.vendor, info.architecture, info.device, info.description].join(" ");
  // `isFallbackAdapter` moved from GPUAdapter to GPUAdapterInfo; read either, and trust the name too,
  // since SwiftShader through Vulkan is not always flagged as a fallback.
  const flagged =
    (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true ||
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    description: info.description ?? "",
    isFallbackAdapter: flagged || SOFTWARE_HINTS.test(text),
    features: [...adapter.features].map(String).sort(),
    limits,
  };
}

/**
 * What the adapter says of its driver beyond vendor, architecture, device and description: every other scalar field
 * of GPUAdapterInfo, as "name=value" sorted by name. Dawn's description already names the driver ("SwiftShader
 * driver 5.0.0"); Chrome leaves description empty and names the driver only in its developer fields (`driver`,
 * `backend`, `type`, `vkDriverVersion`, `d3dShaderModel`: runner/chrome.ts turns them on). Not sent to the Worker
 * (its adapter body is strict); the runner's kernel cache keys on it (runner/tune-cache.ts), so a driver update
 * tunes again.
 */
export function driverOf(info: GPUAdapterInfo): string {
  const standard = new Set(["vendor", "architecture", "device", "description"]);
  const fields: string[] = [];
  // for…in: WebIDL attributes are getters on the prototype, enumerable in Chrome and in the `webgpu` package alike
  for (const name in info) {
    const v = (info as unknown as Record<string, unknown>)[name];
    if (!standard.has(name) && (typeof v === "string" || typeof v === "number" || typeof v === "boolean")) fields.push(`${name}=${v}`);
  }
  return fields.sort().join(" ");
}

export interface SaeDevice {
  adapter: GPUAdapter;
  device: GPUDevice;
  report: AdapterReport;
  /** driverOf(adapter.info). */
  driver: string;
}

/** Requests the high-performance adapter and a device with every limit raised to the adapter's maximum. */
export async function requestSaeDevice(gpu: GPU): Promise<SaeDevice> {
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new Error("WebGPU: no adapter found (is WebGPU enabled? Chrome needs --enable-unsafe-webgpu on Linux)");
  const report = describeAdapter(adapter);
  const requiredLimits: Record<string, number> = {};
  for (const name of LIMIT_NAMES) requiredLimits[name] = report.limits[name];
  const wanted = ["timestamp-query", "subgroups", "shader-f16"].filter((f) => adapter.features.has(f)) as GPUFeatureName[];
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: wanted });
  return { adapter, device, report, driver: driverOf(adapter.info) };
}
