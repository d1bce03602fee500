/**
 * Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=on|off, default on). With it on, Tint clamps every
 * storage-buffer index to its binding's length, on every access of every kernel: on SwiftShader turning it off makes
 * the training step 1.2-1.4× faster (BENCHMARKS.md §8, test/bench/robustness.ts). Robustness guards a browser
 * against pages it cannot trust; a runner runs only this project's kernels, so `off` is meant to become the
 * runner's default, but not yet: with it off, test/e2e/storage.e2e.test.ts's runner (d_vit 64, d_sae 4096, batch 32,
 * Chrome/SwiftShader) lost its GPU device right after autotuning, reproducibly, and passes with it on: some kernel
 * reaches outside a binding there and the clamps hide it. Until that kernel is found and the suites pass with `off`,
 * `off` is for measuring. (Off also once gave wrong Matryoshka gradients on SwiftShader: blockOf's search loop,
 * fixed in shaders/kernels.ts; test/bench/robustness-repro.ts checks it.)
 * Both backends take it: Dawn as an instance toggle, Chrome as a command-line switch for its GPU process.
 */
export type Robustness = "on" | "off";

/** SAE_SWARM_ROBUSTNESS, or "on"; anything else is refused by name. */
export function robustness(env: NodeJS.ProcessEnv = process.env): Robustness {
  const v = env.SAE_SWARM_ROBUSTNESS?.trim().toLowerCase();
  if (!v) return "on";
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
