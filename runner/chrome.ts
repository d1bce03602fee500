/** Launching the system Chrome/Chromium with WebGPU, for runners and for the browser tests. */
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import puppeteer, { type Browser } from "puppeteer-core";
import { chromeRobustnessArgs } from "./robustness";

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
  // adapter.info's driver fields (driver, backend, vkDriverVersion …; runner/tune-cache.ts keys tuned kernels on
  // them, so a driver update tunes again) and unquantized timestamp queries for the tuner
  "--enable-webgpu-developer-features",
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
  profile: LaunchProfile;
  close(): Promise<void>;
}

/**
 * How Chrome is started to find the GPU. On Linux with an NVIDIA (or AMD) GPU, headless Chrome falls back to
 * SwiftShader unless WebGPU goes through Vulkan; some drivers also need a display, so a headful Chrome under Xvfb
 * is the next try. The runner tries these in order until one gives a hardware adapter.
 */
export interface LaunchProfile {
  name: string;
  args: string[];
  /** Headful on a virtual display (Xvfb) instead of headless. */
  xvfb?: boolean;
}

export const VULKAN_ARGS = ["--enable-features=Vulkan", "--use-vulkan=native", "--use-angle=vulkan", "--ignore-gpu-blocklist"];

/** The profiles to try on this machine, in order: Linux gets Vulkan, then Vulkan under Xvfb (when Xvfb is on PATH), then Chrome's defaults. */
export function launchProfiles(platform: NodeJS.Platform = process.platform, xvfb: string | null = which("Xvfb")): LaunchProfile[] {
  const plain: LaunchProfile = { name: "default", args: [] };
  if (platform !== "linux") return [plain];
  return [{ name: "vulkan", args: VULKAN_ARGS }, ...(xvfb ? [{ name: "xvfb-vulkan", args: VULKAN_ARGS, xvfb: true }] : []), plain];
}

/** Chrome may still be writing its profile as it ends: retry, and never let the cleanup mask what went wrong. */
function removeProfileDir(dir: string): void {
  try {
    rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  } catch {
    /* a temp dir left behind is not worth an error */
  }
}

/** The first executable `name` on PATH, or null. */
export function which(name: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* not here */
    }
  }
  return null;
}

/** An Xvfb server on a free display; stopped with its Chrome. */
async function startXvfb(): Promise<{ display: string; stop(): void }> {
  const bin = which("Xvfb");
  if (!bin) throw new Error("Xvfb is not installed");
  // -displayfd: Xvfb picks a free display and writes its number to fd 3 once it accepts connections.
  // -terminate: it ends when its last client (Chrome) goes, so a runner killed outright leaves no Xvfb behind either.
  const x = spawn(bin, ["-displayfd", "3", "-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-terminate"], { stdio: ["ignore", "ignore", "pipe", "pipe"] });
  const display = await new Promise<string>((resolve, reject) => {
    let out = "";
    let err = "";
    x.stderr!.on("data", (d) => (err += d));
    (x.stdio[3] as NodeJS.ReadableStream).on("data", (d) => {
      out += d;
      if (out.includes("\n")) resolve(`:${out.trim()}`);
    });
    x.once("exit", (code) => reject(new Error(`Xvfb exited (${code}): ${err.slice(-300)}`)));
    setTimeout(() => reject(new Error("Xvfb did not start within 10 s")), 10_000).unref();
  }).catch((e) => {
    x.kill("SIGKILL");
    throw e;
  });
  return { display, stop: () => void x.kill("SIGTERM") };
}

/**
 * A Chrome with a fresh profile that is deleted on close: headless, or headful under Xvfb (`profile.xvfb`).
 *
 * DevTools runs over a pipe, not a TCP port: when the runner dies, even by SIGKILL, the pipe closes and Chrome
 * ends with it (no port for other local users to reach either). Puppeteer's own signal handlers are off: on
 * SIGTERM they closed Chrome under the runner while it was still checkpointing the group to give it back, and on
 * SIGINT they exited the process before the lease was given back; the runner handles its signals itself.
 */
export async function launchChrome(extraArgs: string[] = [], profile: LaunchProfile = { name: "default", args: [] }): Promise<LaunchedChrome> {
  const xvfb = profile.xvfb ? await startXvfb() : null;
  const userDataDir = mkdtempSync(path.join(tmpdir(), "sae-swarm-chrome-"));
  let browser: Browser;
  try {
    browser = await puppeteer.launch({
      executablePath: chromePath(),
      headless: !xvfb,
      userDataDir,
      pipe: true,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
      args: [...CHROME_ARGS, ...chromeRobustnessArgs(), ...profile.args, ...extraArgs],
      env: xvfb ? { ...process.env, DISPLAY: xvfb.display } : process.env,
      // Bounds each DevTools call (the training loop is not one: it reports its end as an event). Tests shorten it.
      protocolTimeout: Number(process.env.SAE_SWARM_PROTOCOL_TIMEOUT_MS) || 600_000,
    });
  } catch (e) {
    xvfb?.stop();
    removeProfileDir(userDataDir);
    throw e;
  }
  return {
    browser,
    profile,
    async close() {
      await browser.close().catch(() => {});
      xvfb?.stop();
      removeProfileDir(userDataDir);
    },
  };
}
