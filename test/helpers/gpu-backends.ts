/**
 * The two WebGPU runtimes the tests run every GPU case on: headless Chromium (through Puppeteer, page served on
 * 127.0.0.1) and Node's `webgpu` package (Dawn). Both give SwiftShader here; a real GPU elsewhere.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { launchChrome } from "../../runner/chrome";
import { dawnRobustnessFlags } from "../../runner/robustness";
import { bundleForBrowser, servePage } from "../../runner/serve";
import type { AdapterReport } from "../../shaders/device";
import { requestSaeDevice } from "../../shaders/device";
import { cases } from "../gpu/cases";

export interface GpuBackend {
  name: "chrome" | "dawn";
  report: AdapterReport;
  run<T = unknown>(name: string, input: unknown): Promise<T>;
  close(): Promise<void>;
}

const here = path.dirname(new URL(import.meta.url).pathname);

export async function openChrome(): Promise<GpuBackend> {
  const bundle = await bundleForBrowser(path.join(here, "../gpu/browser-entry.ts"));
  const server = await servePage(bundle, "sae-swarm tests");
  const chrome = await launchChrome();
  const page = await chrome.browser.newPage();
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(server.url);
  await page.waitForFunction(() => window.__gpu !== undefined);
  const report = (await page.evaluate(async () => (await window.__gpu).report)) as AdapterReport;
  return {
    name: "chrome",
    report,
    async run<T>(name: string, input: unknown) {
      try {
        return (await page.evaluate(async (n, i) => (await window.__gpu).run(n, i), name, input as any)) as T;
      } catch (e) {
        throw new Error(`${String(e)}${errors.length ? `\npage errors:\n${errors.join("\n")}` : ""}`);
      }
    },
    async close() {
      await chrome.close();
      await server.close();
    },
  };
}

export const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";

/** Why Dawn cannot run here, or null when it can. */
let dawnGpu: GPU | undefined;

/** One Dawn instance per process: a second one crashes SwiftShader's threads at exit. */
async function dawn(): Promise<GPU> {
  // Dawn finds no Vulkan driver on a GPU-less machine unless pointed at SwiftShader's ICD (shipped with chromium).
  if (!process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  if (!dawnGpu) {
    const { create, globals } = await import("webgpu");
    Object.assign(globalThis, globals);
    dawnGpu = create(dawnRobustnessFlags()); // as the runner: SAE_SWARM_ROBUSTNESS, off unless `on`
  }
  return dawnGpu;
}

export async function dawnUnavailable(): Promise<string | null> {
  try {
    const adapter = await (await dawn()).requestAdapter();
    return adapter ? null : "Node's webgpu package loaded but found no adapter (no Vulkan driver; install libvulkan1 and chromium)";
  } catch (e) {
    return `Node's webgpu package cannot load: ${String(e)}`;
  }
}

/**
 * The runtimes a GPU test file runs on: [name, open, why it cannot run here or null]; Chromium always, Dawn where
 * it loads (a warning says why not). SAE_GPU_BACKENDS=dawn (scripts/device-check.sh) leaves Chrome out on a machine
 * that has none.
 */
export async function gpuBackends(): Promise<Array<[string, () => Promise<GpuBackend>, string | null]>> {
  const dawnSkip = await dawnUnavailable();
  if (dawnSkip) console.warn(`skipping the Dawn backend: ${dawnSkip}`);
  const only = process.env.SAE_GPU_BACKENDS?.split(",");
  const all: Array<[string, () => Promise<GpuBackend>, string | null]> = [
    ["chrome", openChrome, null],
    ["dawn", openDawn, dawnSkip],
  ];
  return all.filter(([name]) => !only || only.includes(name));
}

export async function openDawn(): Promise<GpuBackend> {
  const { device, report } = await requestSaeDevice(await dawn());
  return {
    name: "dawn",
    report,
    async run<T>(name: string, input: unknown) {
      const fn = cases[name];
      if (!fn) throw new Error(`no GPU case named ${name}`);
      // Round-trip through JSON so both backends see and return exactly the same kinds of values.
      return JSON.parse(JSON.stringify(await fn(device, JSON.parse(JSON.stringify(input))))) as T;
    },
    async close() {
      device.destroy();
    },
  };
}
