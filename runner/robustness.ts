/**
 * Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=on|off, default off). With it on, Tint clamps every
 * storage-buffer index to its binding's length, on every access of every kernel: on SwiftShader turning it off makes
 * the training step 1.2-1.4× faster (BENCHMARKS.md §8, test/bench/robustness.ts). Robustness guards a browser
 * against pages it cannot trust; a runner runs only this project's kernels, whose indices the float64 tests check
 * element by element with outputs poisoned (test/gpu/*, run in both modes), so `off` is the runner's default and
 * `on` is for checking a kernel or a driver against the clamped device. Off once gave wrong Matryoshka gradients on
 * SwiftShader (blockOf's search loop, inlined twice with a divergent break: shaders/kernels.ts says why, and
 * test/bench/robustness-repro.ts checks it): rerun the GPU tests with SAE_SWARM_ROBUSTNESS=on and off after a
 * `webgpu` or Chromium update.
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
