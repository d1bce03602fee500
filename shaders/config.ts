/**
 * The resolved training config of one SAE run (saev's `Train`, every default filled in; see ../shared/SAE.md).
 * The Worker validates sweep files into these (worker/), the engine trains from them (shaders/), and the runner
 * passes them through (runner/). Names follow saev so its sweep files load unchanged.
 */

/** Synthetic activations with known ground-truth features (ours; for tests, demos and recovery checks). */
export interface SyntheticData {
  kind: "synthetic";
  d_vit: number;
  /** Number of ground-truth unit directions. */
  n_features: number;
  /** Mean firing probability of a feature. */
  sparsity: number;
  /** Seeds the features and the examples: example i is the same on every runner. */
  seed: number;
  /** Std of Gaussian noise added to every coordinate (0: none). */
  noise: number;
  /** Examples in the dataset (the stream cycles through them, shuffled per epoch). */
  n_examples: number;
}

/** saev's activation shards (`metadata.json` + `acts*.bin`) on any HTTP(S) URL. */
export interface ShardData {
  kind: "shards";
  /** The directory holding metadata.json, with or without a trailing slash. */
  url: string;
  /** Index into metadata.layers (negative counts from the end). */
  layer: number;
  patches: "patches" | "cls" | "meanpool";
  scale_mean: boolean;
  scale_norm: boolean;
  n_random_samples: number;
  /** Seeds the shuffled order. */
  seed: number;
}

export type DataConfig = SyntheticData | ShardData;

/** "topk" keeps the k largest pre-activations per example, "batchtopk" the k·B largest over the batch (SAE.md). */
export type SaeKind = "relu" | "jumprelu" | "topk" | "batchtopk";
export const SELECT_KINDS: readonly SaeKind[] = ["topk", "batchtopk"];
/** True for the kinds that select latents (TopK, BatchTopK): no sparsity penalty, AuxK for dead latents. */
export const isSelectKind = (kind: SaeKind): kind is "topk" | "batchtopk" => kind === "topk" || kind === "batchtopk";
/** True for the SAEs that train with AuxK (SAE.md): TopK/BatchTopK with aux_coeff > 0 (and k_aux > 0). */
export const usesAuxK = (cfg: { sae: Pick<SaeConfig, "kind" | "aux_coeff" | "k_aux"> }): boolean => isSelectKind(cfg.sae.kind) && cfg.sae.aux_coeff > 0 && cfg.sae.k_aux > 0;

export interface SaeConfig {
  kind: SaeKind;
  d_vit: number;
  exp_factor: number;
  normalize_w_dec: boolean;
  remove_parallel_grads: boolean;
  /** Weight-init seed: every runner builds the same SAE. */
  seed: number;
  /** JumpReLU only. */
  init_threshold: number;
  /** JumpReLU only: the rectangle kernel's bandwidth ε. */
  bandwidth: number;
  /** Examples averaged for the b_dec init. */
  n_reinit_samples: number;
  /** TopK/BatchTopK: latents kept per example (BatchTopK: k·B over the batch); null for ReLU/JumpReLU. */
  k: number | null;
  /** BatchTopK only: θ ← β·θ + (1 − β)·min_kept each step. */
  threshold_beta: number;
  /** TopK/BatchTopK: AuxK reconstructs the residual from the top min(k_aux, #dead) dead latents. */
  k_aux: number;
  /** TopK/BatchTopK: loss = mse + aux_coeff·aux (0: no AuxK). */
  aux_coeff: number;
  /** TopK/BatchTopK: a latent is dead after this many consecutive training examples without firing. */
  dead_after: number;
}

export interface ObjectiveConfig {
  kind: "vanilla" | "matryoshka";
  sparsity_coeff: number;
  /** Matryoshka only. */
  n_prefixes: number;
}

export interface TrainConfig {
  data: DataConfig;
  /** Training examples; steps = ceil(n_patches / sae_batch_size). */
  n_patches: number;
  sae_batch_size: number;
  lr: number;
  n_lr_warmup: number;
  /** "warmup" (linear warmup, then lr) or "warmup_cosine" (then a cosine decay to lr_final at the last step). */
  lr_schedule: "warmup" | "warmup_cosine";
  /** warmup_cosine only: the lr the cosine reaches at the run's end. */
  lr_final: number;
  /** Per SAE: the global L2 norm of its gradients is clipped to this (torch's clip_grad_norm_); null: no clipping. */
  max_grad_norm: number | null;
  n_sparsity_warmup: number;
  log_every: number;
  seed: number;
  sae: SaeConfig;
  objective: ObjectiveConfig;
  /** Examples evaluated after training (0: all the training data, as saev). */
  n_eval: number;
  track: boolean;
  wandb_project: string;
  wandb_entity: string | null;
  tag: string;
  tags: string[];
}

/** SAE.md's defaults of the TopK/BatchTopK/AuxK keys (k has none: TopK and BatchTopK must name it). */
export const SELECT_DEFAULTS: Pick<SaeConfig, "k" | "threshold_beta" | "k_aux" | "aux_coeff" | "dead_after"> = {
  k: null,
  threshold_beta: 0.999,
  k_aux: 512,
  aux_coeff: 1 / 32,
  dead_after: 10_000_000,
};

/** SAE.md's defaults of the schedule keys: today's linear warmup, no clipping. */
export const SCHEDULE_DEFAULTS: Pick<TrainConfig, "lr_schedule" | "lr_final" | "max_grad_norm"> = {
  lr_schedule: "warmup",
  lr_final: 0,
  max_grad_norm: null,
};

/** d_sae = d_vit · exp_factor. */
export const dSae = (cfg: TrainConfig): number => cfg.sae.d_vit * cfg.sae.exp_factor;

/** Steps a run takes: ceil(n_patches / sae_batch_size) (saev takes one extra batch; we do not). */
export const nSteps = (cfg: TrainConfig): number => Math.ceil(cfg.n_patches / cfg.sae_batch_size);

/** Keys whose values must be equal for configs to share a group (one data stream), as saev's CANNOT_PARALLELIZE. */
export const CANNOT_PARALLELIZE = [
  "data",
  "n_patches",
  "sae_batch_size",
  "track",
  "wandb_project",
  "tag",
  "log_every",
  "sae.d_vit",
  "sae.exp_factor",
  // saev keys we accept and ignore; still, configs that differ in them are not grouped, as in saev
  "n_workers",
  "ckpt_path",
  "device",
  "slurm_acct",
  "slurm_partition",
  "n_hours",
  "log_to",
] as const;

/** Step metrics logged every `log_every` steps, under saev's names. */
export interface StepMetrics {
  loss: number;
  mse: number;
  l0: number;
  l1: number;
  sparsity: number;
  "progress/n_patches_seen": number;
  "progress/learning_rate": number;
  "progress/sparsity_coeff": number;
  /** TopK/BatchTopK with AuxK (SAE.md): the aux loss of the step (0 when no latent is dead); absent otherwise. */
  aux_loss?: number;
  /** TopK/BatchTopK with AuxK: latents that have not fired on dead_after consecutive training examples. */
  n_dead_train?: number;
}

/** saev's EvalMetrics, plus FVU and explained variance. */
export interface EvalMetrics {
  l0: number;
  l1: number;
  mse: number;
  /** Σ‖x − x̂‖² / Σ‖x − x̄‖². */
  fvu: number;
  explained_variance: number;
  n_dead: number;
  n_almost_dead: number;
  n_dense: number;
  /** Per feature: fraction of examples where it fired. */
  freqs: number[];
  /** Per feature: mean value when it fired (null where it never fired). */
  mean_values: (number | null)[];
  n_examples: number;
}

export const ALMOST_DEAD_THRESHOLD = 1e-7;
export const DENSE_THRESHOLD = 1e-2;
