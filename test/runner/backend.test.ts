/** Choosing the runner's backend, and the Dawn backend's abortable data fetch (runner/backends/). */
import { spawnSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { Aborted } from "../../runner/api";
import { backendName } from "../../runner/backends/backend";
import { abortable } from "../../runner/backends/dawn";
import { ROOT } from "../helpers/worker-dev";

describe("backendName", () => {
  it("takes --backend over SAE_SWARM_BACKEND over chrome, and null for an unknown name", () => {
    expect(backendName(undefined, undefined)).toBe("chrome");
    expect(backendName(undefined, "dawn")).toBe("dawn");
    expect(backendName("chrome", "dawn")).toBe("chrome");
    expect(backendName("dawn", undefined)).toBe("dawn");
    expect(backendName("firefox", undefined)).toBeNull();
    expect(backendName(undefined, "")).toBe("chrome");
  });

  it("the CLI refuses an unknown backend, naming the flag", () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, "bin/sae-swarm.js"), "runner", "--backend", "webkit"], { cwd: ROOT, encoding: "utf8", timeout: 60_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--backend .* must be one of chrome, dawn \(got 'webkit'\)/);
  });
});

describe("abortable", () => {
  it("a fetch hanging on a host that never answers ends with Aborted when the signal aborts; later ones at once", async () => {
    const server = createServer(() => {}); // never answers
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`;
    try {
      const ac = new AbortController();
      const f = abortable((u, i) => fetch(u, i), ac.signal);
      const pending = f(url).then(() => "answered", (e: unknown) => e);
      await new Promise((r) => setTimeout(r, 200));
      ac.abort();
      expect(await pending).toBeInstanceOf(Aborted);
      await expect(f(url)).rejects.toBeInstanceOf(Aborted);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("passes answers and other errors through while the signal is live", async () => {
    const server = createServer((_, res) => res.writeHead(206).end("ok"));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`;
    try {
      const f = abortable((u, i) => fetch(u, i), new AbortController().signal);
      const res = await f(url, { headers: { range: "bytes=0-1" } });
      expect([res.status, await res.text()]).toEqual([206, "ok"]);
      const failing = abortable(() => Promise.reject(new TypeError("fetch failed")), new AbortController().signal);
      await expect(failing(url)).rejects.toThrow(TypeError);
    } finally {
      server.close();
    }
  });
});
