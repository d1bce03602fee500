/**
 * The CLI's proxies for the page, on its own 127.0.0.1 server:
 * - `/api/...` → `${server}/...`, adding the runner token: no CORS needed on the Worker, and the token never
 *   enters the page;
 * - `/data?url=<absolute URL>` → that URL (GET with its Range header): activation shards on any public host,
 *   whether or not it sends CORS headers; fetched with runner/data/safe-fetch.ts (no loopback, private or
 *   link-local addresses unless allowed, bounded bodies and time). A refused host is answered 403 with the reason.
 * Both demand the header `x-sae-swarm-key` with this session's random key (the page gets it in its URL fragment),
 * so other pages in a browser on this machine cannot use the runner's token or fetch through it: a cross-origin
 * request with a custom header needs a CORS preflight, which this server never grants.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { ExtraRoute } from "./serve";
import type { FaultInjector } from "./fault";
import { faultyFetch } from "./fault-fetch";
import { createSafeFetch } from "./data/safe-fetch";
import { isRefusal } from "./data/fetch-error";
import type { FetchFn } from "./data/shards";

import { API_PREFIX, DATA_PATH, KEY_HEADER } from "./proxy-path";

export { API_PREFIX, DATA_PATH, KEY_HEADER };

// Hop-by-hop and recomputed headers are not forwarded.
const DROP_REQ = new Set(["host", "connection", "content-length", "authorization", "origin", "referer", "cookie", "accept-encoding", "transfer-encoding", "keep-alive"]);
const DROP_RES = new Set(["connection", "content-length", "content-encoding", "transfer-encoding", "keep-alive"]);

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export interface ProxyOptions {
  /** The Worker's base URL. */
  server: string;
  /** Runner token added to every /api request. */
  token?: string;
  /** The session key the page must send in x-sae-swarm-key. */
  key: string;
  fetch?: typeof fetch;
  /** Hosts /data may read although their addresses are not public (--allow-data-host). */
  allowDataHosts?: string[];
  /** The fetch for /data (default: createSafeFetch with `allowDataHosts`). */
  dataFetch?: FetchFn;
  /** SAE_SWARM_FAULT (runner/fault.ts): the point at which the runner kills itself; tests only. */
  fault?: FaultInjector | null;
}

/** Aborts when the page's request goes away unanswered (the page or Chrome closed, the runner stops): an upstream
 * fetch to a Worker or a data host that hangs must not outlive it and keep the runner from exiting. */
function abortOnClose(res: ServerResponse): AbortSignal {
  const ac = new AbortController();
  res.on("close", () => {
    if (!res.writableFinished) ac.abort();
  });
  return ac.signal;
}

function refuse(res: ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ error: { code, message } }));
}

export function apiProxy(o: ProxyOptions): ExtraRoute {
  const upstream = o.server.replace(/\/+$/, "");
  // SAE_SWARM_FAULT: the armed point fires at the page's request it names (runner/fault-fetch.ts)
  const fetchFn = o.fault ? faultyFetch(o.fetch ?? fetch, o.fault, upstream) : (o.fetch ?? fetch);
  const dataFetch = o.dataFetch ?? createSafeFetch({ allowHosts: o.allowDataHosts ?? [] });
  const token = o.token;
  return (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const isApi = url.pathname === API_PREFIX || url.pathname.startsWith(API_PREFIX + "/");
    const isData = url.pathname === DATA_PATH;
    if (!isApi && !isData) return false;
    if (req.headers[KEY_HEADER] !== o.key) {
      refuse(res, 403, "forbidden", `runner proxy: missing or wrong ${KEY_HEADER}`);
      return true;
    }
    if (isData) {
      void proxyData(url, req, res, dataFetch);
      return true;
    }
    void (async () => {
      try {
        const headers = new Headers();
        for (const [k, v] of Object.entries(req.headers)) {
          if (v === undefined || DROP_REQ.has(k) || k === KEY_HEADER) continue;
          headers.set(k, Array.isArray(v) ? v.join(", ") : v);
        }
        if (token) headers.set("authorization", `Bearer ${token}`);
        const method = req.method ?? "GET";
        const body = method === "GET" || method === "HEAD" ? undefined : await readBody(req);
        const route = url.pathname.slice(API_PREFIX.length);
        const target = upstream + route + url.search;
        const r = await fetchFn(target, { method, headers, body: body ? new Uint8Array(body) : undefined, redirect: "manual", signal: abortOnClose(res) });
        const out: Record<string, string> = {};
        r.headers.forEach((v, k) => {
          if (!DROP_RES.has(k)) out[k] = v;
        });
        const bytes = Buffer.from(await r.arrayBuffer());
        res.writeHead(r.status, out).end(bytes);
      } catch (e) {
        // The Worker is unreachable: a 502 the page's client retries like any 5xx.
        if (!res.headersSent) {
          res.writeHead(502, { "content-type": "application/json" }).end(
            JSON.stringify({ error: { code: "bad_gateway", message: `runner proxy: ${(e as Error).message}` } }),
          );
        } else res.destroy();
      }
    })();
    return true;
  };
}

/** GET (with Range) of an http(s) URL for the page; status, content-range and body passed through. */
async function proxyData(url: URL, req: IncomingMessage, res: ServerResponse, fetchFn: FetchFn): Promise<void> {
  const target = url.searchParams.get("url") ?? "";
  if (!/^https?:\/\//.test(target)) return refuse(res, 400, "bad_request", "runner proxy: url must be an absolute http(s) URL");
  if (req.method !== "GET") return refuse(res, 405, "method_not_allowed", "runner proxy: /data is GET only");
  try {
    const headers: Record<string, string> = {};
    if (req.headers.range) headers.range = req.headers.range;
    const r = await fetchFn(target, { headers, signal: abortOnClose(res) });
    const out: Record<string, string> = {};
    for (const h of ["content-type", "content-range", "accept-ranges", "etag", "last-modified"]) {
      const v = r.headers.get(h);
      if (v) out[h] = v;
    }
    // A server that ignores the Range sends the whole shard: not read (the page says why from the bare 200).
    if (headers.range && r.status === 200) {
      await r.body?.cancel().catch(() => {});
      res.writeHead(200, out).end();
      return;
    }
    const bytes = Buffer.from(await r.arrayBuffer()); // before the head: a body cut short answers 502 with why
    res.writeHead(r.status, out).end(bytes);
  } catch (e) {
    // A refusal is final (403: the page's shard reader does not retry it); anything else may pass (502).
    if (!res.headersSent) refuse(res, isRefusal(e) ? 403 : 502, isRefusal(e) ? "data_host_refused" : "bad_gateway", `runner proxy: ${(e as Error).message}`);
    else res.destroy();
  }
}
