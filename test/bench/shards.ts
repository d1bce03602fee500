/**
 * Activation shards for the benchmarks: written with the project's shard writer (runner/data/write-shards.ts, saev's
 * layout) into a temp directory; test/runner/range-server.ts serves them on 127.0.0.1 with Range requests.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { sparseFeatureGenerator, writeShards, type WrittenShards } from "../../runner/data/write-shards";

export interface BenchShards {
  dir: string;
  written: WrittenShards;
  remove(): void;
}

/** Synthetic sparse-feature activations: n_imgs images of 16 patches + CLS, one layer, imgsPerShard (256) a shard. */
export async function writeBenchShards(o: { d_vit: number; n_imgs: number; imgsPerShard?: number; seed?: number }): Promise<BenchShards> {
  const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-bench-shards-"));
  const seed = o.seed ?? 7;
  const written = await writeShards({
    out: dir,
    d_vit: o.d_vit,
    layers: [12],
    n_patches_per_img: 16,
    cls_token: true,
    n_imgs: o.n_imgs,
    max_patches_per_shard: (o.imgsPerShard ?? 256) * 17,
    generator: sparseFeatureGenerator({ d_vit: o.d_vit, n_features: 4 * o.d_vit, sparsity: 0.02, seed, noise: 0.01 }),
    description: { bench: true, seed },
  });
  return { dir, written, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
