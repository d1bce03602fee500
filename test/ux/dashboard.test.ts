/**
 * The dashboard in real headless Chromium against a real `wrangler dev` seeded with a finished sweep through the
 * runner API: every panel renders (tables filled, uPlot canvases drawn) with no console error, no page error and
 * no failed request; the token is taken once from #token= and kept in localStorage. Screenshot: out/dashboard.png.
 */
import { mkdirSync } from "node:fs";
import path from "node:path";
import type { Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchChrome, type LaunchedChrome } from "../../runner/chrome";
// @ts-expect-error plain ESM without types
import { ensureDashboardAssets } from "../../scripts/setup.mjs";
import { startWorkerDev, type WorkerDev } from "../helpers/worker-dev";
import { seedFinishedSweep } from "./seed";

const root = path.resolve(__dirname, "../..");
const PANELS = ["sweeps", "groups", "kernels", "pareto", "runs", "loss", "freqs", "means"];

let dev: WorkerDev;
let chrome: LaunchedChrome;
let sweepId: string;

beforeAll(async () => {
  (ensureDashboardAssets as () => void)();
  [dev, chrome] = await Promise.all([startWorkerDev(), launchChrome()]);
  sweepId = (await seedFinishedSweep(dev)).id;
});
afterAll(async () => {
  await chrome?.close();
  await dev?.stop();
});

/** Opens a tab that records every console error, page error and failed or non-2xx request. */
async function openTab(): Promise<{ tab: Page; problems: string[] }> {
  const tab = await chrome.browser.newPage();
  await tab.setViewport({ width: 1400, height: 1800 });
  const problems: string[] = [];
  tab.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warn") problems.push(`console.${m.type()}: ${m.text()}`);
  });
  tab.on("pageerror", (e) => problems.push(`pageerror: ${String(e)}`));
  tab.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  tab.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  return { tab, problems };
}

describe("dashboard", () => {
  it("renders every panel of a finished sweep without console errors", async () => {
    const { tab, problems } = await openTab();
    try {
      await tab.goto(`${dev.url}/#token=${dev.submitToken}&sweep=${sweepId}`);
      await tab.waitForFunction(() => document.body.dataset.rendered === "ok" || document.body.dataset.rendered === "error", { timeout: 60_000 });
      const state = await tab.evaluate(() => ({
        rendered: document.body.dataset.rendered,
        message: document.querySelector("#message")?.textContent,
        hash: location.hash,
        stored: localStorage.getItem("sae-swarm-token"),
        panels: Object.fromEntries([...document.querySelectorAll<HTMLElement>("[data-panel]")].map((p) => [p.dataset.panel, p.dataset.state ?? "none"])),
        canvases: Object.fromEntries(["pareto", "loss", "freqs", "means"].map((id) => [id, document.querySelectorAll(`#${id} canvas`).length])),
        sweepRows: document.querySelectorAll("#sweeps tbody tr").length,
        groupRows: [...document.querySelectorAll("#groups tbody tr")].map((r) => r.textContent),
        kernelRows: [...document.querySelectorAll("#kernels tbody tr")].map((r) => r.textContent),
        runRows: [...document.querySelectorAll("#runs tbody tr")].map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)),
        runHead: [...document.querySelectorAll("#runs thead th")].map((th) => th.textContent),
        paretoLegend: [...document.querySelectorAll("#pareto .u-legend .u-series")].slice(1).map((row) => {
          const marker = getComputedStyle(row.querySelector<HTMLElement>(".u-marker")!);
          return { label: row.querySelector(".u-label")?.textContent ?? "", border: marker.borderTopColor, fill: marker.backgroundColor };
        }),
        title: document.querySelector("#sweep-title")?.textContent,
      }));
      expect(state.rendered, state.message ?? "").toBe("ok");
      expect(state.stored).toBe(dev.submitToken);
      expect(state.hash).not.toContain("token="); // taken out of the address bar
      for (const p of PANELS) expect(state.panels[p], `panel ${p}`).toBe("ready");
      for (const [id, n] of Object.entries(state.canvases)) expect(n, `canvas of ${id}`).toBeGreaterThan(0);
      expect(state.sweepRows).toBe(1);
      expect(state.title).toContain("done, 8/8 runs done in 1 group");
      expect(state.groupRows).toHaveLength(1);
      expect(state.groupRows[0]).toContain("done");
      // the kernels the seeded runner reported with its lease
      expect(state.kernelRows).toHaveLength(1);
      expect(state.kernelRows[0]).toContain("seed-runner");
      expect(state.kernelRows[0]).toContain("tuned in 1.5 s, 3 candidates, timestamp");
      expect(state.kernelRows[0]).toContain("GRAD_W_DEC 64x64/8x8/k16/direct 1.25 (0.5)");
      // The varying keys are columns; every run shows its eval.
      expect(state.runHead).toEqual(expect.arrayContaining(["sae.kind", "sae.k", "obj.kind", "obj.sparsity_coeff", "eval L0", "eval MSE", "dead", "dense"]));
      expect(state.runRows).toHaveLength(8);
      // k shows for the TopK/BatchTopK runs, "–" for the others.
      expect(state.runRows.map((r) => [r[state.runHead.indexOf("sae.kind")], r[state.runHead.indexOf("sae.k")]])).toEqual(
        ["relu", "relu", "jumprelu", "jumprelu", "topk", "topk", "batchtopk", "batchtopk"].map((k) => [k, k === "topk" ? "8" : k === "batchtopk" ? "6" : "–"]),
      );
      for (const r of state.runRows) {
        expect(r).toContain("done");
        expect(r).toContain("32/32"); // 2048 / 64 steps
      }
      // The L0–MSE plot: a legend entry per kind and objective, in kind order; the colour is the kind's (both
      // objectives of a kind share it, the four kinds differ), the marker the objective's (Matryoshka hollow).
      const kinds = ["relu", "jumprelu", "topk", "batchtopk"];
      expect(state.paretoLegend.map((l) => l.label)).toEqual(kinds.flatMap((k) => [`${k} · matryoshka`, `${k} · vanilla`]));
      const colourOf = (label: string) => state.paretoLegend.find((l) => l.label === label)!;
      for (const k of kinds) {
        const [m, v] = [colourOf(`${k} · matryoshka`), colourOf(`${k} · vanilla`)];
        expect(m.border, k).toBe(v.border);
        expect(v.fill, k).toBe(v.border); // filled
        expect(m.fill, k).toBe("rgb(255, 255, 255)"); // hollow
      }
      expect(new Set(kinds.map((k) => colourOf(`${k} · vanilla`).border)).size).toBe(4);

      // The eval values shown are the API's.
      const run0 = (await (await fetch(`${dev.url}/v1/runs/${sweepId}-r0`, { headers: { authorization: `Bearer ${dev.submitToken}` } })).json()) as { run: { eval: { l0: number; n_dead: number } } };
      const row0 = state.runRows.find((r) => r[0] === "r0")!;
      const l0Col = state.runHead.indexOf("eval L0");
      expect(Number(row0[l0Col])).toBeCloseTo(run0.run.eval.l0, 2);
      expect(row0[state.runHead.indexOf("dead")]).toBe(String(run0.run.eval.n_dead));

      // Selecting another run redraws its curves and histograms.
      await tab.click("#runs tbody tr:nth-child(6)");
      await tab.waitForFunction(() => document.querySelector("#run-title")?.textContent?.startsWith("Run r5") && document.body.dataset.rendered === "ok", { timeout: 30_000 });
      expect(await tab.evaluate(() => document.querySelectorAll("#freqs canvas").length)).toBeGreaterThan(0);
      expect(await tab.$eval("#run-title", (e) => e.textContent)).toContain("topk SAE, matryoshka objective, k 8,"); // TopK has no sparsity coefficient

      mkdirSync(path.join(root, "out"), { recursive: true });
      await tab.screenshot({ path: path.join(root, "out", "dashboard.png"), fullPage: true });
      expect(problems).toEqual([]);
    } finally {
      await tab.close();
    }
  });

  it("asks for the token when it has none, then reads the server with the one entered", async () => {
    const ctx = await chrome.browser.createBrowserContext(); // fresh localStorage
    const tab = await ctx.newPage();
    const problems: string[] = [];
    tab.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    tab.on("pageerror", (e) => problems.push(String(e)));
    try {
      await tab.goto(`${dev.url}/`);
      await tab.waitForSelector("#token-form:not([hidden])");
      expect(await tab.$eval("#message", (e) => e.textContent)).toContain("submitter token");
      await tab.type("#token-input", dev.submitToken);
      await tab.click("#token-form button");
      await tab.waitForFunction(() => document.body.dataset.rendered === "ok", { timeout: 60_000 });
      // With no sweep in the address, the newest sweep is shown.
      expect(await tab.$eval("#sweep-title", (e) => e.textContent)).toContain(sweepId);
      expect(problems).toEqual([]);
    } finally {
      await ctx.close();
    }
  });
  it("a sweep of 4096 runs renders and refreshes with the same few requests each time (one summary, not one per run)", async () => {
    const auth = { authorization: `Bearer ${dev.submitToken}` };
    const lrs = Array.from({ length: 64 }, (_, i) => (i + 1) * 1e-5).join(", ");
    const seeds = Array.from({ length: 64 }, (_, i) => i).join(", ");
    const text = `data = { kind = "synthetic", d_vit = 16, n_features = 64, sparsity = 0.05 }\nn_train = 2048\nbatch_size = 64\nlog_every = 4\ntrack = false\nlr = [${lrs}]\nseed = [${seeds}]\n`;
    const res = await fetch(`${dev.url}/v1/sweeps`, { method: "POST", headers: { ...auth, "content-type": "application/toml" }, body: text });
    expect(res.status, await res.clone().text()).toBe(201);
    const big = (await res.json()) as { id: string; n_runs: number };
    expect(big.n_runs).toBe(4096);
    // A runner is training some of it: metrics for three runs, so rows show their latest loss.
    const claim = (await (
      await fetch(`${dev.url}/v1/claims`, {
        method: "POST",
        headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
        body: JSON.stringify({ runner_id: "dash-runner", adapter: { vendor: "t", architecture: "t", device: "", description: "", isFallbackAdapter: true, features: [], limits: { maxStorageBufferBindingSize: 2 ** 30, maxBufferSize: 2 ** 30 } } }),
      })
    ).json()) as { lease: { id: string; token: string }; group: { cfgs: { run_id: string }[] } };
    const row = (run_id: string, step: number, loss: number) => ({ run_id, step, loss, mse: loss / 2, l0: 3, l1: 1, sparsity: 0.1, "progress/n_patches_seen": 64 * (step + 1), "progress/learning_rate": 1e-4, "progress/sparsity_coeff": 4e-4 });
    const trained = claim.group.cfgs.slice(0, 3).map((c) => c.run_id);
    const posted = await fetch(`${dev.url}/v1/leases/${claim.lease.id}/metrics`, {
      method: "POST",
      headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
      body: JSON.stringify({ token: claim.lease.token, rows: trained.flatMap((r) => [row(r, 3, 0.5), row(r, 7, 0.25)]) }),
    });
    expect(posted.status).toBe(200);

    const { tab, problems } = await openTab();
    const requests: string[] = [];
    tab.on("request", (r) => {
      const u = new URL(r.url());
      if (u.pathname.startsWith("/v1/")) requests.push(u.pathname + u.search);
    });
    try {
      await tab.goto(`${dev.url}/#token=${dev.submitToken}&sweep=${big.id}`);
      await tab.waitForFunction(() => document.body.dataset.rendered === "ok", { timeout: 120_000 });
      const first = requests.splice(0);
      const rows = await tab.evaluate(() => [...document.querySelectorAll("#runs tbody tr")].map((r) => r.textContent ?? ""));
      expect(rows).toHaveLength(4096);
      expect(rows.filter((r) => r.includes("7/32") && r.includes("0.25"))).toHaveLength(3); // their latest step and loss
      // The page refreshes every 5 s while the sweep is live: wait for the next refresh to finish.
      await tab.waitForFunction(() => document.body.dataset.rendered === "pending", { timeout: 30_000 });
      await tab.waitForFunction(() => document.body.dataset.rendered === "ok", { timeout: 120_000 });
      const second = requests.splice(0);
      console.log(`[dashboard] 4096 runs: first render ${first.length} requests (${first.join(", ")}); refresh ${second.length}`);
      // One list of sweeps, one sweep summary, and the selected run's curve: the same on every refresh.
      expect(first.map((r) => r.split("?")[0])).toEqual(["/v1/sweeps", `/v1/sweeps/${big.id}`, `/v1/runs/${big.id}-r0/metrics`]);
      expect(second).toEqual(first);
      expect(problems).toEqual([]);
    } finally {
      await tab.close();
    }
  });
});
