/**
 * Sweep files → resolved TrainConfigs → groups (../shared/SAE.md, ../shared/DESIGN.md "A sweep file").
 *
 * parseSweepText reads TOML or JSON (W&B-style `parameters` grids too); expandSweep validates every key and value
 * (all problems reported at once), expands lists into the cartesian product (the earliest key varies slowest),
 * fills saev's defaults, and splitCfgs groups configs that may share one data stream, exactly as saev does.
 * Pure functions, no I/O: the route writes what they return.
 */
import { parse as parseToml, TomlError } from "smol-toml";
import { z } from "zod";
import { CANNOT_PARALLELIZE, type DataConfig, type TrainConfig, nSteps } from "../shaders/config";
import { badRequest, mediaType, unsupportedMediaType, type Issue } from "./errors";
import { MAX_DEPTH, MAX_TABLE_KEYS, scanJson, scanToml } from "./sweep-scan";
import { parseTomlFast } from "./toml-fast";
import { SAE_KINDS, SCHEDULE_LEAVES, SELECT_SAE_LEAVES, checkSelect, scheduleFields, selectSaeFields, selectWarnings } from "./sweep-select";

export { MAX_DEPTH, MAX_TABLE_KEYS };

/** saev keys that load unchanged but mean nothing here (each gives a warning). They still split groups, as in saev. */
export const IGNORED_SAEV_KEYS = ["n_workers", "device", "ckpt_path", "slurm_acct", "slurm_partition", "n_hours", "log_to"] as const;

export interface ExpandedConfig {
  cfg: TrainConfig;
  /** Values of IGNORED_SAEV_KEYS the file gave this config (for splitCfgs only). */
  ignored: Record<string, unknown>;
  /**
   * Which values this config took on the axes that can change its group (expandSweep): configs of one combo have
   * the same group key, so splitCfgs computes it once per combo.
   */
  combo?: number;
  /**
   * The index of the config this one was copied from (expandSweep's templates; a template has its own index): it
   * equals that config but in data and in the leaves ExpandedSweep.written lists. splitSharedJson and groupIndex use it
   * to skip what cannot differ.
   */
  base?: number;
}

export interface ExpandedSweep {
  configs: ExpandedConfig[];
  warnings: string[];
  /** The leaves (paths) besides data where a config may differ from its base's config. */
  written?: string[][];
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing

export type SweepFormat = "toml" | "json";

/**
 * The content types a sweep file may come as: TOML or JSON, text/plain (fetch's default for a string body) or none
 * (both sniffed). Anything else (a form, multipart, bytes) is refused with 415 before the body is read.
 */
export function checkSweepContentType(contentType: string | undefined): void {
  const t = mediaType(contentType);
  if (t === undefined || t === "text/plain") return;
  if (["application/toml", "text/toml", "text/x-toml", "application/x-toml", "application/json", "text/json"].includes(t)) return;
  if (/^application\/[\w.-]+\+json$/.test(t)) return;
  throw unsupportedMediaType("application/toml or application/json (a sweep file)", t);
}

/**
 * TOML when the content type says so (or the body does not look like JSON), else JSON. The text's structure is
 * bounded first (sweep-scan.ts: depth, keys per table, list lengths up to `maxRuns`), before a parser builds it.
 */
export function parseSweepText(text: string, contentType: string | undefined, maxRuns = 4096): { raw: unknown; format: SweepFormat } {
  const ct = (contentType ?? "").toLowerCase();
  const json = ct.includes("json") || (!ct.includes("toml") && /^\s*\{/.test(text));
  if (!text.trim()) throw badRequest("empty_body", "the sweep file is empty", "body");
  if (json) {
    // Refused before JSON.parse builds it: half a million nested arrays cost ~1 s of CPU to parse.
    scanJson(text, maxRuns);
    try {
      const raw: unknown = JSON.parse(text);
      if (typeof raw === "object" && raw !== null) SCANNED.add(raw);
      return { raw, format: "json" };
    } catch (e) {
      throw badRequest("invalid_json", `the sweep file is not valid JSON: ${(e as Error).message}`, "body");
    }
  }
  scanToml(text, maxRuns);
  // Its inline nesting capped as JSON's is (smol-toml refuses deeper inline arrays and tables as it reads them).
  const options = { maxDepth: MAX_DEPTH };
  // A long list of flat inline tables (4096 datasets) is read as JSON when its text allows (toml-fast.ts). Its tables
  // are flat with at most 256 keys: checkDepth walks the rest of the file only (a refusal there is left to
  // expandSweep's walk of the whole, which finds the same).
  const fast = parseTomlFast(text, options);
  if (fast) {
    if (depthOk(fast.rest)) SCANNED.add(fast.doc);
    return { raw: fast.doc, format: "toml" };
  }
  try {
    return { raw: parseToml(text, options), format: "toml" };
  } catch (e) {
    const where = e instanceof TomlError ? ` (line ${e.line}, column ${e.column})` : "";
    const first = (e as Error).message.split("\n")[0];
    throw badRequest("invalid_toml", `the sweep file is not valid TOML${where}: ${first}`, "body");
  }
}

function depthOk(v: unknown): boolean {
  try {
    checkDepth(v);
    return true;
  } catch {
    return false;
  }
}

const isTable = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Values parseSweepText parsed from JSON text that scanJson passed: nested at most MAX_DEPTH levels, no table of more
 * than MAX_TABLE_KEYS keys (it counts keys as written, duplicates too), so expandSweep's checkDepth cannot fail on them
 * and is skipped (a walk over every table of the file). TOML is checked again (its dotted keys nest without brackets),
 * but for a fast-read list (toml-fast.ts) whose rest checkDepth passed: the list itself cannot fail it.
 */
const SCANNED = new WeakSet<object>();

const WANDB_TOP_KEYS = new Set(["method", "parameters", "name", "description", "program", "metric", "project", "entity", "command"]);

/**
 * W&B sweep config → our nested style: `parameters: {lr: {values: [...]}, sae: {parameters: {...}}, "sae.exp_factor":
 * {value: 8}}`. Only grids make sense for a fixed set of runs, so `method` must be "grid" when given.
 */
function fromWandb(raw: Record<string, unknown>, warnings: string[], issues: Issue[]): Record<string, unknown> {
  for (const k of Object.keys(raw)) {
    if (!WANDB_TOP_KEYS.has(k)) issues.push({ field: k, message: "unknown key (a W&B-style sweep keeps its settings under `parameters`)" });
    else if (k !== "parameters" && k !== "method") warnings.push(`${k}: W&B sweep key ignored`);
  }
  if (raw.method !== undefined && raw.method !== "grid")
    issues.push({ field: "method", message: `only "grid" sweeps are supported, got ${JSON.stringify(raw.method)}` });
  // Null-prototype tables: a parameter named "__proto__" becomes an own key (reported as unknown), not a prototype.
  const table = () => Object.create(null) as Record<string, unknown>;
  // A table given as a value ({value: {...}}) is the parsed one: copied before a dotted name writes into it.
  const into = (t: Record<string, unknown>, k: string) => (t[k] = isTable(t[k]) ? Object.assign(table(), t[k]) : table());
  const out = table();
  const walk = (params: unknown, prefix: string, target: Record<string, unknown>) => {
    if (!isTable(params)) {
      issues.push({ field: prefix || "parameters", message: "must be a table of parameters" });
      return;
    }
    for (const [name, spec] of Object.entries(params)) {
      const field = `${prefix}${prefix ? "." : ""}${name}`;
      // Dotted names address nested tables: "sae.exp_factor".
      const parts = name.split(".");
      let t = target;
      for (const p of parts.slice(0, -1)) t = into(t, p);
      const leaf = parts[parts.length - 1];
      if (!isTable(spec)) {
        issues.push({ field: `parameters.${field}`, message: "must be {values: [...]}, {value: x} or {parameters: {...}}" });
      } else if ("values" in spec) {
        if (!Array.isArray(spec.values)) issues.push({ field: `parameters.${field}.values`, message: "must be a list" });
        else t[leaf] = spec.values;
      } else if ("value" in spec) {
        t[leaf] = spec.value;
      } else if ("parameters" in spec) {
        walk(spec.parameters, field, into(t, leaf));
      } else {
        issues.push({ field: `parameters.${field}`, message: "must be {values: [...]}, {value: x} or {parameters: {...}}" });
      }
    }
  };
  walk(raw.parameters, "", out);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The key tree: every key a sweep may set, with the check each value (or each value of a list) must pass.

const int = (min: number, what: string) => z.number().int(`must be an integer`).min(min, `must be ${what}`);
const posNum = z.number().positive("must be > 0").finite("must be finite");
const str = z.string({ message: "must be a string" });
const bool = z.boolean({ message: "must be true or false" });
/** A string of at most `max` characters (bounded: every run's config is stored, and sent to W&B). */
const text = (max: number) => str.max(max, `must be at most ${max} characters`);

/** What an ignored saev key may hold: a scalar (a path, a number of hours, a device name). */
const IGNORED_VALUE = z.union([text(1024), z.number().finite("must be finite"), bool, z.null()], {
  message: "must be a string, number, true/false or null (a saev key sae-swarm ignores)",
});

/**
 * `ok`, where given, accepts the common values without zod (a data axis of 4096 tables checks ~4096 × a few keys, and
 * zod costs microseconds each): it must accept nothing the zod check refuses; what it does not accept goes to zod,
 * which gives the message.
 */
type Leaf = { leaf: z.ZodType; list?: boolean; ok?: (v: unknown) => boolean };
type Tree = { [key: string]: Leaf | { table: Tree } };
const L = (leaf: z.ZodType, list = false): Leaf => ({ leaf, list });
const fast = (leaf: z.ZodType, ok: (v: unknown) => boolean): Leaf => ({ leaf, ok });
const isInt = (v: unknown, min = -Infinity, max = Infinity): boolean => Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max;
const isNum = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

const DATA: Tree = {
  kind: fast(z.enum(["synthetic", "shards"], { message: 'must be "synthetic" or "shards"' }), (v) => v === "synthetic" || v === "shards"),
  // synthetic
  d_vit: fast(int(1, ">= 1").max(65536, "must be <= 65536"), (v) => isInt(v, 1, 65536)),
  n_features: fast(int(1, ">= 1"), (v) => isInt(v, 1)),
  sparsity: fast(z.number().gt(0, "must be > 0").max(1, "must be <= 1"), (v) => isNum(v) && v > 0 && v <= 1),
  noise: fast(z.number().min(0, "must be >= 0").finite(), (v) => isNum(v) && v >= 0),
  n_examples: fast(int(1, ">= 1"), (v) => isInt(v, 1)),
  // shards (saev's DataLoad; shard_root is read as url)
  url: fast(text(4096).min(1, "must not be empty"), (v) => typeof v === "string" && v.length >= 1 && v.length <= 4096),
  layer: fast(z.number().int("must be an integer"), (v) => isInt(v)),
  patches: fast(z.enum(["patches", "cls", "meanpool"], { message: 'must be "patches", "cls" or "meanpool"' }), (v) => v === "patches" || v === "cls" || v === "meanpool"),
  scale_mean: fast(bool, (v) => typeof v === "boolean"),
  scale_norm: fast(bool, (v) => typeof v === "boolean"),
  n_random_samples: fast(int(1, ">= 1"), (v) => isInt(v, 1)),
  seed: fast(z.number().int("must be an integer"), (v) => isInt(v)),
  clamp: fast(posNum, (v) => isNum(v) && v > 0), // saev's; we always clamp at 1e5
};

const SAE: Tree = {
  kind: L(SAE_KINDS),
  d_vit: L(int(1, ">= 1").max(65536, "must be <= 65536")),
  exp_factor: L(int(1, ">= 1").max(1024, "must be <= 1024")),
  normalize_w_dec: L(bool),
  remove_parallel_grads: L(bool),
  seed: L(z.number().int("must be an integer")),
  init_threshold: L(posNum),
  bandwidth: L(posNum),
  n_reinit_samples: L(int(1, ">= 1")),
  ...Object.fromEntries(Object.entries(SELECT_SAE_LEAVES).map(([k, v]) => [k, L(v)])),
};

const OBJECTIVE: Tree = {
  kind: L(z.enum(["vanilla", "matryoshka"], { message: 'must be "vanilla" or "matryoshka"' })),
  sparsity_coeff: L(z.number().min(0, "must be >= 0").finite()),
  n_prefixes: L(int(1, ">= 1")),
};

const TRAIN: Tree = {
  data: { table: DATA },
  n_patches: L(int(1, ">= 1")),
  sae_batch_size: L(int(1, ">= 1").max(1 << 20, "must be <= 1048576")),
  lr: L(posNum),
  n_lr_warmup: L(int(0, ">= 0")),
  n_sparsity_warmup: L(int(0, ">= 0")),
  log_every: L(int(1, ">= 1")),
  seed: L(z.number().int("must be an integer")),
  n_eval: L(int(0, ">= 0")),
  track: L(bool),
  wandb_project: L(text(128).min(1, "must not be empty")),
  wandb_entity: L(z.string({ message: "must be a string or null" }).max(128, "must be at most 128 characters").nullable()),
  tag: L(text(256)),
  tags: L(z.array(z.string({ message: "must be a list of strings" }).max(256, "must be at most 256 characters"), { message: "must be a list of strings" }).max(64, "must hold at most 64 tags"), true),
  sae: { table: SAE },
  objective: { table: OBJECTIVE },
  ...Object.fromEntries(Object.entries(SCHEDULE_LEAVES).map(([k, v]) => [k, L(v)])),
  // Scalars only: they are kept per config (they split groups), so a table or a long list here would be copied
  // into every run (a 945 KB value once took 3.7 GB of heap to expand).
  ...Object.fromEntries(IGNORED_SAEV_KEYS.map((k) => [k, L(IGNORED_VALUE)])),
};

/** Our names for saev's (and DESIGN.md's) aliases. */
const TOP_ALIASES: Record<string, string> = { n_train: "n_patches", batch_size: "sae_batch_size" };
const DATA_ALIASES: Record<string, string> = { shard_root: "url" };

/** Whether a data table uses an alias (applyAliases then copies it). */
function hasDataAlias(d: unknown): boolean {
  if (!isTable(d)) return false;
  for (const a in DATA_ALIASES) if (Object.hasOwn(d, a)) return true;
  return false;
}

/** Per table: our name → the alias the file used, so problems are reported under the name the file wrote. */
const written = new WeakMap<object, Record<string, string>>();

/** `t` with its aliases renamed: a copy when it has any (the parsed tables are not changed), else `t` itself. */
function applyAliases(t: Record<string, unknown>, aliases: Record<string, string>, prefix: string, issues: Issue[]): Record<string, unknown> {
  let copied = false;
  for (const alias in aliases) {
    if (!Object.hasOwn(t, alias)) continue;
    const name = aliases[alias];
    if (!copied) {
      t = { ...t };
      copied = true;
    }
    if (Object.hasOwn(t, name)) issues.push({ field: prefix + alias, message: `is an alias of ${prefix}${name}; give only one` });
    else {
      t[name] = t[alias];
      written.set(t, { ...written.get(t), [name]: alias });
    }
    delete t[alias];
  }
  return t;
}

interface Axis {
  path: string[];
  values: unknown[];
  /** Validates the axis's values (run only once the sweep's size is known to be within the cap). */
  check: () => void;
}

/** Issues collected before giving up: a body of 100 000 unknown keys gets a 400 naming the first ones, not 5 MB. */
const MAX_ISSUES = 50;

/**
 * Checks every key and value of `raw` against `tree`, and collects the axes (lists) in file order. `shown` is the
 * path as the file spelled it (aliases, list indices), for messages; `path` is ours, for the axes. An axis's values
 * are checked later (Axis.check), after the cartesian product is known to be small: a list of 500 000 numbers is
 * refused by its length, not parsed value by value.
 */
function walk(raw: Record<string, unknown>, tree: Tree, path: string[], axes: Axis[], issues: Issue[], shown: string[] = path) {
  for (const [key, value] of Object.entries(raw)) {
    if (issues.length >= MAX_ISSUES) return;
    // Built only for a message: 4096 tables of a data axis walk ~60 000 keys that are fine.
    const field = () => [...shown, written.get(raw)?.[key] ?? key].join(".");
    // Own keys only: "constructor" or "__proto__" are unknown keys, not Object.prototype's.
    const spec = Object.hasOwn(tree, key) ? tree[key] : undefined;
    if (!spec) {
      issues.push({ field: field(), message: "unknown key" });
      continue;
    }
    if ("table" in spec) {
      if (isTable(value)) walk(value, spec.table, [...path, key], axes, issues, [...shown, key]);
      else if (Array.isArray(value) && value.length > 0 && value.every(isTable)) {
        // A list of whole tables (e.g. several datasets) is one axis; its tables may not hold lists themselves.
        const check = () =>
          value.forEach((v, i) => {
            // Most tables (4096 datasets: 4096 URLs) pass every key's plain predicate: nothing to build for them. The
            // others are walked as before, which reports their problems.
            if (tableOk(v as Record<string, unknown>, spec.table)) return;
            const inner: Axis[] = [];
            walk(v as Record<string, unknown>, spec.table, [...path, `${key}[${i}]`], inner, issues, [...shown, `${key}[${i}]`]);
            for (const a of inner) issues.push({ field: a.path.join("."), message: "a list inside a list of tables is not supported" });
          });
        axes.push({ path: [...path, key], values: value, check });
      } else if (Array.isArray(value) && value.length === 0) issues.push({ field: field(), message: "an empty list sweeps nothing" });
      else issues.push({ field: field(), message: "must be a table" });
      continue;
    }
    // A list is an axis, except for list-valued keys (tags), whose axis is a list of lists.
    const isAxis = Array.isArray(value) && (!spec.list || value.some(Array.isArray));
    if (isAxis) {
      const values = value as unknown[];
      if (values.length === 0) issues.push({ field: field(), message: "an empty list sweeps nothing" });
      const check = () => {
        for (let i = 0; i < values.length && issues.length < MAX_ISSUES; i++) {
          if (spec.ok?.(values[i])) continue;
          const r = spec.leaf.safeParse(values[i]);
          if (!r.success) issues.push({ field: `${field()}[${i}]`, message: r.error.issues[0].message });
        }
      };
      axes.push({ path: [...path, key], values, check });
    } else if (!spec.ok?.(value)) {
      const r = spec.leaf.safeParse(value);
      if (!r.success) issues.push({ field: field(), message: r.error.issues[0].message });
    }
  }
}

/**
 * Whether walk would find nothing to report in `t` (a table of a list of tables) on its plain predicates alone: every
 * key known, a leaf with a predicate (Leaf.ok) that accepts its value, no list. False sends it to walk.
 */
function tableOk(t: Record<string, unknown>, tree: Tree): boolean {
  for (const k in t) {
    const spec = Object.hasOwn(tree, k) ? tree[k] : undefined;
    if (!spec || "table" in spec || !spec.ok || Array.isArray(t[k]) || !spec.ok(t[k])) return false;
  }
  return true;
}

function checkDepth(v: unknown): void {
  // Recursion is safe here: it never goes deeper than MAX_DEPTH. The path is built only on the way out of a failure.
  const tooDeep = (x: unknown, depth: number): string[] | null => {
    if (typeof x !== "object" || x === null) return null;
    if (depth >= MAX_DEPTH) return [];
    if (Array.isArray(x)) {
      for (let i = 0; i < x.length; i++) {
        const at = typeof x[i] === "object" && x[i] !== null ? tooDeep(x[i], depth + 1) : null;
        if (at) return [`[${i}]`, ...at];
      }
    } else {
      // No table of a sweep file has more than a few dozen keys: 100 000 of them are refused by their count.
      let n = 0;
      for (const k in x) if (Object.hasOwn(x, k)) n++;
      if (n > MAX_TABLE_KEYS) throw badRequest("too_many_keys", `a table with ${n} keys; a sweep file's tables have at most ${MAX_TABLE_KEYS}`, "body");
      for (const k in x) {
        const at = tooDeep((x as Record<string, unknown>)[k], depth + 1);
        if (at) return [`.${k}`, ...at];
      }
    }
    return null;
  };
  const at = tooDeep(v, 0);
  if (at) throw badRequest("too_deep", `nested more than ${MAX_DEPTH} levels deep (a sweep file needs at most 7)`, at.join("").replace(/^\./, "") || "body");
}

/**
 * Bytes of run configs the sweep would store beyond what every run shares: each axis value is stored once per run
 * that takes it (total / its axis's length runs), computed from the axes alone, before anything is expanded.
 */
export function expandedBytes(axes: { values: unknown[] }[], total: number): number {
  let bytes = 0;
  for (const a of axes) {
    // The values' JSON lengths summed: one JSON.stringify of the list, less its brackets and commas (3x faster than
    // one call per value on 4096 data tables; a value JSON cannot hold is "null" either way).
    const n = a.values.length;
    if (n) bytes += (JSON.stringify(a.values).length - 2 - (n - 1)) * (total / n);
  }
  return bytes;
}

/** Most bytes of per-run config one sweep may store (its runs' differences from what they share). */
export const MAX_EXPANDED_BYTES = 8 << 20;

/**
 * Most characters of JSON one character of a sweep file's text can become, in JSON.stringify of the values parsed
 * from it: a lone surrogate (1 → 6, `\udXXX`), an escape (`\u0000` 6 → 6), a number (`1e20` 4 → 21, 5.25×), a bare
 * TOML key (`a` 1 → 3 with its quotes), a date (`1979-05-27` 10 → 26); everything else gives at most 2.
 */
const MAX_JSON_PER_CHAR = 6;

/**
 * Whether the axes cannot store more than MAX_EXPANDED_BYTES, proven without serializing the axes taken once per run:
 * an axis as long as the sweep is stored once (total / n = 1), and such axes are distinct lists of a text of
 * `sourceChars` characters, so together they serialize to at most MAX_JSON_PER_CHAR × sourceChars. The shorter
 * axes (stored several times each) are counted exactly. 4096 datasets: a 950 KB JSON.stringify (~3 ms) not done.
 */
function withinExpandedBytes(axes: { values: unknown[] }[], total: number, sourceChars: number): boolean {
  const once = MAX_JSON_PER_CHAR * sourceChars;
  return once <= MAX_EXPANDED_BYTES && once + expandedBytes(axes.filter((a) => a.values.length !== total), total) <= MAX_EXPANDED_BYTES;
}

/** Most metric rows one run may log (n_steps / log_every): 4 096 runs of 10 000 rows are ~4 GB of D1. */
export const MAX_METRIC_ROWS_PER_RUN = 10_000;

/**
 * The tables one config copies from the file's (each once, parents first), so that it can set its axes' values
 * without touching what the other configs share: the parents of the axes' paths, as paths.
 */
function tablesToCopy(axes: Axis[]): string[][] {
  const seen = new Map<string, string[]>();
  for (const a of axes) for (let n = 1; n < a.path.length; n++) seen.set(a.path.slice(0, n).join("."), a.path.slice(0, n));
  return [...seen.values()].sort((x, y) => x.length - y.length);
}

/** Keys of the file (ours) that CANNOT_PARALLELIZE's resolved values are read from (resolve: data reads sae.d_vit and n_patches). */
const GROUPING_INPUTS = [...CANNOT_PARALLELIZE.filter((k) => !k.startsWith("data")), "data"].map((k) => k.split("."));

/**
 * Leaves that resolve copies into the config unchanged (`cfg.x = o.x ?? default`) and that no check of resolve reads:
 * an axis on one of these changes that leaf only, so configs that differ only in them (and in seed) are resolved once
 * (expandSweep). None of them is a grouping input. seed is handled apart: it also feeds sae.seed when that is unset.
 */
const SELF_ONLY = new Set([
  "lr",
  "n_lr_warmup",
  "n_sparsity_warmup",
  "n_eval",
  "tags",
  ...Object.keys(SCHEDULE_LEAVES),
  "objective.sparsity_coeff",
  ...["normalize_w_dec", "remove_parallel_grads", "seed", "init_threshold", "bandwidth", "n_reinit_samples", "threshold_beta", "aux_coeff", "dead_after"].map((k) => `sae.${k}`),
]);

/** Whether an axis can change a config's group: its path and a grouping input's are one the other's prefix. */
const groups = (a: Axis) => GROUPING_INPUTS.some((g) => g.every((p, i) => i >= a.path.length || a.path[i] === p));

function fail(issues: Issue[], code = "invalid_sweep"): never {
  const message = issues.map((i) => `${i.field}: ${i.message}`).join("; ");
  throw badRequest(code, message, issues[0].field, issues);
}

// ---------------------------------------------------------------------------------------------------------------
// Expansion and defaults

/**
 * Validates, expands and resolves a parsed sweep file. Throws ApiError(400) naming every bad key. `sourceChars`, the
 * length of the text `parsed` was parsed from (when the caller knows it), lets the stored-bytes cap be proven on a
 * bound rather than computed (withinExpandedBytes); the outcome is the same.
 */
export function expandSweep(parsed: unknown, maxRuns = 4096, sourceChars?: number): ExpandedSweep {
  const warnings: string[] = [];
  const issues: Issue[] = [];
  if (!isTable(parsed)) fail([{ field: "body", message: "a sweep file must be a table (TOML) or an object (JSON)" }]);
  if (!SCANNED.has(parsed)) checkDepth(parsed);
  // Not cloned (a clone of 4096 data tables cost ~8 ms): nothing below writes into the parsed tables; aliases are
  // renamed in copies of the tables that have them, and expansion copies the tables on its axes' paths.
  let raw: Record<string, unknown> = "parameters" in parsed ? fromWandb(parsed, warnings, issues) : { ...parsed };
  raw = applyAliases(raw, TOP_ALIASES, "", issues);
  if (isTable(raw.data)) raw.data = applyAliases(raw.data, DATA_ALIASES, "data.", issues);
  else if (Array.isArray(raw.data) && raw.data.some(hasDataAlias))
    raw.data = raw.data.map((d) => (isTable(d) ? applyAliases(d, DATA_ALIASES, "data.", issues) : d));

  const axes: Axis[] = [];
  walk(raw, TRAIN, [], axes, issues);
  if (issues.length) fail(issues);

  for (const k of IGNORED_SAEV_KEYS) if (k in raw) warnings.push(`${k}: a saev key sae-swarm accepts and ignores`);
  const clampGiven = isTable(raw.data) ? "clamp" in raw.data : Array.isArray(raw.data) && raw.data.some((d) => isTable(d) && "clamp" in d);
  if (clampGiven) warnings.push("data.clamp: ignored; activations are always clamped to ±1e5");

  const total = axes.reduce((n, a) => n * a.values.length, 1);
  const sizes = () => axes.map((a) => `${a.path.join(".")} (${a.values.length})`).join(" × ");
  if (total > maxRuns) throw badRequest("sweep_too_large", `the sweep expands to ${total} runs, more than ${maxRuns}: ${sizes()}`, axes[0].path.join("."));
  for (const a of axes) a.check();
  if (issues.length) fail(issues);
  const bytes = sourceChars !== undefined && withinExpandedBytes(axes, total, sourceChars) ? 0 : expandedBytes(axes, total);
  if (bytes > MAX_EXPANDED_BYTES) {
    const biggest = axes.reduce((b, a) => (expandedBytes([a], total) > expandedBytes([b], total) ? a : b));
    throw badRequest(
      "sweep_too_large",
      `the sweep's ${total} runs would store ${(bytes / 2 ** 20).toFixed(1)} MiB of differing config values, more than ${MAX_EXPANDED_BYTES / 2 ** 20} MiB: ${sizes()}`,
      biggest.path.join("."),
    );
  }

  const seedIsAxis = axes.some((a) => a.path.length === 1 && a.path[0] === "seed");
  const configs: ExpandedConfig[] = [];
  const copies = tablesToCopy(axes);
  const grouping = axes.map(groups);
  const dataMemo: DataMemo = {};
  // Axes that set only their own leaf (or seed): the configs that share every other axis's value share one resolved
  // template, and each is that template with its own picks written in (64 lr × 64 seeds resolve 1 config, not 4096).
  const selfOnly = axes.map((a, k) => !grouping[k] && (SELF_ONLY.has(a.path.join(".")) || (a.path.length === 1 && a.path[0] === "seed")));
  const seedAxis = axes.findIndex((a) => a.path.length === 1 && a.path[0] === "seed");
  const baseSeed = (raw.seed as number | undefined) ?? 42;
  const saeAxes = axes.some((a, k) => selfOnly[k] && a.path[0] === "sae");
  const objectiveAxes = axes.some((a, k) => selfOnly[k] && a.path[0] === "objective");
  // Data axes (data as a list of tables, or data.<key> lists of one data table) change only the config's data and,
  // through data.d_vit, sae.d_vit: a config that differs from a template in them too is that template with its data
  // swapped, when its data resolves without a problem to the template's d_vit (otherwise it is resolved whole, which
  // reports the problem as before). 4096 datasets resolve 1 config, not 4096.
  const dataList = axes.findIndex((a) => a.path.length === 1 && a.path[0] === "data");
  const dataLeaves = axes.flatMap((a, k) => (a.path.length === 2 && a.path[0] === "data" ? [k] : []));
  const dataAxes = dataList >= 0 || dataLeaves.length > 0;
  const inTemplate = axes.map((a, k) => !selfOnly[k] && a.path[0] !== "data");
  // The last data table resolved for a template, and what it gave (resolveData reads the template's n_patches and sae.d_vit).
  const swapMemo: { d?: unknown; t?: unknown; out?: { data: DataConfig; d_vit: number } } = {};
  // One array for every config's picks: a template copies what it needs, and a message reads it before the next config.
  const picks: unknown[] = new Array(axes.length);
  const templates = new Map<
    number,
    { cfg: TrainConfig; ignored: Record<string, unknown>; saeSeedFromSeed: boolean; index: number; sae: Record<string, unknown>; nPatches: number }
  >();
  // No clone per config: each config copies only the tables on its axes' paths and points at the picked values
  // (resolve reads them and builds fresh objects), so a config costs the same whatever the file holds besides.
  for (let i = 0; i < total; i++) {
    // The earliest axis varies slowest: index i in mixed radix, last axis fastest. The axes that can change the
    // config's group give its `combo` (splitCfgs keys each combo once, not each config); the others that are not
    // self-only give its template.
    let rest = i;
    let combo = 0;
    let radix = 1;
    let slow = 0;
    let slowRadix = 1;
    for (let a = axes.length - 1; a >= 0; a--) {
      const n = axes[a].values.length;
      const at = rest % n;
      picks[a] = axes[a].values[at];
      rest = Math.floor(rest / n);
      if (grouping[a]) {
        combo += at * radix;
        radix *= n;
      }
      if (inTemplate[a]) {
        slow += at * slowRadix;
        slowRadix *= n;
      }
    }
    const template = templates.get(slow);
    let data: DataConfig | undefined = template?.cfg.data;
    if (template && dataAxes) {
      // The data table resolve would read: the picked table, or the file's with this config's data.<key> picks.
      let d = (dataList >= 0 ? picks[dataList] : raw.data) as Record<string, unknown>;
      if (dataLeaves.length) {
        d = { ...d };
        for (const k of dataLeaves) d[axes[k].path[1]] = picks[k];
      }
      if (swapMemo.d !== d || swapMemo.t !== template) {
        const n = issues.length;
        const out = resolveData(d, template.sae, template.nPatches, issues);
        swapMemo.d = d;
        swapMemo.t = template;
        swapMemo.out = issues.length === n ? out : undefined;
        issues.length = n;
      }
      data = swapMemo.out && swapMemo.out.d_vit === template.cfg.sae.d_vit ? swapMemo.out.data : undefined;
    }
    if (template && data) {
      // resolve(one) for this config would give the template with these leaves set (and its seed, and its data): write
      // them in.
      const cfg = { ...template.cfg } as Record<string, any>;
      if (dataAxes) cfg.data = data;
      const seed = seedAxis >= 0 ? (picks[seedAxis] as number) : baseSeed + i;
      cfg.seed = seed;
      if (saeAxes || template.saeSeedFromSeed) cfg.sae = { ...cfg.sae };
      if (template.saeSeedFromSeed) cfg.sae.seed = seed;
      if (objectiveAxes) cfg.objective = { ...cfg.objective };
      for (let a = 0; a < axes.length; a++) {
        if (!selfOnly[a] || a === seedAxis) continue;
        const path = axes[a].path;
        if (path.length === 1) cfg[path[0]] = picks[a];
        else cfg[path[0]][path[1]] = picks[a];
      }
      configs.push({ cfg: cfg as TrainConfig, ignored: template.ignored, combo, base: template.index });
      continue;
    }
    const one: Record<string, unknown> = { ...raw };
    for (const path of copies) {
      let t = one;
      for (let k = 0; k < path.length - 1; k++) t = t[path[k]] as Record<string, unknown>;
      const last = path[path.length - 1];
      t[last] = { ...(t[last] as Record<string, unknown>) };
    }
    for (let a = 0; a < axes.length; a++) {
      const path = axes[a].path;
      let t = one;
      for (let k = 0; k < path.length - 1; k++) t = t[path[k]] as Record<string, unknown>;
      t[path[path.length - 1]] = picks[a];
    }
    const resolved = resolve(one, i, seedIsAxis, issues, dataMemo);
    if (resolved) {
      resolved.combo = combo;
      // A config resolved whole although its template exists (its data resolves to another d_vit) is no template.
      if (!template) {
        resolved.base = configs.length;
        const sae = (one.sae ?? {}) as Record<string, unknown>;
        templates.set(slow, { cfg: resolved.cfg, ignored: resolved.ignored, saeSeedFromSeed: sae.seed === undefined, index: configs.length, sae, nPatches: resolved.cfg.n_patches });
      }
      configs.push(resolved);
    }
    if (issues.length) {
      // Name the config when the problem depends on a swept value.
      const where = axes.length ? ` (config ${i}: ${axes.map((a, k) => `${a.path.join(".")}=${JSON.stringify(picks[k])}`).join(", ")})` : "";
      fail(issues.map((iss) => ({ ...iss, message: iss.message + where })));
    }
  }
  warnings.push(...selectWarnings(raw, configs.map((c) => c.cfg)));
  // Only the URLs warned about are deduplicated (hashing 4096 distinct URLs of ~200 characters costs more than the test).
  const urls = new Set<string>();
  let seen: DataConfig | undefined;
  for (const c of configs) {
    // Configs that share a DataConfig object (all those that do not sweep data) are looked at once.
    const d = c.cfg.data;
    if (d === seen) continue;
    seen = d;
    if (d.kind === "shards" && !/^https?:\/\//.test(d.url)) urls.add(d.url);
  }
  for (const u of urls) warnings.push(`data.url: ${JSON.stringify(u)} is not an HTTP(S) URL; runners resolve it themselves`);
  const written = [["seed"], ["sae", "seed"], ...axes.filter((a, k) => selfOnly[k]).map((a) => a.path)];
  return { configs, warnings, written };
}

// The data keys of one kind only, as constants: resolveData runs once per data table (4096 datasets), and a list
// literal in its loops was an array allocated per call.
const SHARDS_ONLY = ["url", "layer", "patches", "scale_mean", "scale_norm", "n_random_samples", "clamp"];
const SYNTHETIC_ONLY = ["d_vit", "n_features", "sparsity", "noise", "n_examples"];
const SYNTHETIC_REQUIRED = ["n_features", "sparsity"];

/** The DataConfig a config's data table, [sae] table and n_patches resolve to, and the SAE's d_vit. */
function resolveData(d: Record<string, any>, s: Record<string, any>, n_patches: number, issues: Issue[]): { data: DataConfig; d_vit: number } {
  const kind = d.kind ?? (d.url !== undefined ? "shards" : d.n_features !== undefined || d.d_vit !== undefined ? "synthetic" : "shards");
  let data: DataConfig;
  let d_vit: number = s.d_vit ?? 1024;
  if (kind === "synthetic") {
    for (const k of SHARDS_ONLY)
      if (k in d) issues.push({ field: `data.${k}`, message: 'applies to data.kind = "shards" only' });
    const dv = d.d_vit ?? s.d_vit;
    if (dv === undefined) issues.push({ field: "data.d_vit", message: "is required for synthetic data (or give sae.d_vit)" });
    if (d.d_vit !== undefined && s.d_vit !== undefined && d.d_vit !== s.d_vit)
      issues.push({ field: "sae.d_vit", message: `must equal data.d_vit (${d.d_vit}), got ${s.d_vit}` });
    for (const k of SYNTHETIC_REQUIRED) if (d[k] === undefined) issues.push({ field: `data.${k}`, message: "is required for synthetic data" });
    d_vit = dv;
    // Keys in sorted order (here and below): its JSON is then the sorted JSON a group key holds (dataJson).
    data = {
      d_vit: dv,
      kind: "synthetic",
      n_examples: d.n_examples ?? n_patches,
      n_features: d.n_features,
      noise: d.noise ?? 0,
      seed: d.seed ?? 0,
      sparsity: d.sparsity,
    };
  } else {
    for (const k of SYNTHETIC_ONLY)
      if (k in d) issues.push({ field: `data.${k}`, message: 'applies to data.kind = "synthetic" only' });
    data = {
      kind: "shards",
      layer: d.layer ?? -2,
      n_random_samples: d.n_random_samples ?? 2 ** 19,
      patches: d.patches ?? "patches",
      scale_mean: d.scale_mean ?? true,
      scale_norm: d.scale_norm ?? true,
      // A constant default: the data must be equal across a group, and config seeds differ.
      seed: d.seed ?? 0,
      url: d.url ?? "./shards",
    };
  }
  return { data, d_vit };
}

/** No ignored saev keys (most configs): one shared object rather than one each. */
const NONE: Record<string, unknown> = Object.freeze({}) as Record<string, unknown>;

/**
 * The data half of resolve, remembered for its last inputs: configs that differ in no data key, sae.d_vit or
 * n_patches (every config of a sweep that does not sweep these) share one DataConfig object and its checks.
 */
interface DataMemo {
  d?: Record<string, any>;
  sdv?: unknown;
  np?: number;
  out?: { data: DataConfig; d_vit: number };
}

function resolve(o: Record<string, any>, i: number, seedIsAxis: boolean, issues: Issue[], memo: DataMemo = {}): ExpandedConfig | null {
  let ignored = NONE;
  for (const k of IGNORED_SAEV_KEYS) if (k in o) (ignored === NONE ? (ignored = {}) : ignored)[k] = o[k];
  const seed: number = seedIsAxis ? o.seed : (o.seed ?? 42) + i;
  const n_patches: number = o.n_patches ?? 100_000_000;
  const s = o.sae ?? {};
  const obj = o.objective ?? {};
  const d = (o.data ?? {}) as Record<string, any>;
  if (!(memo.out && memo.d === d && memo.sdv === s.d_vit && memo.np === n_patches)) {
    const n = issues.length;
    const out = resolveData(d, s, n_patches, issues);
    Object.assign(memo, { d, sdv: s.d_vit, np: n_patches, out: issues.length === n ? out : undefined });
  }
  const { data, d_vit } = memo.out ?? resolveData(d, s, n_patches, []);
  const cfg: TrainConfig = {
    data,
    n_patches,
    sae_batch_size: o.sae_batch_size ?? 16384,
    lr: o.lr ?? 4e-4,
    n_lr_warmup: o.n_lr_warmup ?? 500,
    n_sparsity_warmup: o.n_sparsity_warmup ?? 0,
    log_every: o.log_every ?? 25,
    seed,
    sae: {
      kind: s.kind ?? "relu",
      d_vit,
      exp_factor: s.exp_factor ?? 16,
      normalize_w_dec: s.normalize_w_dec ?? true,
      remove_parallel_grads: s.remove_parallel_grads ?? true,
      seed: s.seed ?? seed,
      init_threshold: s.init_threshold ?? 0.001,
      bandwidth: s.bandwidth ?? 0.001,
      n_reinit_samples: s.n_reinit_samples ?? 524288,
      ...selectSaeFields(s),
    },
    objective: {
      kind: obj.kind ?? "vanilla",
      sparsity_coeff: obj.sparsity_coeff ?? 4e-4,
      n_prefixes: obj.n_prefixes ?? 10,
    },
    n_eval: o.n_eval ?? 0,
    track: o.track ?? true,
    wandb_project: o.wandb_project ?? "saev",
    wandb_entity: o.wandb_entity === "" ? null : (o.wandb_entity ?? null),
    tag: o.tag ?? "",
    tags: o.tags ?? [],
    ...scheduleFields(o),
  };
  if (issues.length) return null;
  const dSae = cfg.sae.d_vit * cfg.sae.exp_factor;
  if (cfg.objective.kind === "matryoshka" && cfg.objective.n_prefixes > dSae)
    issues.push({ field: "objective.n_prefixes", message: `must be <= d_sae (${dSae})` });
  checkSelect(cfg, issues);
  const steps = nSteps(cfg);
  if (steps > 1e9) issues.push({ field: "n_patches", message: "gives more than 1e9 steps" });
  else if (Math.ceil(steps / cfg.log_every) > MAX_METRIC_ROWS_PER_RUN)
    issues.push({
      field: "log_every",
      message: `logs ${Math.ceil(steps / cfg.log_every)} metric rows per run (n_steps ${steps} / log_every ${cfg.log_every}), more than ${MAX_METRIC_ROWS_PER_RUN}; set log_every >= ${Math.ceil(steps / MAX_METRIC_ROWS_PER_RUN)}`,
    });
  return issues.length ? null : { cfg, ignored };
}

/**
 * The config a sweep of nothing resolves to: every key a TrainConfig has, in the order resolve writes them. The
 * Worker serves stored configs in this key order (run-config.ts fullConfig), whatever part of D1 held each key.
 */
export const DEFAULT_CONFIG: TrainConfig = resolve({}, 0, false, [])!.cfg;

// ---------------------------------------------------------------------------------------------------------------
// Grouping

/** JSON with object keys sorted at every depth (Python's json.dumps(sort_keys=True) order). */
export function sortedJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(sortedJson).join(",")}]`;
  if (isTable(v)) {
    const keys = Object.keys(v).sort();
    // A flat table (a DataConfig): JSON.stringify writes the keys in the order of its replacer list, natively.
    if (keys.every((k) => v[k] !== undefined && (typeof v[k] !== "object" || v[k] === null))) return JSON.stringify(v, keys);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${sortedJson(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v ?? null);
}

/** CANNOT_PARALLELIZE in sorted order (the key's order), each with its JSON name and where its value is read. */
const KEY_PARTS = [...CANNOT_PARALLELIZE].sort().map((name) => ({
  prefix: JSON.stringify(name) + ":",
  ignored: (IGNORED_SAEV_KEYS as readonly string[]).includes(name),
  name,
  path: name.split("."),
}));

/** A DataConfig's sorted JSON (what groups.data stores). */
export function dataJson(data: DataConfig): string {
  return flatSorted(data) ? JSON.stringify(data) : sortedJson(data);
}

/** A table whose keys are in sorted order and whose values are all set and not objects (resolve's DataConfig). */
function flatSorted(t: object): boolean {
  let prev = "";
  for (const k in t) {
    const v = (t as Record<string, unknown>)[k];
    if (k < prev || v === undefined || (typeof v === "object" && v !== null)) return false;
    prev = k;
  }
  return true;
}

/** The CANNOT_PARALLELIZE values of one config but data, in KEY_PARTS's order (data's slot left undefined), into `out`. */
function keyValues(c: ExpandedConfig, out: unknown[]): unknown[] {
  for (let i = 0; i < KEY_PARTS.length; i++) {
    const p = KEY_PARTS[i];
    let v: any;
    if (p.name === "data") v = undefined;
    else if (p.ignored) v = c.ignored[p.name];
    else {
      v = c.cfg;
      for (const k of p.path) v = v?.[k];
    }
    out[i] = v;
  }
  return out;
}

/** A group key's text before and after its data (the key is head + data's sorted JSON + tail), from keyValues. */
function keyAround(values: unknown[]): [string, string] {
  let head = "{";
  let tail = "";
  let out = "";
  for (let i = 0; i < KEY_PARTS.length; i++) {
    const p = KEY_PARTS[i];
    out += (i ? "," : "") + p.prefix;
    if (p.name === "data") {
      head += out;
      out = "";
      continue;
    }
    const v = values[i];
    out += typeof v === "object" && v !== null ? sortedJson(v) : JSON.stringify(v ?? null);
  }
  tail = out + "}";
  return [head, tail];
}

/**
 * The key's text without its data (`{"ckpt_path":null,"device":null,…}`): what groups.key stores, the data being
 * groups.data (storing it twice made 4096 datasets' group rows 1.6× as long).
 */
function keyWithoutData([head, tail]: [string, string]): string {
  let h = head.slice(0, -DATA_PREFIX.length);
  if (h.endsWith(",")) h = h.slice(0, -1);
  return h === "{" && tail.startsWith(",") ? h + tail.slice(1) : h + tail;
}

const DATA_PREFIX = JSON.stringify("data") + ":";

/** The CANNOT_PARALLELIZE values of one config, keyed by their dotted names, as sorted JSON. */
export function groupKey(c: ExpandedConfig, data = dataJson(c.cfg.data)): string {
  const [head, tail] = keyAround(keyValues(c, new Array(KEY_PARTS.length)));
  return head + data + tail;
}

/**
 * saev's split_cfgs: configs that differ in no CANNOT_PARALLELIZE key share a group; groups in order of first
 * appearance, configs in their order inside a group.
 */
export function splitCfgs<T extends ExpandedConfig>(cfgs: T[]): T[][] {
  return keyedGroups(cfgs).map((g) => g.members);
}

/** splitCfgs with each group's key (groupKey of its configs) and its data's sorted JSON (dataJson). */
export function keyedGroups<T extends ExpandedConfig>(cfgs: T[]): { key: string; data: string; members: T[] }[] {
  const { groups, of } = groupIndex(cfgs);
  const out = groups.map(({ around, data }) => ({ key: around[0] + data + around[1], data, members: [] as T[] }));
  for (let i = 0; i < cfgs.length; i++) out[of[i]].members.push(cfgs[i]);
  return out;
}

/**
 * The DataConfigs' JSON texts (as JSON.stringify of each), from one JSON.stringify of the list: one native call
 * rather than one per config (4096 datasets: ~2.5 ms against ~5 ms cold). Each DataConfig is a flat table (resolveData
 * builds them: scalars only, never empty), so its text is a "{…}" holding no other brace pair, and the texts are cut
 * where `},{"` stands: inside a JSON string every '"' is escaped (`\"`), so that sequence is never part of one.
 * Undefined where the cut does not find one text per table (never, for resolveData's tables).
 */
function dataJsonBatch(datas: DataConfig[]): string[] | undefined {
  const all = JSON.stringify(datas);
  const out: string[] = new Array(datas.length);
  let from = 1;
  for (let k = 0; k < datas.length - 1; k++) {
    const at = all.indexOf('},{"', from);
    if (at < 0) return undefined;
    out[k] = all.slice(from, at + 1);
    from = at + 2;
  }
  if (datas.length) out[datas.length - 1] = all.slice(from, all.length - 1);
  return all.indexOf('},{"', from) < 0 ? out : undefined;
}

/** A combo groupIndex caches in an array: a small integer, below the number of configs. */
const smallCombo = (combo: number | undefined, n: number): combo is number => combo !== undefined && combo >= 0 && combo < n && Number.isInteger(combo);

/**
 * The data texts groupIndex's loop will read, serialized in one call (dataJsonBatch), in the order it reads them: of
 * the configs it keys (the first of each combo) those that have a base (expandSweep's: their DataConfigs come from
 * resolveData, flat with sorted keys), a config that shares the DataConfig object of the one before sharing its text.
 * Its own function, not a loop inside groupIndex: V8 then compiles two small loops, not one big function on stack.
 */
function batchedDataTexts(cfgs: ExpandedConfig[]): string[] | undefined {
  const seenCombo = new Uint8Array(cfgs.length);
  const batch: DataConfig[] = [];
  for (const c of cfgs) {
    if (smallCombo(c.combo, cfgs.length)) {
      if (seenCombo[c.combo]) continue;
      seenCombo[c.combo] = 1;
    }
    if (c.base !== undefined && c.cfg.data !== batch[batch.length - 1]) batch.push(c.cfg.data);
  }
  return batch.length > 1 ? dataJsonBatch(batch) : undefined;
}

/**
 * The groups of keyedGroups without a list of members each (4096 groups of one config made 8192 small arrays): each
 * group's key as the text around its data (`around`: the key is around[0] + data + around[1]; one pair shared by the
 * groups that differ in data only), its key without the data (`rest`, what groups.key stores), data, first config and
 * size, in order of first appearance, and each config's group (`of`).
 */
export function groupIndex(cfgs: ExpandedConfig[]): { groups: { around: [string, string]; rest: string; data: string; first: number; n: number }[]; of: Int32Array } {
  type Group = { around: [string, string]; rest: string; data: string; first: number; n: number; g: number };
  const groups: Group[] = [];
  const of = new Int32Array(cfgs.length);
  // By the key's text around its data, then by the data: the ~450-byte keys are built once per group, not hashed per
  // config (the text around is one string while it stays the same, its hash computed once).
  const byAround = new Map<string, Map<string, Group>>();
  // By combo (a small integer, below the number of configs when expandSweep set it): an array, not a Map. A combo
  // outside it is not cached (its group is found by key, the same group).
  const groupOfCombo: (Group | undefined)[] = new Array(cfgs.length);
  // The key's text around its data, kept while the configs' other grouping values stay the same (4096 datasets
  // differ in data only: the other ~15 values are serialized once, not 4096 times). Configs copied from one base
  // share them (ExpandedConfig.base): not even read again.
  const values: unknown[] = new Array(KEY_PARTS.length);
  let last: unknown[] | undefined;
  let lastBase: number | undefined;
  let around: [string, string] = ["", ""];
  let rest = "";
  let inner: Map<string, Group> | undefined;
  const texts = batchedDataTexts(cfgs);
  let next = 0;
  let prevData: DataConfig | undefined;
  let prevText = "";
  for (let i = 0; i < cfgs.length; i++) {
    const c = cfgs[i];
    const combo = c.combo;
    const isSmall = smallCombo(combo, cfgs.length);
    let g = isSmall ? groupOfCombo[combo] : undefined;
    if (g === undefined) {
      // A config with a base comes from expandSweep, whose DataConfigs (resolveData) are flat with sorted keys.
      let data: string;
      if (c.base === undefined) data = dataJson(c.cfg.data);
      else if (c.cfg.data === prevData) data = prevText;
      else {
        data = texts ? texts[next++] : JSON.stringify(c.cfg.data);
        prevData = c.cfg.data;
        prevText = data;
      }
      if (!inner || c.base === undefined || c.base !== lastBase) {
        keyValues(c, values);
        if (!inner || !last || values.some((v, k) => v !== last![k])) {
          around = keyAround(values);
          rest = keyWithoutData(around);
          last = values.slice();
          const a = `${around[0]}\u0000${around[1]}`;
          inner = byAround.get(a);
          if (!inner) byAround.set(a, (inner = new Map()));
        }
        lastBase = c.base;
      }
      g = inner.get(data);
      if (!g) {
        g = { around, rest, data, first: i, n: 0, g: groups.length };
        inner.set(data, g);
        groups.push(g);
      }
      if (isSmall) groupOfCombo[combo] = g;
    }
    g.n++;
    of[i] = g.g;
  }
  return { groups, of };
}
