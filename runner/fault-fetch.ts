/**
 * SAE_SWARM_FAULT (runner/fault.ts) applied to the requests to the Worker, whichever backend makes them: the Chrome
 * backend's proxy wraps its upstream fetch with it (the page's requests all pass there), the Dawn backend its
 * loop's WorkerClient (the loop talks to the Worker directly). The same points fire at the same requests in both.
 */
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import type { FetchFn } from "./api";
import { dieHard, type FaultInjector } from "./fault";

/**
 * `f`, with `fault` asked about every request to the Worker at `server` (its base URL): "die" dies before the
 * request leaves, "cut" sends the request with half its body and dies, "watch" dies once the Worker answered 2xx,
 * before the caller hears it. Requests to other hosts (data) pass untouched. `die`: dieHard (tests pass their own).
 */
export function faultyFetch(f: FetchFn, fault: FaultInjector, server: string, die: (why: string) => never = dieHard): FetchFn {
  const base = server.replace(/\/+$/, "");
  return async (url, init) => {
    if (!url.startsWith(`${base}/`)) return f(url, init);
    const route = url.slice(base.length).split("?")[0];
    const method = init?.method ?? "GET";
    const body = bodyBytes(init?.body);
    const point = fault.before(method, route, body);
    if (point === "die") die(fault.describe(route));
    if (point === "cut") {
      await sendHalf(url, method, new Headers(init?.headers), body ?? Buffer.alloc(0));
      die(`${fault.describe(route)}, half of its ${body?.length ?? 0} bytes sent`);
    }
    const r = await f(url, init);
    if (point === "watch" && r.ok) die(`${fault.describe(route)}, answered ${r.status}`);
    return r;
  };
}

/** The bytes of a request body as the proxy and the WorkerClient send them (JSON text, bytes); undefined for none. */
function bodyBytes(body: RequestInit["body"]): Buffer | undefined {
  if (typeof body === "string") return Buffer.from(body, "utf8");
  if (ArrayBuffer.isView(body)) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  return undefined; // none, or a kind neither sends (a stream): no fault point reads it
}

/**
 * The fault "cut": the request line, the headers (with the full content-length) and the first half of the body go
 * to the Worker; resolves 300 ms after they left, with the Worker waiting for the rest.
 */
function sendHalf(target: string, method: string, headers: Headers, body: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const u = new URL(target);
    const req = (u.protocol === "https:" ? httpsRequest : httpRequest)(u, {
      method,
      headers: { ...Object.fromEntries(headers), "content-length": String(body.length) },
    });
    req.on("error", reject);
    req.write(body.subarray(0, body.length >> 1), (err) => (err ? reject(err) : setTimeout(resolve, 300)));
  });
}
