/**
 * What POST /v1/sweeps computes before it touches D1: parse, validate, expand, group, split each run's config into
 * what the sweep shares and what the run sets, and serialize the rows. Kept apart from the route so that its cost
 * (the Worker CPU a submit takes, apart from D1's own time) can be measured on its own (test/bounds).
 */
import { dSae, nSteps } from "../../shaders/config";
import type { Env } from "../env";
import { settings } from "../env";
import { checkArtifacts } from "../artifacts";
import { expandSweep, groupKey, parseSweepText, splitCfgs, type SweepFormat } from "../sweep";
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
  /** Group rows and run rows as JSON arrays (each at most ~512 KB), inserted through json_each. */
  groupChunks: string[];
  runChunks: string[];
}

export function planSweep(text: string, contentType: string | undefined, id: string, now: number, env: Env): SweepPlan {
  const { raw, format } = parseSweepText(text, contentType);
  const { configs, warnings } = expandSweep(raw, settings(env).maxSweepRuns);
  checkArtifacts(configs.map((x) => x.cfg), env);
  const grouped = splitCfgs(configs);
  const position = new Map(configs.map((cfg, i) => [cfg, i]));
  // Each run stores only where it differs from the sweep's shared keys; its group stores the data (run-config.ts).
  const { shared, deltas } = splitShared(configs.map((c) => c.cfg));
  const groupRows: object[] = [];
  const runRows: object[] = [];
  const groups: { id: string; n_runs: number }[] = [];
  grouped.forEach((members, g) => {
    const groupId = `${id}-g${g}`;
    groups.push({ id: groupId, n_runs: members.length });
    groupRows.push({ id: groupId, sweepId: id, idx: g, createdAt: now, key: groupKey(members[0]), data: JSON.stringify(members[0].cfg.data), nRuns: members.length });
    for (const m of members) {
      const i = position.get(m)!;
      runRows.push({ id: `${id}-r${i}`, sweepId: id, groupId, idx: i, cfg: JSON.stringify(deltas[i]), track: m.cfg.track ? 1 : 0, nSteps: nSteps(m.cfg), dSae: dSae(m.cfg) });
    }
  });
  return { id, now, text, format, warnings, nRuns: configs.length, groups, shared: JSON.stringify(shared), groupChunks: jsonChunks(groupRows), runChunks: jsonChunks(runRows) };
}

/** Rows as JSON arrays of at most ~512 KB each (D1 caps one bound value at 2 MB). */
function jsonChunks(rows: object[], maxBytes = 512 * 1024): string[] {
  const out: string[] = [];
  let part: string[] = [];
  let bytes = 0;
  for (const r of rows) {
    const j = JSON.stringify(r);
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
