// vitest setup: every test file (and every runner it starts, which inherits the environment) keeps its autotuned
// kernels in a temp dir of its own, never in the user's ~/.cache/sae-swarm (runner/tune-cache.ts).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll } from "vitest";

// Runners started by tests try candidates past the defaults for 0.5 s at most (2 s otherwise): they still tune, and
// an e2e file with several shapes does not pay seconds per shape (test/gpu/autotune.test.ts times every candidate).
process.env.SAE_SWARM_TUNE_BUDGET_MS ??= "500";
if (!process.env.SAE_SWARM_CACHE) {
  const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-cache-"));
  process.env.SAE_SWARM_CACHE = dir;
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
}
