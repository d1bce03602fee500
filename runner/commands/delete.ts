/** `sae-swarm delete SWEEP_ID`: cancels a sweep and removes its rows and objects from the server. */
import { apiFetch, resolveTarget, parseClientArgs } from "./server";

export const DELETE_USAGE = `usage: sae-swarm delete SWEEP_ID [--server URL] [--token T]

Deletes a sweep: a running one is cancelled first (its leases end; its runners stop at their next write), then
its runs, metrics, evals and checkpoints go, in D1 and R2. Large sweeps take several calls; this repeats them.

  --server URL   the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T      the submitter token (env SAE_SWARM_TOKEN; default SUBMIT_TOKEN from ./.dev.vars)
  --json         print the server's last answer as JSON
  -h, --help     this help`;

interface DeleteAnswer {
  id: string;
  done: boolean;
  cancelled_leases: number;
  rows: Record<string, number>;
  objects: number;
  bytes: number;
}

export async function deleteCommand(argv: string[]): Promise<number> {
  const args = parseClientArgs(argv, "delete", DELETE_USAGE, { min: 1, max: 1, what: "exactly one sweep id" });
  if (typeof args === "number") return args;
  const { values, positionals } = args;
  const id = positionals[0];
  const t = resolveTarget(values);
  const total: DeleteAnswer = { id, done: false, cancelled_leases: 0, rows: {}, objects: 0, bytes: 0 };
  // Each call deletes a bounded amount (202 while more remains).
  for (let call = 0; !total.done; call++) {
    const res = await apiFetch(t, `/v1/sweeps/${encodeURIComponent(id)}`, { method: "DELETE" });
    const a = (await res.json()) as DeleteAnswer;
    total.done = a.done;
    total.cancelled_leases += a.cancelled_leases;
    for (const [k, n] of Object.entries(a.rows)) total.rows[k] = (total.rows[k] ?? 0) + n;
    total.objects += a.objects;
    total.bytes += a.bytes;
    if (!a.done && !values.json) console.log(`[delete] ${id}: deleting (call ${call + 1}) …`);
  }
  if (values.json) {
    console.log(JSON.stringify(total, null, 2));
    return 0;
  }
  const rows = Object.entries(total.rows)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${n} ${k}`)
    .join(", ");
  console.log(`deleted sweep ${id}: ${rows || "no rows"}; ${total.objects} R2 object${total.objects === 1 ? "" : "s"} (${(total.bytes / 2 ** 20).toFixed(1)} MiB)`);
  if (total.cancelled_leases) console.log(`  cancelled ${total.cancelled_leases} active lease${total.cancelled_leases === 1 ? "" : "s"}: their runners stop at their next write`);
  return 0;
}
