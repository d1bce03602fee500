/**
 * What POST /v1/sweeps computes before it touches D1: parse, validate, expand, group, split each run's config into
 * what the sweep shares and what the run sets, and serialize the rows. Kept apart from the route so that its cost
 * (the Worker CPU a submit takes, apart from D1's own time) can be measured on its own (test/bounds).
 */
import { dSae, nSteps } from "../../shaders/config";
import type { Env } from "../env";
import { settings } from "../env";
import { checkArtifacts } from "../artifacts";
import { expandSweep, keyedGroups, parseSweepText, type SweepFormat } from "../sweep";
import { splitShared } from "../run-config";

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
   * Group rows [idx, key, data, n_runs] and run rows [idx, group idx, cfg, track, n_steps, d_sae] (key, data and
   * cfg as JSON objects), as JSON arrays
   * of rows (each at most ~512 KB), inserted through json_each.
   */
  groupChunks: string[];
  runChunks: string[];
}

/** `probe` is called between the phases (test/bounds samples the heap there); the route passes none. */
export function planSweep(text: string, contentType: string | undefined, id: string, now: number, env: Env, probe?: () => void): SweepPlan {
  const { maxSweepRuns } = settings(env);
  const { raw, format } = parseSweepText(text, contentType, maxSweepRuns);
  probe?.();
  const { configs, warnings } = expandSweep(raw, maxSweepRuns);
  probe?.();
  checkArtifacts(configs.map((x) => x.cfg), env);
  const grouped = keyedGroups(configs);
  // Each run stores only where it differs from the sweep's shared keys; its group stores the data (run-config.ts).
  const { shared, deltas } = splitShared(configs.map((c) => c.cfg));
  probe?.();
  // Rows as JSON arrays of their own columns only: the sweep id and the time are bound once per statement, and the
  // ids are built in SQL from the sweep id and the indices (`${id}-g${idx}`, `${id}-r${idx}`).
  const groupRows: string[] = [];
  const runRows: string[] = [];
  const groups: { id: string; n_runs: number }[] = [];
  const position = new Map(configs.map((cfg, i) => [cfg, i]));
  grouped.forEach(({ key, data, members }, g) => {
    groups.push({ id: `${id}-g${g}`, n_runs: members.length });
    const first = members[0].cfg;
    // The key, the data and the runs' cfg are JSON already: they go into the row as JSON values, not as strings
    // holding JSON (no escaping), and SQL reads them back as text with `->`.
    groupRows.push(`[${g},${key},${data},${members.length}]`);
    // The run columns read from the config are the same across a group (n_patches, batch size, d_sae are
    // CANNOT_PARALLELIZE); track is too.
    const tail = `,${first.track ? 1 : 0},${nSteps(first)},${dSae(first)}]`;
    for (const m of members) {
      const i = position.get(m)!;
      runRows.push(`[${i},${g},${JSON.stringify(deltas[i])}${tail}`);
    }
  });
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
