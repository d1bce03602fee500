/**
 * `npx tsx scripts/capacity.ts`: the capacity table of BENCHMARKS.md — SAEs per group chunk at saev's shapes
 * (batch 16384, expansion 16) on 24, 80 and 141 GB GPUs with Dawn's NVIDIA binding limit (2 GiB − 4), before row
 * chunks and slabs (maxSaesUnchunked: the whole batch's activations per SAE, every stacked tensor in one binding)
 * and after (maxSaesThatFit, the plan the engine, the Worker and `sae-swarm fit` use).
 */
import { maxSaesThatFit, maxSaesUnchunked, planMemory } from "../shaders/fit";

const limits = { maxStorageBufferBindingSize: 2 ** 31 - 4, maxBufferSize: 2 ** 40 };
const shapes = [
  { name: "ViT-B", d_vit: 768 },
  { name: "ViT-L", d_vit: 1024 },
];
console.log("| shape | GPU memory | K before | K after | layout after (row chunks × rows, slabs × SAEs) | MiB kept per SAE |");
console.log("| --- | --: | --: | --: | --- | --: |");
for (const { name, d_vit } of shapes)
  for (const gb of [24, 80, 141]) {
    const s = { d_vit, d_sae: 16 * d_vit, batch_size: 16384 };
    const budget = gb * 1e9;
    const p = planMemory(limits, s, { memoryBudget: budget });
    console.log(
      `| ${name} (d_vit ${d_vit}, d_sae ${s.d_sae}) | ${gb} GB | ${maxSaesUnchunked(limits, s, budget)} | ${maxSaesThatFit(limits, s, budget)} | ${p.rowChunks} × ${p.rowsPerChunk}, ${p.slabs} × ≤ ${p.saesPerSlab} | ${(p.bytesPerSae / 2 ** 20).toFixed(1)} |`,
    );
  }
