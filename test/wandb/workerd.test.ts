// The client and forwarder inside workerd (Miniflare, the runtime `wrangler dev` uses), against the stand-in.
import path from "node:path";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TrainConfig } from "../../shaders/config";
import type { WandbForwardState } from "../../worker/wandb/forward";
import { WandbStandin } from "./standin";

let standin: WandbStandin;
let mf: Miniflare;

beforeAll(async () => {
  standin = await WandbStandin.start({ apiKey: "workerd-key", defaultEntity: "edge" });
  const bundle = await build({
    entryPoints: [path.join(import.meta.dirname, "workerd-entry.ts")],
    bundle: true, format: "esm", platform: "neutral", write: false, logLevel: "silent",
  });
  mf = new Miniflare({ modules: true, script: bundle.outputFiles[0].text, compatibilityDate: "2026-04-20" });
});
afterAll(async () => {
  await mf?.dispose();
  await standin?.close();
});

describe("W&B forwarding inside workerd", () => {
  it("creates the run, streams rows with a 429 and a 500 on the way, writes the summary and finishes", async () => {
    const cfg = {
      n_patches: 640, sae_batch_size: 64, log_every: 5, track: true, wandb_project: "edge-proj", wandb_entity: null,
      tag: "", tags: ["w"], lr: 1e-3,
    } as unknown as TrainConfig;
    const row = (step: number) => ({
      step, ts: 1_750_000_000_000 + step * 1000, loss: 1 / (step + 1), mse: 0.1, l0: 3, l1: 1, sparsity: 0.1,
      "progress/n_patches_seen": (step + 1) * 64, "progress/learning_rate": 1e-3, "progress/sparsity_coeff": 4e-4,
    });
    const ev = {
      l0: 3, l1: 1, mse: 0.1, fvu: 0.2, explained_variance: 0.8, n_dead: 1, n_almost_dead: 1, n_dense: 2,
      freqs: [0, 0.5, 0.02, 0.3], mean_values: [null, 1, 2, 3], n_examples: 640,
    };
    standin.inject(
      { on: "file_stream", kind: "status", status: 429, retryAfter: "1" },
      { on: "file_stream", kind: "status", status: 500 },
    );
    const res = await mf.dispatchFetch("http://worker/", {
      method: "POST",
      body: JSON.stringify({
        baseUrl: standin.url,
        apiKey: "workerd-key",
        info: { run_id: "edge-run", cfg, group_name: "sw", display_name: "edge run", started_at: 1_750_000_000_000 },
        batches: [
          [{ body: { kind: "metrics", run_id: "edge-run", rows: [row(4), row(9)] }, attempts: 1 }],
          [
            { body: { kind: "metrics", run_id: "edge-run", rows: [row(9)] }, attempts: 1 },
            { body: { kind: "eval", run_id: "edge-run", ts: 0, eval: ev }, attempts: 1 },
            { body: { kind: "finish", run_id: "edge-run", ts: 0, exit_code: 0 }, attempts: 1 },
          ],
        ],
      }),
    });
    expect(res.status).toBe(200);
    const { state, verdicts } = (await res.json()) as { state: WandbForwardState; verdicts: string[][] };
    expect(verdicts).toEqual([["ack"], ["ack", "ack", "ack"]]);
    const run = standin.run("edge", "edge-proj", state.name)!;
    expect(run.violations).toEqual([]);
    expect(standin.historyOf(run).map((l) => l._step)).toEqual([4, 9]);
    expect([run.complete, run.exitcode, run.tags]).toEqual([true, 0, ["w"]]);
    expect(run.summary).toMatchObject({ _step: 9, "eval/fvu": 0.2, "eval/freqs": { _type: "histogram" } });
    expect(state).toMatchObject({ finished: true, next_offset: 2, url: `${standin.url}/edge/edge-proj/runs/${state.name}` });
    expect(standin.pendingFaults()).toBe(0);
  });
});
