/** Launching the system Chrome/Chromium with WebGPU, for runners and for the browser tests. */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import puppeteer, { type Browser } from "puppeteer-core";

export const DEFAULT_CHROME = "/usr/bin/chromium";

/** CHROME_PATH, else Debian's chromium; a clear error naming both when neither exists. */
export function chromePath(): string {
  const p = process.env.CHROME_PATH || DEFAULT_CHROME;
  if (!existsSync(p)) {
    throw new Error(
      `Chrome not found at ${p}. Install Debian's chromium (as root: apt-get install -y chromium) ` +
        `or set CHROME_PATH to a Chrome/Chromium binary.`,
    );
  }
  return p;
}

export const CHROME_ARGS = [
  "--enable-unsafe-webgpu",
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  // Keep timers and rAF running while headless and unfocused: training loops must not be throttled.
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

export interface LaunchedChrome {
  browser: Browser;
  close(): Promise<void>;
}

/**
 * A headless Chrome with a fresh profile that is deleted on close.
 *
 * DevTools runs over a pipe, not a TCP port: when the runner dies, even by SIGKILL, the pipe closes and Chrome
 * ends with it (no port for other local users to reach either). Puppeteer's own signal handlers are off: on
 * SIGTERM they closed Chrome under the runner while it was still checkpointing the group to give it back, and on
 * SIGINT they exited the process before the lease was given back; the runner handles its signals itself.
 */
export async function launchChrome(extraArgs: string[] = []): Promise<LaunchedChrome> {
  const userDataDir = mkdtempSync(path.join(tmpdir(), "sae-swarm-chrome-"));
  const browser = await puppeteer.launch({
    executablePath: chromePath(),
    headless: true,
    userDataDir,
    pipe: true,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    args: [...CHROME_ARGS, ...extraArgs],
    // Bounds each DevTools call (the training loop is not one: it reports its end as an event). Tests shorten it.
    protocolTimeout: Number(process.env.SAE_SWARM_PROTOCOL_TIMEOUT_MS) || 600_000,
  });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}
