/**
 * The memory plan (shaders/fit.ts): what the engine allocates fits the budget and every buffer fits one binding;
 * the plan for a group the Worker chunked always fits (the engine and the Worker agree); chunk sizes never split a
 * partial sum; Matryoshka prefixes cost memory; the unchunked formula it replaces is kept for comparison.
 */
import { describe, expect, it } from "vitest";
import { maxSaesThatFit, maxSaesUnchunked, persistentTensors, planMemory, workingTensors, type SaeShape } from "../../shaders/fit";
import { BATCH_HIST_WORDS } from "../../shaders/topk";

const NVIDIA = { maxStorageBufferBindingSize: 2 ** 31 - 4, maxBufferSize: 2 ** 40 };
const shapes: SaeShape[] = [
  { d_vit: 768, d_sae: 12288, batch_size: 16384 },
  { d_vit: 1024, d_sae: 16384, batch_size: 16384, n_prefixes: 10 },
  { d_vit: 64, d_sae: 512, batch_size: 1024 },
  { d_vit: 17, d_sae: 51, batch_size: 37, n_prefixes: 6 },
  { d_vit: 768, d_sae: 12288, batch_size: 16384, batchtopk: true },
  { d_vit: 17, d_sae: 51, batch_size: 37, n_prefixes: 6, batchtopk: true },
  { d_vit: 768, d_sae: 12288, batch_size: 16384, batchtopk: true, auxk: true },
  { d_vit: 17, d_sae: 51, batch_size: 37, n_prefixes: 6, auxk: true },
];

describe("memory plan", () => {
  for (const s of shapes)
    for (const gb of [2, 24, 80, 141])
      it(`d_vit ${s.d_vit}, d_sae ${s.d_sae}, batch ${s.batch_size}, ${s.n_prefixes ?? 1} prefixes${s.batchtopk ? ", BatchTopK" : ""}${s.auxk ? ", AuxK" : ""} at ${gb} GB: every K up to the max fits budget and bindings`, () => {
        const budget = gb * 1e9;
        const max = maxSaesThatFit(NVIDIA, s, budget);
        // never fewer than before (but for the metrics staging buffer, which the old formula did not count; it knew
        // no BatchTopK, whose histogram dominates tiny shapes)
        if (!s.batchtopk && !s.auxk) expect(max).toBeGreaterThanOrEqual(Math.floor(0.98 * maxSaesUnchunked(NVIDIA, s, budget)));
        for (const K of new Set([1, 2, Math.ceil(max / 3), max - 1, max].filter((k) => k >= 1 && k <= max))) {
          const p = planMemory(NVIDIA, s, { memoryBudget: budget, saes: K });
          expect(p.fits).toBe(true);
          expect(p.totalBytes).toBeLessThanOrEqual(budget);
          expect(p.slabs * p.saesPerSlab).toBeGreaterThanOrEqual(K);
          // the largest buffer: one slab's stack of its largest tensor
          const biggest = 4 * p.saesPerSlab * Math.max(...Object.values(persistentTensors(s)), ...Object.values(workingTensors(s, p.rowsPerChunk)));
          expect(biggest).toBeLessThanOrEqual(p.bindingBytes);
          // chunks are whole partials (or the whole batch)
          expect(p.rowsPerChunk === s.batch_size || p.rowsPerChunk % p.rowsPerPartial === 0).toBe(true);
          expect(p.rowChunks).toBe(Math.ceil(s.batch_size / p.rowsPerChunk));
        }
        expect(planMemory(NVIDIA, s, { memoryBudget: budget, saes: max + 1 }).fits).toBe(false);
      });

  it("the issue's capacity bar: ViT-B at 80 GB holds ≥ 150 SAEs where the unchunked engine held 2", () => {
    const s = { d_vit: 768, d_sae: 12288, batch_size: 16384 };
    expect(maxSaesThatFit(NVIDIA, s, 80e9)).toBeGreaterThanOrEqual(150);
    expect(maxSaesUnchunked(NVIDIA, s, 80e9)).toBe(2);
    expect(maxSaesUnchunked(NVIDIA, s)).toBe(1);
  });

  it("a group with fewer SAEs takes larger row chunks; more prefixes fit fewer SAEs", () => {
    const s = { d_vit: 768, d_sae: 12288, batch_size: 16384 };
    const small = { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 28 };
    const few = planMemory(small, s, { memoryBudget: 24e9, saes: 2 });
    const many = planMemory(small, s, { memoryBudget: 24e9 });
    expect(few.rowsPerChunk).toBeGreaterThanOrEqual(many.rowsPerChunk);
    expect(maxSaesThatFit(NVIDIA, { ...s, n_prefixes: 10 }, 24e9)).toBeLessThan(maxSaesThatFit(NVIDIA, s, 24e9));
    // BatchTopK's select: a 65 536-bin histogram and the ties per row, per SAE of the working slab only
    const b = { ...s, batchtopk: true };
    const plain = planMemory(small, s, { memoryBudget: 24e9, saes: 4 });
    const batch = planMemory(small, b, { memoryBudget: 24e9, saes: 4 });
    expect(batch.rowsPerChunk).toBe(plain.rowsPerChunk);
    expect(batch.workingBytesPerSae - plain.workingBytesPerSae).toBe(4 * (BATCH_HIST_WORDS + plain.rowsPerChunk));
    expect(batch.bytesPerSae).toBe(plain.bytesPerSae);
    expect(maxSaesThatFit(NVIDIA, b, 24e9)).toBeLessThanOrEqual(maxSaesThatFit(NVIDIA, s, 24e9));
    // AuxK: per SAE the dead counters, n_dead and 4 scalars (plus their staging); per SAE of the working slab the
    // dead latents' activations (as large as H), their cut, e − ê, the denominator's and numerator's partials, Σ dh,
    // the dead list, and each row's gathered selection (k_aux = 512 (latent, value) pairs) and its count
    const aux = planMemory(small, { ...s, auxk: true }, { memoryBudget: 24e9, saes: 4 });
    const C = aux.rowsPerChunk, S = aux.partials;
    expect(aux.workingBytesPerSae - planMemory(small, s, { memoryBudget: 24e9, saes: 4, maxRowsPerChunk: C }).workingBytesPerSae).toBe(
      4 * (C * 12288 + 2 * C + C * 768 + 3 * S * 768 + S * 768 + 2 * 12288 + 12288 + 1 + 2 * C * 512 + C),
    );
    expect(aux.bytesPerSae - plain.bytesPerSae).toBe(4 * (12288 + 1 + 4 + 5));
    expect(maxSaesThatFit(NVIDIA, { ...s, auxk: true }, 24e9)).toBeLessThan(maxSaesThatFit(NVIDIA, s, 24e9));
    // a batch larger than one binding fits nothing
    expect(maxSaesThatFit({ maxStorageBufferBindingSize: 4 * 16384 * 768 - 4, maxBufferSize: 2 ** 40 }, s, 80e9)).toBe(0);
  });
});
