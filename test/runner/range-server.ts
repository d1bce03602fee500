/**
 * A static file server on 127.0.0.1:0 that honours single Range requests by reading only the requested bytes (as a
 * real file server or bucket does), logs every answer, and can inject failures. The runner tests and the
 * benchmarks (test/bench) both serve shards with it.
 */
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { open } from "node:fs/promises";
import path from "node:path";

export interface RangeLogEntry {
  path: string;
  range: string | null;
  status: number;
  bytes: number;
}

export interface RangeServer {
  /** Base URL, ending in "/". */
  url: string;
  /** One entry per answered request, in the order they were answered. */
  log: RangeLogEntry[];
  /** Answer the next n shard requests with 503. */
  failNext(n: number): void;
  /** Answer every request with the whole file (HTTP 200), as a server without Range support does. */
  ignoreRange: boolean;
  close(): Promise<void>;
}

/** Requests answered with data (200 or 206) among `entries`, and their bytes. */
export function servedStats(entries: RangeLogEntry[]): { requests: number; bytes: number } {
  const served = entries.filter((e) => e.status === 200 || e.status === 206);
  return { requests: served.length, bytes: served.reduce((s, e) => s + e.bytes, 0) };
}

export async function serveDirWithRanges(dir: string): Promise<RangeServer> {
  let failures = 0;
  const state: RangeServer = {
    url: "",
    log: [],
    failNext: (n) => void (failures = n),
    ignoreRange: false,
    close: async () => {},
  };
  const server = createServer(async (req: IncomingMessage, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const rel = decodeURIComponent(url.pathname).replace(/^\/+/, "");
    const range = req.headers.range ?? null;
    const entry: RangeLogEntry = { path: rel, range, status: 0, bytes: 0 };
    // Logged once answered: a prefetch still reading its file must not show up half-done (status 0).
    res.on("finish", () => state.log.push(entry));
    if (failures > 0 && rel.endsWith(".bin")) {
      failures--;
      entry.status = 503;
      res.writeHead(503).end("injected failure");
      return;
    }
    let file: Awaited<ReturnType<typeof open>>;
    try {
      file = await open(path.join(dir, path.normalize(rel)), "r");
    } catch {
      entry.status = 404;
      res.writeHead(404).end();
      return;
    }
    try {
      const size = (await file.stat()).size;
      const m = range && !state.ignoreRange ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
      const begin = m ? Number(m[1]) : 0;
      const end = m ? Math.min(Number(m[2]), size - 1) : size - 1;
      if (m && begin >= size) {
        entry.status = 416;
        res.writeHead(416, { "content-range": `bytes */${size}` }).end();
        return;
      }
      const body = Buffer.alloc(end - begin + 1);
      await file.read(body, 0, body.length, begin);
      entry.status = m ? 206 : 200;
      entry.bytes = body.length;
      const headers: Record<string, string | number> = { "content-length": body.length, "accept-ranges": "bytes" };
      if (m) headers["content-range"] = `bytes ${begin}-${end}/${size}`;
      res.writeHead(entry.status, headers).end(body);
    } finally {
      await file.close();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  state.close = async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return state;
}
