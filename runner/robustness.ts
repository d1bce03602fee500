/**
 * Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=on|off, default on). With it on, Tint clamps every
 * storage-buffer index to its binding's length, on every access of every kernel: on SwiftShader turning it off makes
 * the training step 1.2-1.4× faster (BENCHMARKS.md §8, test/bench/robustness.ts). Robustness guards a browser
 * against pages it cannot trust; a runner runs only this project's kernels, so `off` is meant to become the
 * runner's default once their indices are shown in bounds everywhere. Off found two real faults so far: the direct
 * matmuls read rows and columns past their bindings whenever a tile overhung the matrix (batch 32 in a 128-row tile:
 * a segfault in SwiftShader's GPU process, test/e2e/storage.e2e.test.ts), now clamped; and blockOf's search loop gave
 * wrong Matryoshka bounds on SwiftShader (shaders/kernels.ts). test/gpu/matmul-bounds.test.ts counts every storage
 * index past its binding (instrumented WGSL, either mode) for the step's matmuls and whole engines at a few small
 * shapes: 0 now. Before `off` becomes the default, that check should cover more shapes (production d_sae, TopK and
 * AuxK row lengths on both sides of their per-thread cut) and the suites should pass with `off`.
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
