/** Small pieces the end-to-end tests share: polling, killing a runner's whole tree, and which steps a run logs. */
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
