import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { apiProxy, KEY_HEADER } from "../../runner/proxy";
import { bundleForBrowser, servePage, type PageServer } from "../../runner/serve";
import { ShardSource } from "../../runner/data/shards";
import { serveProtocol, type ProtocolServer } from "./protocol-server";
import { serveDirWithRanges } from "./range-server";
import { trainConfig } from "./fixtures";
import { SOFTWARE_CANDIDATES } from "../../shaders/autotune";
import { MATMUL_NAMES } from "../../shaders/kernels";
import { choiceId } from "../../shaders/matmul-template";
import type { HeartbeatRequest } from "../../worker/protocol";

const root = path.resolve(__dirname, "../..");

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(root, "bin/sae-swarm.js"), ...args], { cwd: root, env: { ...process.env, ...env } });
    let stdout = "", stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

let srv: ProtocolServer;
beforeAll(async () => {
  srv = await serveProtocol();
});
afterAll(async () => srv?.close());

describe("sae-swarm CLI", () => {
  it("prints help for the commands", async () => {
    const top = await cli(["--help"]);
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/runner .*\n.*shards/s);
    const r = await cli(["runner", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("--allow-software-adapter");
    expect(r.stdout).toContain("--once");
    const unknown = await cli(["nope"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("unknown command 'nope'");
  });

  it("shards writes a dataset the shard reader loads, and rejects bad options naming them", async () => {
    const out = mkdtempSync(path.join(tmpdir(), "sae-swarm-cli-shards-"));
    try {
      const r = await cli(["shards", "--out", out, "--d-vit", "16", "--n-imgs", "40", "--n-patches-per-img", "4", "--layers", "3,6,9", "--max-patches-per-shard", "150"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/wrote 4 shards/); // 150 // (5 tokens · 3 layers) = 10 images per shard
      const files = await serveDirWithRanges(out);
      try {
        const src = await ShardSource.open({ kind: "shards", url: files.url, layer: -1, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 100, seed: 1 }, { batchSize: 32 });
        expect(src.nExamples).toBe(160);
        expect((await src.next()).length).toBe(32 * 16);
        expect(src.normalization.scale).toBeGreaterThan(0);
        src.close();
      } finally {
        await files.close();
      }
      const bad = await cli(["shards", "--out", out, "--sparsity", "2"]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain("--sparsity must be a number in [0, 1]");
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("refuses to train on a software adapter without --allow-software-adapter", async () => {
    const r = await cli(["runner", "--server", srv.url, "--token", "t"]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stdout).toMatch(/launch profile default: .*software adapter \(CPU emulation\)/);
    expect(r.stderr).toContain("refusing to train on a software adapter");
    expect(srv.requests.some((q) => q.path === "/v1/claims")).toBe(false);
  });

  it("--probe prints every launch profile it tried with the adapter it found, in order, and which one it keeps", async () => {
    const { launchProfiles } = await import("../../runner/chrome");
    const r = await cli(["runner", "--server", srv.url, "--probe", "--allow-software-adapter"]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const tried = [...r.stdout.matchAll(/launch profile (\S+): /g)].map((m) => m[1]);
    // No GPU here: every profile is tried (none finds hardware), the software one kept.
    expect(tried).toEqual(launchProfiles().map((p) => p.name));
    expect(r.stdout).toMatch(/launch profile default: .*swiftshader.*software adapter/i);
    expect(r.stdout).toMatch(/Chrome launch profile: (vulkan|default)/);
    expect(srv.requests.some((q) => q.path === "/v1/claims")).toBe(false);
  });

  it("launch profiles: Linux tries Vulkan, then Vulkan headful under Xvfb when Xvfb exists, then the defaults; elsewhere the defaults", async () => {
    const { launchProfiles, VULKAN_ARGS } = await import("../../runner/chrome");
    expect(launchProfiles("linux", null).map((p) => [p.name, p.args, !!p.xvfb])).toEqual([["vulkan", VULKAN_ARGS, false], ["default", [], false]]);
    expect(launchProfiles("linux", "/usr/bin/Xvfb").map((p) => [p.name, !!p.xvfb])).toEqual([["vulkan", false], ["xvfb-vulkan", true], ["default", false]]);
    expect(launchProfiles("darwin", "/usr/bin/Xvfb").map((p) => p.name)).toEqual(["default"]);
    const bad = await cli(["runner", "--server", srv.url, "--launch-profile", "nope"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--launch-profile must be one of vulkan, .*default on this machine \(got 'nope'\)/);
    expect(VULKAN_ARGS).toEqual(["--enable-features=Vulkan", "--use-vulkan=native", "--use-angle=vulkan", "--ignore-gpu-blocklist"]);
  });

  it("names an unreachable server", async () => {
    const r = await cli(["runner", "--server", "http://127.0.0.1:9", "--allow-software-adapter"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("cannot reach the server at http://127.0.0.1:9/health");
  });

  it("a runner outlives any one DevTools call: the loop's end arrives as an event, not as one long evaluate", async () => {
    // A claim that takes 8 s against a 5 s protocol timeout: were the loop one `evaluate`, the runner would die
    // with "Runtime.callFunctionOn timed out" (as it did after 10 minutes of training with the default timeout).
    srv.inject(/^\/v1\/claims$/, "stall");
    const r = await cli(["runner", "--server", srv.url, "--token", "secret-token", "--allow-software-adapter", "--once"], { SAE_SWARM_PROTOCOL_TIMEOUT_MS: "5000", SAE_SWARM_LAUNCH_PROFILE: "default" });
    expect(r.stderr).not.toMatch(/timed out/);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  });

  it("the page claims through the proxy with the adapter report, trains a shard group to completion, and --once exits when no work waits", async () => {
    // A shard dataset read through the CLI's /data proxy, trained by the WGSL engine: 16 steps of batch 256.
    const out = mkdtempSync(path.join(tmpdir(), "sae-swarm-cli-loop-"));
    const gen = await cli(["shards", "--out", out, "--d-vit", "8", "--n-imgs", "16", "--n-patches-per-img", "4"]);
    expect(gen.code, gen.stderr).toBe(0);
    const files = await serveDirWithRanges(out);
    try {
      const cfg = trainConfig({ d_vit: 8 });
      cfg.data = { kind: "shards", url: files.url, layer: -2, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 64, seed: 3 };
      srv.claimQueue.push({
        lease: { id: "lease-a", token: "fence-1", expires_at: Date.now() + 60_000, heartbeat_ms: 10_000 },
        group: { id: "grp-1", sweep_id: "sw-1", cfgs: [{ run_id: "run-1", cfg }], data: cfg.data, resume: [], checkpoint_every: 100, attempt: 1 },
      });
      const before = srv.requests.length;
      const r = await cli(["runner", "--server", srv.url, "--token", "secret-token", "--allow-software-adapter", "--once", "--runner-id", "test-runner", "--gpu-memory", "3", "--allow-data-host", "127.0.0.1"]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      const reqs = srv.requests.slice(before);
      const claims = reqs.filter((q) => q.path === "/v1/claims");
      expect(claims.length).toBe(2); // the group, then 204
      for (const c of reqs.filter((q) => q.path !== "/health")) expect(c.auth).toBe("Bearer secret-token");
      const body = JSON.parse(claims[0].body);
      expect(body.runner_id).toBe("test-runner");
      expect(body.adapter).toMatchObject({ isFallbackAdapter: true });
      expect(body.adapter.limits.maxBufferSize).toBeGreaterThan(0);
      // the memory budget goes with the claim (and the engine plans with it)
      expect(body.adapter).toMatchObject({ memoryBudget: 3e9, memorySource: "flag" });
      expect(r.stdout).toContain("GPU memory budget: 3.0 GB (--gpu-memory)");
      const paths = reqs.map((q) => q.path);
      expect(paths, JSON.stringify(paths)).not.toContain("/v1/leases/lease-a/fail");
      // log_every 25 > 16 steps: no metric rows; one eval row, one final checkpoint at step 16, then complete.
      const evals = reqs.find((q) => q.path === "/v1/leases/lease-a/evals");
      expect(evals, JSON.stringify(paths)).toBeDefined();
      const evalRows = (JSON.parse(evals!.body) as { evals: Array<{ run_id: string; mse: number; n_examples: number }> }).evals;
      expect(evalRows).toHaveLength(1);
      expect(evalRows[0]).toMatchObject({ run_id: "run-1", n_examples: 64 });
      expect(Number.isFinite(evalRows[0].mse)).toBe(true);
      expect(srv.checkpoints.get("lease-a/run-1")?.query).toBe("?kind=final&step=16");
      expect(paths.indexOf("/v1/leases/lease-a/complete")).toBeGreaterThan(paths.indexOf("/v1/leases/lease-a/evals"));
      expect(r.stdout).toContain("claimed group grp-1 of sweep sw-1: 1 SAEs");
      expect(r.stdout).toMatch(/group grp-1: completed/);
      // the engine's kernels were autotuned for this shape (software: barrier-free candidates), reported with the
      // lease by a heartbeat, printed, and cached on disk for the next group of this shape (SAE_SWARM_CACHE)
      const hb = reqs.filter((q) => q.path === "/v1/leases/lease-a/heartbeat").map((q) => JSON.parse(q.body) as HeartbeatRequest);
      const kernels = hb.find((h) => h.kernels)?.kernels;
      expect(kernels, JSON.stringify(hb)).toMatchObject({ source: "tuned" });
      expect(kernels!.key).toMatch(/^d8-n\d+-b256-k1-p1$/);
      for (const m of MATMUL_NAMES) expect(SOFTWARE_CANDIDATES.map(choiceId)).toContain(kernels!.kernels[m].choice);
      expect(r.stdout).toMatch(/\[runner\] matmul kernels for d8-n\d+-b256-k1-p1 \(tuned in [\d.]+ s, \d candidates, (timestamp|wall) timing\): ENCODE \S+ [\d.]+ GFLOP\/s/);
      const cache = JSON.parse(readFileSync(path.join(process.env.SAE_SWARM_CACHE!, "kernels.json"), "utf8"));
      const entries = Object.values(cache.adapters as Record<string, Record<string, { kernels: unknown }>>);
      expect(entries.some((e) => JSON.stringify(e[kernels!.key]?.kernels) === JSON.stringify(kernels!.kernels))).toBe(true);
      console.log(`autotuned in ${kernels!.tuned_ms} ms over ${kernels!.candidates} candidates: ${JSON.stringify(kernels!.kernels)}`);
    } finally {
      await files.close();
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("a runner not allowed a loopback data host fails the group at once, saying why and which flag allows it", async () => {
    const cfg = trainConfig({ d_vit: 8 });
    cfg.data = { kind: "shards", url: "http://127.0.0.1:9/acts/", layer: -1, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 64, seed: 3 };
    srv.claimQueue.push({
      lease: { id: "lease-r", token: "fence-r", expires_at: Date.now() + 60_000, heartbeat_ms: 10_000 },
      group: { id: "grp-r", sweep_id: "sw-r", cfgs: [{ run_id: "run-r", cfg }], data: cfg.data, resume: [], checkpoint_every: 100, attempt: 1 },
    });
    const before = srv.requests.length;
    const r = await cli(["runner", "--server", srv.url, "--token", "t", "--allow-software-adapter", "--once", "--runner-id", "refused"], { SAE_SWARM_LAUNCH_PROFILE: "default" });
    const out = r.stdout + r.stderr;
    expect(r.code, out).toBe(0); // the group failed; the next claim found nothing (--once)
    const why = "data host 127.0.0.1 is a loopback address; pass --allow-data-host 127.0.0.1 to allow it";
    expect(out).toMatch(/group grp-r: failed — .*metadata\.json: HTTP 403: runner proxy: data host 127\.0\.0\.1 is a loopback address; pass --allow-data-host 127\.0\.0\.1/);
    const fail = srv.requests.slice(before).find((q) => q.path === "/v1/leases/lease-r/fail");
    expect(fail, "the group is reported failed").toBeDefined();
    expect(fail!.body).toContain(why);
  });
});

describe("the page's /api proxy", () => {
  let page: PageServer;
  beforeAll(async () => {
    page = await servePage("", "t", apiProxy({ server: srv.url, token: "proxy-secret", key: "k1", allowDataHosts: ["127.0.0.1"] }));
  });
  afterAll(async () => page?.close());

  it("forwards method, path, query, body and lease header, adds the token, passes 204 and errors through", async () => {
    const api = page.url + "api";
    const k = { [KEY_HEADER]: "k1" };
    const denied = await fetch(api + "/v1/claims", { method: "POST", body: "{}" });
    expect(denied.status).toBe(403); // no session key: another page on this machine gets nothing
    expect((await fetch(api + "/v1/claims", { method: "POST", body: "{}", headers: { [KEY_HEADER]: "wrong" } })).status).toBe(403);
    expect((await fetch(api + "/v1/claims", { method: "POST", body: "{}", headers: k })).status).toBe(204);
    const bytes = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 31) & 255);
    const put = await fetch(api + "/v1/leases/L9/checkpoints/run-3?kind=final&step=7", { method: "PUT", body: bytes, headers: { ...k, "x-lease-token": "tk", authorization: "Bearer from-page" } });
    expect(put.status).toBe(200);
    const stored = srv.checkpoints.get("L9/run-3")!;
    expect(new Uint8Array(stored.bytes)).toEqual(bytes);
    expect(stored.query).toBe("?kind=final&step=7");
    expect(stored.leaseToken).toBe("tk");
    expect(srv.requests.at(-1)!.auth).toBe("Bearer proxy-secret"); // the page's own header never passes
    const got = await fetch(api + "/v1/leases/L9/checkpoints/run-3", { headers: { ...k, "x-lease-token": "tk" } });
    expect(new Uint8Array(await got.arrayBuffer())).toEqual(bytes);
    srv.inject(/evals$/, "400");
    const bad = await fetch(api + "/v1/leases/L9/evals", { method: "POST", body: "{}", headers: k });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { field: string } }).error.field).toBe("rows[0].step");
    expect((await fetch(page.url + "other")).status).toBe(404); // only /api is proxied
  });

  it("answers 502 with an error body when the Worker is unreachable", async () => {
    const dead = await servePage("", "t", apiProxy({ server: "http://127.0.0.1:9", token: "x", key: "k2" }));
    try {
      const r = await fetch(dead.url + "api/v1/claims", { method: "POST", body: "{}", headers: { [KEY_HEADER]: "k2" } });
      expect(r.status).toBe(502);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe("bad_gateway");
    } finally {
      await dead.close();
    }
  });

  it("/data fetches byte ranges of any http URL for the page", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-proxy-data-"));
    const { writeFileSync } = await import("node:fs");
    writeFileSync(path.join(dir, "f.bin"), Uint8Array.from({ length: 100 }, (_, i) => i));
    const files = await serveDirWithRanges(dir);
    try {
      const url = `${page.url}data?url=${encodeURIComponent(files.url + "f.bin")}`;
      const r = await fetch(url, { headers: { [KEY_HEADER]: "k1", range: "bytes=10-19" } });
      expect(r.status).toBe(206);
      expect(r.headers.get("content-range")).toBe("bytes 10-19/100");
      expect(Array.from(new Uint8Array(await r.arrayBuffer()))).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
      expect((await fetch(url, { headers: { range: "bytes=10-19" } })).status).toBe(403);
      expect((await fetch(`${page.url}data?url=file:///etc/passwd`, { headers: { [KEY_HEADER]: "k1" } })).status).toBe(400);
      // Not allowed: the cloud metadata service (link-local), refused with the reason; a range the host overran, 502.
      const meta = await fetch(`${page.url}data?url=${encodeURIComponent("http://169.254.169.254/latest/meta-data/")}`, { headers: { [KEY_HEADER]: "k1" } });
      expect(meta.status).toBe(403);
      expect(((await meta.json()) as { error: { code: string; message: string } }).error).toEqual({
        code: "data_host_refused",
        message: "runner proxy: data host 169.254.169.254 is a link-local address; pass --allow-data-host 169.254.169.254 to allow it (or set SAE_SWARM_ALLOW_DATA_HOSTS)",
      });
      // A server that ignores the Range: a bare 200 (the shard reader names the problem), not the whole file.
      files.ignoreRange = true;
      const whole = await fetch(url, { headers: { [KEY_HEADER]: "k1", range: "bytes=10-19" } });
      expect(whole.status).toBe(200);
      expect((await whole.arrayBuffer()).byteLength).toBe(0);
    } finally {
      await files.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the page bundle builds for the browser", async () => {
    const js = await bundleForBrowser(path.join(root, "runner/page/main.ts"));
    expect(js).toContain("__saeSwarmEvent");
    expect(js).not.toMatch(/from "node:/);
  });
});

describe("runner lifecycle", () => {
  it("Ctrl-C while idle exits cleanly (drain: nothing to finish)", async () => {
    const p = spawn(process.execPath, [path.join(root, "bin/sae-swarm.js"), "runner", "--server", srv.url, "--allow-software-adapter"], { cwd: root });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    const code = new Promise<number | null>((r) => p.on("close", r));
    const deadline = Date.now() + 120_000;
    while (!/no group waiting/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(out).toMatch(/no group waiting/);
    p.kill("SIGINT");
    expect(await code).toBe(130);
    expect(out).toContain("finishing the current group, then exiting");
  });

  /** One runner page (runPage, as ChromeBackend runs it) in a fresh Chrome against the protocol server. */
  async function runnerPage(key: string, runnerId: string, onTab: (tab: import("puppeteer-core").Page) => void) {
    const { launchChrome } = await import("../../runner/chrome");
    const { runPage } = await import("../../runner/backends/chrome");
    const { bundleForBrowser: bundle } = await import("../../runner/serve");
    const page = await servePage(await bundle(path.join(root, "runner/page/main.ts")), "t", apiProxy({ server: srv.url, key }));
    const chrome = await launchChrome();
    try {
      return await runPage(chrome, page.url + `#k=${key}`, { runnerId, once: true, probe: false, allowSoftware: true, onEvent: () => {}, log: () => {}, onTab });
    } finally {
      await chrome.close();
      await page.close();
    }
  }

  it("detects a renderer crash of the runner page", async () => {
    srv.inject(/claims$/, "slow"); // keep the loop busy in its first claim
    const outcome = await runnerPage("kc", "crash-test", (tab) => void setTimeout(() => tab.goto("chrome://crash").catch(() => {}), 500));
    expect(outcome).toBe("crashed");
  });

  it("a stop that reaches the page before its loop is built (a SIGTERM while a page is replaced) ends it without a claim", async () => {
    const claimsBefore = srv.requests.filter((q) => q.path === "/v1/claims").length;
    // onTab is where ChromeBackend passes on a stop that came earlier: before the page's start() builds its loop
    const outcome = await runnerPage("ks", "early-stop", (tab) => void tab.evaluate(() => window.__runner.stop("abandon")).catch(() => {}));
    expect(outcome).toBe("stopped");
    expect(srv.requests.filter((q) => q.path === "/v1/claims").length).toBe(claimsBefore);
  });
});
