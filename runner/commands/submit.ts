/** `sae-swarm submit SWEEP.toml|SWEEP.json`: posts a sweep file and prints its groups and runs. */
import { readFile } from "node:fs/promises";
import type { SubmitResponse } from "../../worker/protocol";
import { CliError, apiJson, resolveTarget, parseClientArgs } from "./server";

export const SUBMIT_USAGE = `usage: sae-swarm submit SWEEP.toml|SWEEP.json [--server URL] [--token T]

Submits a sweep file (saev's style: top-level keys shared, any list swept; see examples/demo.toml) and prints
the sweep id, its groups and the command to follow it. The server checks every key first and names each bad one.

  --server URL   the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T      the submitter token (env SAE_SWARM_TOKEN; default SUBMIT_TOKEN from ./.dev.vars)
  --json         print the server's answer as JSON
  -h, --help     this help`;

/** TOML unless the name or the text says JSON (the server sniffs too; the header makes it explicit). */
export function contentTypeFor(file: string, text: string): string {
  if (/\.json$/i.test(file)) return "application/json";
  if (/\.toml$/i.test(file)) return "application/toml";
  return /^\s*\{/.test(text) ? "application/json" : "application/toml";
}

export async function submit(argv: string[]): Promise<number> {
  const args = parseClientArgs(argv, "submit", SUBMIT_USAGE, { min: 1, max: 1, what: "exactly one sweep file" });
  if (typeof args === "number") return args;
  const { values, positionals } = args;
  const file = positionals[0];
  const text = await readFile(file, "utf8").catch((e: NodeJS.ErrnoException) => {
    throw new CliError(`cannot read ${file}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
  });
  const t = resolveTarget(values);
  const res = await apiJson<SubmitResponse>(t, "/v1/sweeps", { method: "POST", headers: { "content-type": contentTypeFor(file, text) }, body: text });
  if (values.json) {
    console.log(JSON.stringify(res, null, 2));
    return 0;
  }
  console.log(`submitted ${file} as sweep ${res.id}: ${res.n_runs} run${res.n_runs === 1 ? "" : "s"} in ${res.n_groups} group${res.n_groups === 1 ? "" : "s"}`);
  for (const g of res.groups) console.log(`  ${g.id}  ${g.n_runs} run${g.n_runs === 1 ? "" : "s"}`);
  for (const w of res.warnings) console.log(`  warning: ${w}`);
  console.log(`follow it: npx sae-swarm status ${res.id}${t.server === "http://127.0.0.1:8787" ? "" : ` --server ${t.server}`}`);
  console.log(`dashboard: ${t.server}/#sweep=${res.id}`);
  return 0;
}
