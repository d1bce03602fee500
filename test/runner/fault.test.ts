// SAE_SWARM_FAULT (runner/fault.ts): parsing, which request of the page each fault point fires at, and what
// runner/fault-fetch.ts (Chrome's proxy and Dawn's client alike) does there, with a real WorkerClient and server.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WorkerClient } from "../../runner/api";
import { FaultInjector, parseFault } from "../../runner/fault";
import { faultyFetch } from "../../runner/fault-fetch";
import type { Lease, MetricRow } from "../../worker/protocol";

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

/** A request as the server saw it: the content-length it was promised, the bytes that came, whether all came. */
interface Seen {
  method: string;
  path: string;
  length: number;
  bytes: number;
  complete: boolean;
}

describe("SAE_SWARM_FAULT in the requests to the Worker (runner/fault-fetch.ts)", () => {
  let server: Server;
  let url = "";
  const seen: Seen[] = [];
  beforeAll(async () => {
    server = createServer((req, res) => {
      const r: Seen = { method: req.method ?? "", path: req.url ?? "", length: Number(req.headers["content-length"] ?? 0), bytes: 0, complete: false };
      seen.push(r);
      req.on("data", (c: Buffer) => (r.bytes += c.length));
      req.on("end", () => {
        r.complete = true;
        // an upload in parts of 4 bytes, none stored yet; every other request: stored
        const body = /\/uploads$/.test(r.path) ? { upload_id: "u1", n_parts: 3, part_bytes: 4, received: [] } : {};
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(body));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });

  const lease: Lease = { id: "L1", token: "tok", expires_at: 0, heartbeat_ms: 10_000 };
  const row = (step: number): MetricRow => ({ run_id: "r", step, loss: 1, mse: 1, l0: 1, l1: 1, sparsity: 0, "progress/n_patches_seen": 0, "progress/learning_rate": 1e-3, "progress/sparsity_coeff": 0 });
  /** A WorkerClient through faultyFetch with `spec` armed; `died` collects why it died (a real runner is gone then). */
  function client(spec: string) {
    const died: string[] = [];
    const die = (why: string): never => {
      died.push(why);
      throw new Error(`died: ${why}`);
    };
    const fetchFn = faultyFetch((u, i) => fetch(u, i), new FaultInjector(parseFault(spec)!), `${url}/`, die);
    return { api: new WorkerClient({ server: url, token: "t", fetch: fetchFn, retry: { maxAttempts: 1 } }), died };
  }
  const from = (n: number) => seen.slice(n).map((r) => `${r.method} ${r.path.split("?")[0]}`);

  it("metrics:S dies before the post carrying step S leaves; the posts before it pass", async () => {
    const { api, died } = client("metrics:29");
    const n = seen.length;
    await api.postMetrics(lease, [row(9), row(19)]);
    await api.heartbeat(lease, { step: 29 } as never);
    await expect(api.postMetrics(lease, [row(29), row(39)])).rejects.toThrow(/died/);
    expect(from(n)).toEqual(["POST /v1/leases/L1/metrics", "POST /v1/leases/L1/heartbeat"]);
    expect(died).toEqual(["SAE_SWARM_FAULT=metrics:29 at /v1/leases/L1/metrics"]);
  });

  it("checkpoint-cut:N sends the N-th upload's head and half its body, then dies; checkpoint-stored:N dies after its 2xx", async () => {
    const bytes = new Uint8Array(1000).fill(7);
    const cut = client("checkpoint-cut:2");
    let n = seen.length;
    await cut.api.putCheckpoint(lease, "r", "resume", 10, bytes);
    await expect(cut.api.putCheckpoint(lease, "r", "resume", 20, bytes)).rejects.toThrow(/died/);
    expect(cut.died).toEqual(["SAE_SWARM_FAULT=checkpoint-cut:2 at /v1/leases/L1/checkpoints/r, half of its 1000 bytes sent"]);
    expect(seen.slice(n).map(({ length, bytes, complete }) => ({ length, bytes, complete }))).toEqual([
      { length: 1000, bytes: 1000, complete: true },
      { length: 1000, bytes: 500, complete: false },
    ]);

    const stored = client("checkpoint-stored:1");
    n = seen.length;
    await expect(stored.api.putCheckpoint(lease, "r", "final", 30, bytes)).rejects.toThrow(/died/);
    expect(seen.slice(n).map((r) => [r.bytes, r.complete])).toEqual([[1000, true]]);
    expect(stored.died).toEqual(["SAE_SWARM_FAULT=checkpoint-stored:1 at /v1/leases/L1/checkpoints/r, answered 200"]);
  });

  it("part-cut:N cuts the N-th part of uploads in parts; evals dies once the evals are stored", async () => {
    const parts = client("part-cut:2");
    const n = seen.length;
    await expect(parts.api.uploadCheckpoint(lease, "r", "resume", 10, new Uint8Array(12), { part_bytes: 4, max_body_bytes: 4 })).rejects.toThrow(/died/);
    expect(from(n)).toEqual(["POST /v1/leases/L1/uploads", "PUT /v1/leases/L1/uploads/u1/parts/1", "PUT /v1/leases/L1/uploads/u1/parts/2"]);
    expect(seen.slice(n + 1).map((r) => [r.bytes, r.length, r.complete])).toEqual([[4, 4, true], [2, 4, false]]);

    const ev = client("evals");
    const m = seen.length;
    await expect(ev.api.postEvals(lease, [{ run_id: "r" } as never])).rejects.toThrow(/died/);
    expect(seen.slice(m).map((r) => [r.path, r.complete])).toEqual([["/v1/leases/L1/evals", true]]);
    expect(ev.died).toEqual(["SAE_SWARM_FAULT=evals at /v1/leases/L1/evals, answered 200"]);
  });

  it("requests to another host (data) pass untouched", async () => {
    const died: string[] = [];
    const fetchFn = faultyFetch((u, i) => fetch(u, i), new FaultInjector(parseFault("evals")!), `${url}/worker`, (why) => {
      died.push(why);
      throw new Error(why);
    });
    expect((await fetchFn(`${url}/v1/leases/L1/evals`, { method: "POST", body: "{}" })).status).toBe(200);
    expect(died).toEqual([]);
  });
});
