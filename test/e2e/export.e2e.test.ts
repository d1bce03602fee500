/**
 * End to end, the SAELens export (issue 14): a real runner (headless Chromium, WebGPU on SwiftShader) trains a ReLU
 * and a JumpReLU SAE on activation shards (saev's layout, served with Range requests) through the Worker under
 * `wrangler dev`; `sae-swarm download SWEEP --out DIR` writes DIR/<run_id>/; and this file reads those directories
 * with its own safetensors parser and SAELens's forward per architecture (StandardSAE, JumpReLUSAE, TopKSAE: encode
 * = act((x − b_dec)·W_enc + b_enc), decode = f·W_dec + b_dec), in float64, on the RAW activations read straight
 * from the shard files. With the normalization folded in, the MSE is the stored eval's (on normalized data) times
 * s², and L0 and every latent's firing count are the eval's.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sparseFeatureGenerator, writeShards } from "../../runner/data/write-shards";
import type { TrainConfig } from "../../shaders/config";
import { serveDirWithRanges, type RangeServer } from "../runner/range-server";
import { killTree } from "../helpers/e2e";
import { ROOT, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";

const D = 16;
const LAYERS = [6, 12];
const P = 16; // patches per image, plus a CLS token
const N_IMGS = 96;
const IMGS_PER_SHARD = 32;
const VIT_CKPT = "hf-hub:timm/vit_base_patch16_clip_224.openai";
const N_EVAL = 600; // not a multiple of the batch: the eval's last batch is short

let tmp: string;
let shardsDir: string;
let data: RangeServer;
let worker: WorkerDev;
const children: number[] = [];

beforeAll(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), "sae-swarm-export-"));
  shardsDir = path.join(tmp, "shards");
  // Layer 12 (index 1) is offset by 0.1 and its features scaled by 2 (see sparseFeatureGenerator): μ ≠ 0, s ≠ 1.
  const written = await writeShards({
    out: shardsDir,
    d_vit: D,
    layers: LAYERS,
    n_patches_per_img: P,
    cls_token: true,
    n_imgs: N_IMGS,
    max_patches_per_shard: IMGS_PER_SHARD * LAYERS.length * (P + 1),
    generator: sparseFeatureGenerator({ d_vit: D, n_features: 24, sparsity: 0.1, seed: 5, noise: 0.01 }),
  });
  writeFileSync(path.join(shardsDir, "metadata.json"), JSON.stringify({ ...written.metadata, vit_family: "clip", vit_ckpt: VIT_CKPT }));
  data = await serveDirWithRanges(shardsDir);
  worker = await startWorkerDev();
});
afterAll(async () => {
  for (const pid of children) killTree(pid);
  await worker?.stop();
  await data?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Runs the CLI as a user does, in its own process group; resolves with its exit code and output. */
function cli(args: string[]): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [path.join(ROOT, "bin/sae-swarm.js"), ...args], { cwd: ROOT, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child.pid!);
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  return new Promise((resolve) => child.once("exit", (code) => resolve({ code, out })));
}

async function api<T>(route: string, init: RequestInit = {}): Promise<T> {
  const res = await fetch(worker.url + route, { ...init, headers: { ...worker.submitAuth, ...(init.headers as Record<string, string>) } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${route}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

// ---------------------------------------------------------------------------------------------------------------
// An independent reader: safetensors as the format's spec says, nothing from runner/safetensors.ts.

interface Read {
  tensors: Record<string, { dtype: string; shape: number[]; data: Float64Array }>;
  metadata: Record<string, string> | undefined;
}

function readSafetensors(file: string): Read {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  expect(8 + n, `${file}: header length`).toBeLessThanOrEqual(buf.length);
  expect(n % 8, `${file}: header padded to 8 bytes`).toBe(0);
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, any>;
  const start = 8 + n;
  const out: Read = { tensors: {}, metadata: header.__metadata__ };
  const spans: Array<[number, number]> = [];
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [b, e] = t.data_offsets as [number, number];
    const count = (t.shape as number[]).reduce((a, x) => a * x, 1);
    expect(t.dtype, `${file}: ${name} dtype`).toBe("F32");
    expect(e - b, `${file}: ${name} bytes`).toBe(4 * count);
    const data = new Float64Array(count);
    for (let i = 0; i < count; i++) data[i] = buf.readFloatLE(start + b + 4 * i);
    out.tensors[name] = { dtype: t.dtype, shape: t.shape, data };
    spans.push([b, e]);
  }
  spans.sort((x, y) => x[0] - y[0]);
  let at = 0;
  for (const [b, e] of spans) {
    expect(b, `${file}: tensors back to back`).toBe(at);
    at = e;
  }
  expect(start + at, `${file}: the data ends the file`).toBe(buf.length);
  return out;
}

/** Raw example i of the eval (on-disk order: image i / P, patch i % P after the CLS token), layer index 1. */
function rawExamples(n: number): Float64Array[] {
  const nTok = P + 1;
  const shards = new Map<number, Buffer>();
  return Array.from({ length: n }, (_, i) => {
    const img = Math.floor(i / P);
    const s = Math.floor(img / IMGS_PER_SHARD);
    if (!shards.has(s)) shards.set(s, readFileSync(path.join(shardsDir, `acts${String(s).padStart(6, "0")}.bin`)));
    const at = ((((img % IMGS_PER_SHARD) * LAYERS.length + 1) * nTok + (i % P) + 1) * D) * 4;
    return Float64Array.from({ length: D }, (_, j) => shards.get(s)!.readFloatLE(at + 4 * j));
  });
}

/**
 * SAELens's forward in float64, per architecture: sae_in = x − b_dec (apply_b_dec_to_input); h = sae_in·W_enc +
 * b_enc; standard f = ReLU(h); jumprelu f = ReLU(h)·1{h > threshold}; topk f = ReLU on the k largest h, else 0;
 * x̂ = f·W_dec + b_dec. Returns the MSE over examples × d_in, the mean L0, each latent's firing count, and how many
 * (example, latent) decisions lie within float32 rounding of their cut (those may go either way on a GPU).
 */
function saeLensForward(cfg: Record<string, any>, t: Read["tensors"], xs: Float64Array[]) {
  const d = cfg.d_in as number;
  const k = cfg.d_sae as number;
  const W_enc = t.W_enc.data, b_enc = t.b_enc.data, W_dec = t.W_dec.data, b_dec = t.b_dec.data;
  const theta = t.threshold?.data;
  let sq = 0, l0 = 0, near = 0;
  const fired = new Float64Array(k);
  const h = new Float64Array(k), mag = new Float64Array(k), f = new Float64Array(k);
  for (const x of xs) {
    for (let j = 0; j < k; j++) {
      h[j] = b_enc[j];
      mag[j] = Math.abs(b_enc[j]);
      for (let c = 0; c < d; c++) {
        const term = (x[c] - b_dec[c]) * W_enc[c * k + j];
        h[j] += term;
        mag[j] += Math.abs(term) + Math.abs(x[c] * W_enc[c * k + j]);
      }
    }
    let cutK = -Infinity;
    if (cfg.architecture === "topk") cutK = [...h].sort((a, b) => b - a)[cfg.k - 1];
    for (let j = 0; j < k; j++) {
      const cut = cfg.architecture === "jumprelu" ? theta![j] : 0;
      const keep = cfg.architecture === "topk" ? h[j] >= cutK : true;
      f[j] = keep && h[j] > 0 && h[j] > cut ? h[j] : 0;
      if (Math.abs(h[j] - cut) <= 1e-5 * mag[j]) near++;
      if (f[j] > 0) {
        l0++;
        fired[j]++;
      }
    }
    for (let c = 0; c < d; c++) {
      let y = b_dec[c];
      for (let j = 0; j < k; j++) if (f[j] !== 0) y += f[j] * W_dec[j * d + c];
      sq += (y - x[c]) ** 2;
    }
  }
  return { mse: sq / (xs.length * d), l0: l0 / xs.length, fired, near };
}

// ---------------------------------------------------------------------------------------------------------------

interface RunView {
  id: string;
  group_id: string;
  status: string;
  n_steps: number;
  cfg: TrainConfig;
}

describe("sae-swarm download → a SAELens directory that reproduces the run's eval on raw activations", () => {
  it("trains ReLU and JumpReLU on shards, downloads the sweep, and reads it back independently", async () => {
    const sweep = await api<{ id: string; n_runs: number; n_groups: number }>("/v1/sweeps", {
      method: "POST",
      headers: { "content-type": "application/toml" },
      body: `
data = { kind = "shards", url = "${data.url}", layer = -1 }
n_train = 8192
batch_size = 64
log_every = 32
n_eval = ${N_EVAL}
lr = 1e-2
objective = { sparsity_coeff = 5e-3 }
sae = { d_vit = ${D}, exp_factor = 4, kind = ["relu", "jumprelu"], init_threshold = 0.05, bandwidth = 0.05 }
`,
    });
    expect([sweep.n_runs, sweep.n_groups]).toEqual([2, 1]);
    const runner = await cli(["runner", "--server", worker.url, "--token", worker.runnerToken, "--allow-software-adapter", "--once", "--runner-id", "e2e-export", "--allow-data-host", "127.0.0.1"]);
    expect(runner.code, runner.out).toBe(0);
    expect(runner.out, runner.out).toMatch(/: completed/);

    const out = path.join(tmp, "out");
    const dl = await cli(["download", sweep.id, "--out", out, "--server", worker.url, "--token", worker.submitToken]);
    expect(dl.code, dl.out).toBe(0);
    expect(dl.out).toContain(`downloaded 2 of 2 runs of sweep ${sweep.id}`);
    const { runs } = await api<{ runs: Array<{ id: string }> }>(`/v1/sweeps/${sweep.id}`);
    expect(readdirSync(out).sort()).toEqual(runs.map((r) => r.id).sort());

    // The same runs in the native format: the checkpoint as stored, with μ and s, read here as the reference.
    const nativeDir = path.join(tmp, "native");
    for (const { id } of runs) {
      const nat = await cli(["download", id, "--out", nativeDir, "--format", "native", "--server", worker.url, "--token", worker.submitToken]);
      expect(nat.code, nat.out).toBe(0);
      const stored = new Uint8Array(await (await fetch(`${worker.url}/v1/runs/${id}/checkpoint`, { headers: worker.submitAuth })).arrayBuffer());
      expect(new Uint8Array(readFileSync(path.join(nativeDir, id, "checkpoint.safetensors")))).toEqual(stored);
    }

    const xs = rawExamples(N_EVAL);
    for (const [i, { id }] of runs.entries()) {
      const run = (await api<{ run: RunView & { sweep_id: string } }>(`/v1/runs/${id}`)).run;
      const ev = await api<{ mse: number; l0: number; n_examples: number; freqs: number[] }>(`/v1/runs/${id}/eval`);
      const dir = path.join(out, id);
      expect(readdirSync(dir).sort(), "only the three files, no temporaries").toEqual(["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]);
      const architecture = i === 0 ? "standard" : "jumprelu";
      const d_sae = D * 4;

      // cfg.json: every key SAELens v6 reads, with its type.
      const cfg = JSON.parse(readFileSync(path.join(dir, "cfg.json"), "utf8")) as Record<string, any>;
      const types: Record<string, string> = {
        architecture: "string", d_in: "number", d_sae: "number", dtype: "string", device: "string", apply_b_dec_to_input: "boolean",
        normalize_activations: "string", reshape_activations: "string", metadata: "object",
      };
      for (const [key, type] of Object.entries(types)) expect(typeof cfg[key], `cfg.json ${key}`).toBe(type);
      expect(cfg).toMatchObject({
        architecture, d_in: D, d_sae, dtype: "float32", device: "cpu", apply_b_dec_to_input: true, normalize_activations: "none", reshape_activations: "none",
      });
      const meta = cfg.metadata as Record<string, any>;
      const metaTypes: Record<string, string> = {
        sae_lens_version: "string", hook_name: "string", hook_layer: "number", model_name: "string", dataset_path: "string",
        run_id: "string", sweep_id: "string", group_id: "string", step: "number", train_config: "object", normalization: "object",
      };
      for (const [key, type] of Object.entries(metaTypes)) expect(typeof meta[key], `cfg.json metadata.${key}`).toBe(type);
      const [major] = String(meta.sae_lens_version).split(".").map(Number);
      expect(major, "SAELens reads metadata only from ≥ 6.0.0 configs").toBeGreaterThanOrEqual(6);
      expect(meta).toMatchObject({
        hook_name: `blocks.${LAYERS[1]}.hook_resid_post`, hook_layer: LAYERS[1], model_name: VIT_CKPT, dataset_path: data.url,
        run_id: id, sweep_id: sweep.id, group_id: run.group_id, step: run.n_steps,
      });
      expect(meta.train_config).toEqual(run.cfg);

      // The weights: exactly these names, shapes and dtypes.
      const w = readSafetensors(path.join(dir, "sae_weights.safetensors"));
      const shapes: Record<string, number[]> = { W_enc: [D, d_sae], b_enc: [d_sae], W_dec: [d_sae, D], b_dec: [D] };
      if (architecture === "jumprelu") shapes.threshold = [d_sae];
      expect(Object.fromEntries(Object.entries(w.tensors).map(([n, t]) => [n, t.shape]))).toEqual(shapes);

      // μ and s of the run, from the native checkpoint: far from the identity, so an unfolded SAE would fail below.
      const native = readSafetensors(path.join(nativeDir, id, "checkpoint.safetensors"));
      const mean = native.tensors.norm_mean.data;
      const s = native.tensors.norm_scale.data[0];
      expect(Math.abs(Math.log(s)), `s = ${s}`).toBeGreaterThan(0.1);
      expect(Math.max(...mean.map(Math.abs)), "μ").toBeGreaterThan(0.05);
      expect(meta.normalization).toEqual({ mean: Array.from(mean), scale: s, folded: true });

      // SAELens's forward on raw activations reproduces the stored eval (which ran on normalized ones).
      const mine = saeLensForward(cfg, w.tensors, xs);
      expect(ev.n_examples).toBe(N_EVAL);
      const want = ev.mse * s * s;
      console.log(`[export] ${id} (${architecture}): s = ${s.toFixed(4)}, raw MSE ${mine.mse.toExponential(6)} vs eval MSE × s² ${want.toExponential(6)} (rel ${(Math.abs(mine.mse - want) / want).toExponential(2)}); L0 ${mine.l0} vs ${ev.l0}; ${mine.near} decisions within rounding of their cut`);
      expect(Math.abs(mine.mse - want), `raw MSE ${mine.mse}, eval MSE × s² ${want}`).toBeLessThanOrEqual(1e-4 * want);
      expect(mine.l0).toBeGreaterThan(0);
      // L0 and each latent's count equal, but for decisions within float32 rounding of their cut (usually none).
      expect(Math.abs(mine.l0 - ev.l0) * N_EVAL, `L0 ${mine.l0} vs eval ${ev.l0}`).toBeLessThanOrEqual(mine.near + 1e-6);
      let off = 0;
      for (let j = 0; j < d_sae; j++) off += Math.abs(mine.fired[j] - Math.round(ev.freqs[j] * N_EVAL));
      expect(off, "latent firing counts").toBeLessThanOrEqual(mine.near);

      // sparsity.safetensors: log10(freq + 1e-10) of the eval.
      const sp = readSafetensors(path.join(dir, "sparsity.safetensors"));
      expect(Object.keys(sp.tensors)).toEqual(["sparsity"]);
      expect(sp.tensors.sparsity.shape).toEqual([d_sae]);
      sp.tensors.sparsity.data.forEach((v, j) => expect(v, `sparsity[${j}]`).toBeCloseTo(Math.log10(ev.freqs[j] + 1e-10), 5));
    }
  });

  it("download names what is wrong: unknown ids, a missing --out, a bad --format", async () => {
    const auth = ["--server", worker.url, "--token", worker.submitToken];
    const none = await cli(["download", "sw_nope", "--out", path.join(tmp, "x"), ...auth]);
    expect(none.code).toBe(1);
    expect(none.out).toMatch(/no run or sweep 'sw_nope'/);
    expect((await cli(["download", "sw_nope", ...auth])).out).toMatch(/--out DIR is required/);
    expect((await cli(["download", "sw_nope", "--out", tmp, "--format", "npz", ...auth])).out).toMatch(/--format must be saelens or native/);
  });
});
