/**
 * Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=on|off, default on). With it on, Tint clamps every
 * storage-buffer index to its binding's length, on every access of every kernel: on SwiftShader turning it off made
 * the training step 1.2-1.4× faster (BENCHMARKS.md §8, test/bench/robustness.ts). Robustness guards a browser
 * against pages it cannot trust; a runner runs only this project's kernels, whose indices the float64 tests check,
 * so `off` would be the runner's default, but not yet: with it off, the direct matmuls' Matryoshka kernels
 * (GRAD_F and GRAD_W_DEC in nBlocks mode, where each thread loops over its own columns' blocks) give wrong
 * gradients on SwiftShader, in Chrome and Dawn alike (test/gpu/engine.test.ts fails with SAE_SWARM_ROBUSTNESS=off;
 * test/bench/robustness-diff.ts shows which elements; test/bench/robustness-repro.ts shows it with nothing out of
 * bounds: SwiftShader's or the compiler's doing). Until that passes, `off` is for measuring only.
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
