// vitest config of the AuxK step-time measurement (test/bench/auxk.ts); not part of `npm test`.
import { defineConfig } from "vitest/config";

export default defineConfig({ test: { include: ["test/bench/auxk.ts"], testTimeout: 3_600_000 } });
