/** Small pieces the end-to-end tests share: polling, killing a runner's whole tree, which steps a run logs, a host
 * that never answers, and a claim made as a runner would. */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { descendants } from "../../runner/fault";
import { nSteps, type TrainConfig } from "../../shaders/config";

/** Polls `probe` until it returns something truthy, or throws naming `what` after `timeoutMs`. */
export async function until<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs: number, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** SIGKILL the runner CLI's process group and every process it started (Chromium runs in its own group). */
export function killTree(pid: number): void {
  for (const target of [-pid, ...descendants(pid)]) {
    try {
      process.kill(target, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
}

/** The steps a run logs metrics at: (step + 1) % log_every == 0 (SAE.md), 0-based. */
export const loggedSteps = (cfg: TrainConfig) => Array.from({ length: Math.floor(nSteps(cfg) / cfg.log_every) }, (_, i) => (i + 1) * cfg.log_every - 1);

/** Loopback HTTP that answers /health and leaves every other request hanging (a Worker or a data host that stalls);
 *  pushed onto `servers`, which the caller closes. */
export async function hangingServer(servers: Server[]): Promise<string> {
  const s = createServer((req, res) => {
    if (req.url === "/health") res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

/** `POST /v1/claims` with the runner token and a minimal software adapter, as a runner would: the claim, or null
 *  (204: nothing waiting). */
export async function claimAsRunner(server: string, runnerToken: string, runnerId: string): Promise<{ lease: { id: string; token: string }; group: { id: string } } | null> {
  const res = await fetch(`${server}/v1/claims`, {
    method: "POST",
    headers: { authorization: `Bearer ${runnerToken}`, "content-type": "application/json" },
    body: JSON.stringify({ runner_id: runnerId, adapter: { vendor: "t", architecture: "", device: "", description: "", isFallbackAdapter: true, features: [], limits: { maxStorageBufferBindingSize: 1 << 30, maxBufferSize: 1 << 30, maxComputeWorkgroupSizeX: 256 } } }),
  });
  if (res.status === 204) return null;
  if (res.status !== 200) throw new Error(`POST /v1/claims: ${res.status} ${await res.text()}`);
  return (await res.json()) as { lease: { id: string; token: string }; group: { id: string } };
}
