/**
 * A small HTTP server speaking the runner side of worker/protocol.ts, on 127.0.0.1:0, for testing the client's
 * failure handling: it stores metric rows idempotently per (run, step) in arrival order and can be scripted to
 * fail requests (503, reset the connection before or after storing, 409). It is not the Worker; the end-to-end
 * tests against `wrangler dev` are in test/e2e.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type Fault = "503" | "500" | "429" | "reset-before" | "reset-after" | "409" | "404-lease" | "400" | "slow" | "stall";

export interface ProtocolServer {
  url: string;
  /** Faults for the next requests whose path matches, consumed in order. */
  inject(pathPattern: RegExp, ...faults: Fault[]): void;
  metrics: Array<{ run_id: string; step: number }>;
  posts: number;
  checkpoints: Map<string, { query: string; bytes: Buffer; leaseToken: string | undefined }>;
  requests: Array<{ method: string; path: string; auth: string | undefined; body: string }>;
  claimQueue: unknown[];
  /** The answer's `resume` to POST …/checkpoints/:run_id/reject. */
  rejectAnswer: unknown[];
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function serveProtocol(): Promise<ProtocolServer> {
  const faults: Array<{ pattern: RegExp; fault: Fault }> = [];
  const seen = new Set<string>();
  const s: ProtocolServer = {
    url: "",
    inject: (pattern, ...fs) => fs.forEach((fault) => faults.push({ pattern, fault })),
    metrics: [],
    posts: 0,
    checkpoints: new Map(),
    requests: [],
    claimQueue: [],
    rejectAnswer: [],
    close: async () => {},
  };
  const json = (res: ServerResponse, status: number, body: unknown) =>
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const body = await readBody(req);
    s.requests.push({ method: req.method ?? "", path: url.pathname + url.search, auth: req.headers.authorization, body: body.toString("latin1") });
    const i = faults.findIndex((f) => f.pattern.test(url.pathname));
    const fault = i >= 0 ? faults.splice(i, 1)[0].fault : null;
    if (fault === "reset-before") return req.socket.destroy();
    if (fault === "slow") await new Promise((r) => setTimeout(r, 3000));
    if (fault === "stall") await new Promise((r) => setTimeout(r, 8000));
    if (fault === "503" || fault === "500") return json(res, Number(fault), { error: { code: "unavailable", message: "injected" } });
    if (fault === "429") return res.writeHead(429, { "retry-after": "0" }).end("slow down");
    if (fault === "409") return json(res, 409, { error: { code: "stale_lease", message: "lease expired" } });
    // The lease is gone with its sweep (DELETE /v1/sweeps/:id).
    if (fault === "404-lease") return json(res, 404, { error: { code: "not_found", message: "lease L1 not found", field: "lease_id" } });
    if (fault === "400") return json(res, 400, { error: { code: "bad_request", message: "rows[0].step must be an integer", field: "rows[0].step" } });
    let m: RegExpExecArray | null;
    if (url.pathname === "/health") {
      json(res, 200, { ok: true });
    } else if (url.pathname === "/v1/claims") {
      const next = s.claimQueue.shift();
      if (!next) return res.writeHead(204).end();
      json(res, 200, next);
    } else if ((m = /^\/v1\/leases\/([^/]+)\/metrics$/.exec(url.pathname))) {
      s.posts++;
      const { rows } = JSON.parse(body.toString()) as { rows: Array<{ run_id: string; step: number }> };
      for (const r of rows) {
        const key = `${r.run_id}/${r.step}`;
        if (!seen.has(key)) {
          seen.add(key);
          s.metrics.push({ run_id: r.run_id, step: r.step });
        }
      }
      if (fault === "reset-after") return req.socket.destroy(); // stored, but the runner never hears it
      json(res, 200, { ok: true, n: rows.length });
    } else if (/^\/v1\/leases\/[^/]+\/checkpoints\/[^/]+\/reject$/.test(url.pathname)) {
      json(res, 200, { resume: s.rejectAnswer });
    } else if ((m = /^\/v1\/leases\/([^/]+)\/checkpoints\/([^/]+)$/.exec(url.pathname))) {
      const key = `${m[1]}/${decodeURIComponent(m[2])}`;
      // Kept as the latest per lease and run, and per step (as the Worker keeps every resume checkpoint).
      const step = url.searchParams.get("step");
      if (req.method === "PUT") {
        const stored = { query: url.search, bytes: body, leaseToken: req.headers["x-lease-token"] as string | undefined };
        s.checkpoints.set(key, stored);
        if (step !== null) s.checkpoints.set(`${key}@${step}`, stored);
        json(res, 200, { ok: true });
      } else {
        const c = s.checkpoints.get(step === null ? key : `${key}@${step}`);
        if (!c) return json(res, 404, { error: { code: "not_found", message: "no checkpoint" } });
        res.writeHead(200, { "content-type": "application/octet-stream" }).end(c.bytes);
      }
    } else if (/^\/v1\/leases\/[^/]+\/(heartbeat|evals|complete|fail|release)$/.test(url.pathname)) {
      json(res, 200, { ok: true, lease: { expires_at: Date.now() + 60_000 } });
    } else {
      json(res, 404, { error: { code: "not_found", message: url.pathname } });
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  s.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  s.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return s;
}
