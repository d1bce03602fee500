// The SAELens export route inside workerd with real local D1 and R2: final checkpoints uploaded through the runner
// protocol, then GET /v1/runs/:id/export/saelens/* compared with the fold computed here; 404s, 401s, bad checkpoints.
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { decodeSafetensors, encodeFinalCheckpoint, encodeSafetensors, tensor, type SaeWeights } from "../../runner/safetensors";
import type { TrainConfig } from "../../shaders/config";
import type { ClaimResponse, DataOrigin, SaeLensCfg } from "../../worker/protocol";
import { mapFloat32 } from "../../worker/saelens";
import { RUNNER, call, checkpointFor, claim, evalBody, json, putCheckpoint, resetDb, safetensors, submit } from "./helpers";

// Four runs in one group (lr slowest, then kind): r0 ReLU, r1 JumpReLU, r2 and r3 turned into TopK and BatchTopK
// in D1 below (kinds the sweep validator does not take yet). d_sae = 512: W_enc and W_dec are 64 KiB each.
const SWEEP = `
data = { kind = "synthetic", d_vit = 32, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 640
batch_size = 64
lr = [1e-3, 2e-3]
sae = { exp_factor = 16, kind = ["relu", "jumprelu"] }
`;
const D = 32;
const K = 512;
const ORIGIN: DataOrigin = { layer: 11, vit_ckpt: "hf-hub:timm/ViT-B-16-SigLIP", vit_family: "siglip" };

let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
const randF32 = (n: number, scale = 1) => Float32Array.from({ length: n }, () => rand() * scale);

function weights(theta: boolean): SaeWeights {
  const w: SaeWeights = { W_enc: randF32(D * K), b_enc: randF32(K), W_dec: randF32(K * D), b_dec: randF32(D) };
  if (theta) w.threshold = Float32Array.from({ length: K }, () => 0.05 + Math.abs(rand()));
  return w;
}

/** Submits SWEEP, claims it, and stores each run's final checkpoint (random weights, μ, s) and eval. */
async function storeRuns() {
  await resetDb();
  const sweep = await submit(SWEEP);
  const c = (await claim("runner-export")) as ClaimResponse;
  expect(c.group.cfgs.map((r) => r.cfg.sae.kind)).toEqual(["relu", "jumprelu", "relu", "jumprelu"]);
  const [r0, r1, r2, r3] = c.group.cfgs.map((r) => r.run_id);
  // r2 → TopK (k = 8), r3 → BatchTopK: the kinds the export maps from the config, read loosely.
  const setKind = (id: string, patch: string) => env.DB.prepare(`UPDATE runs SET cfg = json_patch(cfg, ?1) WHERE id = ?2`).bind(patch, id).run();
  await setKind(r2, JSON.stringify({ sae: { kind: "topk", k: 8 } }));
  await setKind(r3, JSON.stringify({ sae: { kind: "batchtopk", k: 8 } }));

  const stored = new Map<string, { cfg: TrainConfig; w: SaeWeights; mean: Float32Array; scale: number; freqs: number[] }>();
  for (const [i, { run_id, cfg }] of c.group.cfgs.entries()) {
    const w = weights(i === 1 || i === 3);
    const mean = randF32(D, 3);
    const scale = Math.fround(0.37 + i);
    let bytes: Uint8Array;
    if (i === 3) {
      // BatchTopK as its trainer may store it: one scalar θ for every latent.
      w.threshold = Float32Array.from({ length: K }, () => 0.125);
      bytes = encodeSafetensors(
        {
          W_enc: tensor(w.W_enc, [D, K]), b_enc: tensor(w.b_enc, [K]), W_dec: tensor(w.W_dec, [K, D]), b_dec: tensor(w.b_dec, [D]),
          threshold: tensor(new Float32Array([0.125]), []), norm_mean: tensor(mean, [D]), norm_scale: tensor(new Float32Array([scale]), []),
        },
        { sae_swarm: "sae-swarm/1", kind: "final", run_id, step: "10", config: JSON.stringify(cfg) },
      );
    } else {
      bytes = encodeFinalCheckpoint({ run_id, cfg, step: 10, data_origin: ORIGIN }, w, { mean, scale });
    }
    if (i === 3) {
      // Our engine uploads BatchTopK's θ as threshold [d_sae] (which the strict upload check, worker/checkpoint-check.ts,
      // requires); this scalar θ, as other trainers store it, is refused there: store it straight into R2 and D1, to
      // show that the export still broadcasts it.
      const key = `${sweep.id}/${run_id}/final-10-${c.lease.id}.safetensors`;
      await env.CHECKPOINTS.put(key, bytes);
      await env.DB.prepare(`INSERT INTO checkpoints (run_id, kind, step, key, bytes, lease_id, created_at) VALUES (?1, 'final', 10, ?2, ?3, ?4, 0)`).bind(run_id, key, bytes.byteLength, c.lease.id).run();
    } else await json(await putCheckpoint(c.lease.id, c.lease.token, run_id, "kind=final", bytes), 201);
    const ev = evalBody(run_id, K);
    await json(await call("POST", `/v1/leases/${c.lease.id}/evals`, { json: { token: c.lease.token, evals: [ev] } }), 200);
    stored.set(run_id, { cfg, w, mean, scale, freqs: ev.freqs });
  }
  return { sweep, lease: c, runs: [r0, r1, r2, r3], stored };
}

/** -1 when a and b hold the same float32s (the same roundings), else the first index where they differ. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

const get = (run: string, file: string, token?: string | null) => call("GET", `/v1/runs/${run}/export/saelens/${file}`, { token });

async function bytesOf(res: Response): Promise<Uint8Array> {
  if (res.status !== 200) throw new Error(`expected 200, got ${res.status}: ${await res.text()}`);
  const b = new Uint8Array(await res.arrayBuffer());
  expect(Number(res.headers.get("content-length"))).toBe(b.byteLength);
  return b;
}

describe("GET /v1/runs/:id/export/saelens/*", () => {
  it("streams the folded weights (W_enc/s, b_enc, s·W_dec, s·b_dec + μ, θ), cfg.json and sparsity for each kind", async () => {
    const { sweep, lease, runs, stored } = await storeRuns();
    const expected = [
      { architecture: "standard", threshold: false },
      { architecture: "jumprelu", threshold: true },
      { architecture: "topk", threshold: false, k: 8 },
      { architecture: "jumprelu", threshold: true },
    ];
    for (const [i, id] of runs.entries()) {
      const { cfg, w, mean, scale, freqs } = stored.get(id)!;
      const st = decodeSafetensors(await bytesOf(await get(id, "sae_weights.safetensors")));
      expect(Object.keys(st.tensors).sort(), id).toEqual(expected[i].threshold ? ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"] : ["W_dec", "W_enc", "b_dec", "b_enc"]);
      expect(st.metadata).toEqual({ format: "pt" });
      const want: Record<string, [number[], Float32Array]> = {
        W_enc: [[D, K], w.W_enc.map((v) => v / scale)],
        b_enc: [[K], w.b_enc],
        W_dec: [[K, D], w.W_dec.map((v) => v * scale)],
        b_dec: [[D], w.b_dec.map((v, j) => scale * v + mean[j])],
      };
      if (expected[i].threshold) want.threshold = [[K], w.threshold!];
      for (const [name, [shape, data]] of Object.entries(want)) {
        expect(st.tensors[name].dtype, `${id} ${name}`).toBe("F32");
        expect(st.tensors[name].shape, `${id} ${name}`).toEqual(shape);
        expect(firstDifference(st.tensors[name].data as Float32Array, data), `${id} ${name}: first element that differs`).toBe(-1); // bit for bit
      }

      const cfgJson = await json<SaeLensCfg>(await get(id, "cfg.json"), 200);
      expect(cfgJson).toMatchObject({
        architecture: expected[i].architecture, d_in: D, d_sae: K, dtype: "float32", device: "cpu", apply_b_dec_to_input: true,
        normalize_activations: "none", reshape_activations: "none",
      });
      expect(cfgJson.k).toBe(expected[i].k);
      const origin = i === 3 ? { hook_name: null, hook_layer: null, model_name: null, model_class_name: null } : { hook_name: "blocks.11.hook_resid_post", hook_layer: 11, model_name: ORIGIN.vit_ckpt, model_class_name: ORIGIN.vit_family };
      expect(cfgJson.metadata).toEqual({
        sae_lens_version: "6.0.0",
        ...origin,
        dataset_path: `sae-swarm synthetic data ${JSON.stringify(cfg.data)}`,
        run_id: id,
        sweep_id: sweep.id,
        group_id: lease.group.id,
        step: 10,
        train_config: i >= 2 ? { ...cfg, sae: { ...cfg.sae, kind: i === 2 ? "topk" : "batchtopk", k: 8 } } : cfg,
        normalization: { mean: Array.from(mean), scale, folded: true },
      });

      const sp = decodeSafetensors(await bytesOf(await get(id, "sparsity.safetensors")));
      expect(Object.keys(sp.tensors)).toEqual(["sparsity"]);
      expect(sp.tensors.sparsity).toMatchObject({ dtype: "F32", shape: [K] });
      expect(firstDifference(sp.tensors.sparsity.data as Float32Array, Float32Array.from(freqs, (f) => Math.log10(f + 1e-10)))).toBe(-1);
    }
  }, 60_000);

  it("404 for an unknown run, file, or a run without its final checkpoint or eval; 401 without the submitter token", async () => {
    const { runs } = await storeRuns();
    expect((await json(await get("nope", "cfg.json"), 404)).error).toMatchObject({ code: "not_found", field: "id" });
    expect((await json(await get(runs[0], "weights.bin"), 404)).error).toMatchObject({ code: "not_found", field: "file" });
    expect((await json(await call("GET", `/v1/runs/${runs[0]}/export/native/cfg.json`), 404)).error.code).toBe("not_found");
    expect((await get(runs[0], "cfg.json", null)).status).toBe(401);
    expect((await get(runs[0], "sae_weights.safetensors", RUNNER)).status).toBe(401);

    // A sweep whose runs have no final checkpoint (nor eval) yet.
    const other = await submit(SWEEP.replace("seed = 1", "seed = 2"));
    const { runs: pending } = await json<{ runs: Array<{ id: string }> }>(await call("GET", `/v1/sweeps/${other.id}`), 200);
    for (const file of ["cfg.json", "sae_weights.safetensors"]) {
      const e = (await json(await get(pending[0].id, file), 404)).error;
      expect(e).toMatchObject({ code: "not_found", field: "id" });
      expect(e.message).toMatch(/final checkpoint/);
    }
    expect((await json(await get(pending[0].id, "sparsity.safetensors"), 404)).error.message).toMatch(/eval/);
  }, 60_000);

  it("a stored checkpoint without the normalization is a 500 that names the tensor", async () => {
    await resetDb();
    await submit(SWEEP);
    const c = (await claim("runner-bad")) as ClaimResponse;
    const id = c.group.cfgs[0].run_id;
    // The Worker refuses such a checkpoint at upload (strict checkpoints): store a good one, then replace its R2
    // object, as one stored before the check existed (or damaged in storage) would be.
    await json(await putCheckpoint(c.lease.id, c.lease.token, id, "kind=final", checkpointFor(id, "final", 10, 1, { d_vit: D, exp_factor: K / D, kind: c.group.cfgs[0].cfg.sae.kind as "relu" | "jumprelu" })), 201);
    const { key } = (await env.DB.prepare(`SELECT key FROM checkpoints WHERE run_id = ?1`).bind(id).first<{ key: string }>())!;
    await env.CHECKPOINTS.put(key, safetensors(4, 2));
    const e = (await json(await get(id, "cfg.json"), 500)).error;
    expect(e.code).toBe("bad_checkpoint");
    expect(e.message).toMatch(/norm_mean is missing/);
  }, 30_000);
});

describe("mapFloat32 (the streamed fold's chunking)", () => {
  it("maps float32s split across chunks of any size, and refuses a stream that ends inside a float", async () => {
    const src = randF32(1000);
    const bytes = new Uint8Array(src.buffer);
    const cuts = [0, 1, 2, 3, 7, 8, 13, 400, 401, 2001, 3999, 4000];
    const chunks = cuts.slice(1).map((end, i) => bytes.slice(cuts[i], end));
    const run = async (parts: Uint8Array[]) => {
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          for (const p of parts) c.enqueue(p);
          c.close();
        },
      }).pipeThrough(mapFloat32((x) => x.forEach((v, i) => (x[i] = v * 3))));
      return new Uint8Array(await new Response(stream).arrayBuffer());
    };
    expect(new Float32Array((await run(chunks)).buffer)).toEqual(src.map((v) => v * 3));
    await expect(run([bytes.slice(0, 4001 - 3)])).rejects.toThrow(/into a float/);
  });
});
