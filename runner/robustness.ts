/**
 * Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=on|off, default off). With it on, Tint clamps every
 * storage-buffer index to its binding's length, on every access of every kernel: on SwiftShader that made the
 * training step 1.3-1.4× slower (BENCHMARKS.md §8, test/bench/robustness.ts). Robustness guards a browser against
 * pages it cannot trust; a runner runs only this project's kernels, whose indices the float64 tests check element
 * by element (and which those tests run with robustness off, as runners do). So runners turn it off unless told
 * `on` (e.g. to see whether a kernel reads out of bounds on a new driver: with it on such a read is clamped).
 * Both backends take it: Dawn as an instance toggle, Chrome as a command-line switch for its GPU process.
 */
export type Robustness = "on" | "off";

/** SAE_SWARM_ROBUSTNESS, or "off"; anything else is refused by name. */
export function robustness(env: NodeJS.ProcessEnv = process.env): Robustness {
  const v = env.SAE_SWARM_ROBUSTNESS?.trim().toLowerCase();
  if (!v) return "off";
  if (v === "on" || v === "off") return v;
  throw new Error(`SAE_SWARM_ROBUSTNESS must be "on" or "off", not ${JSON.stringify(env.SAE_SWARM_ROBUSTNESS)}`);
}

/** Flags for the `webgpu` package's create() (Dawn ignores an unknown toggle silently: the name is Dawn's own). */
export function dawnRobustnessFlags(r: Robustness = robustness()): string[] {
  return r === "off" ? ["enable-dawn-features=disable_robustness"] : [];
}

/** Chrome's switch for the same toggle, applied by its GPU process to every WebGPU device. */
export function chromeRobustnessArgs(r: Robustness = robustness()): string[] {
  return r === "off" ? ["--enable-dawn-features=disable_robustness"] : [];
}
