// A run's config is served the same, key order included, whether its sweep-mates share its keys or not: D1 stores
// what a sweep's runs share apart from what each sets (run-config.ts), and merging the two once put a run's own keys
// last, so the grouped and sequential workloads of `npm run bench:e2e` read back as different configs (and a
// checkpoint's `config` metadata, JSON of the claimed config, differed between them). The bench's own specs.
import { beforeEach, describe, expect, it } from "vitest";
import type { ClaimResponse } from "../../worker/protocol";
import { expandSweep } from "../../worker/sweep";
import { configsDiffer, groupedAndSequential } from "../bench/e2e-specs";
import { call, json, resetDb } from "./helpers";

const K = 4;
const specs = groupedAndSequential({ url: "http://127.0.0.1:9/shards", k: K, steps: 16, batch: 1024, dVit: 32, exp: 4, seed: 100 });

async function post(spec: unknown): Promise<string> {
  return (await json<{ id: string }>(await call("POST", "/v1/sweeps", { json: spec }), 201)).id;
}

async function served(ids: string[]): Promise<unknown[]> {
  const views = await Promise.all(ids.map(async (id) => json<{ runs: Array<{ idx: number; cfg: unknown }> }>(await call("GET", `/v1/sweeps/${id}`), 200)));
  return views.flatMap((v) => [...v.runs].sort((a, b) => a.idx - b.idx).map((r) => r.cfg));
}

describe("served configs", () => {
  beforeEach(resetDb);

  it("are the same JSON for the bench's grouped and sequential sweeps, in the order the sweep resolves them", async () => {
    const grouped = await served([await post(specs.grouped[0])]);
    const sequential = await served(await Promise.all(specs.sequential.map(post)));
    expect(configsDiffer(grouped, sequential, K)).toBeNull();
    // Both in resolve's key order: what a runner given the config directly (not through D1) writes.
    const resolved = expandSweep(specs.grouped[0]).configs.map((c) => JSON.stringify(c.cfg));
    expect(grouped.map((c) => JSON.stringify(c))).toEqual(resolved);
  });

  it("are claimed as the same JSON the sweep view serves", async () => {
    const id = await post(specs.grouped[0]);
    const size = 2 ** 30;
    const adapter = { vendor: "test", architecture: "swiftshader", device: "", description: "", isFallbackAdapter: true, features: [], limits: { maxStorageBufferBindingSize: size, maxBufferSize: size, maxComputeWorkgroupSizeX: 256 } };
    const claimed = await json<ClaimResponse>(await call("POST", "/v1/claims", { json: { runner_id: "r", adapter } }), 200);
    expect(claimed.group.cfgs.map((c) => JSON.stringify(c.cfg))).toEqual((await served([id])).map((c) => JSON.stringify(c)));
  });

  it("tell a differing key apart (the comparison the bench makes can fail)", () => {
    const [a, b] = expandSweep(specs.grouped[0]).configs.map((c) => c.cfg);
    expect(configsDiffer([a], [a], 1)).toBeNull();
    expect(configsDiffer([a], [b], 1)).toMatch(/^run 0:/);
    expect(configsDiffer([a], [{ ...a }].map(({ seed, ...rest }) => ({ ...rest, seed })), 1)).toMatch(/^run 0:/);
    expect(configsDiffer([a], [], 1)).toMatch(/expected 1 runs/);
  });
});
