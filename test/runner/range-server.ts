/** A static file server on 127.0.0.1:0 that honours single Range requests, logs them, and can inject failures. */
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { readFile } from "node:fs/promises";
import path from "node:path";

export interface RangeLogEntry {
  path: string;
  range: string | null;
  status: number;
  bytes: number;
}

export interface RangeServer {
  url: string;
  log: RangeLogEntry[];
  /** Answer the next n shard requests with 503. */
  failNext(n: number): void;
  /** Answer every request with the whole file (HTTP 200), as a server without Range support does. */
  ignoreRange: boolean;
  close(): Promise<void>;
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
    let body: Buffer;
    try {
      body = await readFile(path.join(dir, path.normalize(rel)));
    } catch {
      entry.status = 404;
      res.writeHead(404).end();
      return;
    }
    const m = range && !state.ignoreRange ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
    if (!m) {
      entry.status = 200;
      entry.bytes = body.length;
      res.writeHead(200, { "content-length": body.length, "accept-ranges": "bytes" }).end(body);
      return;
    }
    const begin = Number(m[1]);
    const end = Math.min(Number(m[2]), body.length - 1);
    if (begin >= body.length) {
      entry.status = 416;
      res.writeHead(416, { "content-range": `bytes */${body.length}` }).end();
      return;
    }
    const part = body.subarray(begin, end + 1);
    entry.status = 206;
    entry.bytes = part.length;
    res.writeHead(206, { "content-range": `bytes ${begin}-${end}/${body.length}`, "content-length": part.length }).end(part);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  state.close = () => new Promise<void>((r) => server.close(() => r()));
  return state;
}
