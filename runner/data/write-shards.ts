/**
 * Writes activation shards in saev's layout (metadata.json, shards.json, acts000000.bin, ...; see shards.ts), for
 * tests and for trying sae-swarm without a ViT. Node only. The activations come from an ActivationGenerator:
 * the seeded sparse-feature generator below by default; the synthetic dataset module can be plugged in instead.
 */
import { mkdir, open, writeFile } from "node:fs/promises";
import path from "node:path";
import { mixSeed, mulberry32 } from "./random";
import { ShardLayout, type ShardMetadata } from "./shards";

/**
 * Fills the activations of one image: out is [n_layers, n_tokens, d_vit], C order, token 0 the CLS token when
 * `cls` is true. Must depend only on `img` (and the generator's seed).
 */
export interface ActivationGenerator {
  readonly d_vit: number;
  fill(img: number, out: Float32Array, nLayers: number, nTokens: number, cls: boolean): void;
}

export interface SparseFeatureOptions {
  d_vit: number;
  n_features: number;
  /** Mean firing probability of a feature per token. */
  sparsity: number;
  seed: number;
  /** Std of Gaussian noise per coordinate. */
  noise: number;
}

function gaussian(rand: () => number): number {
  const u = Math.max(rand(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

/**
 * A seeded generator with known features: n_features random unit directions; each token sums the features that
 * fire (probability `sparsity` each) with magnitudes U(0.5, 1.5), scaled per layer (layer l by l + 1) and offset
 * per layer, plus noise; the CLS token (token 0 when the caller writes one) is the mean of the image's patches.
 */
export function sparseFeatureGenerator(o: SparseFeatureOptions): ActivationGenerator & { features: Float32Array } {
  const d = o.d_vit;
  const rand = mulberry32(mixSeed(o.seed, 1));
  const features = new Float32Array(o.n_features * d);
  for (let f = 0; f < o.n_features; f++) {
    let n = 0;
    for (let j = 0; j < d; j++) {
      const v = gaussian(rand);
      features[f * d + j] = v;
      n += v * v;
    }
    n = Math.sqrt(n);
    for (let j = 0; j < d; j++) features[f * d + j] /= n;
  }
  return {
    d_vit: d,
    features,
    fill(img, out, nLayers, nTokens, cls) {
      const r = mulberry32(mixSeed(o.seed, 2, img));
      const withCls = cls ? 1 : 0;
      for (let l = 0; l < nLayers; l++) {
        const layer = out.subarray(l * nTokens * d, (l + 1) * nTokens * d);
        layer.fill(0);
        for (let t = withCls; t < nTokens; t++) {
          const x = layer.subarray(t * d, (t + 1) * d);
          for (let f = 0; f < o.n_features; f++) {
            if (r() >= o.sparsity) continue;
            const m = (0.5 + r()) * (l + 1);
            for (let j = 0; j < d; j++) x[j] += m * features[f * d + j];
          }
          for (let j = 0; j < d; j++) x[j] += 0.1 * l + (o.noise > 0 ? o.noise * gaussian(r) : 0);
        }
        if (withCls) {
          const cls = layer.subarray(0, d);
          for (let t = 1; t < nTokens; t++) for (let j = 0; j < d; j++) cls[j] += layer[t * d + j] / (nTokens - 1);
        }
      }
    },
  };
}

export interface WriteShardsOptions {
  out: string;
  d_vit: number;
  layers: number[];
  n_patches_per_img: number;
  cls_token: boolean;
  n_imgs: number;
  /** saev's shard budget in vectors (n_imgs_per_shard = floor(budget / (n_tokens · n_layers))). */
  max_patches_per_shard: number;
  generator: ActivationGenerator;
  /** Recorded in metadata.json's opaque `data` object. */
  description?: Record<string, unknown>;
}

export interface WrittenShards {
  metadata: ShardMetadata;
  shards: Array<{ name: string; n_imgs: number }>;
  bytes: number;
}

/** Writes the shards image by image (memory: one image), then shards.json and metadata.json last. */
export async function writeShards(o: WriteShardsOptions): Promise<WrittenShards> {
  if (o.generator.d_vit !== o.d_vit) throw new Error(`shards: generator d_vit ${o.generator.d_vit} differs from d_vit ${o.d_vit}`);
  const metadata: ShardMetadata = {
    vit_family: "synthetic",
    vit_ckpt: "synthetic",
    layers: o.layers,
    n_patches_per_img: o.n_patches_per_img,
    cls_token: o.cls_token,
    d_vit: o.d_vit,
    n_imgs: o.n_imgs,
    max_patches_per_shard: o.max_patches_per_shard,
    // saev before protocol 1.0 called the budget n_patches_per_shard; write both so either reader loads it.
    n_patches_per_shard: o.max_patches_per_shard,
    data: { __class__: "Synthetic", ...(o.description ?? {}) },
    dtype: "float32",
    protocol: "1.0.0",
  };
  const layout = new ShardLayout(metadata);
  await mkdir(o.out, { recursive: true });
  const perImg = layout.nLayers * layout.nTokens * o.d_vit;
  const buf = new Float32Array(perImg);
  const bytes = new Uint8Array(buf.buffer);
  const shards: WrittenShards["shards"] = [];
  let total = 0;
  for (let s = 0; s < layout.nShards; s++) {
    const name = ShardLayout.shardName(s);
    const first = s * layout.imgsPerShard;
    const n = Math.min(layout.imgsPerShard, o.n_imgs - first);
    const fh = await open(path.join(o.out, name), "w");
    try {
      for (let i = 0; i < n; i++) {
        o.generator.fill(first + i, buf, layout.nLayers, layout.nTokens, o.cls_token);
        await fh.write(bytes); // little-endian hosts only (all we run on); typed arrays are host-endian
      }
    } finally {
      await fh.close();
    }
    shards.push({ name, n_imgs: n });
    total += n * perImg * 4;
  }
  await writeFile(path.join(o.out, "shards.json"), JSON.stringify(shards, null, 2) + "\n");
  await writeFile(path.join(o.out, "metadata.json"), JSON.stringify(metadata, null, 2) + "\n");
  return { metadata, shards, bytes: total };
}
