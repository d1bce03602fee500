/** Resolved TrainConfigs for runner tests (small shapes; defaults as ../shared/SAE.md). */
import { SCHEDULE_DEFAULTS, SELECT_DEFAULTS, type TrainConfig } from "../../shaders/config";

export function trainConfig(over: { d_vit?: number; exp_factor?: number; kind?: "relu" | "jumprelu"; seed?: number } = {}): TrainConfig {
  const d_vit = over.d_vit ?? 8;
  const seed = over.seed ?? 42;
  return {
    data: { kind: "synthetic", d_vit, n_features: 32, sparsity: 0.05, seed: 1, noise: 0, n_examples: 4096 },
    n_patches: 4096,
    sae_batch_size: 256,
    lr: 4e-4,
    n_lr_warmup: 500,
    n_sparsity_warmup: 0,
    log_every: 25,
    seed,
    sae: {
      kind: over.kind ?? "relu",
      d_vit,
      exp_factor: over.exp_factor ?? 4,
      normalize_w_dec: true,
      remove_parallel_grads: true,
      seed,
      init_threshold: 0.001,
      bandwidth: 0.001,
      n_reinit_samples: 524288,
      ...SELECT_DEFAULTS,
    },
    objective: { kind: "vanilla", sparsity_coeff: 4e-4, n_prefixes: 10 },
    n_eval: 0,
    track: false,
    wandb_project: "saev",
    wandb_entity: null,
    tag: "",
    tags: [],
    ...SCHEDULE_DEFAULTS,
  };
}
