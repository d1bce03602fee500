/**
 * Checkpoints under a lease (runner token): stored in R2 as ONE object per (run, kind, step), recorded in D1's
 * `checkpoints` once (the first stored wins; a repeat is a duplicate that changes nothing).
 *
 * Two ways in, one check and one record:
 * - PUT /:id/checkpoints/:run_id?kind=&step= — the whole file in one body, up to the part size;
 * - POST /:id/uploads, PUT /:id/uploads/:upload_id/parts/:n, POST /:id/uploads/:upload_id/complete — any size, in
 *   parts of `part_bytes` (each its own R2 object until complete streams them, in order, into the one object and
 *   deletes them). Resumable (a repeated init of the same lease answers the parts already stored) and idempotent per
 *   part. Cloudflare's R2 multipart API is not used because it needs parts of 5 MiB or more, and the body limit (a
 *   setting: MAX_BODY_BYTES) may be lower.
 * Either way the safetensors header is checked against the run's config first (checkpoint-check.ts), reading only
 * the header, and a download (GET here, and GET /v1/runs/:id/checkpoint) streams the object from R2.
 */
import { Hono, type Context } from "hono";
import type { TrainConfig } from "../../shaders/config";
import type { CheckpointKind, CheckpointResponse, RejectCheckpointResponse, ResumePoint, UploadInitResponse, UploadPartResponse } from "../protocol";
import { CompleteBody, RejectCheckpointBody, UploadInitBody, jsonBody } from "../bodies";
import { checkCheckpointHeader, checkStep, checkpointDataBytes, MAX_HEADER_BYTES } from "../checkpoint-check";
import type { Env } from "../env";
import { settings } from "../env";
import { ApiError, badRequest, conflict, intQuery, mediaType, notFound, unsupportedMediaType } from "../errors";
import { newId } from "../db";
import { runConfig } from "../run-config";
import { loadLease, requireValid, valid, type LeaseRow, type RunRow } from "./leases";

export const checkpointRoutes = new Hono<{ Bindings: Env }>();

type Ctx = Context<{ Bindings: Env }>;

/** The R2 key of a checkpoint: the lease id in it, so a stale writer can never overwrite what a valid lease stored. */
export const checkpointKey = (sweepId: string, runId: string, kind: CheckpointKind, step: number, leaseId: string) =>
  `${sweepId}/${runId}/${kind}-${step}-${leaseId}.safetensors`;

/** Part n of an upload to `key`, an R2 object of its own until complete (under the sweep's prefix, like the rest). */
export const partKey = (key: string, n: number) => `${key}.part-${n}`;

/** A run's TrainConfig (every default filled in), for checking its checkpoints. */
async function runCfg(c: Ctx, runId: string): Promise<TrainConfig> {
  const cfg = await runConfig(c.env.DB, runId);
  if (!cfg) throw notFound(`run ${runId}`, "run_id");
  return cfg;
}

function leaseRun(lease: LeaseRow, runs: { byId: Map<string, RunRow> }, runId: string, field = "run_id"): RunRow {
  const run = runs.byId.get(runId);
  if (!run) throw badRequest("unknown_run", `run ${runId} is not a run of lease ${lease.id}`, field);
  return run;
}

function requireToken(c: Ctx): string {
  const token = c.req.header("x-lease-token") ?? "";
  if (!token) throw badRequest("missing_token", "the x-lease-token header is required", "x-lease-token");
  return token;
}

function requireBinary(c: Ctx): void {
  const type = mediaType(c.req.header("content-type"));
  if (type !== undefined && type !== "application/octet-stream" && !type.includes("safetensors"))
    throw unsupportedMediaType("application/octet-stream (a safetensors file)", type);
}

/** The stored checkpoint of (run, kind, step), if any. */
const storedCheckpoint = (c: Ctx, runId: string, kind: string, step: number) =>
  c.env.DB.prepare(`SELECT key, bytes FROM checkpoints WHERE run_id = ?1 AND kind = ?2 AND step = ?3`).bind(runId, kind, step);

const duplicateOf = (runId: string, kind: CheckpointKind, step: number, row: { bytes: number }): CheckpointResponse => ({ run_id: runId, kind, step, bytes: row.bytes, duplicate: true });

/**
 * Records the object at `key` (already in R2, `bytes` long) as the checkpoint of (run, kind, step) under a valid
 * lease: 201, or 200 `duplicate` when one was stored first (this upload's object is then deleted, unless the row
 * kept is this very key), or 409 when the lease went stale (the object goes too). All or nothing.
 */
async function record(c: Ctx, lease: LeaseRow, token: string, runId: string, kind: CheckpointKind, step: number, key: string, bytes: number): Promise<Response> {
  const db = c.env.DB;
  const have = storedCheckpoint(c, runId, kind, step);
  let ins: D1Result, kept: D1Result;
  try {
    [ins, kept] = await db.batch([
      db
        .prepare(
          `INSERT INTO checkpoints (run_id, kind, step, key, bytes, lease_id, created_at)
           SELECT ?4, ?5, ?6, ?7, ?8, ?1, ?3 WHERE ${valid(1, 2, 3)}
           ON CONFLICT (run_id, kind, step) DO NOTHING`,
        )
        .bind(lease.id, token, Date.now(), runId, kind, step, key, bytes),
      have,
    ]);
  } catch (err) {
    // Nothing points at this upload's object unless an earlier request of this lease stored the same key.
    const held = await db.prepare(`SELECT 1 FROM checkpoints WHERE key = ?1`).bind(key).first().catch(() => true);
    if (!held) await c.env.CHECKPOINTS.delete(key).catch(() => {});
    throw err;
  }
  if (ins.meta.changes === 1) return c.json({ run_id: runId, kind, step, bytes } satisfies CheckpointResponse, 201);
  const row = kept.results[0] as { key: string; bytes: number } | undefined;
  if (row?.key !== key) await c.env.CHECKPOINTS.delete(key);
  // Not stored: if the lease went stale meanwhile, say so (409), not "duplicate".
  const { lease: fresh } = await loadLease(c, lease.id);
  requireValid(fresh, token, Date.now());
  if (!row) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  return c.json(duplicateOf(runId, kind, step, row), 200);
}

function checkpointQuery(c: Ctx, run: { n_steps: number }, forWrite: boolean) {
  const kind = c.req.query("kind") ?? (forWrite ? undefined : "resume");
  if (kind !== "final" && kind !== "resume") throw badRequest("invalid_query", 'must be "final" or "resume"', "kind");
  let step = intQuery(c.req.query("step"), "step", 0, run.n_steps);
  if (step === undefined && forWrite) {
    if (kind === "resume") throw badRequest("invalid_query", "is required for resume checkpoints", "step");
    step = run.n_steps;
  }
  if (forWrite) checkStep(kind, step!, run.n_steps);
  return { kind: kind as CheckpointKind, step };
}

/** The whole checkpoint in one body (at most one part's size). */
checkpointRoutes.put("/:id/checkpoints/:run_id", async (c) => {
  requireBinary(c);
  const token = requireToken(c);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  requireValid(lease, token, Date.now());
  const runId = c.req.param("run_id");
  const run = leaseRun(lease, runs, runId);
  const { kind, step } = checkpointQuery(c, run, true);
  const buf = new Uint8Array(await c.req.arrayBuffer());
  checkCheckpointHeader(buf, buf.byteLength, { runId, cfg: await runCfg(c, runId), kind, step: step! });
  const before = await storedCheckpoint(c, runId, kind, step!).first<{ bytes: number }>();
  if (before) return c.json(duplicateOf(runId, kind, step!, before), 200);
  const key = checkpointKey(run.sweep_id, runId, kind, step!, lease.id);
  await c.env.CHECKPOINTS.put(key, buf, { httpMetadata: { contentType: "application/octet-stream" }, customMetadata: { run_id: runId, kind, step: String(step), lease_id: lease.id } });
  return record(c, lease, token, runId, kind, step!, key, buf.byteLength);
});

/** The runner fetches resume checkpoints back (ResumePoint.checkpoint_path), under a valid lease that holds the run. */
checkpointRoutes.get("/:id/checkpoints/:run_id", async (c) => {
  const token = requireToken(c);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  requireValid(lease, token, Date.now());
  const runId = c.req.param("run_id");
  const run = leaseRun(lease, runs, runId);
  const { kind, step } = checkpointQuery(c, run, false);
  const row = await c.env.DB.prepare(
    `SELECT key, step FROM checkpoints WHERE run_id = ?1 AND kind = ?2 ${step === undefined ? "" : "AND step = ?3"} ORDER BY step DESC LIMIT 1`,
  )
    .bind(...(step === undefined ? [runId, kind] : [runId, kind, step]))
    .first<{ key: string; step: number }>();
  if (!row) throw notFound(`${kind} checkpoint of run ${runId}${step === undefined ? "" : ` at step ${step}`}`, "step");
  const obj = await c.env.CHECKPOINTS.get(row.key);
  if (!obj) throw new ApiError(500, "missing_object", `checkpoint ${row.key} is in D1 but not in R2`);
  return new Response(obj.body, { headers: { "content-type": "application/octet-stream", "content-length": String(obj.size), "x-checkpoint-step": String(row.step) } });
});

type UploadRow = { id: string; lease_id: string; run_id: string; kind: CheckpointKind; step: number; key: string; bytes: number; part_bytes: number; n_parts: number };

/**
 * Deletes uploads' part objects and part rows, and (`rows`) their uploads rows: a dead lease's unfinished upload of
 * the same checkpoint goes whole; a finished one keeps its uploads row, so that a repeated complete is answered.
 */
async function dropUploads(c: Ctx, ups: UploadRow[], rows = true): Promise<void> {
  if (!ups.length) return;
  const keys = ups.flatMap((u) => Array.from({ length: u.n_parts }, (_, i) => partKey(u.key, i + 1)));
  for (let i = 0; i < keys.length; i += 1000) await c.env.CHECKPOINTS.delete(keys.slice(i, i + 1000));
  const ids = JSON.stringify(ups.map((u) => u.id));
  await c.env.DB.batch([
    c.env.DB.prepare(`DELETE FROM upload_parts WHERE upload_id IN (SELECT value FROM json_each(?1))`).bind(ids),
    ...(rows ? [c.env.DB.prepare(`DELETE FROM uploads WHERE id IN (SELECT value FROM json_each(?1))`).bind(ids)] : []),
  ]);
}

const receivedParts = async (c: Ctx, uploadId: string) =>
  (await c.env.DB.prepare(`SELECT part FROM upload_parts WHERE upload_id = ?1 ORDER BY part`).bind(uploadId).all<{ part: number }>()).results.map((r) => r.part);

checkpointRoutes.post("/:id/uploads", async (c) => {
  const body = await jsonBody(c, UploadInitBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  const now = Date.now();
  requireValid(lease, body.token, now);
  const run = leaseRun(lease, runs, body.run_id);
  const { kind, step, bytes } = body;
  checkStep(kind, step, run.n_steps);
  const cfg = await runCfg(c, run.id);
  const data = checkpointDataBytes(cfg, kind);
  if (bytes < 10 + data || bytes > 8 + MAX_HEADER_BYTES + data)
    throw badRequest("invalid_checkpoint", `a ${kind} checkpoint of run ${run.id} holds ${data} bytes of tensors plus its header: between ${10 + data} and ${8 + MAX_HEADER_BYTES + data} bytes, got ${bytes}`, "bytes");
  const { partBytes } = settings(c.env);
  const before = await storedCheckpoint(c, run.id, kind, step).first<{ bytes: number }>();
  if (before) return c.json({ upload_id: null, part_bytes: partBytes, n_parts: 0, received: [], duplicate: duplicateOf(run.id, kind, step, before) } satisfies UploadInitResponse, 200);
  const { results: open } = await c.env.DB.prepare(`SELECT * FROM uploads WHERE run_id = ?1 AND kind = ?2 AND step = ?3`).bind(run.id, kind, step).all<UploadRow>();
  // This lease's own upload of the same file: resume it. Any other (a dead lease's, or another size) is dropped.
  const mine = open.find((u) => u.lease_id === lease.id && u.bytes === bytes && u.part_bytes === partBytes);
  await dropUploads(c, open.filter((u) => u !== mine));
  if (mine) return c.json({ upload_id: mine.id, part_bytes: mine.part_bytes, n_parts: mine.n_parts, received: await receivedParts(c, mine.id) } satisfies UploadInitResponse, 200);
  const id = newId("up_");
  const nParts = Math.ceil(bytes / partBytes);
  const key = checkpointKey(run.sweep_id, run.id, kind, step, lease.id);
  const r = await c.env.DB.prepare(
    `INSERT INTO uploads (id, lease_id, run_id, kind, step, key, bytes, part_bytes, n_parts, created_at)
     SELECT ?4, ?1, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?3 WHERE ${valid(1, 2, 3)}`,
  )
    .bind(lease.id, body.token, now, id, run.id, kind, step, key, bytes, partBytes, nParts)
    .run();
  if (r.meta.changes !== 1) throw conflict("stale_lease", `lease ${lease.id} is no longer active`, "token");
  return c.json({ upload_id: id, part_bytes: partBytes, n_parts: nParts, received: [] } satisfies UploadInitResponse, 201);
});

/** The lease's upload `upload_id` (404 when it has none of that id: finished, dropped, or another lease's). */
async function loadUpload(c: Ctx, lease: LeaseRow): Promise<UploadRow> {
  const id = c.req.param("upload_id")!;
  const up = await c.env.DB.prepare(`SELECT * FROM uploads WHERE id = ?1 AND lease_id = ?2`).bind(id, lease.id).first<UploadRow>();
  if (!up) throw notFound(`upload ${id} of lease ${lease.id}`, "upload_id");
  return up;
}

checkpointRoutes.put("/:id/uploads/:upload_id/parts/:part", async (c) => {
  requireBinary(c);
  const token = requireToken(c);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  requireValid(lease, token, Date.now());
  const up = await loadUpload(c, lease);
  const n = intQuery(c.req.param("part"), "part", 1, up.n_parts)!;
  const want = n < up.n_parts ? up.part_bytes : up.bytes - (up.n_parts - 1) * up.part_bytes;
  const buf = new Uint8Array(await c.req.arrayBuffer());
  if (buf.byteLength !== want) throw badRequest("invalid_part", `part ${n} of ${up.n_parts} must be ${want} bytes, got ${buf.byteLength}`, "body");
  // Part 1 carries the header: checked before anything of this upload is kept.
  if (n === 1) checkCheckpointHeader(buf, up.bytes, { runId: up.run_id, cfg: await runCfg(c, up.run_id), kind: up.kind, step: up.step });
  leaseRun(lease, runs, up.run_id);
  const had = await c.env.DB.prepare(`SELECT bytes FROM upload_parts WHERE upload_id = ?1 AND part = ?2`).bind(up.id, n).first();
  if (had) return c.json({ upload_id: up.id, part: n, bytes: want, repeated: true } satisfies UploadPartResponse);
  await c.env.CHECKPOINTS.put(partKey(up.key, n), buf);
  const now = Date.now();
  const r = await c.env.DB.prepare(
    `INSERT INTO upload_parts (upload_id, part, bytes) SELECT ?4, ?5, ?6 WHERE ${valid(1, 2, 3)} AND EXISTS (SELECT 1 FROM uploads WHERE id = ?4)
     ON CONFLICT (upload_id, part) DO NOTHING`,
  )
    .bind(lease.id, token, now, up.id, n, want)
    .run();
  if (r.meta.changes !== 1) {
    const { lease: fresh } = await loadLease(c, lease.id);
    requireValid(fresh, token, Date.now());
    await loadUpload(c, lease); // 404 if the upload went meanwhile; else a racing repeat stored it
    return c.json({ upload_id: up.id, part: n, bytes: want, repeated: true } satisfies UploadPartResponse);
  }
  return c.json({ upload_id: up.id, part: n, bytes: want } satisfies UploadPartResponse);
});

/** Streams the parts, in order, into one R2 object of exactly `up.bytes` (nothing is held in memory). */
async function assemble(c: Ctx, up: UploadRow): Promise<void> {
  const { readable, writable } = new FixedLengthStream(up.bytes);
  const put = c.env.CHECKPOINTS.put(up.key, readable, {
    httpMetadata: { contentType: "application/octet-stream" },
    customMetadata: { run_id: up.run_id, kind: up.kind, step: String(up.step), lease_id: up.lease_id },
  });
  try {
    for (let n = 1; n <= up.n_parts; n++) {
      const part = await c.env.CHECKPOINTS.get(partKey(up.key, n));
      if (!part) throw new ApiError(500, "missing_object", `part ${n} of upload ${up.id} is in D1 but not in R2`);
      await part.body.pipeTo(writable, { preventClose: true });
    }
    await writable.close();
  } catch (err) {
    await writable.abort(err).catch(() => {});
    await put.catch(() => {});
    throw err;
  }
  const obj = await put;
  if (obj.size !== up.bytes) throw new ApiError(500, "assembly_failed", `upload ${up.id} assembled ${obj.size} bytes, expected ${up.bytes}`);
}

checkpointRoutes.post("/:id/uploads/:upload_id/complete", async (c) => {
  const body = await jsonBody(c, CompleteBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  requireValid(lease, body.token, Date.now());
  const up = await loadUpload(c, lease);
  leaseRun(lease, runs, up.run_id);
  const before = await storedCheckpoint(c, up.run_id, up.kind, up.step).first<{ key: string; bytes: number }>();
  if (before) {
    // Stored already: by this upload (a repeated complete whose answer was lost) or by another one (a duplicate).
    await dropUploads(c, [up], false);
    if (before.key === up.key) return c.json({ run_id: up.run_id, kind: up.kind, step: up.step, bytes: before.bytes } satisfies CheckpointResponse, 201);
    return c.json(duplicateOf(up.run_id, up.kind, up.step, before), 200);
  }
  const have = new Set(await receivedParts(c, up.id));
  const missing = Array.from({ length: up.n_parts }, (_, i) => i + 1).filter((n) => !have.has(n));
  if (missing.length) throw badRequest("incomplete_upload", `parts ${missing.join(", ")} of ${up.n_parts} are not stored yet`, "parts");
  await assemble(c, up);
  const res = await record(c, lease, body.token, up.run_id, up.kind, up.step, up.key, up.bytes);
  // Recorded (or a duplicate, its object dropped by record): the parts have served; the uploads row stays.
  await dropUploads(c, [up], false);
  return res;
});

/** The latest resume checkpoint of each run of `runIds`, as a claim lists them (ResumePoint). */
export async function resumePoints(db: D1Database, leaseId: string, runIds: string[]): Promise<ResumePoint[]> {
  const { results } = await db
    .prepare(`SELECT run_id, max(step) AS step FROM checkpoints WHERE kind = 'resume' AND run_id IN (SELECT value FROM json_each(?1)) GROUP BY run_id`)
    .bind(JSON.stringify(runIds))
    .all<{ run_id: string; step: number }>();
  const order = new Map(runIds.map((id, i) => [id, i]));
  return results
    .sort((a, b) => order.get(a.run_id)! - order.get(b.run_id)!)
    .map((x) => ({ run_id: x.run_id, step: x.step, checkpoint_path: `/v1/leases/${leaseId}/checkpoints/${x.run_id}?kind=resume&step=${x.step}` }));
}

/** A resume checkpoint the runner could not load: gone (row and object), so the group falls back to the one before. */
checkpointRoutes.post("/:id/checkpoints/:run_id/reject", async (c) => {
  const body = await jsonBody(c, RejectCheckpointBody);
  const { lease, runs } = await loadLease(c, c.req.param("id"));
  const now = Date.now();
  requireValid(lease, body.token, now);
  const runId = c.req.param("run_id");
  leaseRun(lease, runs, runId);
  const gone = await c.env.DB.prepare(`DELETE FROM checkpoints WHERE run_id = ?4 AND kind = 'resume' AND step = ?5 AND ${valid(1, 2, 3)} RETURNING key`)
    .bind(lease.id, body.token, now, runId, body.step)
    .first<{ key: string }>();
  if (gone) {
    await c.env.CHECKPOINTS.delete(gone.key);
    console.warn(`resume checkpoint ${gone.key} rejected by lease ${lease.id}: ${body.error.slice(0, 500)}`);
  } else {
    const { lease: fresh } = await loadLease(c, lease.id);
    requireValid(fresh, body.token, Date.now());
    // Already gone (a repeated reject): the answer is the same.
  }
  return c.json({ resume: await resumePoints(c.env.DB, lease.id, runs.ids) } satisfies RejectCheckpointResponse);
});
