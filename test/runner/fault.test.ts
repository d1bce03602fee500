// SAE_SWARM_FAULT (runner/fault.ts): parsing, and which request of the page each fault point fires at.
import { describe, expect, it } from "vitest";
import { FaultInjector, parseFault } from "../../runner/fault";

const body = (steps: number[]) => Buffer.from(JSON.stringify({ token: "t", rows: steps.map((step) => ({ run_id: "r", step })) }));

describe("SAE_SWARM_FAULT", () => {
  it("parses the four points and refuses anything else", () => {
    expect(parseFault(undefined)).toBeNull();
    expect(parseFault("")).toBeNull();
    expect(parseFault("metrics:0")).toEqual({ point: "metrics", n: 0, spec: "metrics:0" });
    expect(parseFault("checkpoint-cut:3")).toMatchObject({ point: "checkpoint-cut", n: 3 });
    expect(parseFault("checkpoint-stored:12")).toMatchObject({ point: "checkpoint-stored", n: 12 });
    expect(parseFault("evals")).toMatchObject({ point: "evals", n: 1 });
    expect(parseFault("part-cut:16")).toMatchObject({ point: "part-cut", n: 16 });
    for (const bad of ["metrics", "checkpoint-cut:0", "checkpoint-cut", "evals:2", "part-cut:0", "part-cut", "train:5", "metrics:-1", "metrics:x"])
      expect(() => parseFault(bad), bad).toThrow(/SAE_SWARM_FAULT/);
  });

  it("fires at the metrics post carrying the step, the N-th checkpoint upload, and the evals post", () => {
    const m = new FaultInjector(parseFault("metrics:29")!);
    expect(m.before("POST", "/v1/leases/L/metrics", body([9, 19]))).toBeNull();
    expect(m.before("POST", "/v1/leases/L/heartbeat", body([29]))).toBeNull();
    expect(m.before("POST", "/v1/leases/L/metrics", body([29, 39]))).toBe("die");

    const put = (f: FaultInjector) => f.before("PUT", "/v1/leases/L/checkpoints/r", undefined);
    const cut = new FaultInjector(parseFault("checkpoint-cut:3")!);
    expect([put(cut), cut.before("GET", "/v1/leases/L/checkpoints/r", undefined), put(cut), put(cut), put(cut)]).toEqual([null, null, null, "cut", null]);
    const stored = new FaultInjector(parseFault("checkpoint-stored:2")!);
    expect([put(stored), put(stored), put(stored)]).toEqual([null, "watch", null]);

    const part = (f: FaultInjector, n: number) => f.before("PUT", `/v1/leases/L/uploads/up_1/parts/${n}`, undefined);
    const pc = new FaultInjector(parseFault("part-cut:3")!);
    expect([part(pc, 1), put(pc), part(pc, 2), pc.before("POST", "/v1/leases/L/uploads", undefined), part(pc, 1), part(pc, 2)]).toEqual([null, null, null, null, "cut", null]);
    expect(put(new FaultInjector(parseFault("checkpoint-cut:1")!))).toBe("cut"); // parts do not count as uploads

    const e = new FaultInjector(parseFault("evals")!);
    expect(e.before("POST", "/v1/leases/L/metrics", body([119]))).toBeNull();
    expect(put(e)).toBeNull();
    expect(e.before("POST", "/v1/leases/L/evals", Buffer.from("{}"))).toBe("watch");
  });
});
