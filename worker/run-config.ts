/**
 * How a run's TrainConfig is stored in D1, and the one way to read it back whole.
 *
 * A sweep's runs mostly share their config: storing every run's full config repeated it thousands of times (a
 * 66 KB sweep file once stored 88 MB). So D1 keeps three parts:
 *   - sweeps.cfg_shared: every key whose value all runs of the sweep share (nested like TrainConfig, without data);
 *   - groups.data: the DataConfig, which all runs of a group share by construction (data is CANNOT_PARALLELIZE);
 *   - runs.cfg: only the keys where the run differs from cfg_shared (its seed, at least, unless seed was swept).
 * fullConfig merges them, in the key order resolve gives. Rows written before this split have cfg_shared = '{}'
 * and a full runs.cfg, which merges to the same config.
 */
import type { TrainConfig } from "../shaders/config";
import { DEFAULT_CONFIG } from "./sweep";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Table = { [k: string]: Json };

const isTable = (v: unknown): v is Table => typeof v === "object" && v !== null && !Array.isArray(v);

/** Paths of a config's leaves (arrays are leaves), in key order, each as its parts. */
function leafPaths(t: Table, prefix: string[], out: string[][]) {
  for (const k in t) {
    const v = t[k];
    if (isTable(v)) leafPaths(v, [...prefix, k], out);
    else out.push([...prefix, k]);
  }
  return out;
}

/** How many leaves a config has outside `data` (no allocation). */
function countLeaves(t: Table, top = true): number {
  let n = 0;
  for (const k in t) {
    if (top && k === "data") continue;
    const v = t[k];
    n += isTable(v) ? countLeaves(v, false) : 1;
  }
  return n;
}

function get(t: Table, path: string[]): Json | undefined {
  let at: Json | undefined = t;
  for (const p of path) at = isTable(at) ? at[p] : undefined;
  return at;
}

/** A reader of one leaf path; the one- and two-part paths TrainConfig has get a direct one (no loop per read). */
function reader(path: string[]): (t: Table) => Json | undefined {
  const [a, b] = path;
  if (path.length === 1) return (t) => t[a];
  if (path.length === 2) return (t) => (t[a] as Table | undefined)?.[b];
  return (t) => get(t, path);
}

/** Equal leaves: the same scalar, or arrays of the same scalars (TrainConfig's only arrays are tags). */
function same(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i] && JSON.stringify(a[i]) !== JSON.stringify(b[i])) return false;
  return true;
}

function setLeaf(t: Table, parts: string[], value: Json) {
  let at = t;
  for (let i = 0; i < parts.length - 1; i++) at = (isTable(at[parts[i]]) ? at[parts[i]] : (at[parts[i]] = {})) as Table;
  at[parts[parts.length - 1]] = value;
}

/**
 * Splits a sweep's configs (data left out: it goes to its group) into what every config shares and what each sets
 * differently. Every config has the same keys (resolve fills them all), so the leaves are listed once, from the
 * first config, and each config is read along those paths: linear in configs × leaves, nothing serialized, nothing
 * allocated per leaf. Keys only some configs have (none today) are found too and count as differing.
 *
 * `copies` (from expandSweep) says which configs are copies of another: copies.bases[c], where not c itself, is a
 * config that config c equals but in data and the leaves copies.written lists; c's other leaves are then compared
 * through its base (4096 datasets copied from one config compare 2 leaves each, not ~45).
 *
 * Each config's delta comes as its JSON text (`deltaJson(c)`: the JSON of c's differing leaves, nested as in the
 * config), written without building the table: planSweep stores only the text, and 4096 runs made 8192 small
 * objects to serialize once.
 */
export function splitSharedJson(
  cfgs: TrainConfig[],
  copies?: { bases: (number | undefined)[]; written: string[][] },
): { shared: Table; deltaJson: (c: number) => string } {
  const tables = cfgs as unknown as Table[];
  const { shared, varying } = sharedLeaves(tables, copies);
  const read = varying.map(reader);
  // The text between the values, from the delta of placeholders (a string each, in setLeaf's nesting and order):
  // `{"seed":` · seed · `,"sae":{"seed":` · sae.seed · `}}`. A leaf goes into its table wherever that was first
  // written, so the text's order of leaves (`order`) need not be varying's.
  const mark = (j: number) => `\u0000${j}\u0000`;
  const template = JSON.stringify(delta({}, varying, varying.map((_, j) => () => mark(j))));
  const parts = template.split(/"\\u0000(\d+)\\u0000"/);
  const between = parts.filter((_, k) => k % 2 === 0);
  const order = parts.filter((_, k) => k % 2 === 1).map(Number);
  const whole = (c: number) => JSON.stringify(delta(tables[c], varying, read));
  // (a key holding the placeholder's text would split it elsewhere: no TrainConfig key does, but then each is built)
  if (order.length !== read.length || new Set(order).size !== order.length) return { shared, deltaJson: whole };
  const readInOrder = order.map((j) => read[j]);
  return {
    shared,
    deltaJson: (c) => {
      const t = tables[c];
      let out = between[0];
      for (let k = 0; k < readInOrder.length; k++) {
        const v = readInOrder[k](t);
        // An unset leaf is left out of the delta, and may change where its table is written: built and serialized.
        if (v === undefined) return whole(c);
        out += JSON.stringify(v) + between[k + 1];
      }
      return out;
    },
  };
}

/** Config `t`'s leaves at `varying` (read through `read`), nested as in the config; unset ones left out. */
function delta(t: Table, varying: string[][], read: ((t: Table) => Json | undefined)[]): Table {
  const d: Table = {};
  for (let j = 0; j < varying.length; j++) {
    const v = read[j](t);
    if (v !== undefined) setLeaf(d, varying[j], v);
  }
  return d;
}

/** What splitSharedJson computes before the deltas: the shared table, and the leaf paths where configs differ. */
function sharedLeaves(tables: Table[], copies?: { bases: (number | undefined)[]; written: string[][] }): { shared: Table; varying: string[][] } {
  const shared: Table = {};
  if (!tables.length) return { shared, varying: [] };
  const paths = leafPaths(tables[0], [], []).filter((p) => p[0] !== "data");
  const first = paths.map((p) => get(tables[0], p));
  const varies = paths.map(() => false);
  const readers = paths.map(reader);
  const n0 = paths.length;
  const written = copies ? new Set(copies.written.map((p) => p.join("."))) : new Set<string>();
  const own = paths.flatMap((p, j) => (written.has(p.join(".")) ? [j] : []));
  const every = paths.map((_, j) => j);
  for (let c = 1; c < tables.length; c++) {
    const b = copies?.bases[c];
    // a copy can differ from the first config only where it differs from its base
    for (const j of b !== undefined && b !== c ? own : every) if (!varies[j] && !same(readers[j](tables[c]), first[j])) varies[j] = true;
  }
  // Every config has the first one's keys (resolve fills them all); counted on the last, as a guard.
  if (countLeaves(tables[tables.length - 1]) !== n0) {
    // Some config has keys the first lacks: add them as differing.
    const known = new Set(paths.map((p) => p.join(".")));
    for (const t of tables)
      for (const p of leafPaths(t, [], []))
        if (p[0] !== "data" && !known.has(p.join("."))) {
          known.add(p.join("."));
          paths.push(p);
          varies.push(true);
        }
  }
  paths.forEach((p, j) => {
    if (!varies[j]) setLeaf(shared, p, first[j]!);
  });
  return { shared, varying: paths.filter((_, j) => varies[j]) };
}

function merge(base: Table, over: Table): Table {
  const out: Table = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isTable(v) && isTable(out[k]) ? merge(out[k] as Table, v) : v;
  return out;
}

/**
 * `t` with its keys in `ref`'s order, at every depth where both hold a table; keys `ref` lacks follow in `t`'s order.
 * A leaf of `ref` (data below) leaves the value under it as it is.
 */
function ordered(t: Table, ref: Table): Table {
  const out: Table = {};
  for (const k in ref) {
    if (!Object.hasOwn(t, k)) continue;
    const v = t[k], r = ref[k];
    out[k] = isTable(v) && isTable(r) ? ordered(v, r) : v;
  }
  for (const k in t) if (!Object.hasOwn(out, k)) out[k] = t[k];
  return out;
}

/** resolve's key order (data first; the DataConfig is stored whole, its keys already sorted, so it is a leaf here). */
const ORDER: Table = { ...(DEFAULT_CONFIG as unknown as Table), data: null };

/**
 * The run's full TrainConfig from its stored parts (JSON text of sweeps.cfg_shared, runs.cfg and groups.data), with
 * its keys in the order resolve gives them. The merge alone puts a run's own keys after the shared ones, so the same
 * config came back in another key order depending on what its sweep-mates shared (a run alone in its sweep shares
 * everything): JSON.stringify of one config, e.g. a checkpoint's `config` metadata, then differed between a grouped
 * sweep and separate ones.
 */
export function fullConfig(parts: { shared: string; cfg: string; data: string }): TrainConfig {
  const cfg = merge(JSON.parse(parts.shared) as Table, JSON.parse(parts.cfg) as Table);
  return ordered({ ...cfg, data: JSON.parse(parts.data) }, ORDER) as unknown as TrainConfig;
}

/**
 * Columns (shared, cfg, data) and joins for reading runs `r` with fullConfig: `SELECT r.id, ${RUN_CONFIG_COLUMNS}
 * FROM runs r ${RUN_CONFIG_JOINS} WHERE …`.
 */
export const RUN_CONFIG_COLUMNS = `s.cfg_shared AS shared, r.cfg AS cfg, g.data AS data`;
export const RUN_CONFIG_JOINS = `JOIN sweeps s ON s.id = r.sweep_id JOIN groups g ON g.id = r.group_id`;

/** SQL for one numeric config value of run `r` (the run's own, else the sweep's shared one), e.g. "$.sae.d_vit". */
export const runConfigValueSql = (jsonPath: string) =>
  `COALESCE(json_extract(r.cfg, '${jsonPath}'), (SELECT json_extract(cfg_shared, '${jsonPath}') FROM sweeps WHERE sweeps.id = r.sweep_id))`;

/** One run's full TrainConfig, or null when there is no such run. */
export async function runConfig(d1: D1Database, runId: string): Promise<TrainConfig | null> {
  const row = await d1
    .prepare(`SELECT ${RUN_CONFIG_COLUMNS} FROM runs r ${RUN_CONFIG_JOINS} WHERE r.id = ?1`)
    .bind(runId)
    .first<{ shared: string; cfg: string; data: string }>();
  return row ? fullConfig(row) : null;
}
