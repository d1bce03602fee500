/**
 * Seeds a wrangler dev with a finished sweep through the real API, as a runner would post it: submit, claim,
 * heartbeat, metrics every log_every steps, one eval per run (freqs and mean values of d_sae features), a final
 * checkpoint per run (a valid safetensors from runner/safetensors.ts), complete. Values are made up but shaped
 * like training: the loss falls, L0 depends on the sparsity coefficient (TopK/BatchTopK: L0 = k, with AuxK's aux loss
 * and dead-latent count). One run of each SAE kind per objective (8 runs). Call it while nothing else waits.
 */
import { encodeFinalCheckpoint } from "../../runner/safetensors";
import type { TrainConfig } from "../../shaders/config";
import type { ClaimResponse, SubmitResponse } from "../../worker/protocol";
import type { WorkerDev } from "../helpers/worker-dev";

export const SEED_SWEEP = `
data = { kind = "synthetic", d_vit = 16, n_features = 64, sparsity = 0.05, seed = 3 }
n_train = 2048
batch_size = 64
log_every = 4
track = false
sae = [{ kind = "relu", exp_factor = 4 }, { kind = "jumprelu", exp_factor = 4 }, { kind = "topk", k = 8, exp_factor = 4 }, { kind = "batchtopk", k = 6, exp_factor = 4 }]
objective = [{ kind = "vanilla", sparsity_coeff = 1e-3 }, { kind = "matryoshka", sparsity_coeff = 4e-3 }]
`;

const ADAPTER = { vendor: "test", architecture: "seed", device: "", description: "", isFallbackAdapter: true, features: [], limits: { maxStorageBufferBindingSize: 2 ** 30, maxBufferSize: 2 ** 30 } };

async function call<T>(dev: WorkerDev, token: string, route: string, init: RequestInit & { json?: unknown } = {}): Promise<T> {
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${token}`);
  let body = init.body;
  if (init.json !== undefined) {
    headers.set("content-type", "application/json");
    body = JSON.stringify(init.json);
  }
  const res = await fetch(dev.url + route, { ...init, headers, body });
  const text = await res.text();
  if (!res.ok) throw new Error(`${init.method ?? "GET"} ${route}: ${res.status} ${text}`);
  return (text ? JSON.parse(text) : null) as T;
}

/** A small deterministic PRNG so the seeded values are the same each run. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

export async function seedFinishedSweep(dev: WorkerDev, sweepText = SEED_SWEEP): Promise<SubmitResponse> {
  const sweep = await call<SubmitResponse>(dev, dev.submitToken, "/v1/sweeps", { method: "POST", headers: { "content-type": "application/toml" }, body: sweepText });
  const rand = rng(7);
  for (;;) {
    const res = await fetch(`${dev.url}/v1/claims`, {
      method: "POST",
      headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
      body: JSON.stringify({ runner_id: "seed-runner", adapter: ADAPTER }),
    });
    if (res.status === 204) break;
    if (!res.ok) throw new Error(`claim: ${res.status} ${await res.text()}`);
    const claim = (await res.json()) as ClaimResponse;
    const { lease, group } = claim;
    // Claims take the oldest waiting group: seed before submitting anything else, or this would finish that too.
    if (group.sweep_id !== sweep.id) throw new Error(`seed: claimed group ${group.id} of another sweep; seed a server with nothing else waiting`);
    const L = `/v1/leases/${lease.id}`;
    const cfg0 = group.cfgs[0].cfg;
    const nSteps = Math.ceil(cfg0.n_patches / cfg0.sae_batch_size);
    // the first heartbeat carries the engine's matmul kernels, as runner/page/loop.ts sends them after tuning
    const kernels = {
      key: `d${cfg0.sae.d_vit}-n${cfg0.sae.d_vit * cfg0.sae.exp_factor}-b${cfg0.sae_batch_size}-k${group.cfgs.length}-p1`,
      source: "tuned",
      timing: "timestamp",
      tuned_ms: 1500,
      candidates: 3,
      shape: { d: cfg0.sae.d_vit, n: cfg0.sae.d_vit * cfg0.sae.exp_factor, B: cfg0.sae_batch_size, K: group.cfgs.length, P: 1 },
      kernels: Object.fromEntries(["ENCODE", "DECODE", "GRAD_F", "GRAD_W_ENC", "GRAD_W_DEC"].map((m) => [m, { choice: "64x64/8x8/k16/direct", gflops: 1.25, default_gflops: 0.5 }])),
    };
    await call(dev, dev.runnerToken, `${L}/heartbeat`, { method: "POST", json: { token: lease.token, progress: { step: 0, n_steps: nSteps }, kernels } });
    const rows = [];
    for (const { run_id, cfg } of group.cfgs) {
      const coeff = cfg.objective.sparsity_coeff;
      for (let step = 0; step < nSteps; step += cfg.log_every) {
        const t = step / nSteps;
        const mse = 0.05 + 0.9 * Math.exp(-4 * t) + 20 * coeff;
        const progress = { "progress/n_patches_seen": (step + 1) * cfg.sae_batch_size, "progress/learning_rate": cfg.lr };
        if (cfg.sae.k !== null) {
          // TopK/BatchTopK: L0 is k, no sparsity penalty; AuxK revives the dead latents as training goes on.
          const aux_loss = 0.8 * Math.exp(-3 * t);
          const l0 = cfg.sae.k;
          rows.push({ run_id, step, loss: mse + cfg.sae.aux_coeff * aux_loss, mse, l0, l1: l0 * 0.3, sparsity: 0, ...progress, "progress/sparsity_coeff": 0, aux_loss, n_dead_train: Math.round(40 * Math.exp(-3 * t)) });
          continue;
        }
        const l0 = 8 + 40 * Math.exp(-3 * t) - 500 * coeff;
        rows.push({ run_id, step, loss: mse + coeff * l0, mse, l0, l1: l0 * 0.3, sparsity: coeff * l0, ...progress, "progress/sparsity_coeff": coeff * Math.min(1, t * 4) });
      }
    }
    await call(dev, dev.runnerToken, `${L}/metrics`, { method: "POST", json: { token: lease.token, rows } });
    const evals = group.cfgs.map(({ run_id, cfg }) => evalFor(run_id, cfg, rand));
    await call(dev, dev.runnerToken, `${L}/evals`, { method: "POST", json: { token: lease.token, evals } });
    for (const { run_id, cfg } of group.cfgs) {
      const body = encodeFinalCheckpoint({ run_id, cfg, step: nSteps }, weightsFor(cfg, rand), { mean: new Float32Array(cfg.sae.d_vit), scale: 1 });
      await call(dev, dev.runnerToken, `${L}/checkpoints/${run_id}?kind=final&step=${nSteps}`, {
        method: "PUT",
        headers: { "x-lease-token": lease.token, "content-type": "application/octet-stream" },
        body: body as Uint8Array<ArrayBuffer>,
      });
    }
    await call(dev, dev.runnerToken, `${L}/heartbeat`, { method: "POST", json: { token: lease.token, progress: { step: nSteps, n_steps: nSteps } } });
    await call(dev, dev.runnerToken, `${L}/complete`, { method: "POST", json: { token: lease.token } });
  }
  return sweep;
}

function evalFor(run_id: string, cfg: TrainConfig, rand: () => number) {
  const dSae = cfg.sae.d_vit * cfg.sae.exp_factor;
  const coeff = cfg.objective.sparsity_coeff;
  // log10 frequencies spread over [-4, -0.5]; a few dead (0) features, more with a larger coefficient.
  const freqs = Array.from({ length: dSae }, (_, i) => (i % Math.round(8 / (coeff * 1000)) === 0 ? 0 : 10 ** (-4 + 3.5 * rand())));
  const mean_values = freqs.map((f) => (f === 0 ? null : 10 ** (-1 + 1.5 * rand())));
  const n_dead = freqs.filter((f) => f === 0).length;
  const n_dense = freqs.filter((f) => f > 1e-2).length;
  const l0 = freqs.reduce((a, b) => a + b, 0);
  const mse = 0.05 + 20 * coeff + { relu: 0, jumprelu: -0.01, topk: -0.02, batchtopk: -0.025 }[cfg.sae.kind];
  return { run_id, l0, l1: l0 * 0.3, mse, fvu: mse / 1.2, explained_variance: 1 - mse / 1.2, n_dead, n_almost_dead: n_dead, n_dense, freqs, mean_values, n_examples: 2048 };
}

function weightsFor(cfg: TrainConfig, rand: () => number) {
  const d = cfg.sae.d_vit;
  const k = d * cfg.sae.exp_factor;
  const r = (n: number) => Float32Array.from({ length: n }, () => rand() - 0.5);
  return { W_enc: r(d * k), b_enc: r(k), W_dec: r(k * d), b_dec: r(d), ...(cfg.sae.kind === "jumprelu" || cfg.sae.kind === "batchtopk" ? { threshold: Float32Array.from({ length: k }, () => 0.001) } : {}) };
}
