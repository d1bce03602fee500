// Sweep parsing, expansion, defaults and grouping against hand-worked examples (pure functions, inside workerd).
import { describe, expect, it } from "vitest";
import { ApiError } from "../../worker/errors";
import { expandSweep, parseSweepText, splitCfgs } from "../../worker/sweep";
import { fullConfig, splitSharedJson } from "../../worker/run-config";

const toml = (text: string) => expandSweep(parseSweepText(text, "application/toml").raw);

/** Runs fn, expects a 400 ApiError, returns it. */
function rejects(fn: () => unknown): ApiError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(400);
    return e as ApiError;
  }
  throw new Error("expected a 400");
}

const DESIGN_EXAMPLE = `
data = { kind = "synthetic", d_vit = 64, n_features = 512, sparsity = 0.02, seed = 1 }
n_train = 4_000_000
batch_size = 4096
lr = [1e-4, 3e-4, 1e-3]
sae = { kind = "relu", exp_factor = 8 }
objective = { kind = "vanilla", sparsity_coeff = [4e-4, 8e-4, 1.6e-3] }
`;

// saev's configs/preprint/baseline.toml, verbatim.
const SAEV_BASELINE = `tag = "baseline-v4.8"

lr = [3e-4, 1e-3, 3e-3]

n_lr_warmup = 500
n_sparsity_warmup = 500

[sae]
normalize_w_dec = true
remove_parallel_grads = true
exp_factor = [16, 32]

[objective]
sparsity_coeff = [4e-4, 8e-4, 1.6e-3]
`;

describe("expandSweep", () => {
  it("loads DESIGN.md's example: 9 runs in 1 group, aliases and implied sae.d_vit resolved, lr slowest", () => {
    const { configs, warnings } = toml(DESIGN_EXAMPLE);
    expect(configs).toHaveLength(9);
    expect(warnings).toEqual([]);
    const pairs = configs.map((c) => [c.cfg.lr, c.cfg.objective.sparsity_coeff]);
    expect(pairs).toEqual([
      [1e-4, 4e-4], [1e-4, 8e-4], [1e-4, 1.6e-3],
      [3e-4, 4e-4], [3e-4, 8e-4], [3e-4, 1.6e-3],
      [1e-3, 4e-4], [1e-3, 8e-4], [1e-3, 1.6e-3],
    ]);
    const c0 = configs[0].cfg;
    expect(c0.n_patches).toBe(4_000_000);
    expect(c0.sae_batch_size).toBe(4096);
    expect(c0.sae.d_vit).toBe(64);
    expect(c0.data).toEqual({ kind: "synthetic", d_vit: 64, n_features: 512, sparsity: 0.02, seed: 1, noise: 0, n_examples: 4_000_000 });
    // Defaults from SAE.md.
    expect(c0.n_lr_warmup).toBe(500);
    expect(c0.n_sparsity_warmup).toBe(0);
    expect(c0.log_every).toBe(25);
    expect(c0.track).toBe(true);
    expect(c0.wandb_project).toBe("saev");
    expect(c0.sae).toMatchObject({ normalize_w_dec: true, remove_parallel_grads: true, init_threshold: 0.001, bandwidth: 0.001, n_reinit_samples: 524288 });
    expect(c0.objective.n_prefixes).toBe(10);
    // Config i gets seed 42 + i, and sae.seed follows it.
    expect(configs.map((c) => c.cfg.seed)).toEqual([42, 43, 44, 45, 46, 47, 48, 49, 50]);
    expect(configs.map((c) => c.cfg.sae.seed)).toEqual(configs.map((c) => c.cfg.seed));
    expect(splitCfgs(configs)).toHaveLength(1);
  });

  it("loads saev's baseline.toml: 18 configs in 2 groups of 9 (split on sae.exp_factor)", () => {
    const { configs } = toml(SAEV_BASELINE);
    expect(configs).toHaveLength(18);
    const groups = splitCfgs(configs);
    expect(groups.map((g) => g.length)).toEqual([9, 9]);
    expect(groups[0].every((c) => c.cfg.sae.exp_factor === 16)).toBe(true);
    expect(groups[1].every((c) => c.cfg.sae.exp_factor === 32)).toBe(true);
    // Configs keep their order inside a group: lr slowest, then exp_factor, then sparsity_coeff.
    expect(groups[0].map((c) => configs.indexOf(c))).toEqual([0, 1, 2, 6, 7, 8, 12, 13, 14]);
    expect(configs[0].cfg.data).toMatchObject({ kind: "shards", url: "./shards", layer: -2, patches: "patches", scale_mean: true, scale_norm: true });
    expect(configs[0].cfg.tag).toBe("baseline-v4.8");
  });

  it("warns about saev keys it ignores, and still splits groups on them as saev does", () => {
    const { configs, warnings } = toml(`n_workers = [8, 16]\ndevice = "cuda"\nslurm_acct = "PAS"\nlr = [1e-4, 2e-4]\n[data]\nshard_root = "/fs/shards"\nclamp = 1e5`);
    expect(warnings.some((w) => w.startsWith("n_workers"))).toBe(true);
    expect(warnings.some((w) => w.startsWith("device"))).toBe(true);
    expect(warnings.some((w) => w.startsWith("slurm_acct"))).toBe(true);
    expect(warnings.some((w) => w.startsWith("data.clamp"))).toBe(true);
    expect(warnings.some((w) => w.startsWith("data.url"))).toBe(true);
    expect(configs[0].cfg.data).toMatchObject({ kind: "shards", url: "/fs/shards" });
    // n_workers slowest: [8, 1e-4], [8, 2e-4], [16, 1e-4], [16, 2e-4] → 2 groups of 2.
    expect(splitCfgs(configs).map((g) => g.map((c) => configs.indexOf(c)))).toEqual([[0, 1], [2, 3]]);
  });

  it("hand-worked grouping: groups in order of first appearance, configs in order", () => {
    const { configs } = toml(`
      data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.1 }
      lr = [1e-3, 1e-4]
      log_every = [10, 20]
      sae = { kind = ["relu", "jumprelu"], exp_factor = 4 }
    `);
    // Index = lr·4 + log_every·2 + kind; log_every splits, lr and kind share.
    const groups = splitCfgs(configs).map((g) => g.map((c) => configs.indexOf(c)));
    expect(groups).toEqual([[0, 1, 4, 5], [2, 3, 6, 7]]);
    expect(configs.map((c) => c.cfg.sae.kind)).toEqual(["relu", "jumprelu", "relu", "jumprelu", "relu", "jumprelu", "relu", "jumprelu"]);
  });

  it("data differing in any key splits, a list of data tables is one axis", () => {
    const { configs } = toml(`
      lr = [1e-3, 1e-4]
      data = [{ kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.1, seed = 1 }, { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.1, seed = 2 }]
    `);
    expect(configs).toHaveLength(4);
    expect(splitCfgs(configs).map((g) => g.map((c) => configs.indexOf(c)))).toEqual([[0, 2], [1, 3]]);
  });

  it("a swept seed is used as given; a scalar seed gives seed + i", () => {
    expect(toml(`seed = [7, 9]\nlr = 1e-3`).configs.map((c) => c.cfg.seed)).toEqual([7, 9]);
    expect(toml(`seed = 100\nlr = [1e-3, 2e-3, 3e-3]`).configs.map((c) => c.cfg.seed)).toEqual([100, 101, 102]);
  });

  it("tags is a value list; a list of tag lists is an axis", () => {
    expect(toml(`tags = ["a", "b"]`).configs.map((c) => c.cfg.tags)).toEqual([["a", "b"]]);
    expect(toml(`tags = [["a"], ["b"]]`).configs.map((c) => c.cfg.tags)).toEqual([["a"], ["b"]]);
  });

  it("JSON and W&B-style parameter grids give the same configs as TOML", () => {
    const fromJson = expandSweep(parseSweepText(JSON.stringify({
      data: { kind: "synthetic", d_vit: 64, n_features: 512, sparsity: 0.02, seed: 1 },
      n_train: 4_000_000, batch_size: 4096, lr: [1e-4, 3e-4, 1e-3],
      sae: { kind: "relu", exp_factor: 8 }, objective: { kind: "vanilla", sparsity_coeff: [4e-4, 8e-4, 1.6e-3] },
    }), "application/json").raw);
    const wandb = expandSweep(parseSweepText(JSON.stringify({
      method: "grid", name: "mine",
      parameters: {
        data: { value: { kind: "synthetic", d_vit: 64, n_features: 512, sparsity: 0.02, seed: 1 } },
        n_train: { value: 4_000_000 }, batch_size: { value: 4096 }, lr: { values: [1e-4, 3e-4, 1e-3] },
        sae: { parameters: { kind: { value: "relu" }, exp_factor: { value: 8 } } },
        "objective.kind": { value: "vanilla" }, "objective.sparsity_coeff": { values: [4e-4, 8e-4, 1.6e-3] },
      },
    }), "application/json").raw);
    const ref = toml(DESIGN_EXAMPLE).configs.map((c) => c.cfg);
    expect(fromJson.configs.map((c) => c.cfg)).toEqual(ref);
    expect(wandb.configs.map((c) => c.cfg)).toEqual(ref);
    expect(wandb.warnings).toEqual(["name: W&B sweep key ignored"]);
  });
});

describe("expandSweep rejects bad input, naming the key", () => {
  it("reports every unknown key at once", () => {
    const e = rejects(() => toml(`lrr = 1\n[sae]\nexp_factr = 2\n[objective]\nkind = "vanilla"\nbogus = true`));
    expect(e.code).toBe("invalid_sweep");
    expect(e.issues!.map((i) => i.field)).toEqual(["lrr", "sae.exp_factr", "objective.bogus"]);
    expect(e.field).toBe("lrr");
  });
  it("wrong types", () => {
    expect(rejects(() => toml(`lr = "fast"`)).field).toBe("lr");
    expect(rejects(() => toml(`track = 1`)).field).toBe("track");
    expect(rejects(() => toml(`sae = 3`)).field).toBe("sae");
    expect(rejects(() => toml(`lr = [1e-3, "x"]`)).field).toBe("lr[1]");
    expect(rejects(() => toml(`[sae]\nexp_factor = 2.5`)).field).toBe("sae.exp_factor");
  });
  it("out-of-range values", () => {
    expect(rejects(() => toml(`lr = -1`)).field).toBe("lr");
    expect(rejects(() => toml(`lr = [1e-3, 0]`)).field).toBe("lr[1]");
    expect(rejects(() => toml(`log_every = 0`)).field).toBe("log_every");
    expect(rejects(() => toml(`[data]\nkind = "synthetic"\nd_vit = 8\nn_features = 4\nsparsity = 2`)).field).toBe("data.sparsity");
    expect(rejects(() => toml(`[sae]\nkind = "gelu"`)).message).toMatch(/sae.kind: must be "relu", "jumprelu", "topk" or "batchtopk"/);
  });
  it("cross-key problems name the key and the config", () => {
    const e = rejects(() => toml(`data = { kind = "synthetic", d_vit = 16, n_features = 8, sparsity = 0.1 }\nsae = { d_vit = 32 }`));
    expect(e.field).toBe("sae.d_vit");
    expect(rejects(() => toml(`data = { kind = "synthetic", n_features = 8, sparsity = 0.1 }`)).field).toBe("data.d_vit");
    expect(rejects(() => toml(`data = { kind = "synthetic", d_vit = 8 }`)).issues!.map((i) => i.field)).toEqual(["data.n_features", "data.sparsity"]);
    const m = rejects(() => toml(`data = { kind = "synthetic", d_vit = 2, n_features = 8, sparsity = 0.1 }\nsae = { exp_factor = [1, 8] }\nobjective = { kind = "matryoshka", n_prefixes = 10 }`));
    expect(m.field).toBe("objective.n_prefixes");
    expect(m.message).toMatch(/config 0: sae.exp_factor=1/);
    expect(rejects(() => toml(`n_train = 5\nn_patches = 5`)).field).toBe("n_train");
  });
  it("empty and gigantic expansions", () => {
    expect(rejects(() => toml(`lr = []`)).field).toBe("lr");
    const big = rejects(() => toml(`lr = [${Array.from({ length: 100 }, (_, i) => (i + 1) * 1e-5).join(",")}]\nseed = [${Array.from({ length: 100 }, (_, i) => i).join(",")}]`));
    expect(big.code).toBe("sweep_too_large");
    expect(big.message).toMatch(/10000 runs, more than 4096: lr \(100\) × seed \(100\)/);
  });
  it("bounds: ignored saev keys take scalars only, metric rows per run are capped (log_every named), nesting is capped", () => {
    const ig = rejects(() => toml(`ckpt_path = { a = 1 }`));
    expect(ig).toMatchObject({ code: "invalid_sweep", field: "ckpt_path" });
    expect(ig.message).toMatch(/must be a string, number, true\/false or null/);
    expect(rejects(() => toml(`device = [{ a = 1 }]`)).field).toBe("device[0]");
    expect(rejects(() => toml(`n_hours = "${"h".repeat(1025)}"`)).message).toMatch(/at most 1024 characters/);
    expect(toml(`n_hours = 12.5\nckpt_path = "/ckpt"`).configs).toHaveLength(1); // scalars still load, with a warning
    // n_train 1e9 at batch 64 is 15.6 M steps: log_every 25 would store 625 000 rows per run.
    const rows = rejects(() => toml(`n_train = 1_000_000_000\nbatch_size = 64\nlog_every = 25`));
    expect(rows).toMatchObject({ code: "invalid_sweep", field: "log_every" });
    expect(rows.message).toMatch(/logs 625000 metric rows per run \(n_steps 15625000 \/ log_every 25\), more than 10000; set log_every >= 1563/);
    expect(toml(`n_train = 1_000_000_000\nbatch_size = 64\nlog_every = 1563`).configs).toHaveLength(1);
    expect(rejects(() => parseSweepText(`{"lr": [[[[[[[[[[[1]]]]]]]]]]]}`, "application/json"))).toMatchObject({ code: "too_deep", field: "lr[0][0][0][0][0][0][0][0][0]" });
    expect(rejects(() => expandSweep({ sae: { a: { b: { c: { d: { e: { f: { g: { h: { i: { j: 1 } } } } } } } } } } }))).toMatchObject({ code: "too_deep", field: "sae.a.b.c.d.e.f.g.h.i" });
  });
  it("stores each run's differences from what the sweep shares, and reads the full config back", () => {
    const { configs } = toml(`data = { kind = "synthetic", d_vit = 8, n_features = 8, sparsity = 0.1 }\ntags = ["a", "b"]\nlr = [1e-4, 2e-4]\nsae = { exp_factor = [2, 4] }`);
    const { shared, deltaJson } = splitSharedJson(configs.map((c) => c.cfg));
    expect(shared).toMatchObject({ tags: ["a", "b"], sae: { kind: "relu", d_vit: 8 }, objective: { kind: "vanilla" } });
    expect(shared).not.toHaveProperty("data");
    expect(shared).not.toHaveProperty("lr");
    expect(JSON.parse(deltaJson(3))).toEqual({ lr: 2e-4, seed: 45, sae: { exp_factor: 4, seed: 45 } });
    // The same JSON, key order included (toEqual ignores it): a run's own keys are not moved after the shared ones.
    for (const [i, c] of configs.entries())
      expect(JSON.stringify(fullConfig({ shared: JSON.stringify(shared), cfg: deltaJson(i), data: JSON.stringify(c.cfg.data) }))).toBe(JSON.stringify(c.cfg));
    // Rows stored before the split (a full cfg, cfg_shared '{}') read back the same.
    expect(JSON.stringify(fullConfig({ shared: "{}", cfg: JSON.stringify(configs[1].cfg), data: JSON.stringify(configs[1].cfg.data) }))).toBe(JSON.stringify(configs[1].cfg));
  });
  it("unparseable files", () => {
    expect(rejects(() => parseSweepText(`lr = [1e-3`, "application/toml")).code).toBe("invalid_toml");
    expect(rejects(() => parseSweepText(`{"lr": }`, "application/json")).code).toBe("invalid_json");
    expect(rejects(() => parseSweepText(`  `, undefined)).code).toBe("empty_body");
    expect(rejects(() => expandSweep([1, 2])).field).toBe("body");
    expect(rejects(() => expandSweep({ method: "random", parameters: { lr: { values: [1] } } })).field).toBe("method");
  });
});

describe("lists of flat tables (the scanners' fast path: 32 tables a step)", () => {
  // Tables past the first runs of 32 that break a bound are named as when read one step at a time.
  const url = (i: number) => `https://example.com/${i}`;
  const tomlList = (tables: string[]) => `n_train = 65536\nbatch_size = 64\ndata = [${tables.join(", ")}]\n`;
  const jsonList = (tables: string[]) => `{"n_train": 65536, "batch_size": 64, "data": [${tables.join(", ")}]}`;
  const wide = (n: number, kv: (k: number) => string) => Array.from({ length: n }, (_, k) => kv(k)).join(", ");

  it("accepts 100 datasets in TOML and JSON, the same runs", () => {
    const t = toml(tomlList(Array.from({ length: 100 }, (_, i) => `{url = "${url(i)}"}`)));
    const j = expandSweep(parseSweepText(jsonList(Array.from({ length: 100 }, (_, i) => `{"url": "${url(i)}"}`)), "application/json").raw);
    expect(t.configs.map((c) => c.cfg.data)).toEqual(j.configs.map((c) => c.cfg.data));
    expect(t.configs[99].cfg.data).toMatchObject({ kind: "shards", url: url(99) });
  });

  it("names a table of 257 keys, a too deep value and a list too long after the fast runs", () => {
    const tables = (bad: string, at: number, n = 80) => Array.from({ length: n }, (_, i) => (i === at ? bad : `{url = "${url(i)}"}`));
    const many = rejects(() => toml(tomlList(tables(`{${wide(257, (k) => `k${k} = 1`)}}`, 70))));
    expect([many.code, many.field]).toEqual(["too_many_keys", "data[70]"]);
    const manyJson = rejects(() => parseSweepText(jsonList(tables(`{${wide(257, (k) => `"k${k}": 1`)}}`, 70).map((t) => t.replace(/^\{url = (.*)\}$/, '{"url": $1}'))), "application/json"));
    expect([manyJson.code, manyJson.field]).toEqual(["too_many_keys", "data[70]"]);
    const deep = rejects(() => toml(tomlList(tables(`{a = ${"[".repeat(9)}${"]".repeat(9)}}`, 65))));
    expect([deep.code, deep.field]).toEqual(["too_deep", "data[65].a[0][0][0][0][0][0][0]"]);
    const long = rejects(() => parseSweepText(tomlList(tables("", -1, 4097)), "application/toml"));
    expect([long.code, long.field]).toEqual(["sweep_too_large", "data"]);
    const longJson = rejects(() => parseSweepText(jsonList(Array.from({ length: 4097 }, (_, i) => `{"url": "${url(i)}"}`)), "application/json"));
    expect([longJson.code, longJson.field]).toEqual(["sweep_too_large", "data"]);
  });
});
