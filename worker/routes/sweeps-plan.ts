/**
 * What POST /v1/sweeps computes before it touches D1: parse, validate, expand, group, split each run's config into
 * what the sweep shares and what the run sets, and serialize the rows. Kept apart from the route so that its cost
 * (the Worker CPU a submit takes, apart from D1's own time) can be measured on its own (test/bounds).
 */
import { dSae, nSteps, type TrainConfig } from "../../shaders/config";
import type { Env } from "../env";
import { settings } from "../env";
import { checkArtifacts } from "../artifacts";
import { expandSweep, groupIndex, parseSweepText, type SweepFormat } from "../sweep";
import { splitSharedJson } from "../run-config";

export interface SweepPlan {
  id: string;
  now: number;
  text: string;
  format: SweepFormat;
  warnings: string[];
  nRuns: number;
  groups: { id: string; n_runs: number }[];
  /** JSON of what every run shares (sweeps.cfg_shared). */
  shared: string;
  /**
   * Group rows [idx, key without data, data, n_runs] and run rows [idx, group idx, cfg, track, n_steps, d_sae]
   * (key, data and cfg as JSON objects), as JSON arrays of rows (each at most ~512 KB), inserted through json_each.
   */
  groupChunks: string[];
  runChunks: string[];
}

/** `probe` is called between the phases (test/bounds samples the heap there); the route passes none. */
export function planSweep(text: string, contentType: string | undefined, id: string, now: number, env: Env, probe?: () => void): SweepPlan {
  const { maxSweepRuns } = settings(env);
  const { raw, format } = parseSweepText(text, contentType, maxSweepRuns);
  probe?.();
  const { configs, warnings, written } = expandSweep(raw, maxSweepRuns, text.length);
  probe?.();
  const cfgs = configs.map((x) => x.cfg);
  checkArtifacts(cfgs, env);
  const { groups: grouped, of } = groupIndex(configs);
  // Each run stores only where it differs from the sweep's shared keys; its group stores the data (run-config.ts).
  const { shared, deltaJson } = splitSharedJson(
    cfgs,
    written && { bases: configs.map((c) => c.base), written },
  );
  probe?.();
  // Rows as JSON arrays of their own columns only: the sweep id and the time are bound once per statement, and the
  // ids are built in SQL from the sweep id and the indices (`${id}-g${idx}`, `${id}-r${idx}`). The key, the data and
  // the runs' cfg are JSON already: they go into the row as JSON values, not as strings holding JSON (no escaping),
  // and SQL reads them back as text with `->`.
  const groupRows: string[] = new Array(grouped.length);
  const groups: { id: string; n_runs: number }[] = new Array(grouped.length);
  // The run columns read from the config are the same across a group (n_patches, batch size, d_sae are
  // CANNOT_PARALLELIZE); track is too.
  const tails: string[] = new Array(grouped.length);
  // Where each group's runs start in the run rows (runs in group order, in config order inside a group).
  const next = new Int32Array(grouped.length);
  let at = 0;
  let prev: TrainConfig | undefined;
  grouped.forEach(({ rest, data, first, n }, g) => {
    groups[g] = { id: `${id}-g${g}`, n_runs: n };
    groupRows[g] = `[${g},${rest},${data},${n}]`;
    const cfg = cfgs[first];
    // The tail of the group before, when its config agrees on what the tail reads (4096 datasets: one tail).
    const same = prev && cfg.track === prev.track && cfg.n_patches === prev.n_patches && cfg.sae_batch_size === prev.sae_batch_size && dSae(cfg) === dSae(prev);
    tails[g] = same ? tails[g - 1] : `,${cfg.track ? 1 : 0},${nSteps(cfg)},${dSae(cfg)}]`;
    prev = cfg;
    next[g] = at;
    at += n;
  });
  const runRows: string[] = new Array(configs.length);
  for (let i = 0; i < configs.length; i++) {
    const g = of[i];
    runRows[next[g]++] = `[${i},${g},${deltaJson(i)}${tails[g]}`;
  }
  probe?.();
  return { id, now, text, format, warnings, nRuns: configs.length, groups, shared: JSON.stringify(shared), groupChunks: jsonChunks(groupRows), runChunks: jsonChunks(runRows) };
}

/** Rows (JSON each) as JSON arrays of at most ~512 KB each (D1 caps one bound value at 2 MB). */
function jsonChunks(rows: string[], maxBytes = 512 * 1024): string[] {
  const out: string[] = [];
  let part: string[] = [];
  let bytes = 0;
  for (const j of rows) {
    if (part.length && bytes + j.length > maxBytes) {
      out.push(`[${part.join(",")}]`);
      part = [];
      bytes = 0;
    }
    part.push(j);
    bytes += j.length + 1;
  }
  if (part.length) out.push(`[${part.join(",")}]`);
  return out;
}
