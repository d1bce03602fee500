/**
 * How a run's TrainConfig is stored in D1, and the one way to read it back whole.
 *
 * A sweep's runs mostly share their config: storing every run's full config repeated it thousands of times (a
 * 66 KB sweep file once stored 88 MB). So D1 keeps three parts:
 *   - sweeps.cfg_shared: every key whose value all runs of the sweep share (nested like TrainConfig, without data);
 *   - groups.data: the DataConfig, which all runs of a group share by construction (data is CANNOT_PARALLELIZE);
 *   - runs.cfg: only the keys where the run differs from cfg_shared (its seed, at least, unless seed was swept).
 * fullConfig merges them. Rows written before this split have cfg_shared = '{}' and a full runs.cfg, which merges
 * to the same config.
 */
import type { TrainConfig } from "../shaders/config";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Table = { [k: string]: Json };

const isTable = (v: unknown): v is Table => typeof v === "object" && v !== null && !Array.isArray(v);

/** Leaves of a config by dotted path (arrays are leaves), as JSON text for comparison. */
function leaves(t: Table, prefix: string, out: Map<string, string>) {
  for (const [k, v] of Object.entries(t)) {
    if (isTable(v)) leaves(v, `${prefix}${k}.`, out);
    else out.set(prefix + k, JSON.stringify(v));
  }
  return out;
}

function setLeaf(t: Table, path: string, value: Json) {
  const parts = path.split(".");
  let at = t;
  for (const p of parts.slice(0, -1)) at = (isTable(at[p]) ? at[p] : (at[p] = {})) as Table;
  at[parts[parts.length - 1]] = value;
}

/**
 * Splits a sweep's configs (data left out: it goes to its group) into what every config shares and what each sets
 * differently. Linear in the configs' total size.
 */
export function splitShared(cfgs: TrainConfig[]): { shared: Table; deltas: Table[] } {
  const flats = cfgs.map((c) => {
    const { data: _data, ...rest } = c;
    return leaves(rest as unknown as Table, "", new Map());
  });
  const shared: Table = {};
  const sharedPaths = new Set<string>();
  if (flats.length) {
    for (const [path, json] of flats[0]) {
      if (flats.every((f) => f.get(path) === json)) {
        sharedPaths.add(path);
        setLeaf(shared, path, JSON.parse(json) as Json);
      }
    }
  }
  const deltas = flats.map((f) => {
    const d: Table = {};
    for (const [path, json] of f) if (!sharedPaths.has(path)) setLeaf(d, path, JSON.parse(json) as Json);
    return d;
  });
  return { shared, deltas };
}

function merge(base: Table, over: Table): Table {
  const out: Table = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isTable(v) && isTable(out[k]) ? merge(out[k] as Table, v) : v;
  return out;
}

/** The run's full TrainConfig from its stored parts (JSON text of sweeps.cfg_shared, runs.cfg and groups.data). */
export function fullConfig(parts: { shared: string; cfg: string; data: string }): TrainConfig {
  const cfg = merge(JSON.parse(parts.shared) as Table, JSON.parse(parts.cfg) as Table);
  return { ...cfg, data: JSON.parse(parts.data) } as unknown as TrainConfig;
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
