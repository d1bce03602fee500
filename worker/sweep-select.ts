/**
 * The sweep keys of TopK/BatchTopK SAEs, AuxK and the newer schedule (../shared/SAE.md "TopK, BatchTopK, AuxK and
 * the newer schedule"): their per-value checks, their defaults, and the checks that need several keys (k ≤ d_sae,
 * k required). Kept apart from sweep.ts, which calls these at its three seams (the key tree, resolve, warnings).
 */
import { z } from "zod";
import { SCHEDULE_DEFAULTS, SELECT_DEFAULTS, isSelectKind, type SaeConfig, type TrainConfig } from "../shaders/config";
import type { Issue } from "./errors";

const int = (min: number, what: string) => z.number().int("must be an integer").min(min, `must be ${what}`);

/** sae.kind's values. */
export const SAE_KINDS = z.enum(["relu", "jumprelu", "topk", "batchtopk"], { message: 'must be "relu", "jumprelu", "topk" or "batchtopk"' });

/** Keys of the [sae] table for TopK/BatchTopK and AuxK (each value, or each value of a list, must pass). */
export const SELECT_SAE_LEAVES: Record<string, z.ZodType> = {
  k: int(1, ">= 1"),
  threshold_beta: z.number().min(0, "must be >= 0").max(1, "must be <= 1"),
  k_aux: int(1, ">= 1"),
  aux_coeff: z.number().min(0, "must be >= 0").finite("must be finite"),
  dead_after: int(1, ">= 1"),
};

/** Top-level schedule keys. */
export const SCHEDULE_LEAVES: Record<string, z.ZodType> = {
  lr_schedule: z.enum(["warmup", "warmup_cosine"], { message: 'must be "warmup" or "warmup_cosine"' }),
  lr_final: z.number().min(0, "must be >= 0").finite("must be finite"),
  max_grad_norm: z.number({ message: "must be a number > 0 (or null: no clipping)" }).positive("must be > 0").finite("must be finite").nullable(),
};

type SelectFields = Pick<SaeConfig, keyof typeof SELECT_DEFAULTS>;
type ScheduleFields = Pick<TrainConfig, keyof typeof SCHEDULE_DEFAULTS>;

/** The [sae] table's TopK/AuxK values with SAE.md's defaults filled in. */
export function selectSaeFields(s: Record<string, any>): SelectFields {
  const out = { ...SELECT_DEFAULTS };
  for (const key of Object.keys(out) as (keyof SelectFields)[]) if (s[key] !== undefined) (out as Record<string, unknown>)[key] = s[key];
  return out;
}

/** The top-level schedule values with SAE.md's defaults filled in. */
export function scheduleFields(o: Record<string, any>): ScheduleFields {
  const out = { ...SCHEDULE_DEFAULTS };
  for (const key of Object.keys(out) as (keyof ScheduleFields)[]) if (o[key] !== undefined) (out as Record<string, unknown>)[key] = o[key];
  return out;
}

/** What one resolved config must satisfy across keys: TopK and BatchTopK name k, and 1 ≤ k ≤ d_sae. */
export function checkSelect(cfg: TrainConfig, issues: Issue[]): void {
  const { kind, k } = cfg.sae;
  if (!isSelectKind(kind)) return;
  const dSae = cfg.sae.d_vit * cfg.sae.exp_factor;
  if (k === null) issues.push({ field: "sae.k", message: `is required for sae.kind = "${kind}" (latents kept per example, 1 <= k <= d_sae)` });
  else if (k > dSae) issues.push({ field: "sae.k", message: `must be <= d_sae (${dSae} = d_vit ${cfg.sae.d_vit} × exp_factor ${cfg.sae.exp_factor}), got ${k}` });
}

/** Warnings for keys a sweep gave that some of its runs ignore. */
export function selectWarnings(raw: Record<string, any>, cfgs: TrainConfig[]): string[] {
  const warnings: string[] = [];
  const objective = raw.objective;
  const gaveCoeff = typeof objective === "object" && objective !== null && "sparsity_coeff" in objective;
  if (gaveCoeff && cfgs.some((c) => isSelectKind(c.sae.kind)))
    warnings.push("objective.sparsity_coeff: ignored by the topk and batchtopk runs (they select latents; no sparsity penalty)");
  if ("lr_final" in raw && !cfgs.some((c) => c.lr_schedule === "warmup_cosine"))
    warnings.push('lr_final: ignored; it applies to lr_schedule = "warmup_cosine" only');
  return warnings;
}
