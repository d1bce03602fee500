// The matmul kernels a runner reports for a lease (a heartbeat's `kernels`, shaders/autotune.ts KernelReport): kept
// in the lease's adapter JSON (no column of their own), shown by the sweep and run views, and refused with a 400
// naming the field when malformed.
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { call, claim, json, resetDb, submit } from "./helpers";

beforeEach(resetDb);

const NAMES = ["ENCODE", "DECODE", "GRAD_F", "GRAD_W_ENC", "GRAD_W_DEC"];
const report = (choice = "128x64/8x4/k16/tiled") => ({
  key: "d16-n64-b64-k6-p1",
  source: "tuned",
  timing: "timestamp",
  tuned_ms: 812,
  candidates: 11,
  shape: { d: 16, n: 64, B: 64, K: 6, P: 1 },
  kernels: Object.fromEntries(NAMES.map((m, i) => [m, { choice, gflops: 100 + i, default_gflops: 50 }])),
});

describe("kernels with the lease's adapter report", () => {
  it("a heartbeat's kernels are stored in the adapter JSON and shown by the sweep and run views", async () => {
    const s = await submit();
    const c = (await claim("runner-a"))!;
    const hb = (kernels?: unknown) => call("POST", `/v1/leases/${c.lease.id}/heartbeat`, { json: { token: c.lease.token, progress: { step: 0, n_steps: 10 }, ...(kernels ? { kernels } : {}) } });
    const before = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(before.groups[0].kernels).toBeNull();
    await json(await hb(report()), 200);
    // a later heartbeat without kernels keeps them
    await json(await hb(), 200);
    const stored = JSON.parse((await env.DB.prepare(`SELECT adapter FROM leases WHERE id = ?`).bind(c.lease.id).first<{ adapter: string }>())!.adapter);
    expect(stored).toMatchObject({ architecture: "swiftshader", kernels: { key: "d16-n64-b64-k6-p1", kernels: { ENCODE: { choice: "128x64/8x4/k16/tiled", gflops: 100 } } } });
    const view = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(view.groups[0].kernels).toMatchObject({ lease_id: c.lease.id, runner_id: "runner-a", source: "tuned", timing: "timestamp", kernels: { GRAD_W_DEC: { gflops: 104, default_gflops: 50 } } });
    expect(view.groups[0].kernels.adapter).toContain("swiftshader");
    expect(view.groups[0].leases[0].adapter.kernels.key).toBe("d16-n64-b64-k6-p1");
    const run = await json(await call("GET", `/v1/runs/${c.group.cfgs[0].run_id}`), 200);
    expect(run.run.kernels).toMatchObject({ lease_id: c.lease.id, kernels: { ENCODE: { choice: "128x64/8x4/k16/tiled" } } });
    // a newer report replaces the older one
    await json(await hb(report("64x64/4x4/k16/direct")), 200);
    expect((await json(await call("GET", `/v1/sweeps/${s.id}`), 200)).groups[0].kernels.kernels.ENCODE.choice).toBe("64x64/4x4/k16/direct");
  });

  it("malformed kernels are refused with a 400 naming the field", async () => {
    await submit();
    const c = (await claim("runner-a"))!;
    const field = async (kernels: unknown) =>
      (await json(await call("POST", `/v1/leases/${c.lease.id}/heartbeat`, { json: { token: c.lease.token, progress: { step: 0, n_steps: 10 }, kernels } }), 400)).error.field;
    expect(await field(report("99x64/4x4/k16/tiled"))).toBe("kernels.kernels.ENCODE.choice");
    const r = report();
    delete (r.kernels as Record<string, unknown>).GRAD_F;
    expect(await field(r)).toBe("kernels.kernels.GRAD_F");
    expect(await field({ ...report(), source: "guess" })).toBe("kernels.source");
    expect(await field({ ...report(), shape: { d: 0, n: 64, B: 64, K: 6, P: 1 } })).toBe("kernels.shape.d");
    expect(await field({ ...report(), extra: 1 })).toBe("kernels.extra");
    const stored = JSON.parse((await env.DB.prepare(`SELECT adapter FROM leases WHERE id = ?`).bind(c.lease.id).first<{ adapter: string }>())!.adapter);
    expect(stored.kernels).toBeUndefined();
  });
});
