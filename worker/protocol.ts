/**
 * The runner ↔ Worker protocol (../shared/DESIGN.md, "HTTP API"): the JSON bodies both sides agree on.
 * The Worker validates them with zod (worker/), the runner builds them (runner/). Types only, no runtime code.
 */
import type { AdapterReport } from "../shaders/device";
import type { KernelReport } from "../shaders/autotune";
import type { DataConfig, EvalMetrics, StepMetrics, TrainConfig } from "../shaders/config";

/** Every 4xx/5xx: `field` names the bad value's path ("rows[1].mse", "sae.exp_factor", "body", "token", …). */
export interface ErrorBody {
  error: { code: string; message: string; field?: string; issues?: Array<{ field: string; message: string }> };
}

/** POST /v1/claims (runner token). 200 ClaimResponse, or 204 when nothing is waiting. */
export interface ClaimRequest {
  runner_id: string;
  adapter: AdapterReport;
}

export interface Lease {
  id: string;
  /** Fencing token: every write under this lease carries it; a stale one gets 409. */
  token: string;
  /** Unix milliseconds. */
  expires_at: number;
  /** How often to heartbeat (ms); a lease not heartbeaten for its TTL expires. */
  heartbeat_ms: number;
}

/** Where a run resumes: its latest resume checkpoint (weights + Adam state + step). */
export interface ResumePoint {
  run_id: string;
  step: number;
  /** GET this path on the Worker, with the runner token and `x-lease-token`, for the safetensors body. */
  checkpoint_path: string;
}

export interface ClaimedRun {
  run_id: string;
  cfg: TrainConfig;
}

/** What the Worker accepts, sent with each claim: the runner sizes its posts and checkpoint parts by it. */
export interface UploadLimits {
  /** Largest evals post (bytes): the runner splits its evals over as many posts as this needs. */
  max_body_bytes: number;
  /** Checkpoint part size (bytes): every part of an upload but the last is exactly this long. */
  part_bytes: number;
}

export interface ClaimResponse {
  lease: Lease;
  /** Absent from a Worker older than the upload routes: then every checkpoint goes in one PUT. */
  limits?: UploadLimits;
  group: {
    id: string;
    sweep_id: string;
    /** The runs of this lease (a group larger than the adapter can hold is chunked; all share data and shapes). */
    cfgs: ClaimedRun[];
    data: DataConfig;
    /** Empty when the group starts fresh. */
    resume: ResumePoint[];
    /** Take a resume checkpoint every this many steps. */
    checkpoint_every: number;
    attempt: number;
  };
}

/** POST /v1/leases/:id/heartbeat */
export interface HeartbeatRequest {
  token: string;
  progress: { step: number; n_steps: number; samples_per_s?: number };
  /** The matmul kernels the runner's engine runs for this lease (shaders/autotune.ts), stored in the lease's adapter. */
  kernels?: KernelReport;
}

/** 200 to a heartbeat: the lease's new expiry. 409 (code "stale_lease") once the lease has expired or ended. */
export interface HeartbeatResponse {
  id: string;
  expires_at: number;
  heartbeat_ms: number;
}

/** 200 to metrics and evals posts: rows newly stored, and rows already there (a repeat changes nothing). */
export interface WriteResponse {
  stored: number;
  duplicates: number;
}

/** One logged step of one run. */
export type MetricRow = { run_id: string; step: number } & StepMetrics;

/** POST /v1/leases/:id/metrics — idempotent per (run_id, step). */
export interface MetricsRequest {
  token: string;
  rows: MetricRow[];
}

/** POST /v1/leases/:id/evals — one per run; a repeat of the same run replaces nothing and is accepted. */
export interface EvalsRequest {
  token: string;
  evals: Array<{ run_id: string } & EvalMetrics>;
}

/**
 * PUT /v1/leases/:id/checkpoints/:run_id?kind=final|resume&step=N (body: safetensors; header x-lease-token).
 * `final` is the trained SAE users download (step defaults to n_steps); `resume` adds the Adam moments and the step
 * (step required). GET the same path (kind=resume, step optional: the latest) to fetch one back under a valid lease.
 */
export type CheckpointKind = "final" | "resume";

/**
 * POST /v1/leases/:id/complete. 409 with code "incomplete" (field "evals" or "checkpoints") until every run of the
 * lease has its eval and its `final` checkpoint stored; a repeated complete with the same token answers 200.
 */
export interface CompleteRequest {
  token: string;
}

export interface CompleteResponse {
  id: string;
  status: "completed";
  group_status?: "waiting" | "running" | "done" | "failed";
  repeated?: boolean;
}

/** POST /v1/leases/:id/release — gives the group back without counting a failure. */
export interface ReleaseRequest {
  token: string;
  /** Why (for the lease's record): "runner stopped", "GPU device lost", … */
  reason?: string;
}

export interface ReleaseResponse {
  id: string;
  status: "released";
  group_status: "waiting" | "running" | "done" | "failed";
  repeated?: boolean;
}

/** POST /v1/groups/:id/retry (submitter token) — re-queues a failed group; its runs resume from their checkpoints. */
export interface RetryResponse {
  id: string;
  status: "waiting" | "running" | "done" | "failed";
  /** Runs put back to waiting. */
  requeued: number;
}

/** POST /v1/leases/:id/fail — puts the group back, up to a retry limit. */
export interface FailRequest {
  token: string;
  error: string;
}

export interface FailResponse {
  id: string;
  status: "failed";
  /** "failed" once the group has failed MAX_ATTEMPTS times; else its runs wait for the next claim. */
  group_status: "waiting" | "running" | "done" | "failed";
  failures: number;
  max_attempts: number;
  repeated?: boolean;
}

/** 201 to PUT /v1/leases/:id/checkpoints/:run_id; 200 with `duplicate` for a repeat. */
export interface CheckpointResponse {
  run_id: string;
  kind: CheckpointKind;
  step: number;
  bytes: number;
  /** 200: a checkpoint of this run, kind and step was already stored; it stays, this upload is dropped. */
  duplicate?: true;
}

/**
 * Checkpoints of any size, in parts (worker/routes/checkpoints.ts):
 *   POST /v1/leases/:id/uploads {token, run_id, kind, step, bytes}      → 201 UploadInitResponse (200 when resumed)
 *   PUT  /v1/leases/:id/uploads/:upload_id/parts/:n (x-lease-token)      → 200 UploadPartResponse, n = 1..n_parts
 *   POST /v1/leases/:id/uploads/:upload_id/complete {token}              → 201 CheckpointResponse (200 duplicate)
 * Part n holds bytes [(n−1)·part_bytes, min(n·part_bytes, bytes)); part 1 must hold the safetensors header, which
 * is checked against the run's config (names, dtypes, shapes, contiguous offsets, metadata) before anything is kept.
 * A repeated init by the same lease resumes the upload (`received` lists the parts stored); a repeated part changes
 * nothing; complete assembles the parts into one R2 object and records it. An init for a checkpoint already stored
 * answers 200 with `duplicate` and no upload.
 */
export interface UploadInitRequest {
  token: string;
  run_id: string;
  kind: CheckpointKind;
  step: number;
  /** The whole file's size. */
  bytes: number;
}

export interface UploadInitResponse {
  /** Null when the checkpoint is already stored (`duplicate`). */
  upload_id: string | null;
  part_bytes: number;
  n_parts: number;
  /** Parts already stored (a resumed upload); upload only the others. */
  received: number[];
  duplicate?: CheckpointResponse;
}

export interface UploadPartResponse {
  upload_id: string;
  part: number;
  bytes: number;
  /** This part was already stored; nothing changed. */
  repeated?: true;
}

export interface UploadCompleteRequest {
  token: string;
}

/**
 * POST /v1/leases/:id/checkpoints/:run_id/reject {token, step, error}: the runner could not load this resume
 * checkpoint; the Worker deletes it (D1 row and R2 object) and answers the lease's resume points without it, so the
 * group falls back to the previous checkpoint (this lease and every later claim) instead of failing on it forever.
 */
export interface RejectCheckpointRequest {
  token: string;
  step: number;
  error: string;
}

export interface RejectCheckpointResponse {
  resume: ResumePoint[];
}

/** 201 to POST /v1/sweeps (submitter token). */
export interface SubmitResponse {
  id: string;
  n_runs: number;
  n_groups: number;
  groups: Array<{ id: string; n_runs: number }>;
  /** saev keys accepted and ignored, and similar notes. */
  warnings: string[];
}

/** Messages on the W&B queue (WANDB_QUEUE), enqueued only for runs whose config has track = true. */
export type WandbMessage =
  | { kind: "metrics"; run_id: string; rows: Array<{ step: number; ts: number } & StepMetrics> }
  /**
   * `arrays_omitted`: the eval's freqs and mean_values did not fit one queue message (128 KB), so they are sent
   * empty here; they are in D1 (GET /v1/runs/:id/eval).
   */
  | { kind: "eval"; run_id: string; ts: number; eval: EvalMetrics; arrays_omitted?: boolean }
  | { kind: "finish"; run_id: string; ts: number; exit_code: number };

/**
 * What the runner knows of a run's data and the Worker does not (the shards' metadata.json): written by the runner
 * as JSON into the final checkpoint's safetensors metadata under `data_origin`, read by the SAELens export.
 */
export interface DataOrigin {
  /** The ViT layer the activations come from (metadata.layers[data.layer]); null for synthetic data. */
  layer: number | null;
  /** The shards' `vit_ckpt` and `vit_family` (metadata.json), null when not given or synthetic. */
  vit_ckpt: string | null;
  vit_family: string | null;
}

/** GET /v1/runs/:id/export/saelens/:file (submitter token): one run as a SAELens v6 directory, file by file. */
export type SaeLensFile = "cfg.json" | "sae_weights.safetensors" | "sparsity.safetensors";

/**
 * cfg.json of the export (SAELens ≥ 6 `SAEConfig.to_dict()` plus `k` for TopK): for raw activations, the
 * normalization folded into the weights, so `normalize_activations` is "none".
 */
export interface SaeLensCfg {
  /** "standard" (ReLU), "jumprelu" (JumpReLU, and BatchTopK with its threshold), "topk" (with `k`). */
  architecture: "standard" | "jumprelu" | "topk";
  d_in: number;
  d_sae: number;
  dtype: "float32";
  device: "cpu";
  apply_b_dec_to_input: true;
  normalize_activations: "none";
  reshape_activations: "none";
  /** TopK only. */
  k?: number;
  /** TopK only: false, the activations are not rescaled by decoder norms. */
  rescale_acts_by_decoder_norm?: false;
  metadata: {
    /** ≥ "6.0.0": older versions make SAELens rewrite the config as a pre-6 one. */
    sae_lens_version: string;
    /** "blocks.<layer>.hook_resid_post" for shards (the residual stream after that ViT block), null for synthetic. */
    hook_name: string | null;
    hook_layer: number | null;
    /** The shards' vit_ckpt when known. */
    model_name: string | null;
    model_class_name: string | null;
    /** The shards' URL, or a description of the synthetic data. */
    dataset_path: string;
    run_id: string;
    sweep_id: string;
    group_id: string;
    /** Steps trained. */
    step: number;
    /** The run's full TrainConfig. */
    train_config: TrainConfig;
    /** The normalization the SAE was trained under ((x − mean)/scale), already folded into the weights. */
    normalization: { mean: number[]; scale: number; folded: true };
  };
}
