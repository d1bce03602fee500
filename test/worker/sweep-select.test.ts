// The TopK/BatchTopK, AuxK and schedule keys of a sweep (SAE.md "TopK, BatchTopK, AuxK and the newer schedule"):
// defaults, any mix of kinds in one group, and a 400 naming the field for every bad value, through expandSweep and
// through POST /v1/sweeps (which must write nothing).
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { ApiError } from "../../worker/errors";
import { expandSweep, parseSweepText, splitCfgs } from "../../worker/sweep";
import { call, resetDb, submit } from "./helpers";

const SYNTH = `data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05 }\nn_train = 640\nbatch_size = 64\n`;
const toml = (text: string) => expandSweep(parseSweepText(SYNTH + text, "application/toml").raw);

function rejects(text: string): ApiError {
  try {
    toml(text);
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(400);
    return e as ApiError;
  }
  throw new Error(`expected a 400 for ${text}`);
}

describe("TopK/BatchTopK and schedule keys: defaults and groups", () => {
  it("fills SAE.md's defaults; ReLU runs have k = null", () => {
    const { configs, warnings } = toml(`sae = { kind = ["relu", "topk"], k = 8, exp_factor = 4 }`);
    expect(warnings).toEqual([]); // AuxK's default 1/32 trains (issue 13)
    const [relu, topk] = configs.map((c) => c.cfg);
    expect(topk.sae).toMatchObject({ kind: "topk", k: 8, threshold_beta: 0.999, k_aux: 512, aux_coeff: 1 / 32, dead_after: 10_000_000 });
    expect(relu.sae).toMatchObject({ kind: "relu", k: 8 });
    expect(toml(`sae = { exp_factor = 4 }`).configs[0].cfg.sae.k).toBeNull();
    expect(topk).toMatchObject({ lr_schedule: "warmup", lr_final: 0, max_grad_norm: null });
  });

  it("keeps the values a file gives", () => {
    const { configs } = toml(
      `lr_schedule = "warmup_cosine"\nlr_final = 1e-5\nmax_grad_norm = 1.0\n` +
        `sae = { kind = "batchtopk", k = 64, threshold_beta = 0.99, k_aux = 256, aux_coeff = 0.0625, dead_after = 1000, exp_factor = 4 }`,
    );
    expect(configs[0].cfg.sae).toMatchObject({ kind: "batchtopk", k: 64, threshold_beta: 0.99, k_aux: 256, aux_coeff: 0.0625, dead_after: 1000 });
    expect(configs[0].cfg).toMatchObject({ lr_schedule: "warmup_cosine", lr_final: 1e-5, max_grad_norm: 1 });
  });

  it("max_grad_norm null (JSON) means no clipping", () => {
    const raw = { data: { kind: "synthetic", d_vit: 16, n_features: 32, sparsity: 0.05 }, n_train: 640, batch_size: 64, max_grad_norm: null };
    expect(expandSweep(raw).configs[0].cfg.max_grad_norm).toBeNull();
  });

  it("every kind trains in one group, with k and the schedule swept too", () => {
    const { configs } = toml(`sae = { kind = ["relu", "jumprelu", "topk", "batchtopk"], k = [4, 16], exp_factor = 4 }\nlr_schedule = ["warmup", "warmup_cosine"]`);
    expect(configs).toHaveLength(16);
    const groups = splitCfgs(configs);
    expect(groups).toHaveLength(1);
    expect(new Set(groups[0].map((c) => c.cfg.sae.kind))).toEqual(new Set(["relu", "jumprelu", "topk", "batchtopk"]));
  });

  it("warns that sparsity_coeff means nothing to TopK runs, and lr_final nothing without warmup_cosine", () => {
    expect(toml(`sae = { kind = ["relu", "topk"], k = 8, aux_coeff = 0 }\nobjective = { sparsity_coeff = 1e-3 }`).warnings).toEqual([
      expect.stringMatching(/^objective\.sparsity_coeff: ignored by the topk and batchtopk runs/),
    ]);
    // the engine trains BatchTopK, max_grad_norm and AuxK: no warning
    expect(toml(`sae = { kind = "batchtopk", k = 8, aux_coeff = 0 }\nmax_grad_norm = 1.0`).warnings).toEqual([]);
    expect(toml(`sae = { kind = "batchtopk", k = 8 }\nmax_grad_norm = 1.0`).warnings).toEqual([]);
    expect(toml(`sae = { kind = "relu" }\nobjective = { sparsity_coeff = 1e-3 }`).warnings).toEqual([]);
    expect(toml(`lr_final = 1e-5`).warnings).toEqual([expect.stringMatching(/^lr_final: ignored/)]);
    expect(toml(`lr_final = 1e-5\nlr_schedule = "warmup_cosine"`).warnings).toEqual([]);
  });
});

describe("TopK/BatchTopK and schedule keys: bad values name the field", () => {
  const cases: Array<[string, string, string, RegExp]> = [
    ["k missing (topk)", `sae = { kind = "topk", exp_factor = 4 }`, "sae.k", /is required for sae.kind = "topk"/],
    ["k missing (batchtopk)", `sae = { kind = "batchtopk", exp_factor = 4 }`, "sae.k", /is required for sae.kind = "batchtopk"/],
    ["k missing in one config of a kind sweep", `sae = { kind = ["relu", "topk"], exp_factor = 4 }`, "sae.k", /is required.*config 1: sae.kind="topk"/],
    ["k > d_sae", `sae = { kind = "topk", k = 65, exp_factor = 4 }`, "sae.k", /must be <= d_sae \(64 = d_vit 16 × exp_factor 4\), got 65/],
    ["k > d_sae for one exp_factor", `sae = { kind = "topk", k = 40, exp_factor = [4, 2] }`, "sae.k", /<= d_sae \(32.*config 1: sae.exp_factor=2/],
    ["non-integer k", `sae = { kind = "topk", k = 2.5 }`, "sae.k", /integer/],
    ["k = 0", `sae = { kind = "topk", k = 0 }`, "sae.k", />= 1/],
    ["a bad k in a list", `sae = { kind = "topk", k = [4, 1.5] }`, "sae.k[1]", /integer/],
    ["k a string", `sae = { kind = "topk", k = "32" }`, "sae.k", /number/],
    ["unknown kind", `sae = { kind = "top-k" }`, "sae.kind", /"relu", "jumprelu", "topk" or "batchtopk"/],
    ["threshold_beta > 1", `sae = { kind = "batchtopk", k = 4, threshold_beta = 1.5 }`, "sae.threshold_beta", /<= 1/],
    ["threshold_beta < 0", `sae = { kind = "batchtopk", k = 4, threshold_beta = -0.1 }`, "sae.threshold_beta", />= 0/],
    ["k_aux 0", `sae = { kind = "topk", k = 4, k_aux = 0 }`, "sae.k_aux", />= 1/],
    ["non-integer k_aux", `sae = { kind = "topk", k = 4, k_aux = 3.5 }`, "sae.k_aux", /integer/],
    ["negative aux_coeff", `sae = { kind = "topk", k = 4, aux_coeff = -1 }`, "sae.aux_coeff", />= 0/],
    ["aux_coeff inf", `sae = { kind = "topk", k = 4, aux_coeff = inf }`, "sae.aux_coeff", /finite|number/],
    ["dead_after 0", `sae = { kind = "topk", k = 4, dead_after = 0 }`, "sae.dead_after", />= 1/],
    ["unknown lr_schedule", `lr_schedule = "cosine"`, "lr_schedule", /"warmup" or "warmup_cosine"/],
    ["negative lr_final", `lr_final = -1e-5`, "lr_final", />= 0/],
    ["max_grad_norm 0", `max_grad_norm = 0`, "max_grad_norm", /> 0/],
    ["max_grad_norm a string", `max_grad_norm = "1"`, "max_grad_norm", /number/],
    ["unknown sae key near k", `sae = { kind = "topk", topk = 4 }`, "sae.topk", /unknown key/],
  ];
  for (const [name, text, field, message] of cases)
    it(name, () => {
      const e = rejects(text);
      expect(e.field).toBe(field);
      expect(e.message).toMatch(message);
    });
});

describe("POST /v1/sweeps with bad TopK keys", () => {
  beforeEach(resetDb);

  for (const [text, field, message] of [
    [`sae = { kind = "topk", exp_factor = 4 }`, "sae.k", /sae\.k: is required/],
    [`sae = { kind = "batchtopk", k = 100, exp_factor = 4 }`, "sae.k", /sae\.k: must be <= d_sae \(64/],
    [`sae = { kind = "topk", k = 8.5 }`, "sae.k", /sae\.k: must be an integer/],
  ] as const)
    it(`${field}: ${text}`, async () => {
      const res = await call("POST", "/v1/sweeps", { body: SYNTH + text, headers: { "content-type": "application/toml" } });
      const body = (await res.json()) as { error: { field: string; message: string } };
      expect(res.status).toBe(400);
      expect(body.error.field).toBe(field);
      expect(body.error.message).toMatch(message);
      const { n } = (await env.DB.prepare("SELECT count(*) AS n FROM sweeps").first<{ n: number }>())!;
      expect(n).toBe(0);
    });

  it("accepts a mixed sweep and stores the resolved keys", async () => {
    const j = await submit(SYNTH + `sae = { kind = ["relu", "topk", "batchtopk"], k = 8, exp_factor = 4 }\nlr_schedule = "warmup_cosine"\nmax_grad_norm = 1.0`);
    expect(j).toMatchObject({ n_runs: 3, n_groups: 1 });
    const detail = (await (await call("GET", `/v1/sweeps/${j.id}`)).json()) as { runs: Array<{ cfg: any }> };
    expect(detail.runs.map((r) => [r.cfg.sae.kind, r.cfg.sae.k, r.cfg.lr_schedule, r.cfg.max_grad_norm])).toEqual([
      ["relu", 8, "warmup_cosine", 1],
      ["topk", 8, "warmup_cosine", 1],
      ["batchtopk", 8, "warmup_cosine", 1],
    ]);
  });
});
