/**
 * `sae-swarm download RUN_ID|SWEEP_ID --out DIR [--format saelens|native]`: finished runs as files, one directory
 * per run. The SAELens files come from the Worker's export route (the fold of the normalization lives there, once).
 */
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import { parseArgs } from "node:util";
import type { SaeLensFile } from "../../worker/protocol";
import { CliError, apiFetch, resolveTarget, type Target } from "./server";

export const DOWNLOAD_USAGE = `usage: sae-swarm download RUN_ID|SWEEP_ID --out DIR [--format saelens|native] [--server URL] [--token T]

Downloads a finished run, or every finished run of a sweep, into DIR/<run_id>/:
  saelens (default)  cfg.json, sae_weights.safetensors, sparsity.safetensors: a SAELens v6 directory that works on
                     the model's raw activations (the training normalization is folded into the weights). Load it
                     with sae_lens.SAE.load_from_disk("DIR/<run_id>").
  native             checkpoint.safetensors: the final checkpoint as trained (weights for normalized activations,
                     norm_mean and norm_scale beside them, the TrainConfig in its metadata).
Each file is streamed to a temporary name and renamed once complete; cfg.json comes last. Runs not finished yet
are listed and skipped (exit status 1).

  --out DIR      where to write (created if missing)
  --format F     saelens or native (default saelens)
  --server URL   the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T      the submitter token (env SAE_SWARM_TOKEN; default SUBMIT_TOKEN from ./.dev.vars)
  -h, --help     this help`;

/** cfg.json last: a directory that has it is complete. */
const SAELENS_FILES: SaeLensFile[] = ["sae_weights.safetensors", "sparsity.safetensors", "cfg.json"];

interface RunRef {
  id: string;
  status: string;
}

/** The runs an id names: that run, or every run of that sweep. */
async function resolveRuns(t: Target, id: string): Promise<{ what: string; runs: RunRef[] }> {
  const enc = encodeURIComponent(id);
  const run = await apiFetch(t, `/v1/runs/${enc}`, {}, undefined, [404]);
  if (run.ok) {
    const { run: r } = (await run.json()) as { run: RunRef };
    return { what: `run ${id}`, runs: [{ id: r.id, status: r.status }] };
  }
  await run.body?.cancel();
  const sweep = await apiFetch(t, `/v1/sweeps/${enc}`, {}, undefined, [404]);
  if (sweep.ok) {
    const { runs } = (await sweep.json()) as { runs: RunRef[] };
    return { what: `sweep ${id}`, runs: runs.map((r) => ({ id: r.id, status: r.status })) };
  }
  await sweep.body?.cancel();
  throw new CliError(`there is no run or sweep '${id}' on ${t.server} (npx sae-swarm status lists the sweeps)`);
}

/** GETs `route` into `file`: streamed to a temporary file beside it, its size checked, then renamed into place. */
async function downloadTo(t: Target, route: string, file: string): Promise<number> {
  const res = await apiFetch(t, route);
  const tmp = `${file}.part-${process.pid}`;
  try {
    if (!res.body) throw new Error("the answer has no body");
    await pipeline(Readable.fromWeb(res.body as NodeReadableStream<Uint8Array>), createWriteStream(tmp));
    const { size } = await stat(tmp);
    const expected = res.headers.get("content-length");
    // With a content-encoding, content-length counts the compressed bytes (fetch decompresses).
    if (expected !== null && !res.headers.get("content-encoding") && Number(expected) !== size) throw new Error(`got ${size} of ${expected} bytes`);
    await rename(tmp, file);
    return size;
  } catch (e) {
    await rm(tmp, { force: true });
    throw new CliError(`GET ${route} → ${file}: ${(e as Error).message}`);
  }
}

const mib = (n: number) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

export async function download(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      out: { type: "string" },
      format: { type: "string", default: "saelens" },
      server: { type: "string" },
      token: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(DOWNLOAD_USAGE);
    return 0;
  }
  const problem =
    positionals.length !== 1 ? `give exactly one run or sweep id${positionals.length ? ` (got ${positionals.length})` : ""}` :
    !values.out ? "--out DIR is required" :
    values.format !== "saelens" && values.format !== "native" ? `--format must be saelens or native (got '${values.format}')` : null;
  if (problem) {
    console.error(`[download] ${problem}\n\n${DOWNLOAD_USAGE}`);
    return 1;
  }
  const out = values.out!;
  const t = resolveTarget(values);
  const { what, runs } = await resolveRuns(t, positionals[0]);
  const finished = runs.filter((r) => r.status === "done");
  for (const r of finished) {
    // The id becomes a directory name: only what the Worker's ids are made of.
    if (!/^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/.test(r.id)) throw new CliError(`the server named a run '${r.id}', which is not a safe directory name`);
    const dir = path.join(out, r.id);
    await mkdir(dir, { recursive: true });
    const run = `/v1/runs/${encodeURIComponent(r.id)}`;
    let bytes = 0;
    if (values.format === "native") bytes += await downloadTo(t, `${run}/checkpoint`, path.join(dir, "checkpoint.safetensors"));
    else for (const f of SAELENS_FILES) bytes += await downloadTo(t, `${run}/export/saelens/${f}`, path.join(dir, f));
    console.log(`${r.id}  ${dir}  ${mib(bytes)}`);
  }
  const skipped = runs.filter((r) => r.status !== "done");
  for (const r of skipped) console.log(`${r.id}  skipped: ${r.status}, not finished`);
  console.log(`downloaded ${finished.length} of ${runs.length} run${runs.length === 1 ? "" : "s"} of ${what} to ${out} (${values.format})`);
  if (values.format === "saelens" && finished.length > 0) console.log(`load one in Python: from sae_lens import SAE; sae = SAE.load_from_disk("${path.join(out, finished[0].id)}")`);
  return skipped.length > 0 ? 1 : 0;
}
