/**
 * Refuses, at submit, a sweep whose artifacts could never be stored (README "Storage"):
 * - a resume checkpoint (the largest: weights and both Adam moments) must fit one R2 object written in one put
 *   from the Worker, at most MAX_CHECKPOINT_BYTES, in at most MAX_UPLOAD_PARTS parts of the part size;
 * - one run's eval (d_sae freqs and mean_values as JSON) must fit one evals post (min(MAX_BODY_BYTES, 32 MiB)): the
 *   runner posts at least one eval per request.
 * The field named is sae.exp_factor (d_sae = d_vit · exp_factor), with the config it comes from.
 */
import type { TrainConfig } from "../shaders/config";
import { maxCheckpointBytes } from "./checkpoint-check";
import { settings, type Env } from "./env";
import { badRequest } from "./errors";

/** R2 takes up to 5 GiB in one put; the assembled checkpoint is one put. */
export const MAX_CHECKPOINT_BYTES = 5 * 1024 ** 3 - (1 << 20);
/** Parts per upload (as R2's multipart limit): far above what MAX_CHECKPOINT_BYTES needs at any sane part size. */
export const MAX_UPLOAD_PARTS = 10_000;
/** The most an eval's JSON takes per feature: a freq and a mean value of up to 24 characters each, and commas. */
export const EVAL_BYTES_PER_FEATURE = 50;
const EVAL_ENVELOPE_BYTES = 4096;

export function checkArtifacts(cfgs: TrainConfig[], env: Env): void {
  const { evalsBytes, partBytes } = settings(env);
  const seen = new Set<string>();
  let prev: TrainConfig["sae"] | undefined;
  cfgs.forEach((cfg, i) => {
    // The shape of the config before, checked already (a sweep's configs mostly share it): no key to build.
    if (prev && cfg.sae.d_vit === prev.d_vit && cfg.sae.exp_factor === prev.exp_factor && cfg.sae.kind === prev.kind) return;
    prev = cfg.sae;
    const shape = `${cfg.sae.d_vit}x${cfg.sae.exp_factor}/${cfg.sae.kind}`;
    if (seen.has(shape)) return;
    seen.add(shape);
    const d_sae = cfg.sae.d_vit * cfg.sae.exp_factor;
    const where = `(config ${i}: d_vit ${cfg.sae.d_vit}, exp_factor ${cfg.sae.exp_factor}, d_sae ${d_sae})`;
    const ckpt = maxCheckpointBytes(cfg, "resume");
    const cap = Math.min(MAX_CHECKPOINT_BYTES, MAX_UPLOAD_PARTS * partBytes);
    if (ckpt > cap)
      throw badRequest("artifacts_too_large", `a resume checkpoint would take up to ${ckpt} bytes, more than the ${cap} a checkpoint may have ${where}`, "sae.exp_factor");
    const evalBytes = EVAL_ENVELOPE_BYTES + d_sae * EVAL_BYTES_PER_FEATURE;
    if (evalBytes > evalsBytes)
      throw badRequest("artifacts_too_large", `an eval would take up to ${evalBytes} bytes, more than the ${evalsBytes} bytes an evals post may have ${where}`, "sae.exp_factor");
  });
}
