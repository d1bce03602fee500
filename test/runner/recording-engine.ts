/**
 * A CPU stand-in for the WGSL engine, for testing the runner loop's protocol behaviour (what is posted, when,
 * and that a resumed group continues exactly where it stopped) before shaders/engine.ts is merged. It does not
 * train an SAE: its "weights" fold in every batch it sees (b_dec accumulates batch means in float32), so a
 * resumed run ends bitwise equal to an uninterrupted one only if it saw the same batches in the same order.
 * The end-to-end test with the real engine replaces it (see runner/page/engine-port.ts).
 */
import type { EvalMetrics, StepMetrics, TrainConfig } from "../../shaders/config";
import type { GroupEngine } from "../../runner/page/engine-port";
import type { AdamState, SaeWeights } from "../../runner/safetensors";

function blank(cfg: TrainConfig, fill: number): SaeWeights {
  const d = cfg.sae.d_vit, k = d * cfg.sae.exp_factor;
  const w: SaeWeights = { W_enc: new Float32Array(d * k).fill(fill), b_enc: new Float32Array(k).fill(fill), W_dec: new Float32Array(k * d).fill(fill), b_dec: new Float32Array(d) };
  if (cfg.sae.kind === "jumprelu") w.threshold = new Float32Array(k).fill(cfg.sae.init_threshold);
  return w;
}

const copy = (w: SaeWeights): SaeWeights => ({
  W_enc: w.W_enc.slice(), b_enc: w.b_enc.slice(), W_dec: w.W_dec.slice(), b_dec: w.b_dec.slice(), ...(w.threshold ? { threshold: w.threshold.slice() } : {}),
});

export class RecordingEngine implements GroupEngine {
  stepsTaken = 0;
  readonly batchesSeen: number[] = [];
  initMean: Float32Array | null = null;
  destroyed = false;
  private weights: SaeWeights[];
  private m: SaeWeights[];
  private v: SaeWeights[];
  /** Called after every step (tests stop the loop from here). */
  onStep: ((steps: number) => void) | null = null;

  constructor(readonly cfgs: TrainConfig[]) {
    this.weights = cfgs.map((c, i) => blank(c, i + 1));
    this.m = cfgs.map((c) => blank(c, 0));
    this.v = cfgs.map((c) => blank(c, 0));
  }

  async initBDec(mean: Float32Array): Promise<void> {
    this.initMean = mean.slice();
    for (const w of this.weights) w.b_dec.set(mean);
  }

  async step(batch: Float32Array): Promise<StepMetrics[] | null> {
    const d = this.cfgs[0].sae.d_vit;
    const rows = batch.length / d;
    // A hash of the exact float32 bits: a resumed run must see bit-identical batches.
    const bits = new Uint32Array(batch.buffer, batch.byteOffset, batch.length);
    let h = 0, sq = 0;
    for (let i = 0; i < batch.length; i++) {
      h = (Math.imul(h, 31) + bits[i]) | 0;
      sq += batch[i] * batch[i];
    }
    this.batchesSeen.push(h);
    this.weights.forEach((w, r) => {
      for (let j = 0; j < d; j++) {
        let s = 0;
        for (let i = 0; i < rows; i++) s += batch[i * d + j];
        w.b_dec[j] = Math.fround(w.b_dec[j] + Math.fround((s / rows) * this.cfgs[r].lr));
        this.m[r].b_dec[j] = Math.fround(this.m[r].b_dec[j] + s);
      }
      this.v[r].b_enc[0] = this.stepsTaken + 1;
    });
    const step = this.stepsTaken++;
    this.onStep?.(this.stepsTaken);
    const cfg = this.cfgs[0];
    if ((step + 1) % cfg.log_every !== 0) return null;
    return this.cfgs.map((c) => ({
      loss: sq / batch.length + c.objective.sparsity_coeff, mse: sq / batch.length, l0: step, l1: step / 2, sparsity: c.objective.sparsity_coeff,
      "progress/n_patches_seen": (step + 1) * c.sae_batch_size, "progress/learning_rate": c.lr, "progress/sparsity_coeff": c.objective.sparsity_coeff,
    }));
  }

  async evaluate(batches: AsyncIterable<Float32Array>): Promise<EvalMetrics[]> {
    const d = this.cfgs[0].sae.d_vit;
    let n = 0;
    for await (const b of batches) n += b.length / d;
    return this.cfgs.map((c) => {
      const k = c.sae.d_vit * c.sae.exp_factor;
      return { l0: 1, l1: 1, mse: 0.5, fvu: 0.25, explained_variance: 0.75, n_dead: 0, n_almost_dead: 0, n_dense: 0, freqs: new Array(k).fill(0.5), mean_values: new Array(k).fill(1), n_examples: n };
    });
  }

  async exportWeights(): Promise<SaeWeights[]> {
    return this.weights.map(copy);
  }

  async exportState(): Promise<Array<{ weights: SaeWeights; adam: AdamState }>> {
    return this.weights.map((w, i) => ({ weights: copy(w), adam: { m: copy(this.m[i]), v: copy(this.v[i]), step: this.stepsTaken } }));
  }

  async importState(states: Array<{ weights: SaeWeights; adam: AdamState }>): Promise<void> {
    this.weights = states.map((s) => copy(s.weights));
    this.m = states.map((s) => copy(s.adam.m));
    this.v = states.map((s) => copy(s.adam.v));
    this.stepsTaken = states[0].adam.step;
  }

  destroy(): void {
    this.destroyed = true;
  }
}
