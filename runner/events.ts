/**
 * Events the page sends the CLI (through Puppeteer's exposeFunction): what the progress line, the logs and the
 * restart logic need. JSON-serializable; shared by both sides.
 */
import type { Lease } from "../worker/protocol";
import type { KernelReport } from "../shaders/autotune";

export interface SaeProgress {
  run_id: string;
  /** Latest logged values (null until the first log step). */
  mse: number | null;
  l0: number | null;
}

export type RunnerEvent =
  | { kind: "claimed"; lease: Lease; group_id: string; sweep_id: string; runs: string[]; n_steps: number; resume_step: number; attempt: number }
  | { kind: "phase"; group_id: string; phase: "resume" | "data" | "init" | "train" | "eval" | "checkpoint" | "complete" | "abandon" }
  | { kind: "progress"; group_id: string; step: number; n_steps: number; samples_per_s: number; eta_s: number | null; saes: SaeProgress[] }
  | { kind: "done"; group_id: string; lease_id: string; outcome: "completed" | "lease-lost" | "abandoned" | "failed"; message?: string }
  | { kind: "idle"; wait_ms: number }
  /** Groups failed here `failures` times in a row: the loop waits before it claims again. */
  | { kind: "backoff"; failures: number; wait_ms: number }
  | { kind: "log"; level: "info" | "warn" | "error"; message: string }
  | { kind: "device-lost"; message: string }
  /** The matmul kernels of a group's engine (autotuned now, or from the cache): the CLI caches tuned ones on disk. */
  | { kind: "kernels"; group_id: string; report: KernelReport }
  /** failing: groups kept failing here, so the loop stopped claiming (message says why). */
  | { kind: "exit"; reason: "no-work" | "stopped" | "failing" | "error"; message?: string };

/** Name of the function the CLI exposes on the page. */
export const EVENT_BINDING = "__saeSwarmEvent";

/** How the loop should stop: drain (finish the current group, claim no more) or abandon (checkpoint, give it back). */
export type StopMode = "drain" | "abandon";
