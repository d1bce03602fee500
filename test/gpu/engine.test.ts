/**
 * The SAE engine against the float64 reference (test/reference/sae.ts), in Chromium and in Dawn:
 * every kernel's output element by element after NaN poisoning; eval reductions; a training run on synthetic data
 * with known features (recovery, and the loss curve against the reference's from the same weights); resume.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { meanMaxCosine, SyntheticDataset } from "../../runner/data/synthetic";
import type { EvalMetrics, StepMetrics, SyntheticData, TrainConfig } from "../../shaders/config";
import { dSae, isSelectKind } from "../../shaders/config";
import { MATMUL_VARIANTS } from "../../shaders/matmul";
import { persistentTensors, planMemory, workingTensors, type MemoryPlan, type SaeShape } from "../../shaders/fit";
import type { EngineOptions } from "../../shaders/engine";
import { initWeights, prefixBounds } from "../../shaders/schedule";
import { gpuBackends, type GpuBackend } from "../helpers/gpu-backends";
import { mulberry32, testSeed } from "../helpers/random";
import { trainConfig } from "../helpers/train-config";
import * as ref from "../reference/sae";
import { selectorFor, trainStepSelect } from "../reference/topk";
import { arr, F32_TOL, randomParams, relError, slice } from "./compare";
import type { JsonState } from "./engine-cases";

const backends = await gpuBackends();

/** A random state: weights, nonzero Adam moments (so the update is smooth), at step t. */
function randomState(rand: () => number, cfgs: TrainConfig[], t: number): { json: JsonState; refs: ref.State[] } {
  const refs: ref.State[] = [];
  const json: JsonState = { step: t, saes: [] };
  for (const cfg of cfgs) {
    const { params, m, v } = randomParams(rand, cfg);
    refs.push({ params, m, v, step: t });
    json.saes.push({ params: arr(params), m: arr(m), v: arr(v) });
  }
  return { json, refs: refs.map((s) => ({ ...s, params: ref.cloneParams(s.params), m: ref.cloneParams(s.m), v: ref.cloneParams(s.v) })) };
}

/**
 * JumpReLU's f, dL/dh and dL/dθ jump where a pre-activation crosses θ or the kernel's edges θ ± ε/2: a draw that
 * puts h within f32 rounding of one (1.2e-7 relative at one seed) makes the f32 engine and the float64 reference
 * take different sides, a test failure that is not the engine's. Moves each such θ (log θ up by 1 % at a time, in
 * both the engine's state and the reference's) until every h of this batch is clear of the jumps by 1e-4.
 */
function clearThresholds(cfgs: TrainConfig[], json: JsonState, refs: ref.State[], x: number[], B: number): void {
  cfgs.forEach((cfg, k) => {
    if (cfg.sae.kind !== "jumprelu") return;
    const p = refs[k].params;
    const d = cfg.sae.d_vit, n = dSae(cfg), eps = cfg.sae.bandwidth;
    const h = ref.preActivations(p, x, B, d, n);
    for (let j = 0; j < n; j++)
      for (let tries = 0; tries < 100; tries++) {
        const theta = Math.exp(p.log_threshold[j]);
        let near = false;
        for (let b = 0; b < B && !near; b++)
          for (const edge of [theta, theta - eps / 2, theta + eps / 2]) near ||= Math.abs(h[b * n + j] - edge) < 1e-4;
        if (!near) break;
        p.log_threshold[j] = Math.fround(p.log_threshold[j] + 0.01);
        json.saes[k].params.log_threshold[j] = p.log_threshold[j];
      }
  });
}

interface StepOut {
  metrics: StepMetrics[];
  buffers: Record<string, (number | null)[]>;
  maxPrefixes: number;
  variant: string;
  plan: MemoryPlan;
}

const shapeOf = (cfgs: TrainConfig[]): SaeShape => ({
  d_vit: cfgs[0].sae.d_vit,
  d_sae: dSae(cfgs[0]),
  batch_size: cfgs[0].sae_batch_size,
  n_prefixes: Math.max(...cfgs.map((c) => prefixBounds(c, 0).length - 1)),
});

/**
 * Engine options that lower the limits so the group runs in row chunks of `rows` rows, one SAE per slab: the
 * binding just holds the batch and one SAE's largest tensor at that chunk size (so a larger chunk does not fit), and the memory
 * budget is exactly what the plan allocates.
 */
function chunkedOptions(cfgs: TrainConfig[], rows: number): EngineOptions {
  const shape = shapeOf(cfgs);
  const maxBindingSize = 4 * Math.max(shape.batch_size * shape.d_vit, ...Object.values(persistentTensors(shape)), ...Object.values(workingTensors(shape, rows)));
  const limits = { maxStorageBufferBindingSize: maxBindingSize, maxBufferSize: maxBindingSize };
  const memoryBudget = planMemory(limits, shape, { saes: cfgs.length, minRowsPerChunk: 1, memoryBudget: 2 ** 40 }).totalBytes;
  return { maxBindingSize, memoryBudget, minRowsPerChunk: 1 };
}

/** `chunkRows`: also run the group in chunks of that many rows over one slab per SAE (≥ 4 chunks, ≥ 3 slabs for K ≥ 3). */
const kernelGroups: Array<{ label: string; B: number; cfgs: TrainConfig[]; chunkRows?: number }> = [
  {
    label: "d_vit 17, d_sae 51, batch 37, K 3 (relu vanilla, jumprelu matryoshka, relu matryoshka)",
    B: 37,
    chunkRows: 10,
    cfgs: [
      trainConfig({ sae_batch_size: 37, lr: 1e-3, sae: { d_vit: 17, exp_factor: 3, seed: 1 }, objective: { sparsity_coeff: 3e-2 } }),
      trainConfig({
        sae_batch_size: 37, lr: 2e-3, n_sparsity_warmup: 10,
        sae: { d_vit: 17, exp_factor: 3, kind: "jumprelu", bandwidth: 0.3, seed: 2 },
        objective: { kind: "matryoshka", n_prefixes: 4, sparsity_coeff: 5e-2 },
      }),
      trainConfig({ sae_batch_size: 37, n_lr_warmup: 20, sae: { d_vit: 17, exp_factor: 3, seed: 3, remove_parallel_grads: false }, objective: { kind: "matryoshka", n_prefixes: 6 } }),
    ],
  },
  {
    label: "d_vit 33, d_sae 66, batch 300 (two partial sums, several tiles), K 2 (jumprelu vanilla, relu matryoshka)",
    B: 300,
    cfgs: [
      trainConfig({ sae_batch_size: 300, sae: { d_vit: 33, exp_factor: 2, kind: "jumprelu", bandwidth: 0.2, seed: 5, normalize_w_dec: false }, objective: { sparsity_coeff: 1e-2 } }),
      trainConfig({ sae_batch_size: 300, sae: { d_vit: 33, exp_factor: 2, seed: 6 }, objective: { kind: "matryoshka", n_prefixes: 3, sparsity_coeff: 1e-2 } }),
    ],
  },
  {
    label: "d_vit 8, d_sae 16, batch 2048 (several partials per row chunk), K 3 (jumprelu matryoshka, relu vanilla, relu matryoshka)",
    B: 2048,
    chunkRows: 512,
    cfgs: [
      trainConfig({ sae_batch_size: 2048, lr: 2e-3, sae: { d_vit: 8, exp_factor: 2, kind: "jumprelu", bandwidth: 0.3, seed: 7 }, objective: { kind: "matryoshka", n_prefixes: 3, sparsity_coeff: 5e-2 } }),
      trainConfig({ sae_batch_size: 2048, sae: { d_vit: 8, exp_factor: 2, seed: 8 }, objective: { sparsity_coeff: 1e-2 } }),
      trainConfig({ sae_batch_size: 2048, n_lr_warmup: 5, sae: { d_vit: 8, exp_factor: 2, seed: 9 }, objective: { kind: "matryoshka", n_prefixes: 2 } }),
    ],
  },
  {
    label: "d_vit 12, d_sae 36, batch 29, K 3 (topk k 5 vanilla, relu matryoshka, topk k 7 matryoshka 6; no AuxK)",
    B: 29,
    chunkRows: 8,
    cfgs: [
      trainConfig({ sae_batch_size: 29, lr: 2e-3, sae: { d_vit: 12, exp_factor: 3, kind: "topk", k: 5, aux_coeff: 0, seed: 31 }, objective: { sparsity_coeff: 3e-2 } }),
      trainConfig({ sae_batch_size: 29, sae: { d_vit: 12, exp_factor: 3, seed: 32 }, objective: { kind: "matryoshka", n_prefixes: 3, sparsity_coeff: 2e-2 } }),
      trainConfig({ sae_batch_size: 29, n_lr_warmup: 10, sae: { d_vit: 12, exp_factor: 3, kind: "topk", k: 7, aux_coeff: 0, seed: 33 }, objective: { kind: "matryoshka", n_prefixes: 6 } }),
    ],
  },
];

/** The reference's step of any kind (TopK through test/reference/topk.ts, AuxK off); mutates state. */
function referenceStep(state: ref.State, cfg: TrainConfig, x: ArrayLike<number>, B: number): ref.StepResult {
  if (!isSelectKind(cfg.sae.kind)) return ref.trainStep(state, cfg, x, B);
  // the same params/moments arrays, so `state` sees the update
  const r = trainStepSelect({ ...state, counters: new Float64Array(dSae(cfg)), theta: null }, cfg, x, B);
  state.step++;
  return r;
}

for (const [name, open, skip] of backends) {
  describe.skipIf(skip !== null)(`SAE engine on ${name}`, () => {
    let gpu: GpuBackend;
    beforeAll(async () => {
      gpu = await open();
    }, 120_000);
    afterAll(async () => gpu?.close());

    // (the tiled matmuls are slow on SwiftShader: not at the large batch)
    const variants = (B: number) => (B < 1000 ? (["direct", "tiled"] as const) : (["direct"] as const));
    const kernelCases = kernelGroups.flatMap((group) => [
      ...variants(group.B).map((matmul) => ({ group, matmul, chunked: false })),
      ...(group.chunkRows ? variants(group.B).map((matmul) => ({ group, matmul, chunked: true })) : []),
    ]);
    for (const { group, matmul, chunked } of kernelCases)
      it(`every kernel (${matmul} matmuls${chunked ? `, row chunks of ${group.chunkRows} over one slab per SAE` : ""}) matches the float64 reference: ${group.label}`, async () => {
        const seed = testSeed();
        const rand = mulberry32(seed);
        const { cfgs, B } = group;
        const t = 3;
        const { json, refs } = randomState(rand, cfgs, t);
        const d = cfgs[0].sae.d_vit, n = dSae(cfgs[0]);
        const x = Array.from({ length: B * d }, () => Math.fround(rand() * 2 - 1));
        clearThresholds(cfgs, json, refs, x, B);
        const options = chunked ? chunkedOptions(cfgs, group.chunkRows!) : undefined;
        const out = await gpu.run<StepOut>("engineStep", { cfgs, state: json, x, matmul, options, extra: ["xT"] });
        expect(out.variant).toBe(matmul);
        if (chunked) {
          // the lowered limits really split the step: ≥ 4 row chunks, one slab per SAE, within the budget
          expect(out.plan.rowsPerChunk).toBe(group.chunkRows);
          expect(out.plan.rowChunks).toBeGreaterThanOrEqual(4);
          expect(out.plan.slabs).toBe(cfgs.length);
          expect(out.plan.totalBytes).toBeLessThanOrEqual(options!.memoryBudget!);
        } else expect([out.plan.rowChunks, out.plan.slabs]).toEqual([1, 1]);
        const Pmax = out.maxPrefixes;
        const errors: Record<string, number> = {};
        const note = (label: string, e: number) => (errors[label] = Math.max(errors[label] ?? 0, e));
        // the reference's step (it updates refs[k] in place: parameters and moments after Adam)
        const results = cfgs.map((cfg, k) => referenceStep(refs[k], cfg, x, B));
        // the (last) row chunk's x, transposed for dL/dW_enc (K.TRANSPOSE_X), [d, rows]
        const lastRows = chunked ? B - (out.plan.rowChunks - 1) * out.plan.rowsPerChunk : B;
        note("xT (the last chunk's x transposed)", relError(out.buffers.xT.slice(0, d * lastRows), ref.transposeRows(x, B - lastRows, lastRows, d)));
        // TopK's selection runs in place: H then holds f = ReLU(h) on each row's k largest
        const hWant = (k: number) => (cfgs[k].sae.kind === "topk" ? results[k].forward.f : results[k].forward.h);
        cfgs.forEach((_, k) => {
          const r = results[k];
          const P = r.hyper.bounds.length - 1;
          if (chunked) return; // H, G and R hold only the last slab's last chunk, compared below
          // forward
          note("H (pre-activations, TopK: f)", relError(slice(out.buffers.H, k, B * n), hWant(k)));
          // residual suffix sums R_q = Σ_{r ≥ q} e_r, per prefix
          const R = slice(out.buffers.R, k, Pmax * B * d);
          for (let q = 0; q < P; q++) {
            const want = new Float64Array(B * d);
            for (let s = q; s < P; s++) for (let i = 0; i < B * d; i++) want[i] += r.forward.e[s][i];
            note("R (residual suffix sums)", relError(R.slice(q * B * d, (q + 1) * B * d), want));
          }
          note("G (dL/dh)", relError(slice(out.buffers.G, k, B * n), r.gh));
        });
        cfgs.forEach((_, k) => {
          const r = results[k];
          if (chunked && k === cfgs.length - 1) {
            // the working set after the step: the last slab (this SAE alone) and the last row chunk
            const rows = B - (out.plan.rowChunks - 1) * out.plan.rowsPerChunk;
            const first = B - rows;
            note("H (pre-activations, TopK: f, last chunk)", relError(out.buffers.H.slice(0, rows * n), hWant(k).slice(first * n, B * n)));
            note("G (dL/dh, last chunk)", relError(out.buffers.G.slice(0, rows * n), r.gh.slice(first * n, B * n)));
          }
          for (const p of ref.PARAM_NAMES) {
            const size = r.grads[p].length;
            note(`grad ${p}`, relError(slice(out.buffers[`grad.${p}`], k, size), r.grads[p]));
            note(`Adam m ${p}`, relError(slice(out.buffers[`m.${p}`], k, size), refs[k].m[p]));
            note(`Adam v ${p}`, relError(slice(out.buffers[`v.${p}`], k, size), refs[k].v[p]));
            note(`param ${p} after Adam`, relError(slice(out.buffers[p], k, size), refs[k].params[p]));
          }
          const m = out.metrics[k];
          for (const key of ["loss", "mse", "l0", "l1", "sparsity"] as const) note(`metric ${key}`, Math.abs(m[key] - r.forward[key]) / (Math.abs(r.forward[key]) || 1));
          if (cfgs[k].sae.kind === "topk") {
            // no sparsity penalty; at most k latents per example (exactly k where ≥ k pre-activations are positive)
            expect([m.sparsity, m["progress/sparsity_coeff"]]).toEqual([0, 0]);
            expect(m.l0).toBeLessThanOrEqual(cfgs[k].sae.k!);
          }
          expect(m["progress/n_patches_seen"]).toBe((t + 1) * B);
        });
        console.log(`[${name}] seed ${seed} ${matmul}${chunked ? " chunked" : ""} ${group.label}: max relative errors`, errors);
        for (const [label, e] of Object.entries(errors)) expect(e, `${label} (seed ${seed})`).toBeLessThanOrEqual(F32_TOL);
        // the JumpReLU θ pseudo-gradient must actually be exercised by the random inputs
        const jumpK = cfgs.findIndex((c) => c.sae.kind === "jumprelu");
        if (jumpK >= 0) expect(slice(out.buffers["grad.log_threshold"], jumpK, n).some((v) => v !== 0)).toBe(true);
      });

    it("evaluate matches the float64 reference (freqs, mean values, dead/dense counts, FVU)", async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      const B = 45;
      const cfgs = [
        trainConfig({ sae_batch_size: B, sae: { d_vit: 19, exp_factor: 3 } }),
        trainConfig({ sae_batch_size: B, sae: { d_vit: 19, exp_factor: 3, kind: "jumprelu" }, objective: { kind: "matryoshka", n_prefixes: 3 } }),
      ];
      const { json, refs } = randomState(rand, cfgs, 0);
      // push a few features far negative so they never fire (mean_values null, counted dead)
      for (const [k, s] of json.saes.entries()) for (const j of [0, 5]) {
        s.params.b_enc[j] = -100;
        refs[k].params.b_enc[j] = -100;
      }
      const batches = [0, 1, 2].map(() => Array.from({ length: B * 19 }, () => Math.fround(rand() * 2 + 0.5)));
      const got = await gpu.run<EvalMetrics[]>("engineEval", { cfgs, state: json, batches });
      cfgs.forEach((cfg, k) => {
        const want = ref.evaluate(refs[k].params, cfg, batches, B);
        for (const key of ["l0", "l1", "mse", "fvu", "explained_variance"] as const)
          expect(Math.abs(got[k][key] - want[key]), `${key} seed ${seed}`).toBeLessThanOrEqual(F32_TOL * Math.abs(want[key]));
        expect(got[k].n_examples).toBe(3 * B);
        expect(got[k].freqs).toEqual(want.freqs); // exact counts
        expect([got[k].n_dead, got[k].n_almost_dead, got[k].n_dense]).toEqual([want.n_dead, want.n_almost_dead, want.n_dense]);
        expect(got[k].n_dead).toBeGreaterThanOrEqual(2);
        want.mean_values.forEach((v, j) => {
          if (v === null) expect(got[k].mean_values[j]).toBeNull();
          else expect(Math.abs(got[k].mean_values[j]! - v)).toBeLessThanOrEqual(F32_TOL * Math.abs(v));
        });
      });
    });

    it("evaluate of TopK SAEs (next to a ReLU one) matches the float64 reference, the last batch short", async () => {
      const seed = testSeed();
      const rand = mulberry32(seed);
      const B = 21, d = 10;
      const cfgs = [
        trainConfig({ sae_batch_size: B, sae: { d_vit: d, exp_factor: 3, kind: "topk", k: 4, aux_coeff: 0 } }),
        trainConfig({ sae_batch_size: B, sae: { d_vit: d, exp_factor: 3 } }),
        trainConfig({ sae_batch_size: B, sae: { d_vit: d, exp_factor: 3, kind: "topk", k: 9, aux_coeff: 0 } }),
      ];
      const n = dSae(cfgs[0]);
      const { json, refs } = randomState(rand, cfgs, 0);
      const rows = [B, B, 13];
      const batches = rows.map((r) => Array.from({ length: r * d }, () => Math.fround(rand() * 2 - 0.5)));
      const got = await gpu.run<EvalMetrics[]>("engineEval", { cfgs, state: json, batches });
      cfgs.forEach((cfg, k) => {
        const select = selectorFor(cfg.sae.kind, cfg.sae.k ?? 0, n);
        // the reference takes equal batches: evaluate row by row, then weigh the means by rows
        const perRow = batches.flatMap((b) => Array.from({ length: b.length / d }, (_, r) => b.slice(r * d, (r + 1) * d)));
        const want = ref.evaluate(refs[k].params, cfg, perRow, 1, select);
        for (const key of ["l0", "l1", "mse", "fvu"] as const)
          expect(Math.abs(got[k][key] - want[key]), `${key} SAE ${k} seed ${seed}`).toBeLessThanOrEqual(F32_TOL * Math.abs(want[key]));
        expect(got[k].n_examples).toBe(2 * B + 13);
        expect(got[k].freqs).toEqual(want.freqs); // exact counts
        if (cfg.sae.kind === "topk") expect(got[k].l0).toBeLessThanOrEqual(cfg.sae.k!);
      });
      expect(got[0].l0).toBeLessThan(got[1].l0); // the selection really ran
    });

    it("resumes exactly: exportState → importState in a fresh engine continues bit for bit", async () => {
      const cfgs = [
        trainConfig({ sae_batch_size: 32, lr: 3e-3, sae: { d_vit: 16, exp_factor: 2, seed: 9 }, objective: { kind: "matryoshka", n_prefixes: 3 } }),
        trainConfig({ sae_batch_size: 32, lr: 3e-3, n_lr_warmup: 4, sae: { d_vit: 16, exp_factor: 2, seed: 10, kind: "jumprelu", bandwidth: 0.05, init_threshold: 0.05 } }),
      ];
      const out = await gpu.run<{ maxDiff: number; steps: number[] }>("engineResume", { cfgs, a: 4, b: 3 });
      expect(out.steps).toEqual([7, 7]);
      expect(out.maxDiff).toBe(0);
    });

    it("trains 100 steps in row chunks over slabs as it does in one pass (losses, weights, Adam moments, eval)", async () => {
      const base = { sae_batch_size: 64, lr: 5e-3, n_lr_warmup: 10, log_every: 10, data: { d_vit: 12, n_features: 24, sparsity: 0.08, seed: 3, noise: 0.01, n_examples: 8192 }, sae: { d_vit: 12, exp_factor: 2, n_reinit_samples: 512 } };
      const cfgs = [
        trainConfig({ ...base, seed: 21, objective: { sparsity_coeff: 1e-2 } }),
        trainConfig({ ...base, seed: 22, sae: { ...base.sae, kind: "jumprelu", bandwidth: 0.05, init_threshold: 0.05 }, objective: { kind: "matryoshka", n_prefixes: 3, sparsity_coeff: 1e-2 } }),
        trainConfig({ ...base, seed: 23, objective: { kind: "matryoshka", n_prefixes: 4, sparsity_coeff: 2e-2 } }),
      ];
      type JsonParams = JsonState["saes"][number]["params"];
      type Run = { plan: MemoryPlan; losses: number[][]; state: Array<{ params: JsonParams; m: JsonParams; v: JsonParams }>; evals: Array<{ mse: number; l0: number; freqs: number[] }> };
      const out = await gpu.run<{ whole: Run; chunked: Run }>("engineChunkedRun", { cfgs, steps: 100, chunked: chunkedOptions(cfgs, 16) });
      expect([out.whole.plan.rowChunks, out.whole.plan.slabs]).toEqual([1, 1]);
      expect([out.chunked.plan.rowChunks, out.chunked.plan.slabs]).toEqual([4, 3]);
      expect(out.chunked.losses.length).toBe(10);
      const lossGap = Math.max(...out.whole.losses.flatMap((row, i) => row.map((l, k) => Math.abs(out.chunked.losses[i][k] - l) / l)));
      let stateGap = 0;
      for (const [k, s] of out.whole.state.entries())
        for (const kind of ["params", "m", "v"] as const)
          for (const p of ref.PARAM_NAMES) stateGap = Math.max(stateGap, relError(out.chunked.state[k][kind][p], s[kind][p]));
      const evalGap = Math.max(...out.whole.evals.map((e, k) => Math.abs(out.chunked.evals[k].mse - e.mse) / e.mse));
      console.log(`[${name}] 100 steps chunked vs whole: loss ${lossGap.toExponential(2)}, state ${stateGap.toExponential(2)}, eval mse ${evalGap.toExponential(2)}`);
      expect(lossGap).toBeLessThanOrEqual(1e-4);
      expect(stateGap).toBeLessThanOrEqual(1e-3);
      expect(evalGap).toBeLessThanOrEqual(1e-4);
      // the SAEs learned something: the loss fell
      for (let k = 0; k < cfgs.length; k++) expect(out.whole.losses.at(-1)![k]).toBeLessThan(out.whole.losses[0][k]);
    });

    for (const variant of MATMUL_VARIANTS)
      it(`the roofline matmul (${variant}) matches float64`, async () => {
        const seed = testSeed();
        const rand = mulberry32(seed);
        const [M, N, K] = [128, 64, 48];
        const a = Array.from({ length: M * K }, () => Math.fround(rand() * 2 - 1));
        const b = Array.from({ length: K * N }, () => Math.fround(rand() * 2 - 1));
        const got = await gpu.run<number[]>("matmul", { variant, M, N, K, a, b });
        const want = new Float64Array(M * N);
        for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) for (let j = 0; j < N; j++) want[i * N + j] += a[i * K + k] * b[k * N + j];
        expect(relError(got, want), `seed ${seed}`).toBeLessThanOrEqual(F32_TOL);
      });

    it("refuses a group that does not fit the device, naming the limit", async () => {
      const cfgs = Array.from({ length: 4 }, () => trainConfig({ sae_batch_size: 16384, sae: { d_vit: 1024, exp_factor: 64 } }));
      const out = await gpu.run<{ error: string | null }>("engineTooBig", { cfgs });
      expect(out.error).toMatch(/do not fit this device: at most \d+/);
    });

    it("trains on synthetic data: decoder rows recover the known features; the loss tracks the float64 reference", async () => {
      const steps = 300;
      const data: Partial<SyntheticData> = { d_vit: 24, n_features: 32, sparsity: 0.06, seed: 7, noise: 0.01, n_examples: 50_000 };
      const base = { sae_batch_size: 128, lr: 1e-2, n_lr_warmup: 20, log_every: 25, data, sae: { d_vit: 24, exp_factor: 4, n_reinit_samples: 2048 } };
      const cfgs = [
        trainConfig({ ...base, seed: 11, objective: { sparsity_coeff: 2e-2 } }),
        trainConfig({ ...base, seed: 12, objective: { kind: "matryoshka", n_prefixes: 4, sparsity_coeff: 2e-2 } }),
      ];
      const out = await gpu.run<{ logs: Array<{ step: number; metrics: StepMetrics[] }>; W_dec: number[][]; evals: EvalMetrics[] }>("engineTrain", {
        cfgs,
        steps,
        evalExamples: 2048,
      });
      const ds = new SyntheticDataset(cfgs[0].data as SyntheticData);
      const truth = ds.features();
      const d = 24, n = dSae(cfgs[0]);
      // mean over true features of the best cosine with any learned decoder row
      const recovery = out.W_dec.map((W) => meanMaxCosine(truth, 32, W, n, d));
      console.log(`[${name}] recovery (mean max cosine) per SAE: ${recovery.map((r) => r.toFixed(4)).join(", ")}; eval:`, out.evals.map((e) => ({ fvu: e.fvu, l0: e.l0, n_dead: e.n_dead })));
      // Vanilla recovers the features; Matryoshka's late latents die at this coefficient, so it is only reported.
      expect(recovery[0]).toBeGreaterThan(0.9);

      // the float64 reference from the same seeded weights and b_dec, on the same batches
      const states: ref.State[] = cfgs.map((cfg) => {
        const w = initWeights(cfg);
        const p: ref.Params = { W_enc: Float64Array.from(w.W_enc), b_enc: Float64Array.from(w.b_enc), W_dec: Float64Array.from(w.W_dec), b_dec: Float64Array.from(w.b_dec), log_threshold: Float64Array.from(w.log_threshold) };
        return { params: p, m: ref.zerosLike(p), v: ref.zerosLike(p), step: 0 };
      });
      const head = ds.head(2048);
      const mean = new Float64Array(d);
      for (let i = 0; i < head.length; i++) mean[i % d] += head[i] / 2048;
      for (const s of states) s.params.b_dec = Float64Array.from(Float32Array.from(mean));
      const refLoss: number[][] = [];
      for (let t = 0; t < steps; t++) {
        const x = ds.batch(t, 128);
        const losses = cfgs.map((cfg, k) => ref.trainStep(states[k], cfg, x, 128).forward.loss);
        if ((t + 1) % 25 === 0) refLoss.push(losses);
      }
      expect(out.logs.map((l) => l.step)).toEqual(Array.from({ length: steps / 25 }, (_, i) => 25 * i + 24));
      const drift = out.logs.map((l, i) => Math.max(...l.metrics.map((m, k) => Math.abs(m.loss - refLoss[i][k]) / refLoss[i][k])));
      console.log(`[${name}] engine vs reference loss, relative gap per log step: ${drift.map((x) => x.toExponential(1)).join(" ")}`);
      for (const g of drift) expect(g).toBeLessThan(2e-2);
      expect(out.logs.at(-1)!.metrics[0].loss).toBeLessThan(out.logs[0].metrics[0].loss);
    });
  });
}
