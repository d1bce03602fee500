/**
 * Plan identity (issue 15's speed work must not change a byte): planSweep of this tree against another checkout's
 * (PLAN_BASELINE=DIR, its node_modules reachable) on the example sweeps, the bounds' big bodies and PLAN_FUZZ
 * (default 3000) fuzzed sweeps in JSON and TOML, valid and not: the same rows, shared config, groups and warnings
 * to the byte, or the same 4xx (status, code, field, message). Prints the counts; exits 1 on the first difference.
 *   PLAN_BASELINE=/path/to/main node --import tsx test/bench/plan-identity.ts
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { stringify as toToml } from "smol-toml";
import { mulberry32 } from "../../runner/data/random";
import { sweepBody } from "./sweep-bodies";
import { parseTomlFast } from "../../worker/toml-fast";

const here = path.resolve(import.meta.dirname, "../..");
const base = path.resolve(process.env.PLAN_BASELINE ?? "");
type Plan = typeof import("../../worker/routes/sweeps-plan");
const load = async (root: string) => (await import(pathToFileURL(path.join(root, "worker/routes/sweeps-plan.ts")).href)) as Plan;
const [a, b] = [await load(here), await load(base)];
const env = {} as never;

function outcome(p: Plan, text: string, ct: string): string {
  try {
    const r = p.planSweep(text, ct, "sw_0123456789abcdef", 1_700_000_000_000, env);
    return JSON.stringify({ n: r.nRuns, g: r.groups, s: r.shared, gc: r.groupChunks, rc: r.runChunks, w: r.warnings, f: r.format });
  } catch (e) {
    const x = e as { status?: number; code?: string; field?: string; message: string; issues?: unknown };
    if (x.status === undefined) return `THROW ${x.message}`;
    return JSON.stringify({ status: x.status, code: x.code, field: x.field, message: x.message, issues: x.issues });
  }
}

const r = mulberry32(Number(process.env.PLAN_SEED ?? 15));
const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
const some = <T>(f: () => T, n: number) => Array.from({ length: n }, f);
function fuzzSweep(): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const big = r() < 0.3;
  // A big list (the fast TOML path's size) mostly of plain URLs, now and then one it must leave to smol-toml.
  const url = () =>
    `https://ex.org/${big && r() < 0.995 ? pick(["a", "b", "c", "d?x=1,y=2", "é"]) : pick(["a", "b", "c", "d?x=1,y=2", "é", 'q"t', "s\\p"])}${big ? "u".repeat(150 + Math.floor(r() * 100)) : ""}`;
  const shard = () => {
    const t: Record<string, unknown> = { url: url() };
    // In a big list, a value it refuses is rare (else nearly every big list is refused).
    const odd = !big || r() < 0.01;
    if (r() < 0.3) t.layer = pick(odd ? [-2, -1, 3, 1.5] : [-2, -1, 3]);
    if (r() < 0.2) t.patches = pick(odd ? ["patches", "cls", "bogus"] : ["patches", "cls"]);
    if (r() < 0.2) t.scale_mean = pick(odd ? [true, false, 1] : [true, false]);
    if (r() < 0.1) t.seed = pick([0, 7, -3]);
    if (odd && r() < 0.05) t.shard_root = "/fs/x";
    if (r() < 0.05) t.clamp = 1e5;
    if (odd && r() < 0.05) t.bogus = 1;
    return t;
  };
  const synth = () => ({ kind: "synthetic", d_vit: pick([8, 16, 8]), n_features: pick([8, 16]), sparsity: pick([0.1, 0.2, 2]) });
  const kind = r();
  if (kind < 0.4) o.data = big ? some(shard, 64 + Math.floor(r() * 200)) : some(r() < 0.8 ? shard : synth, 1 + Math.floor(r() * 6));
  else if (kind < 0.6) o.data = synth();
  else if (kind < 0.8) o.data = shard();
  else if (kind < 0.9) o.data = { ...synth(), d_vit: [8, 16] };
  if (r() < 0.5) o.lr = r() < 0.5 ? pick([1e-4, 3e-4, -1]) : some(() => pick([1e-4, 2e-4, 3e-4, 5e-5]), 1 + Math.floor(r() * 4));
  if (r() < 0.4) o.seed = r() < 0.5 ? pick([0, 42, 7]) : some(() => Math.floor(r() * 100), 1 + Math.floor(r() * 4));
  if (r() < 0.4) o.sae = { exp_factor: r() < 0.5 ? pick([2, 4, 8]) : [2, 4], ...(r() < 0.3 ? { d_vit: pick([8, 16]) } : {}), ...(r() < 0.3 ? { seed: pick([1, [1, 2]]) } : {}), ...(r() < 0.2 ? { kind: pick(["relu", "topk", "jumprelu"]), k: 4 } : {}) };
  if (r() < 0.3) o.n_train = pick([4096, 65536, 1_000_000]);
  if (r() < 0.3) o.batch_size = pick([64, 128, [64, 128]]);
  if (r() < 0.2) o.log_every = pick([1, 25, 1000]);
  if (r() < 0.2) o.tags = r() < 0.5 ? ["a", "b"] : [["a"], ["b", "c"]];
  if (r() < 0.1) o.track = pick([true, false, [true, false]]);
  if (r() < 0.1) o.device = pick(["cuda", ["cpu", "cuda"], { a: 1 }]);
  if (r() < 0.1) o.n_workers = pick([8, [8, 16]]);
  if (r() < 0.1) o.objective = { kind: pick(["vanilla", "matryoshka"]), ...(r() < 0.5 ? { sparsity_coeff: [1e-4, 2e-4] } : {}) };
  if (r() < 0.05) o.bogus = 1;
  return o;
}

/** A value as TOML inline: JSON's spelling of strings, numbers and booleans is TOML's too. */
function inlineToml(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(inlineToml).join(", ")}]`;
  if (typeof v === "object" && v !== null) return `{${Object.entries(v).map(([k, x]) => `${/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k)} = ${inlineToml(x)}`).join(", ")}}`;
  return JSON.stringify(v);
}

let same = 0;
let refused = 0;
let fast = 0;
const check = (name: string, text: string, ct: string) => {
  const x = outcome(a, text, ct);
  const y = outcome(b, text, ct);
  if (x !== y) {
    console.log(`DIFFERENT: ${name} (${ct})\n${text.slice(0, 2000)}\nthis: ${x.slice(0, 2000)}\nbase: ${y.slice(0, 2000)}`);
    process.exit(1);
  }
  same++;
  if (x.startsWith('{"status"')) refused++;
};
const examples = path.join(here, "examples");
for (const f of readdirSync(examples).filter((f) => /\.(toml|json)$/.test(f)))
  check(f, readFileSync(path.join(examples, f), "utf8"), f.endsWith(".json") ? "application/json" : "application/toml");
for (const k of ["json", "toml", "product"] as const) {
  const { text, contentType } = sweepBody(k);
  check(k, text, contentType);
}
const n = Number(process.env.PLAN_FUZZ ?? 3000);
for (let i = 0; i < n; i++) {
  const o = fuzzSweep();
  check(`fuzz ${i} json`, JSON.stringify(o), "application/json");
  let toml: string;
  try {
    toml = toToml(o);
  } catch {
    continue;
  }
  check(`fuzz ${i} toml`, toml, "application/toml");
  // The same data list as one line of inline tables (the fast path's shape, when it is long enough).
  if (Array.isArray(o.data) && o.data.every((d) => typeof d === "object")) {
    const { data, ...rest } = o;
    const inline = `data = [${(data as object[]).map(inlineToml).join(", ")}]\n${toToml(rest)}`;
    check(`fuzz ${i} toml inline`, inline, "application/toml");
    if (parseTomlFast(inline, { maxDepth: 10 })) fast++;
  }
}
console.log(`plan identity: ${same} bodies planned the same (${refused} of them the same 4xx; ${fast} TOML lists read by toml-fast)`);
