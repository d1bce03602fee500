/**
 * Activation shards for the benchmarks: written with the project's shard writer (runner/data/write-shards.ts, saev's
 * layout) into a temp directory, and served on 127.0.0.1 by a static server that answers Range requests by reading
 * only the requested bytes (as a real file server or bucket does; test/runner/range-server.ts reads whole files,
 * fine for tests, far too slow for a benchmark).
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { open, stat, type FileHandle } from "node:fs/promises";
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

export interface StaticServer {
  /** Base URL, ending in "/". */
  url: string;
  stats: { requests: number; bytes: number };
  close(): Promise<void>;
}

/** Serves `dir` on 127.0.0.1:0: whole files (200) or one `bytes=a-b` range (206), read with positioned reads. */
export async function serveStatic(dir: string): Promise<StaticServer> {
  const handles = new Map<string, Promise<{ fh: FileHandle; size: number }>>();
  const fileOf = (rel: string) => {
    let h = handles.get(rel);
    if (!h) {
      const full = path.join(dir, path.normalize(rel));
      h = Promise.all([open(full, "r"), stat(full)]).then(([fh, st]) => ({ fh, size: st.size }));
      h.catch(() => handles.delete(rel));
      handles.set(rel, h);
    }
    return h;
  };
  const stats = { requests: 0, bytes: 0 };
  const server = createServer(async (req, res) => {
    const rel = decodeURIComponent(new URL(req.url ?? "/", "http://127.0.0.1").pathname).replace(/^\/+/, "");
    let file: { fh: FileHandle; size: number };
    try {
      file = await fileOf(rel);
    } catch {
      res.writeHead(404).end();
      return;
    }
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
    const begin = m ? Number(m[1]) : 0;
    const end = m ? Math.min(Number(m[2]), file.size - 1) : file.size - 1;
    if (m && begin >= file.size) {
      res.writeHead(416, { "content-range": `bytes */${file.size}` }).end();
      return;
    }
    const body = Buffer.alloc(end - begin + 1);
    await file.fh.read(body, 0, body.length, begin);
    stats.requests++;
    stats.bytes += body.length;
    const headers: Record<string, string | number> = { "content-length": body.length, "accept-ranges": "bytes" };
    if (m) headers["content-range"] = `bytes ${begin}-${end}/${file.size}`;
    res.writeHead(m ? 206 : 200, headers).end(body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    stats,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      for (const h of handles.values()) await h.then((f) => f.fh.close(), () => {});
    },
  };
}
