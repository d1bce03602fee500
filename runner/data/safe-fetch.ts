/**
 * The runner's fetch for data URLs (activation shards named by a sweep, which anyone with a submit token writes):
 * a `fetch` on node:http/https that will not read this machine or its network for them.
 *
 * - Addresses: loopback, private, carrier-grade NAT, link-local (the cloud metadata service), unspecified,
 *   multicast and reserved addresses are refused (runner/data/address-class.ts), checked on the addresses DNS
 *   gave, inside the socket's own `lookup`: the address checked is the address connected to, so a name that
 *   resolves to a public address once and to 127.0.0.1 the next time gains nothing. A host the operator allows
 *   (`--allow-data-host HOST`, env SAE_SWARM_ALLOW_DATA_HOSTS; by name or by address) is not checked.
 * - Redirects are followed here, at most `maxRedirects`, each hop checked like the first.
 * - Bodies are bounded: a Range request's answer may not be longer than the range asked for (a server that
 *   ignores Range and sends a whole multi-GB shard is cut off at once), any other body not longer than
 *   `maxBodyBytes` (16 MiB; metadata.json is a few kB).
 * - Time: no connection (DNS included) within `connectTimeoutMs` (10 s), or no bytes for `idleTimeoutMs`
 *   (30 s), fails the fetch; the caller's AbortSignal ends it at once.
 *
 * Errors name the host and the reason (runner/data/fetch-error.ts).
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import type { LookupFunction, Socket } from "node:net";
import { classifyAddress, parseIPv6 } from "./address-class";
import { DataFetchError, refusedAddress } from "./fetch-error";
import type { FetchFn } from "./shards";

export interface SafeFetchOptions {
  /** Hosts (names or addresses) fetched without the address check. */
  allowHosts: string[];
  /** Default 10 000. */
  connectTimeoutMs?: number;
  /** Default 30 000. */
  idleTimeoutMs?: number;
  /** Default 5. */
  maxRedirects?: number;
  /** Bytes a body without a Range may have (default 16 MiB). */
  maxBodyBytes?: number;
}

export const MAX_BODY_BYTES = 16 * 2 ** 20;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const NO_BODY = new Set([101, 204, 205, 304]);

/** A host or address as compared: lower case, no brackets, no trailing dot, IPv6 in one spelling. */
function normHost(h: string): string {
  let s = h.trim().toLowerCase();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  if (s.endsWith(".")) s = s.slice(0, -1);
  const v6 = s.includes(":") ? parseIPv6(s) : null;
  return v6 ? v6.map((w) => w.toString(16)).join(":") : s;
}

/** Bytes a `Range: bytes=A-B` (or `bytes=-N`) asks for; null for none or a form whose length is not known here. */
export function rangeLength(range: string | null): number | null {
  const m = range ? /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(range) : null;
  if (!m) return null;
  if (m[1] !== "" && m[2] !== "") {
    const n = Number(m[2]) - Number(m[1]) + 1;
    return n > 0 ? n : null;
  }
  if (m[1] === "" && m[2] !== "") return Number(m[2]);
  return null;
}

export function createSafeFetch(o: SafeFetchOptions): FetchFn {
  const allowed = new Set(o.allowHosts.map(normHost).filter((h) => h !== ""));
  const connectMs = o.connectTimeoutMs ?? 10_000;
  const idleMs = o.idleTimeoutMs ?? 30_000;
  const maxRedirects = o.maxRedirects ?? 5;
  const maxBody = o.maxBodyBytes ?? MAX_BODY_BYTES;
  // Kept-alive connections: a shard read is many Range requests to one host. Sockets in the pool are unref'd.
  const agents = { "http:": new HttpAgent({ keepAlive: true }), "https:": new HttpsAgent({ keepAlive: true }) };

  /** The socket's DNS step: only addresses that are public (or allowed) are handed to connect. */
  const guardedLookup = (host: string): LookupFunction => (hostname: string, options: LookupOptions, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return callback(err, "", 0);
      const ok = addresses.filter((a) => allowed.has(normHost(a.address)) || classifyAddress(a.address) === "public");
      if (ok.length === 0) {
        const first = addresses[0];
        const e = first ? refusedAddress(host, first.address, classifyAddress(first.address)) : new DataFetchError("refused", host, `data host ${host}: DNS gave no address`);
        return callback(e as NodeJS.ErrnoException, "", 0);
      }
      if (options.all) callback(null, ok);
      else callback(null, ok[0].address, ok[0].family);
    });
  };

  /** One request, no redirects followed: resolves with the response head (its body not read yet). */
  const hop = (url: URL, method: string, headers: Record<string, string>, body: Uint8Array | undefined, signal: AbortSignal | undefined) =>
    new Promise<{ res: IncomingMessage; req: ClientRequest }>((resolve, reject) => {
      const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
      if (url.protocol !== "http:" && url.protocol !== "https:") {
        return reject(new DataFetchError("protocol", host, `data URL ${url.href}: only http and https are fetched`));
      }
      const hostAllowed = allowed.has(normHost(host));
      const literal = classifyAddress(host);
      // An IP in the URL is connected to without a DNS step (no lookup call): it is checked here.
      if (!hostAllowed && literal !== "not-an-ip" && literal !== "public") return reject(refusedAddress(host, host, literal));
      const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(url, {
        method,
        headers,
        agent: agents[url.protocol],
        signal,
        ...(hostAllowed || literal !== "not-an-ip" ? {} : { lookup: guardedLookup(host) }),
      });
      let response: IncomingMessage | null = null;
      const fail = (e: Error) => {
        req.destroy(e);
        response?.destroy(e);
      };
      const connectTimer = setTimeout(() => fail(new DataFetchError("connect-timeout", host, `data host ${host}: no connection within ${connectMs / 1000} s`)), connectMs);
      req.once("socket", (s: Socket) => {
        if (!s.connecting) clearTimeout(connectTimer); // a kept-alive connection
        else s.once("connect", () => clearTimeout(connectTimer));
      });
      req.setTimeout(idleMs, () => fail(new DataFetchError("idle-timeout", host, `data host ${host}: nothing received for ${idleMs / 1000} s`)));
      req.once("close", () => clearTimeout(connectTimer));
      req.on("error", (e: Error) => {
        clearTimeout(connectTimer);
        if (e instanceof DataFetchError || e.name === "AbortError") reject(e);
        else reject(new Error(`data host ${host}: ${e.message}`, { cause: e }));
      });
      req.once("response", (res) => {
        clearTimeout(connectTimer);
        response = res;
        res.on("error", () => {}); // reported through the body stream (or not read at all: a redirect, a 204)
        resolve({ res, req });
      });
      req.end(body);
    });

  return async (input: string | URL, init: RequestInit = {}): Promise<Response> => {
    let url = new URL(String(input));
    let method = (init.method ?? "GET").toUpperCase();
    const headers: Record<string, string> = {};
    new Headers(init.headers).forEach((v, k) => (headers[k] = v));
    let body = await requestBody(init.body);
    const signal = init.signal ?? undefined;
    const asked = rangeLength(headers.range ?? null);
    const limit = asked ?? maxBody;
    for (let redirects = 0; ; redirects++) {
      const { res } = await hop(url, method, headers, body, signal);
      const status = res.statusCode ?? 0;
      const location = res.headers.location;
      if (REDIRECTS.has(status) && location && init.redirect !== "manual") {
        res.destroy();
        const host = url.hostname;
        if (init.redirect === "error") throw new DataFetchError("redirects", host, `data host ${host} redirected ${url.href} (redirects are refused here)`);
        if (redirects >= maxRedirects) throw new DataFetchError("redirects", host, `data URL ${String(input)}: more than ${maxRedirects} redirects`);
        let next: URL;
        try {
          next = new URL(location, url);
        } catch {
          throw new DataFetchError("redirects", host, `data host ${host} redirected to an invalid URL '${location}'`);
        }
        if (status === 303 || ((status === 301 || status === 302) && method === "POST")) {
          method = "GET";
          body = undefined;
          delete headers["content-type"];
        }
        // Credentials never follow a redirect to another origin.
        if (next.origin !== url.origin) for (const h of ["authorization", "cookie", "proxy-authorization"]) delete headers[h];
        url = next;
        continue;
      }
      const out = new Headers();
      for (const [k, v] of Object.entries(res.headers)) {
        if (v === undefined) continue;
        for (const one of Array.isArray(v) ? v : [v]) out.append(k, one);
      }
      const host = url.hostname;
      const bodyless = NO_BODY.has(status) || method === "HEAD";
      if (bodyless) res.resume();
      const tooLarge = () =>
        new DataFetchError("too-large", host, `data host ${host}: the body of ${url.href} is longer than the ${limit} bytes ${asked !== null ? "asked for (Range)" : "a data fetch reads"}`);
      return new Response(bodyless ? null : boundedBody(res, limit, tooLarge), { status, statusText: res.statusMessage ?? "", headers: out });
    }
  };
}

async function requestBody(b: RequestInit["body"]): Promise<Uint8Array | undefined> {
  if (b === undefined || b === null) return undefined;
  if (typeof b === "string") return new TextEncoder().encode(b);
  if (b instanceof Uint8Array) return b;
  if (b instanceof ArrayBuffer) return new Uint8Array(b);
  if (ArrayBuffer.isView(b)) return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  return new Uint8Array(await new Response(b).arrayBuffer());
}

/** The response body as a web stream that errors (and drops the connection) past `limit` bytes. */
function boundedBody(res: IncomingMessage, limit: number, tooLarge: () => Error): ReadableStream<Uint8Array> {
  let seen = 0;
  let done = false;
  return new ReadableStream<Uint8Array>(
    {
      start(c) {
        const fail = (e: Error) => {
          if (done) return;
          done = true;
          c.error(e);
          res.destroy();
        };
        const declared = Number(res.headers["content-length"]);
        if (Number.isFinite(declared) && declared > limit) return fail(tooLarge());
        res.on("data", (chunk: Buffer) => {
          if (done) return;
          seen += chunk.length;
          if (seen > limit) return fail(tooLarge());
          c.enqueue(new Uint8Array(chunk));
          if ((c.desiredSize ?? 1) <= 0) res.pause();
        });
        res.once("end", () => {
          if (done) return;
          done = true;
          c.close();
        });
        res.on("error", fail);
        res.once("close", () => fail(new Error("the connection closed before the body ended")));
      },
      pull() {
        res.resume();
      },
      cancel() {
        done = true;
        res.destroy();
      },
    },
    { highWaterMark: 4 },
  );
}
