import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ShardData } from "../../shaders/config";
import { ShardSource } from "../../runner/data/shards";
import { sparseFeatureGenerator, writeShards } from "../../runner/data/write-shards";
import { serveDirWithRanges, type RangeServer } from "./range-server";

// 23 images in shards of 4 (the last holds 3), 2 layers, 5 patches + CLS, d_vit 8.
const D = 8, L = 2, P = 5, T = P + 1, N_IMGS = 23, PER_SHARD = 4;
let dir: string;
let server: RangeServer;

/** The protocol's own formula (saev protocol.md §4.2), independent of ShardLayout. */
function vector(img: number, layerIdx: number, token: number): Float32Array {
  const file = path.join(dir, `acts${String(Math.floor(img / PER_SHARD)).padStart(6, "0")}.bin`);
  const bytes = readFileSync(file);
  const off = (((img % PER_SHARD) * L + layerIdx) * T + token) * D * 4;
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset + off, bytes.byteOffset + off + D * 4));
}

function rawExample(mode: ShardData["patches"], id: number, layerIdx: number): number[] {
  if (mode === "patches") return Array.from(vector(Math.floor(id / P), layerIdx, (id % P) + 1));
  if (mode === "cls") return Array.from(vector(id, layerIdx, 0));
  const acc = new Array(D).fill(0);
  for (let t = 1; t <= P; t++) vector(id, layerIdx, t).forEach((v, j) => (acc[j] += v / P));
  return acc;
}

function cfg(over: Partial<ShardData> = {}): ShardData {
  return { kind: "shards", url: server.url, layer: -2, patches: "patches", scale_mean: true, scale_norm: true, n_random_samples: 2 ** 19, seed: 7, ...over };
}

/** Finds which example a normalized row is (exact match after normalizing the reference). */
function identify(row: Float32Array, mode: ShardData["patches"], layerIdx: number, mean: Float32Array, scale: number, n: number): number {
  for (let id = 0; id < n; id++) {
    const ref = rawExample(mode, id, layerIdx);
    if (ref.every((v, j) => Math.abs((v - mean[j]) / scale - row[j]) <= 1e-5 * (1 + Math.abs(row[j])))) return id;
  }
  return -1;
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-shards-"));
  const written = await writeShards({
    out: dir, d_vit: D, layers: [3, 6], n_patches_per_img: P, cls_token: true, n_imgs: N_IMGS,
    max_patches_per_shard: PER_SHARD * L * T + 5, // a budget that does not divide evenly, as saev's
    generator: sparseFeatureGenerator({ d_vit: D, n_features: 16, sparsity: 0.2, seed: 3, noise: 0.01 }),
  });
  expect(written.shards.map((s) => s.n_imgs)).toEqual([4, 4, 4, 4, 4, 3]);
  server = await serveDirWithRanges(dir);
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("writeShards", () => {
  it("writes saev's layout: metadata.json, shards.json, acts files of [imgs, layers, tokens, d_vit] float32", () => {
    const meta = JSON.parse(readFileSync(path.join(dir, "metadata.json"), "utf8"));
    expect(meta).toMatchObject({ d_vit: D, layers: [3, 6], n_patches_per_img: P, cls_token: true, n_imgs: N_IMGS, dtype: "float32" });
    expect(JSON.parse(readFileSync(path.join(dir, "shards.json"), "utf8"))[5]).toEqual({ name: "acts000005.bin", n_imgs: 3 });
    expect(statSync(path.join(dir, "acts000000.bin")).size).toBe(4 * L * T * D * 4);
    expect(statSync(path.join(dir, "acts000005.bin")).size).toBe(3 * L * T * D * 4);
    // CLS is the mean of the patches in our generator; a layout error would break this identity.
    const cls = vector(9, 1, 0);
    const mean = new Array(D).fill(0);
    for (let t = 1; t <= P; t++) vector(9, 1, t).forEach((v, j) => (mean[j] += v / P));
    cls.forEach((v, j) => expect(v).toBeCloseTo(mean[j], 5));
  });
});

describe("ShardSource over HTTP Range requests", () => {
  it("normalizes with μ and s of all examples when n_random_samples covers them", async () => {
    const src = await ShardSource.open(cfg(), { batchSize: 16 });
    const n = N_IMGS * P;
    const mean = new Float64Array(D);
    for (let id = 0; id < n; id++) rawExample("patches", id, 0).forEach((v, j) => (mean[j] += v / n));
    let norms = 0;
    for (let id = 0; id < n; id++) norms += Math.sqrt(rawExample("patches", id, 0).reduce((s, v, j) => s + (v - mean[j]) ** 2, 0));
    const scale = norms / n / Math.sqrt(D);
    src.normalization.mean.forEach((v, j) => expect(v).toBeCloseTo(mean[j], 5));
    expect(src.normalization.scale).toBeCloseTo(scale, 5);
    src.close();
  });

  it("reads only the needed byte ranges, and batches hold the right normalized examples in a seeded order", async () => {
    const norm = { mean: Float32Array.from({ length: D }, (_, j) => 0.1 * j), scale: 2 };
    const before = server.log.length;
    const src = await ShardSource.open(cfg({ layer: 1 }), { batchSize: 16, poolExamples: 32, normalization: norm });
    const b1 = await src.next();
    const b2 = await src.next();
    const requests = server.log.slice(before).filter((e) => e.path.endsWith(".bin"));
    expect(requests.length).toBeGreaterThan(0);
    for (const r of requests) {
      expect(r.range).toMatch(/^bytes=\d+-\d+$/);
      expect(r.status).toBe(206);
      expect(r.bytes % (P * D * 4)).toBe(0); // whole patch slices of one layer, never a whole file
    }
    const total = requests.reduce((s, r) => s + r.bytes, 0);
    const fileBytes = N_IMGS * L * T * D * 4;
    expect(total).toBeLessThan(fileBytes / 2);
    const seen = new Set<number>();
    for (const b of [b1, b2]) {
      expect(b.length).toBe(16 * D);
      for (let r = 0; r < 16; r++) {
        const id = identify(b.subarray(r * D, (r + 1) * D), "patches", 1, norm.mean, norm.scale, N_IMGS * P);
        expect(id).toBeGreaterThanOrEqual(0);
        expect(seen.has(id)).toBe(false); // without replacement inside an epoch
        seen.add(id);
      }
    }
    src.close();
  });

  it("is deterministic per seed, and skip(k) resumes exactly at batch k", async () => {
    const norm = { mean: new Float32Array(D), scale: 1 };
    const a = await ShardSource.open(cfg(), { batchSize: 12, poolExamples: 30, normalization: norm });
    const batches: Float32Array[] = [];
    for (let i = 0; i < 14; i++) batches.push(await a.next()); // > one epoch of 115 examples
    const b = await ShardSource.open(cfg(), { batchSize: 12, poolExamples: 30, normalization: norm });
    expect(await b.next()).toEqual(batches[0]);
    const c = await ShardSource.open(cfg(), { batchSize: 12, poolExamples: 30, normalization: norm });
    c.skip(9);
    for (let i = 9; i < 14; i++) expect(await c.next()).toEqual(batches[i]);
    expect(() => c.skip(1)).toThrow(/before the first next/);
    const other = await ShardSource.open(cfg({ seed: 8 }), { batchSize: 12, poolExamples: 30, normalization: norm });
    expect(await other.next()).not.toEqual(batches[0]);
    for (const s of [a, b, c, other]) s.close();
  });

  for (const mode of ["cls", "meanpool"] as const) {
    it(`${mode}: one example per image, right values`, async () => {
      const norm = { mean: new Float32Array(D), scale: 1 };
      const src = await ShardSource.open(cfg({ patches: mode, layer: 0 }), { batchSize: N_IMGS, poolExamples: N_IMGS, normalization: norm });
      expect(src.nExamples).toBe(N_IMGS);
      const b = await src.next();
      const ids = new Set<number>();
      for (let r = 0; r < N_IMGS; r++) ids.add(identify(b.subarray(r * D, (r + 1) * D), mode, 0, norm.mean, 1, N_IMGS));
      expect([...ids].sort((x, y) => x - y)).toEqual(Array.from({ length: N_IMGS }, (_, i) => i)); // a full epoch
      src.close();
    });
  }

  it("evaluation reads every example once, in order", async () => {
    const norm = { mean: new Float32Array(D), scale: 1 };
    const src = await ShardSource.open(cfg(), { batchSize: 8, normalization: norm });
    const rows: number[] = [];
    for await (const b of src.ordered(40)) for (let r = 0; r < b.length / D; r++) rows.push(identify(b.subarray(r * D, (r + 1) * D), "patches", 0, norm.mean, 1, N_IMGS * P));
    expect(rows).toEqual(Array.from({ length: N_IMGS * P }, (_, i) => i));
    src.close();
  });

  it("retries a 503 and refuses a server that ignores Range", async () => {
    const norm = { mean: new Float32Array(D), scale: 1 };
    const src = await ShardSource.open(cfg(), { batchSize: 8, normalization: norm });
    server.failNext(2);
    const b = await src.next();
    expect(b.length).toBe(8 * D);
    expect(server.log.filter((e) => e.status === 503).length).toBeGreaterThanOrEqual(2);
    src.close();
    server.ignoreRange = true;
    try {
      const bad = await ShardSource.open(cfg(), { batchSize: 8, normalization: norm });
      await expect(bad.next()).rejects.toThrow(/ignored the Range header/);
      bad.close();
    } finally {
      server.ignoreRange = false;
    }
  });

  it("names the bad field of metadata.json and a bad layer", async () => {
    await expect(ShardSource.open(cfg({ layer: 2 }), { batchSize: 8 })).rejects.toThrow(/data.layer 2 is out of range/);
    await expect(ShardSource.open(cfg({ url: server.url + "nowhere/" }), { batchSize: 8 })).rejects.toThrow(/HTTP 404/);
  });
});
