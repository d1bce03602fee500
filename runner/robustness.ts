/**
 * Dawn's robustness transform (SAE_SWARM_ROBUSTNESS=on|off, default off). With it on, Tint clamps every array index
 * (storage buffers, workgroup and thread arrays) on every access of every kernel: on SwiftShader turning it off makes
 * the training step 1.2-1.4× faster (BENCHMARKS.md §8, test/bench/robustness.ts). Robustness guards a browser
 * against pages it cannot trust; a runner runs only this project's kernels, so it is off by default.
 * Why that is safe: every kernel's indices are checked, not assumed. test/helpers/bounds-check.ts instruments the
 * WGSL so each index past its array is counted (in either mode); test/gpu/matmul-bounds.test.ts runs it on the five
 * step matmuls for every choice the tuner can pick (software and GPU candidates, ± vec4) at shapes that overhang
 * their tiles, and test/gpu/engine-bounds.test.ts on whole engines (all four SAE kinds, AuxK, Matryoshka, two steps
 * and an evaluation) at d_sae 144, 1024, 4096 and 4097, i.e. the TopK / BatchTopK / AuxK selection on both sides of
 * its per-thread cut: 0 everywhere. And every GPU and training e2e suite passes with it off. Off found two real
 * faults, both fixed: the direct matmuls read rows and columns past their bindings whenever a tile overhung the
 * matrix (a segfault in SwiftShader's GPU process, test/e2e/storage.e2e.test.ts), and blockOf's search loop gave
 * wrong Matryoshka bounds on SwiftShader (shaders/kernels.ts).
 * `on` is the escape hatch: if a runner's GPU process crashes or loses its device, or a new kernel or driver is
 * suspect, SAE_SWARM_ROBUSTNESS=on puts the clamps back (a new kernel: add it to the bounds check).
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
