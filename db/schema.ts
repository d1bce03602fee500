/**
 * The single truth for D1's tables; `npm run db:generate` writes db/migrations from it.
 *
 * A sweep expands to runs (one per resolved TrainConfig); runs that can share one data stream form a group
 * (splitCfgs). A runner leases a chunk of a group's runs at a time, so leases point at groups and runs point at
 * their current lease. Times are Unix milliseconds.
 */
import { sql } from "drizzle-orm";
import { index, integer, primaryKey, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

export type SweepStatus = "waiting" | "running" | "done" | "failed";
export type GroupStatus = "waiting" | "running" | "done" | "failed";
export type RunStatus = "waiting" | "leased" | "done" | "failed";
/** released: given back by its runner (stopping, page or device lost), which is not a failure. */
export type LeaseStatus = "active" | "completed" | "failed" | "released" | "expired" | "cancelled";

export const sweeps = sqliteTable("sweeps", {
  id: text("id").primaryKey(),
  createdAt: integer("created_at").notNull(),
  finishedAt: integer("finished_at"),
  status: text("status").$type<SweepStatus>().notNull().default("waiting"),
  /** The submitted file, verbatim, and how it was sent ("toml" | "json"). */
  spec: text("spec").notNull(),
  format: text("format").notNull(),
  /** JSON string[]: accepted-but-ignored saev keys and other notes returned at submit. */
  warnings: text("warnings").notNull().default("[]"),
  nRuns: integer("n_runs").notNull(),
  nGroups: integer("n_groups").notNull(),
  /** JSON of the TrainConfig keys every run of the sweep shares (data aside); worker/run-config.ts. */
  cfgShared: text("cfg_shared").notNull().default("{}"),
});

export const groups = sqliteTable(
  "groups",
  {
    /** `${sweep_id}-g${idx}`: stable and deterministic (groups in order of first appearance, as splitCfgs). */
    id: text("id").primaryKey(),
    sweepId: text("sweep_id")
      .notNull()
      .references(() => sweeps.id),
    idx: integer("idx").notNull(),
    createdAt: integer("created_at").notNull(),
    status: text("status").$type<GroupStatus>().notNull().default("waiting"),
    /** JSON of the CANNOT_PARALLELIZE values every run of the group shares, data aside (that is `data`). */
    key: text("key").notNull(),
    /** JSON DataConfig shared by the group's runs. */
    data: text("data").notNull(),
    nRuns: integer("n_runs").notNull(),
    /** Distinct runners whose lease of this group failed (since the last retry); at MAX_ATTEMPTS the group fails. */
    failures: integer("failures").notNull().default(0),
    /** When the group was last re-queued (POST /v1/groups/:id/retry): failures and expirations count from here. */
    retriedAt: integer("retried_at"),
    lastError: text("last_error"),
    finishedAt: integer("finished_at"),
  },
  (t) => [index("groups_by_status").on(t.status, t.createdAt, t.idx), index("groups_by_sweep").on(t.sweepId, t.idx)],
);

export const runs = sqliteTable(
  "runs",
  {
    /** `${sweep_id}-r${idx}`. */
    id: text("id").primaryKey(),
    sweepId: text("sweep_id")
      .notNull()
      .references(() => sweeps.id),
    groupId: text("group_id")
      .notNull()
      .references(() => groups.id),
    /** Position in the sweep's expansion (config i has seed = sweep seed + i). */
    idx: integer("idx").notNull(),
    /**
     * JSON of the TrainConfig keys where this run differs from sweeps.cfg_shared (data is groups.data): read it
     * whole with worker/run-config.ts fullConfig / runConfig.
     */
    cfg: text("cfg").notNull(),
    track: integer("track", { mode: "boolean" }).notNull(),
    nSteps: integer("n_steps").notNull(),
    dSae: integer("d_sae").notNull(),
    status: text("status").$type<RunStatus>().notNull().default("waiting"),
    /** The lease that holds (or last held) this run. */
    leaseId: text("lease_id"),
    attempts: integer("attempts").notNull().default(0),
    error: text("error"),
    finishedAt: integer("finished_at"),
    /** Outbox flag for the W&B `finish` message (sent once the run is done or failed). */
    finishQueued: integer("finish_queued", { mode: "boolean" }).notNull().default(false),
  },
  (t) => [index("runs_by_group").on(t.groupId, t.status, t.idx), index("runs_by_sweep").on(t.sweepId, t.idx), index("runs_by_lease").on(t.leaseId)],
);

export const leases = sqliteTable(
  "leases",
  {
    id: text("id").primaryKey(),
    /** Fencing token: writes must carry it, and only an active, unexpired lease accepts them. */
    token: text("token").notNull(),
    groupId: text("group_id")
      .notNull()
      .references(() => groups.id),
    runnerId: text("runner_id").notNull(),
    /** JSON AdapterReport the runner claimed with. */
    adapter: text("adapter").notNull(),
    /** Device memory (bytes) the chunk was sized for: the runner's reported budget, else the default. */
    memoryBudget: integer("memory_budget"),
    /** JSON string[]: the runs of this chunk. */
    runIds: text("run_ids").notNull(),
    status: text("status").$type<LeaseStatus>().notNull().default("active"),
    createdAt: integer("created_at").notNull(),
    expiresAt: integer("expires_at").notNull(),
    heartbeatAt: integer("heartbeat_at"),
    /** JSON of the last heartbeat's progress. */
    progress: text("progress"),
    endedAt: integer("ended_at"),
    /** Set by the request that ended the lease; later statements of its batch check it, so a race applies once. */
    endNonce: text("end_nonce"),
    error: text("error"),
  },
  (t) => [index("leases_by_group").on(t.groupId, t.status)],
);

/** Step metrics, idempotent per (run, step): a repeated post changes nothing. */
export const metrics = sqliteTable(
  "metrics",
  {
    runId: text("run_id")
      .notNull()
      .references(() => runs.id),
    step: integer("step").notNull(),
    leaseId: text("lease_id").notNull(),
    ts: integer("ts").notNull(),
    loss: real("loss").notNull(),
    mse: real("mse").notNull(),
    l0: real("l0").notNull(),
    l1: real("l1").notNull(),
    sparsity: real("sparsity").notNull(),
    nPatchesSeen: real("n_patches_seen").notNull(),
    learningRate: real("learning_rate").notNull(),
    sparsityCoeff: real("sparsity_coeff").notNull(),
    /** TopK/BatchTopK with AuxK: the aux loss and the latents dead in training (null for the other kinds). */
    auxLoss: real("aux_loss"),
    nDeadTrain: integer("n_dead_train"),
    /** Outbox flag: 1 once the row is on WANDB_QUEUE; a failed send resets it, so the runner's retry sends it. */
    queued: integer("queued", { mode: "boolean" }).notNull().default(false),
  },
  (t) => [primaryKey({ columns: [t.runId, t.step] })],
);

/** One EvalMetrics per run; the first stored wins. */
export const evals = sqliteTable("evals", {
  runId: text("run_id")
    .primaryKey()
    .references(() => runs.id),
  leaseId: text("lease_id").notNull(),
  ts: integer("ts").notNull(),
  l0: real("l0").notNull(),
  l1: real("l1").notNull(),
  mse: real("mse").notNull(),
  fvu: real("fvu").notNull(),
  explainedVariance: real("explained_variance").notNull(),
  nDead: integer("n_dead").notNull(),
  nAlmostDead: integer("n_almost_dead").notNull(),
  nDense: integer("n_dense").notNull(),
  nExamples: integer("n_examples").notNull(),
  /** JSON number[] (d_sae). */
  freqs: text("freqs").notNull(),
  /** JSON (number | null)[] (d_sae). */
  meanValues: text("mean_values").notNull(),
  /** Outbox flag, as metrics.queued. */
  queued: integer("queued", { mode: "boolean" }).notNull().default(false),
});

/** Checkpoint bodies live in R2 under `key`; `final` has step = n_steps, `resume` one row per step taken. */
export const checkpoints = sqliteTable(
  "checkpoints",
  {
    runId: text("run_id")
      .notNull()
      .references(() => runs.id),
    kind: text("kind").$type<"final" | "resume">().notNull(),
    step: integer("step").notNull(),
    key: text("key").notNull(),
    bytes: integer("bytes").notNull(),
    leaseId: text("lease_id").notNull(),
    createdAt: integer("created_at").notNull().default(sql`0`),
  },
  (t) => [primaryKey({ columns: [t.runId, t.kind, t.step] })],
);

/** Where a tracked run stands on W&B: "pending" until the W&B run exists, then "live", "finished"; "retrying" after
 * a failed send; "dead_lettered" once a message gave up; "skipped" when the Worker has no WANDB_API_KEY. */
export type WandbStatus = "pending" | "live" | "retrying" | "finished" | "dead_lettered" | "skipped";

/** One row per tracked run that the W&B consumer has seen. Holds no secret. */
export const wandbRuns = sqliteTable(
  "wandb_runs",
  {
    runId: text("run_id")
      .primaryKey()
      .references(() => runs.id),
    /** The W&B run id in URLs (worker/wandb/forward.ts wandbRunName). */
    name: text("name").notNull(),
    url: text("url"),
    status: text("status").$type<WandbStatus>().notNull().default("pending"),
    /** JSON WandbForwardState (offsets, last step sent, write-ahead record); null until first forwarded. */
    state: text("state"),
    /** Compare-and-swap counter: a write applies only where the stored version is the one read. */
    version: integer("version").notNull().default(0),
    lastError: text("last_error"),
    lastErrorAt: integer("last_error_at"),
    /** Messages of this run the dead-letter queue received. */
    deadLetters: integer("dead_letters").notNull().default(0),
    heartbeatAt: integer("heartbeat_at"),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [index("wandb_runs_by_status").on(t.status)],
);

/** Messages that kept failing and reached the dead-letter queue, with the run's error at the time. */
export const wandbDeadLetters = sqliteTable(
  "wandb_dead_letters",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    runId: text("run_id").notNull(),
    kind: text("kind").notNull(),
    /** JSON of the steps a metrics message carried (empty for eval/finish). */
    steps: text("steps").notNull().default("[]"),
    attempts: integer("attempts").notNull(),
    error: text("error"),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [index("wandb_dead_letters_by_run").on(t.runId, t.id)],
);

/**
 * A checkpoint upload in parts (worker/routes/uploads.ts): each part is its own R2 object (partKey) until complete
 * streams them, in order, into the one object `key`, records it in `checkpoints`, and deletes the parts and their
 * rows (this row stays, so that a repeated complete is answered). One open upload per (lease, run, kind, step): a
 * repeated init resumes it.
 */
export const uploads = sqliteTable(
  "uploads",
  {
    id: text("id").primaryKey(),
    leaseId: text("lease_id").notNull(),
    runId: text("run_id")
      .notNull()
      .references(() => runs.id),
    kind: text("kind").$type<"final" | "resume">().notNull(),
    step: integer("step").notNull(),
    /** The finished object's R2 key (as checkpoints.key). */
    key: text("key").notNull(),
    /** The whole checkpoint's size; every part but the last is partBytes. */
    bytes: integer("bytes").notNull(),
    partBytes: integer("part_bytes").notNull(),
    nParts: integer("n_parts").notNull(),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [index("uploads_by_checkpoint").on(t.runId, t.kind, t.step), index("uploads_by_lease").on(t.leaseId)],
);

/** The parts of an upload stored so far (R2 objects `${uploads.key}.part-${part}`); a repeated part changes nothing. */
export const uploadParts = sqliteTable(
  "upload_parts",
  {
    uploadId: text("upload_id")
      .notNull()
      .references(() => uploads.id),
    part: integer("part").notNull(),
    bytes: integer("bytes").notNull(),
  },
  (t) => [primaryKey({ columns: [t.uploadId, t.part] })],
);

/**
 * An eval's freqs and mean_values in chunks of EVAL_CHUNK features (worker/eval-store.ts), so that no row passes
 * D1's 2 MB limit whatever d_sae is. evals.freqs is '' for an eval stored this way.
 */
export const evalArrays = sqliteTable(
  "eval_arrays",
  {
    runId: text("run_id")
      .notNull()
      .references(() => runs.id),
    chunk: integer("chunk").notNull(),
    /** JSON number[] of features [chunk·EVAL_CHUNK, …). */
    freqs: text("freqs").notNull(),
    /** JSON (number | null)[]. */
    meanValues: text("mean_values").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.chunk] })],
);
