/**
 * `sae-swarm fit` as a user types it (bin/sae-swarm.js): saev's default shape on an 80 GB GPU with Dawn's NVIDIA
 * binding limit holds at least 150 SAEs per chunk (the bar; activations are per chunk of rows, not per SAE
 * per batch), the last line has its exact format, and the figure is the plan the engine and the Worker use.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { planMemory } from "../../shaders/fit";

const root = path.resolve(__dirname, "../..");

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SAE_SWARM_"))) as Record<string, string>;
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(root, "bin/sae-swarm.js"), ...args], { cwd: root, env: { ...base, ...env } });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

const LAST_LINE = /^fit: (\d+) SAEs per chunk \((\d+) MiB each\)$/;
const lastLine = (s: string) => s.trimEnd().split("\n").at(-1)!;

describe("sae-swarm fit", () => {
  it("ViT-B (d_vit 768 × 16, batch 16384) on 80 GB with a 2 GiB − 4 binding: ≥ 150 SAEs, the plan's figure, exact last line", async () => {
    const r = await cli(["fit", "--d-vit", "768", "--exp-factor", "16", "--batch-size", "16384", "--gpu-memory", "80", "--max-binding", "2147483644"]);
    expect(r.code, r.stderr).toBe(0);
    const m = LAST_LINE.exec(lastLine(r.stdout));
    expect(m, r.stdout).not.toBeNull();
    const n = Number(m![1]);
    expect(n).toBeGreaterThanOrEqual(150);
    const plan = planMemory({ maxStorageBufferBindingSize: 2147483644, maxBufferSize: 2147483644 }, { d_vit: 768, d_sae: 12288, batch_size: 16384, n_prefixes: 1 }, { memoryBudget: 80e9 });
    expect(n).toBe(plan.maxSaes);
    expect(Number(m![2])).toBe(Math.round(plan.bytesPerSae / 2 ** 20));
    // params + gradients + Adam moments: 16 · 2 · d_vit · d_sae bytes ≈ 302 MB, and little else per SAE
    expect(plan.bytesPerSae).toBeGreaterThan(16 * 2 * 768 * 12288);
    expect(plan.bytesPerSae).toBeLessThan(1.01 * 16 * 2 * 768 * 12288);
  });

  it("takes the memory from SAE_SWARM_GPU_MEMORY, counts Matryoshka prefixes, and names a bad flag", async () => {
    const args = ["fit", "--d-vit", "1024", "--exp-factor", "16", "--max-binding", "2147483644"];
    const env = { SAE_SWARM_GPU_MEMORY: "24" };
    const vanilla = await cli(args, env);
    expect(vanilla.stdout).toContain("24.0 GB (SAE_SWARM_GPU_MEMORY)");
    const want = (P: number) => planMemory({ maxStorageBufferBindingSize: 2147483644, maxBufferSize: 2147483644 }, { d_vit: 1024, d_sae: 16384, batch_size: 16384, n_prefixes: P }, { memoryBudget: 24e9 }).maxSaes;
    expect(lastLine(vanilla.stdout)).toBe(`fit: ${want(1)} SAEs per chunk (513 MiB each)`);
    const matryoshka = await cli([...args, "--n-prefixes", "10"], env);
    expect(lastLine(matryoshka.stdout)).toBe(`fit: ${want(10)} SAEs per chunk (513 MiB each)`);
    expect(want(10)).toBeLessThan(want(1));
    const batchtopk = await cli([...args, "--batchtopk"], env);
    expect(batchtopk.stdout).toContain("1 prefix, BatchTopK");
    const wantBatch = planMemory({ maxStorageBufferBindingSize: 2147483644, maxBufferSize: 2147483644 }, { d_vit: 1024, d_sae: 16384, batch_size: 16384, n_prefixes: 1, batchtopk: true }, { memoryBudget: 24e9 }).maxSaes;
    expect(lastLine(batchtopk.stdout)).toBe(`fit: ${wantBatch} SAEs per chunk (513 MiB each)`);
    // AuxK: its dead counters (per SAE) and working set (as large as H, per SAE of the working slab)
    const auxk = await cli([...args, "--batchtopk", "--auxk"], env);
    expect(auxk.stdout).toContain("1 prefix, BatchTopK, AuxK");
    const wantAux = planMemory({ maxStorageBufferBindingSize: 2147483644, maxBufferSize: 2147483644 }, { d_vit: 1024, d_sae: 16384, batch_size: 16384, n_prefixes: 1, batchtopk: true, auxk: true }, { memoryBudget: 24e9 }).maxSaes;
    expect(wantAux).toBeLessThan(wantBatch);
    expect(lastLine(auxk.stdout)).toBe(`fit: ${wantAux} SAEs per chunk (513 MiB each)`);
    const bad = await cli(["fit", "--d-vit", "768", "--exp-factor", "16", "--gpu-memory", "lots", "--max-binding", "2147483644"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--gpu-memory must be a positive number of GB");
    const missing = await cli(["fit", "--exp-factor", "16"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("--d-vit is required");
  });
});
