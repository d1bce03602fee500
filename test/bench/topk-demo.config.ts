// vitest config of the TopK step-time measurement (test/bench/topk-demo.ts); not part of `npm test`.
import { defineConfig } from "vitest/config";

export default defineConfig({ test: { include: ["test/bench/topk-demo.ts"], testTimeout: 600_000 } });
