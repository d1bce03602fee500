/** `sae-swarm shards`: writes seeded synthetic activation shards in saev's layout. */
import { parseArgs } from "node:util";
import { sparseFeatureGenerator, writeShards } from "../data/write-shards";

export const SHARDS_USAGE = `usage: sae-swarm shards --out DIR [options]

Writes seeded synthetic activations (sparse sums of random unit features, plus noise) in saev's shard layout.

  --out DIR                    where to write metadata.json, shards.json and acts000000.bin, ...
  --d-vit N                    activation width (default 64)
  --layers L1,L2,...           layer ids recorded (default 6,12)
  --n-patches-per-img N        patches per image, CLS excluded (default 16)
  --no-cls                     write no CLS token (default: token 0 is CLS)
  --n-imgs N                   images (default 1024)
  --max-patches-per-shard N    saev's shard budget in vectors (default 65536)
  --n-features N               ground-truth features (default 256)
  --sparsity P                 firing probability of a feature per token (default 0.02)
  --noise S                    Gaussian noise std per coordinate (default 0.01)
  --seed N                     seed (default 1)
  -h, --help                   this help`;

export async function shards(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: "string" },
      "d-vit": { type: "string", default: "64" },
      layers: { type: "string", default: "6,12" },
      "n-patches-per-img": { type: "string", default: "16" },
      "no-cls": { type: "boolean", default: false },
      "n-imgs": { type: "string", default: "1024" },
      "max-patches-per-shard": { type: "string", default: "65536" },
      "n-features": { type: "string", default: "256" },
      sparsity: { type: "string", default: "0.02" },
      noise: { type: "string", default: "0.01" },
      seed: { type: "string", default: "1" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(SHARDS_USAGE);
    return 0;
  }
  if (!values.out) {
    console.error(`[shards] --out DIR is required\n\n${SHARDS_USAGE}`);
    return 1;
  }
  const int = (name: keyof typeof values, min: number) => {
    const v = Number(values[name]);
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer ≥ ${min} (got '${values[name]}')`);
    return v;
  };
  const real = (name: keyof typeof values, lo: number, hi: number) => {
    const v = Number(values[name]);
    if (!Number.isFinite(v) || v < lo || v > hi) throw new Error(`--${name} must be a number in [${lo}, ${hi}] (got '${values[name]}')`);
    return v;
  };
  const layers = values.layers!.split(",").map((s) => Number(s.trim()));
  if (layers.length === 0 || !layers.every(Number.isInteger)) throw new Error(`--layers must be comma-separated integers (got '${values.layers}')`);
  const d_vit = int("d-vit", 1);
  const seed = int("seed", 0);
  const n_features = int("n-features", 1);
  const sparsity = real("sparsity", 0, 1);
  const noise = real("noise", 0, 1e6);
  const started = Date.now();
  const w = await writeShards({
    out: values.out,
    d_vit,
    layers,
    n_patches_per_img: int("n-patches-per-img", 1),
    cls_token: !values["no-cls"],
    n_imgs: int("n-imgs", 1),
    max_patches_per_shard: int("max-patches-per-shard", 1),
    generator: sparseFeatureGenerator({ d_vit, n_features, sparsity, seed, noise }),
    description: { n_features, sparsity, noise, seed },
  });
  console.log(`[shards] wrote ${w.shards.length} shards (${(w.bytes / 2 ** 20).toFixed(1)} MiB, ${w.metadata.n_imgs} images) to ${values.out} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}
