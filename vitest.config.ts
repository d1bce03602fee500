// Node-side tests: WebGPU kernels in headless Chromium and in Dawn, the runner, and end-to-end runs.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    exclude: ["test/worker/**", "node_modules/**"],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // GPU work on SwiftShader is CPU-bound; two cores do not gain from more files at once.
    maxWorkers: 2,
    // SAE_SWARM_CACHE → a temp dir per test file: runners' autotuned kernels never touch ~/.cache
    setupFiles: ["test/helpers/tune-cache-env.ts"],
  },
});
