/**
 * GET /v1/runs/:id/export/saelens/{cfg.json,sae_weights.safetensors,sparsity.safetensors} (submitter token): a
 * finished run as a SAELens v6 directory, the normalization folded in (worker/saelens.ts). The weights are
 * streamed from the stored final checkpoint, so their size is bounded by R2, not by the isolate's memory.
 */
import { Hono } from "hono";
import { eq } from "drizzle-orm";
import type { Env } from "../env";
import { notFound } from "../errors";
import { getDb, schema } from "../db";
import type { SaeLensFile } from "../protocol";
import { SAE_LENS_FILES, foldedWeights, readCheckpointHeader, readNormalization, saeLensCfg, sparsityFile } from "../saelens";
import { latestCheckpoint, loadRun } from "./runs";
import { readEvalArrays } from "../eval-store";
import { runConfig } from "../run-config";

export const exportRoutes = new Hono<{ Bindings: Env }>();

const attachment = (run: string, file: string) => `attachment; filename="${run}-${file}"`;

exportRoutes.get("/:id/export/saelens/:file", async (c) => {
  const file = c.req.param("file") as SaeLensFile;
  if (!SAE_LENS_FILES.includes(file)) throw notFound(`export file ${JSON.stringify(file)} (one of ${SAE_LENS_FILES.join(", ")})`, "file");
  const run = await loadRun(c);
  const cfg = (await runConfig(c.env.DB, run.id))!;

  if (file === "sparsity.safetensors") {
    const [e] = await getDb(c.env).select({ freqs: schema.evals.freqs, meanValues: schema.evals.meanValues }).from(schema.evals).where(eq(schema.evals.runId, run.id));
    if (!e) throw notFound(`eval of run ${run.id}`, "id");
    const body = sparsityFile((await readEvalArrays(c.env.DB, run.id, { freqs: e.freqs, mean_values: e.meanValues })).freqs);
    return new Response(body, {
      headers: { "content-type": "application/octet-stream", "content-length": String(body.byteLength), "content-disposition": attachment(run.id, file) },
    });
  }

  const k = await latestCheckpoint(c.env, run.id, "final");
  const ck = await readCheckpointHeader(c.env.CHECKPOINTS, k.key);
  const norm = await readNormalization(c.env.CHECKPOINTS, ck, cfg.sae.d_vit);
  if (file === "cfg.json") return c.json(saeLensCfg(run, cfg, ck, norm));

  const { size, body } = await foldedWeights(c.env.CHECKPOINTS, ck, cfg, norm);
  // A fixed length: the client gets content-length and sees a cut stream as an error, not as a short file.
  const { readable, writable } = new FixedLengthStream(size);
  void body.pipeTo(writable).catch(() => {});
  return new Response(readable, {
    headers: { "content-type": "application/octet-stream", "content-length": String(size), "content-disposition": attachment(run.id, file) },
  });
});
