/**
 * Where a runner's training loop (runner/page/loop.ts) runs: headless Chrome under Puppeteer (chrome.ts) or Node's
 * `webgpu` package, i.e. Dawn, without a browser (dawn.ts). runner/commands/runner.ts drives either the same way:
 * open() once (find the adapter), then one session() after another (a session that crashed or lost its device is
 * followed by a fresh one), stop() on a signal, close() at the end.
 */
import type { RunnerEvent, StopMode } from "../events";
import type { GpuMemory } from "../gpu-memory";
import type { FaultInjector } from "../fault";

export const BACKENDS = ["chrome", "dawn"] as const;
export type BackendName = (typeof BACKENDS)[number];
export const BACKEND_ENV = "SAE_SWARM_BACKEND";

/** How one session ended. crashed / device-lost: the runner gives the lease back and starts a fresh session;
 *  refused: the adapter of a relaunched Chrome is a software one this runner may not use. */
export type SessionOutcome = "no-work" | "stopped" | "failing" | "crashed" | "device-lost" | "refused";

export interface BackendOptions {
  /** The Worker's base URL (no trailing slash) and the runner token. */
  server: string;
  token?: string;
  allowSoftware: boolean;
  /** --probe: open() reports every adapter it tries (Chrome: each launch profile). */
  probe: boolean;
  /** SAE_SWARM_FAULT (tests only): where the runner kills itself. */
  fault?: FaultInjector | null;
  /** --allow-data-host: data hosts read although their address is loopback, private or link-local. */
  allowDataHosts: string[];
  log(s: string): void;
}

export interface SessionOptions {
  runnerId: string;
  once: boolean;
  /** Device memory the engine may use; it goes with every claim. */
  memory?: GpuMemory;
  onEvent(e: RunnerEvent): void;
  log(s: string): void;
}

export interface RunnerBackend {
  readonly name: BackendName;
  /** Finds a WebGPU adapter and logs it; false when there is none this runner may use (it has said why). */
  open(): Promise<boolean>;
  /** Runs the loop until it ends (no-work, stopped, failing), or the session dies (crashed, device-lost). */
  session(o: SessionOptions): Promise<SessionOutcome>;
  /** Passes a stop to the loop of the current session, and to any session started after it. */
  stop(mode: StopMode): void;
  /** Frees everything (browser, GPU device, sockets); nothing of it may keep the process alive. */
  close(): Promise<void>;
}

/** --backend, else SAE_SWARM_BACKEND, else chrome; null for an unknown name. */
export function backendName(flag: string | undefined, env = process.env[BACKEND_ENV]): BackendName | null {
  const name = flag || env || "chrome";
  return (BACKENDS as readonly string[]).includes(name) ? (name as BackendName) : null;
}
