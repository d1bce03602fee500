// A complete TrainConfig with SAE.md's defaults, small enough for SwiftShader; tests override what they vary.
import { SCHEDULE_DEFAULTS, SELECT_DEFAULTS, type ObjectiveConfig, type SaeConfig, type SyntheticData, type TrainConfig } from "../../shaders/config";

export interface ConfigOverrides extends Partial<Omit<TrainConfig, "sae" | "objective" | "data">> {
  sae?: Partial<SaeConfig>;
  objective?: Partial<ObjectiveConfig>;
  data?: Partial<SyntheticData>;
}

export function trainConfig(o: ConfigOverrides = {}): TrainConfig {
  const d_vit = o.sae?.d_vit ?? o.data?.d_vit ?? 16;
  const seed = o.seed ?? 42;
  return {
    n_patches: 64 * 100,
    sae_batch_size: 64,
    lr: 4e-4,
    n_lr_warmup: 0,
    n_sparsity_warmup: 0,
    log_every: 25,
    n_eval: 0,
    track: false,
    wandb_project: "saev",
    wandb_entity: null,
    tag: "",
    tags: [],
    ...SCHEDULE_DEFAULTS,
    ...o,
    seed,
    data: { kind: "synthetic", d_vit, n_features: 32, sparsity: 0.05, seed: 1, noise: 0, n_examples: 10_000, ...o.data },
    sae: {
      kind: "relu",
      d_vit,
      exp_factor: 4,
      normalize_w_dec: true,
      remove_parallel_grads: true,
      seed,
      init_threshold: 0.001,
      bandwidth: 0.001,
      n_reinit_samples: 4096,
      ...SELECT_DEFAULTS,
      ...o.sae,
    },
    objective: { kind: "vanilla", sparsity_coeff: 4e-4, n_prefixes: 10, ...o.objective },
  };
}
