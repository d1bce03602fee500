// vitest setup: every test file (and every runner it starts, which inherits the environment) keeps its autotuned
// kernels in a temp dir of its own, never in the user's ~/.cache/sae-swarm (runner/tune-cache.ts).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll } from "vitest";

if (!process.env.SAE_SWARM_CACHE) {
  const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-cache-"));
  process.env.SAE_SWARM_CACHE = dir;
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
}
