/**
 * The runner's data fetch against real HTTP servers on 127.0.0.1: what it refuses (before DNS for an IP in the URL,
 * after DNS for a name, on every redirect hop), what an allowed host gets, and the bounds on bodies and time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSafeFetch, rangeLength } from "../../runner/data/safe-fetch";
import { DataFetchError, isRefusal } from "../../runner/data/fetch-error";
import { allowedDataHosts } from "../../runner/data/allow-hosts";
import { ShardSource } from "../../runner/data/shards";
import { sparseFeatureGenerator, writeShards } from "../../runner/data/write-shards";
import type { ShardData } from "../../shaders/config";
import { serveDirWithRanges } from "./range-server";

type Handler = (req: IncomingMessage, res: ServerResponse) => void;
let server: Server;
let port: number;
const routes = new Map<string, Handler>();
const seen: string[] = [];

const FILE = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 255);

beforeAll(async () => {
  routes.set("/file", (req, res) => {
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? "");
    if (!m) return void res.writeHead(200, { "content-length": FILE.length }).end(FILE);
    const [a, b] = [Number(m[1]), Number(m[2])];
    res.writeHead(206, { "content-range": `bytes ${a}-${b}/${FILE.length}`, "content-length": b - a + 1 }).end(FILE.subarray(a, b + 1));
  });
  // Answers a Range with more bytes than asked for (its content-length honest about it).
  routes.set("/long-range", (req, res) => res.writeHead(206, { "content-length": 500 }).end(FILE.subarray(0, 500)));
  // The same, chunked: no content-length to judge by, the count decides.
  routes.set("/long-chunked", (req, res) => {
    res.writeHead(200);
    for (let i = 0; i < 10; i++) res.write(FILE.subarray(0, 100));
    res.end();
  });
  routes.set("/hang", () => {});
  routes.set("/stall-body", (req, res) => {
    res.writeHead(200, { "content-length": 1000 });
    res.write(FILE.subarray(0, 10)); // then nothing
  });
  routes.set("/to-metadata", (req, res) => res.writeHead(302, { location: "http://169.254.169.254/latest/meta-data/" }).end());
  routes.set("/to-self", (req, res) => res.writeHead(307, { location: `http://127.0.0.1:${port}/file` }).end());
  routes.set("/loop", (req, res) => res.writeHead(302, { location: "/loop" }).end());
  server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    seen.push(path);
    (routes.get(path) ?? ((_, r) => r.writeHead(404).end()))(req, res);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

async function refusal(p: Promise<unknown>): Promise<DataFetchError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e, "the fetch was refused").toBeInstanceOf(DataFetchError);
  return e as DataFetchError;
}

describe("createSafeFetch", () => {
  it("refuses a loopback IP without a request, naming the host and the flag", async () => {
    const before = seen.length;
    const e = await refusal(createSafeFetch({ allowHosts: [] })(`http://127.0.0.1:${port}/file`));
    expect(e.reason).toBe("refused");
    expect(e.message).toBe(`data host 127.0.0.1 is a loopback address; pass --allow-data-host 127.0.0.1 to allow it (or set SAE_SWARM_ALLOW_DATA_HOSTS)`);
    expect(isRefusal(e)).toBe(true);
    expect(seen.length).toBe(before);
  });

  it("refuses private, link-local and IPv4-mapped addresses in the URL", async () => {
    const f = createSafeFetch({ allowHosts: [] });
    expect((await refusal(f("http://10.0.0.5/x"))).message).toMatch(/^data host 10\.0\.0\.5 is a private address; pass --allow-data-host 10\.0\.0\.5 /);
    expect((await refusal(f("http://169.254.169.254/latest/meta-data/"))).message).toMatch(/169\.254\.169\.254 is a link-local address/);
    expect((await refusal(f("http://[::ffff:127.0.0.1]:9/"))).message).toMatch(/::ffff:7f00:1 is a loopback address/);
    expect((await refusal(f("http://[fd00::1]/"))).message).toMatch(/fd00::1 is a private address/);
    expect((await refusal(f("http://0x7f.1:9/"))).message).toMatch(/127\.0\.0\.1 is a loopback/); // URL parsing canonicalizes
    expect((await refusal(f("http://100.64.1.1/"))).message).toMatch(/carrier-grade NAT/);
    expect((await refusal(f("file:///etc/passwd"))).reason).toBe("protocol");
  });

  it("refuses a name after DNS: localhost resolves to loopback", async () => {
    const before = seen.length;
    const e = await refusal(createSafeFetch({ allowHosts: [] })(`http://localhost:${port}/file`));
    expect(e.reason).toBe("refused");
    expect(e.message).toMatch(/^data host localhost resolves to (127\.0\.0\.1|::1), a loopback address; pass --allow-data-host localhost to allow it/);
    expect(seen.length).toBe(before);
  });

  it("lets a public address through the check (the fetch then fails or not, but is not refused)", async () => {
    const e = await createSafeFetch({ allowHosts: [], connectTimeoutMs: 300 })("http://1.1.1.1:9/").then(
      () => null,
      (err: Error) => err,
    );
    expect(isRefusal(e)).toBe(false);
  });

  it("an allowed host is read, by address or by name, Range and all", async () => {
    for (const [allow, host] of [["127.0.0.1", "127.0.0.1"], ["localhost", "localhost"], ["127.0.0.1", "localhost"]]) {
      const f = createSafeFetch({ allowHosts: [allow] });
      const r = await f(`http://${host}:${port}/file`, { headers: { range: "bytes=10-19" } });
      expect(r.status, `${allow} allows ${host}`).toBe(206);
      expect(r.headers.get("content-range")).toBe("bytes 10-19/1000");
      expect(Array.from(new Uint8Array(await r.arrayBuffer()))).toEqual(Array.from(FILE.subarray(10, 20)));
      const whole = await f(`http://${host}:${port}/file`);
      expect(new Uint8Array(await whole.arrayBuffer())).toEqual(FILE);
      expect((await f(`http://${host}:${port}/nope`)).status).toBe(404);
    }
  });

  it("follows redirects, checking every hop: an allowed host cannot send the runner to a refused one", async () => {
    const f = createSafeFetch({ allowHosts: ["127.0.0.1"] });
    const ok = await f(`http://127.0.0.1:${port}/to-self`, { headers: { range: "bytes=0-3" } });
    expect(ok.status).toBe(206);
    expect(Array.from(new Uint8Array(await ok.arrayBuffer()))).toEqual(Array.from(FILE.subarray(0, 4)));
    expect((await refusal(f(`http://127.0.0.1:${port}/to-metadata`))).message).toMatch(/^data host 169\.254\.169\.254 is a link-local address/);
    // Allowed by name only: the redirect to the same machine by address is refused.
    const byName = createSafeFetch({ allowHosts: ["localhost"] });
    expect((await refusal(byName(`http://localhost:${port}/to-self`))).message).toMatch(/^data host 127\.0\.0\.1 is a loopback/);
    expect((await refusal(f(`http://127.0.0.1:${port}/loop`))).reason).toBe("redirects");
    const manual = await f(`http://127.0.0.1:${port}/to-metadata`, { redirect: "manual" });
    expect(manual.status).toBe(302);
  });

  it("bounds bodies: no more than the Range asked for, no more than the cap without one", async () => {
    const f = createSafeFetch({ allowHosts: ["127.0.0.1"], maxBodyBytes: 600 });
    const r = await f(`http://127.0.0.1:${port}/long-range`, { headers: { range: "bytes=0-99" } });
    expect(r.status).toBe(206);
    const e = await refusal(r.arrayBuffer());
    expect(e.reason).toBe("too-large");
    expect(e.message).toMatch(/^data host 127\.0\.0\.1: the body of .*\/long-range is longer than the 100 bytes asked for \(Range\)/);
    expect(isRefusal(e)).toBe(false);
    const chunked = await f(`http://127.0.0.1:${port}/long-chunked`);
    expect((await refusal(chunked.arrayBuffer())).message).toMatch(/longer than the 600 bytes a data fetch reads/);
    // A server that ignores the Range: the whole file is never read (the caller sees the 200 and gives up).
    const ignored = await f(`http://127.0.0.1:${port}/long-chunked`, { headers: { range: "bytes=0-9" } });
    expect(ignored.status).toBe(200);
    await ignored.body!.cancel();
    // Within the bounds, nothing is cut.
    expect((await (await f(`http://127.0.0.1:${port}/file`, { headers: { range: "bytes=0-599" } })).arrayBuffer()).byteLength).toBe(600);
    expect(rangeLength("bytes=5-9")).toBe(5);
    expect(rangeLength("bytes=-7")).toBe(7);
    expect(rangeLength("bytes=5-")).toBeNull();
  });

  it("times out a server that never answers, and one that stops sending mid-body", async () => {
    const f = createSafeFetch({ allowHosts: ["127.0.0.1"], idleTimeoutMs: 300 });
    const t0 = Date.now();
    const e = await refusal(f(`http://127.0.0.1:${port}/hang`));
    expect(e.reason).toBe("idle-timeout");
    expect(e.message).toBe("data host 127.0.0.1: nothing received for 0.3 s");
    expect(Date.now() - t0).toBeLessThan(3000);
    const r = await f(`http://127.0.0.1:${port}/stall-body`);
    expect((await refusal(r.arrayBuffer())).reason).toBe("idle-timeout");
  });

  it("the caller's signal ends a hanging fetch at once", async () => {
    const ac = new AbortController();
    const p = createSafeFetch({ allowHosts: ["127.0.0.1"] })(`http://127.0.0.1:${port}/hang`, { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    const e = await p.then(
      () => null,
      (err: Error) => err,
    );
    expect(e?.name).toBe("AbortError");
  });
});

describe("the shard reader over the safe fetch", () => {
  it("reads saev shards as it does with fetch when the host is allowed, and fails at once, saying why, when not", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-safe-fetch-"));
    await writeShards({
      out: dir, d_vit: 8, layers: [3, 6], n_patches_per_img: 4, cls_token: true, n_imgs: 40, max_patches_per_shard: 100,
      generator: sparseFeatureGenerator({ d_vit: 8, n_features: 12, sparsity: 0.2, seed: 1, noise: 0.01 }),
    });
    const files = await serveDirWithRanges(dir);
    try {
      const data: ShardData = { kind: "shards", url: files.url, layer: -1, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 100, seed: 2 };
      const plain = await ShardSource.open(data, { batchSize: 32 });
      const safe = await ShardSource.open(data, { batchSize: 32, fetch: createSafeFetch({ allowHosts: ["127.0.0.1"] }) });
      expect(safe.normalization).toEqual(plain.normalization);
      for (let i = 0; i < 3; i++) expect(await safe.next()).toEqual(await plain.next());
      plain.close();
      safe.close();
      const before = files.log.length;
      await expect(ShardSource.open(data, { batchSize: 32, fetch: createSafeFetch({ allowHosts: [] }) })).rejects.toThrow(
        /^data host 127\.0\.0\.1 is a loopback address; pass --allow-data-host 127\.0\.0\.1/,
      );
      expect(files.log.length).toBe(before);
    } finally {
      await files.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("allowedDataHosts", () => {
  it("joins the flags and the comma-separated environment variable", () => {
    expect(allowedDataHosts(["a.example", "10.0.0.5"], " b.example, ,c.example ")).toEqual(["a.example", "10.0.0.5", "b.example", "c.example"]);
    expect(allowedDataHosts([], undefined)).toEqual([]);
    expect(allowedDataHosts(["http://nas.local:8000/shards/"], "")).toEqual(["nas.local"]);
  });
});
