/**
 * The runner's kernel cache on disk (runner/tune-cache.ts): entries round-trip per adapter and shape; the key tells
 * apart what the timings depend on (driver, runtime version, the candidates' WGSL), so a driver or Chrome/Dawn
 * update, or a change to the kernels, tunes again instead of reusing a stale choice; and the real runtimes give
 * the key a driver: Chrome's runner page (its developer fields, runner/chrome.ts) and Dawn's adapter.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { cachedReport, candidateWgsl, choicesOf, TUNER_CHOICES, type TuneResult } from "../../shaders/autotune";
import { KernelsBody } from "../../worker/bodies";
import { KERNEL_HEADER, MATMUL_NAMES, MATMUL_SPECS, matmulShape, matmulSpec, type MatmulName } from "../../shaders/kernels";
import { choiceId, matmul, parseChoiceId } from "../../shaders/matmul-template";
import { requestSaeDevice } from "../../shaders/device";
import { adapterKey, cachePath, kernelCacheFor, kernelsVersion, loadTuned, saveTuned, type AdapterIdentity, type Runtime } from "../../runner/tune-cache";
import { launchChrome } from "../../runner/chrome";
import { bundleForBrowser, servePage } from "../../runner/serve";
import { dawnNavigatorGpu, dawnVersion } from "../../runner/backends/dawn";

const H200: AdapterIdentity = { vendor: "nvidia", architecture: "hopper", device: "", description: "H200", driver: "" };
const SWIFT: AdapterIdentity = { vendor: "google", architecture: "swiftshader", device: "", description: "", driver: "driver=SwiftShader driver 5.0.0 vkDriverVersion=20971520" };
const DAWN: Runtime = { name: "dawn", version: "webgpu 0.6.2" };
const CHROME: Runtime = { name: "chrome", version: "Chrome/150.0.7871.100" };
const kernels = Object.fromEntries(MATMUL_NAMES.map((m, i) => [m, { choice: choiceId(TUNER_CHOICES[i]), gflops: 10 + i, default_gflops: 5 }])) as TuneResult["kernels"];
const result: TuneResult = { kernels, timing: "timestamp", tuned_ms: 1234, candidates: 11, shape: { d: 768, n: 12288, B: 4096, K: 2, P: 1 } };

let dir = "";
let before: string | undefined;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), "tune-cache-"));
  before = process.env.SAE_SWARM_CACHE;
  process.env.SAE_SWARM_CACHE = dir;
});
afterEach(() => {
  process.env.SAE_SWARM_CACHE = before;
  rmSync(dir, { recursive: true, force: true });
});

describe("the kernel cache on disk", () => {
  it("round-trips per adapter and shape, keeps other entries, and survives a broken file", () => {
    const a = adapterKey(H200, DAWN);
    const b = adapterKey(SWIFT, CHROME);
    expect(loadTuned(a)).toEqual({});
    saveTuned(a, "d768-n12288-b4096-k2-p1", result);
    saveTuned(b, "d32-n128-b512-k12-p1", { ...result, timing: "wall" });
    expect(cachePath()).toBe(path.join(dir, "kernels.json"));
    const got = loadTuned(a)["d768-n12288-b4096-k2-p1"];
    expect(got).toMatchObject(result);
    expect(choicesOf(got)).toEqual(Object.fromEntries(MATMUL_NAMES.map((m, i) => [m, TUNER_CHOICES[i]])));
    expect(Object.keys(loadTuned(b))).toEqual(["d32-n128-b512-k12-p1"]);
    expect(loadTuned(b)["d32-n128-b512-k12-p1"].timing).toBe("wall");
    expect(JSON.parse(readFileSync(cachePath(), "utf8")).version).toBe(2);
    // the runner's glue: a loop's "kernels" event of a tuned shape is written, a cached one is not
    const hooks = kernelCacheFor(SWIFT, CHROME, () => {});
    expect(Object.keys(hooks.tuned)).toEqual(["d32-n128-b512-k12-p1"]);
    hooks.onEvent({ kind: "kernels", report: { ...result, key: "d8-n32-b256-k1-p1", source: "cache" } });
    expect(Object.keys(loadTuned(b))).toEqual(["d32-n128-b512-k12-p1"]);
    hooks.onEvent({ kind: "kernels", report: { ...result, key: "d8-n32-b256-k1-p1", source: "tuned" } });
    expect(Object.keys(loadTuned(b)).sort()).toEqual(["d32-n128-b512-k12-p1", "d8-n32-b256-k1-p1"]);
    expect(hooks.cache.get("d8-n32-b256-k1-p1")).toMatchObject({ tuned_ms: 1234 });
    writeFileSync(cachePath(), "{ not json");
    expect(loadTuned(a)).toEqual({});
    saveTuned(a, "k", result);
    expect(Object.keys(loadTuned(a))).toEqual(["k"]);
  });

  it("a cached entry read back from the file reports as the Worker's heartbeat schema accepts (no `at`)", () => {
    const a = adapterKey(H200, DAWN);
    saveTuned(a, "d768-n12288-b4096-k2-p1", result);
    const entry = loadTuned(a)["d768-n12288-b4096-k2-p1"];
    expect(entry).toHaveProperty("at"); // the file keeps when it was tuned ...
    expect(KernelsBody.safeParse({ ...entry, key: "d768-n12288-b4096-k2-p1", source: "cache" }).success).toBe(false);
    const report = cachedReport(entry, "d768-n12288-b4096-k2-p1"); // ... the report does not send it
    expect(KernelsBody.parse(report)).toEqual({ ...result, key: "d768-n12288-b4096-k2-p1", source: "cache" });
  });

  it("a driver update, a runtime update or a kernel change reads none of the old entries", () => {
    const shape = "d32-n128-b512-k12-p1";
    kernelCacheFor(SWIFT, CHROME, () => {}).onEvent({ kind: "kernels", report: { ...result, key: shape, source: "tuned" } });
    expect(Object.keys(kernelCacheFor(SWIFT, CHROME, () => {}).tuned)).toEqual([shape]);
    // the same adapter after a driver update (Chrome: only its developer fields change), and under a newer Chrome
    expect(kernelCacheFor({ ...SWIFT, driver: "driver=SwiftShader driver 5.0.1 vkDriverVersion=20971521" }, CHROME, () => {}).tuned).toEqual({});
    expect(kernelCacheFor(SWIFT, { ...CHROME, version: "Chrome/151.0.7900.1" }, () => {}).tuned).toEqual({});
    // Dawn keeps its own entries: it compiles WGSL differently; a Dawn driver update shows in its description
    expect(kernelCacheFor(SWIFT, DAWN, () => {}).tuned).toEqual({});
    expect(adapterKey({ ...H200, description: "NVIDIA: 550.54.15" }, DAWN)).not.toBe(adapterKey({ ...H200, description: "NVIDIA: 550.54.14" }, DAWN));
    // the kernels' version: a hash of every candidate's WGSL, which is in the key
    expect(kernelsVersion()).toBe(createHash("sha256").update(candidateWgsl()).digest("hex").slice(0, 12));
    expect(adapterKey(SWIFT, CHROME)).toContain(`kernels ${kernelsVersion()}`);
    // a version-1 file (keys without driver, runtime version or kernels) is not read
    const v1 = { version: 1, adapters: { "chrome | google | swiftshader | - | -": { [shape]: result } } };
    writeFileSync(cachePath(), JSON.stringify(v1));
    expect(kernelCacheFor(SWIFT, CHROME, () => {}).tuned).toEqual({});
  });

  it("the kernels' hash covers the WGSL of every matmul's every candidate", () => {
    const wgsl = candidateWgsl();
    for (const m of MATMUL_NAMES)
      for (const c of TUNER_CHOICES)
        // candidateWgsl's shapes: Matryoshka (P 2, the block specs) and Vanilla (P 1, their one-block forms)
        for (const s of [{ d: 64, n: 256, B: 64, P: 2 }, { d: 33, n: 97, B: 35, P: 1 }])
          for (const quad of [false, true])
            expect(wgsl.includes(matmul(matmulSpec(m, s.P > 1), c, KERNEL_HEADER, matmulShape(m, s), { quad })), `${m} ${choiceId(c)} at ${JSON.stringify(s)}${quad ? ", quad" : ""}`).toBe(true);
  });

  it("A read once per quad: the direct matmuls only, without vec4 loads along k", () => {
    const s = { d: 64, n: 256, B: 64 };
    const has = (m: MatmulName, id: string, quad: boolean) => matmul(MATMUL_SPECS[m], parseChoiceId(id)!, KERNEL_HEADER, matmulShape(m, s), { quad }).includes("quadBroadcast");
    for (const m of MATMUL_NAMES) {
      expect(has(m, "64x64/4x4/k16/direct", true), m).toBe(true);
      expect(has(m, "128x64/8x4/k16/direct", true), m).toBe(true);
      expect(has(m, "64x64/4x4/k16/direct", false), m).toBe(false);
      expect(has(m, "64x64/4x4/k16/tiled", true), m).toBe(false);
    }
    // vec4 loads along k (encode and decode's A, dL/df's A and B) keep their own loads
    for (const m of ["ENCODE", "DECODE", "GRAD_F"] as const) expect(has(m, "64x64/8x8/k16/direct/v4", true), m).toBe(false);
    expect(has("GRAD_W_ENC", "64x64/8x8/k16/direct/v4", true)).toBe(true);
  });
});

describe("the real runtimes' identities", () => {
  it("Chrome's runner page names its driver (developer fields), and the runner keys on its version", async () => {
    const page = await servePage(await bundleForBrowser(path.join(path.dirname(new URL(import.meta.url).pathname), "../../runner/page/main.ts")), "t");
    const chrome = await launchChrome();
    try {
      const tab = await chrome.browser.newPage();
      await tab.goto(page.url);
      await tab.waitForFunction(() => window.__runner !== undefined);
      const report = await tab.evaluate(() => window.__runner.ready);
      const driver = await tab.evaluate(() => window.__runner.driver());
      console.log(`[tune-cache] Chrome: ${await chrome.browser.version()}, driver: ${driver}`);
      // `driver` (the driver's name and version) and `backend` are Chrome's developer fields
      expect(driver).toMatch(/(^| )driver=\S/);
      expect(driver).toMatch(/(^| )backend=\S/);
      const key = adapterKey({ ...report, driver }, { name: "chrome", version: await chrome.browser.version() });
      expect(key).toContain(driver);
      expect(key).toMatch(/Chrome\/\d+\.\d+\.\d+\.\d+/);
    } finally {
      await chrome.close();
      await page.close();
    }
  });

  it("Dawn's adapter: the key names the webgpu package's version and the description (its driver)", async () => {
    const gpu = await requestSaeDevice(await dawnNavigatorGpu());
    try {
      console.log(`[tune-cache] Dawn: ${dawnVersion()}, description: ${gpu.report.description}, driver: ${gpu.driver}`);
      expect(dawnVersion()).toMatch(/^webgpu \d+\.\d+\.\d+/);
      const key = adapterKey({ ...gpu.report, driver: gpu.driver }, { name: "dawn", version: dawnVersion() });
      expect(key).toContain(dawnVersion());
      expect(gpu.report.description).not.toBe("");
      expect(key).toContain(gpu.report.description);
    } finally {
      gpu.device.destroy();
    }
  });
});
