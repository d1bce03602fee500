/**
 * What a run's metrics look like on W&B: history lines from StepMetrics rows, and summary entries (scalars and
 * histograms) from EvalMetrics, under saev's names.
 */
import type { EvalMetrics, StepMetrics } from "../../shaders/config";
import { wandbJson } from "./json";

/** A metrics row as it travels on the W&B queue (worker/protocol.ts): `ts` is unix milliseconds. */
export type QueuedRow = { step: number; ts: number } & StepMetrics;

/** W&B's histogram value (wandb.Histogram.to_json): counts per bin and the bin edges. */
export interface WandbHistogram {
  _type: "histogram";
  values: number[];
  bins: number[];
}

/** W&B refuses histograms with more bins than this. */
export const MAX_HISTOGRAM_BINS = 512;
/** saev drew freqs as log10(freq + 1e-9) in 50 bins. */
export const FREQ_HISTOGRAM_BINS = 50;
export const FREQ_LOG_EPS = 1e-9;
/** wandb.Histogram's default bin count, used for mean_values. */
export const DEFAULT_HISTOGRAM_BINS = 64;

/**
 * One history line: `_step`, `_timestamp` (unix s, float), `_runtime` (s since the run's start), then every
 * step metric under its saev name. `startTs` is the run's start in unix ms.
 */
export function historyLine(row: QueuedRow, startTs: number): Record<string, number> {
  const { step, ts, ...metrics } = row;
  if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`step must be a non-negative integer, got ${step}`);
  const line: Record<string, number> = {
    _step: step,
    _timestamp: ts / 1000,
    _runtime: Math.max(0, (ts - startTs) / 1000),
  };
  for (const [k, v] of Object.entries(metrics)) {
    if (k === "run_id" || typeof v !== "number") continue; // a row may still carry its run_id
    line[k] = v;
  }
  return line;
}

/** The encoded form sent on the file_stream (NaN/Infinity bare). */
export function encodeHistoryLine(row: QueuedRow, startTs: number): string {
  return wandbJson(historyLine(row, startTs));
}

/**
 * numpy.histogram(values, bins=nBins) as wandb.Histogram builds it: nBins equal bins over [min, max]
 * ([v − 0.5, v + 0.5] when all values are equal, [0, 1] when there are none), the last bin closed on the right.
 */
export function histogram(values: readonly number[], nBins: number): WandbHistogram {
  if (!Number.isInteger(nBins) || nBins < 1 || nBins > MAX_HISTOGRAM_BINS) {
    throw new RangeError(`a W&B histogram has 1..${MAX_HISTOGRAM_BINS} bins, got ${nBins}`);
  }
  for (const v of values) if (!Number.isFinite(v)) throw new RangeError(`histogram values must be finite, got ${v}`);
  let lo = 0;
  let hi = 1;
  if (values.length > 0) {
    lo = Infinity;
    hi = -Infinity;
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === hi) {
      lo -= 0.5;
      hi += 0.5;
    }
  }
  const bins = Array.from({ length: nBins + 1 }, (_, i) => (i === nBins ? hi : lo + ((hi - lo) * i) / nBins));
  const counts = new Array<number>(nBins).fill(0);
  for (const v of values) {
    let b = Math.floor(((v - lo) / (hi - lo)) * nBins);
    if (b >= nBins) b = nBins - 1; // the right edge belongs to the last bin
    if (b < 0) b = 0;
    // Floating rounding can put a value one bin off its edges; fix it against the edges themselves.
    while (b > 0 && v < bins[b]) b--;
    while (b < nBins - 1 && v >= bins[b + 1]) b++;
    counts[b]++;
  }
  return { _type: "histogram", values: counts, bins };
}

/** saev's freqs histogram: log10(freq + 1e-9), 50 bins. */
export function freqHistogram(freqs: readonly number[]): WandbHistogram {
  return histogram(
    freqs.map((f) => Math.log10(f + FREQ_LOG_EPS)),
    FREQ_HISTOGRAM_BINS,
  );
}

/** mean_values of the features that fired (nulls, the never-fired features, are skipped). */
export function meanValueHistogram(meanValues: readonly (number | null)[]): WandbHistogram {
  return histogram(
    meanValues.filter((v): v is number => v !== null && Number.isFinite(v)),
    DEFAULT_HISTOGRAM_BINS,
  );
}

/**
 * The summary entries of one evaluation, under saev's `eval/` names: every scalar as is, `freqs` and
 * `mean_values` as histograms.
 */
export function evalSummary(ev: EvalMetrics): Record<string, number | WandbHistogram> {
  const out: Record<string, number | WandbHistogram> = {};
  for (const [k, v] of Object.entries(ev)) {
    if (typeof v === "number") out[`eval/${k}`] = v;
  }
  out["eval/freqs"] = freqHistogram(ev.freqs);
  out["eval/mean_values"] = meanValueHistogram(ev.mean_values);
  return out;
}
