/** `sae-swarm retry GROUP_ID|SWEEP_ID`: re-queues a failed group, or every failed group of a sweep. */
import type { RetryResponse } from "../../worker/protocol";
import { apiJson, resolveTarget, parseClientArgs } from "./server";

export const RETRY_USAGE = `usage: sae-swarm retry GROUP_ID|SWEEP_ID [--server URL] [--token T]

Re-queues a failed group (POST /v1/groups/:id/retry), or every failed group of a sweep. Its failed runs wait for
the next runner again and resume from their last checkpoints; failures count afresh.

  --server URL   the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T      the submitter token (env SAE_SWARM_TOKEN; default SUBMIT_TOKEN from ./.dev.vars)
  -h, --help     this help`;

/** Group ids are `${sweep_id}-g${idx}` (worker/sweep.ts). */
const GROUP_ID = /-g\d+$/;

export async function retry(argv: string[]): Promise<number> {
  const args = parseClientArgs(argv, "retry", RETRY_USAGE, { min: 1, max: 1, what: "exactly one GROUP_ID or SWEEP_ID" });
  if (typeof args === "number") return args;
  const { values, positionals } = args;
  const t = resolveTarget(values);
  const id = positionals[0];
  let groups: string[];
  if (GROUP_ID.test(id)) groups = [id];
  else {
    const sweep = await apiJson<{ groups: Array<{ id: string; status: string }> }>(t, `/v1/sweeps/${encodeURIComponent(id)}`);
    groups = sweep.groups.filter((g) => g.status === "failed").map((g) => g.id);
    if (groups.length === 0) {
      console.log(`[retry] sweep ${id} has no failed group`);
      return 0;
    }
  }
  // An API error (CliError, already phrased) ends the command with its message and exit 1 (runner/cli.ts).
  for (const g of groups) {
    const r = await apiJson<RetryResponse>(t, `/v1/groups/${encodeURIComponent(g)}/retry`, { method: "POST" });
    console.log(`[retry] group ${r.id}: ${r.status}, ${r.requeued} run${r.requeued === 1 ? "" : "s"} re-queued`);
  }
  return 0;
}
