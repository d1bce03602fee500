// History lines and summary histograms as W&B reads them (wandb.Histogram = numpy.histogram's counts and edges).
import { describe, expect, it } from "vitest";
import type { EvalMetrics } from "../../shaders/config";
import { parseWandbJson, wandbJson } from "../../worker/wandb/json";
import { encodeHistoryLine, evalSummary, histogram, historyLine, type QueuedRow } from "../../worker/wandb/rows";
import { mulberry32, testSeed } from "../helpers/random";

const seed = testSeed();
const rand = mulberry32(seed);

/** numpy.histogram reference in float64, by direct comparison with every edge. */
function referenceCounts(values: number[], edges: number[]): number[] {
  const n = edges.length - 1;
  const counts = new Array(n).fill(0);
  for (const v of values) {
    for (let b = 0; b < n; b++) {
      if (v >= edges[b] && (v < edges[b + 1] || (b === n - 1 && v <= edges[n]))) {
        counts[b]++;
        break;
      }
    }
  }
  return counts;
}

function row(step: number, ts: number, loss = 1): QueuedRow {
  return {
    step, ts, loss, mse: 0.5, l0: 12, l1: 3.5, sparsity: 0.01,
    "progress/n_patches_seen": (step + 1) * 64, "progress/learning_rate": 3e-4, "progress/sparsity_coeff": 8e-4,
  };
}

describe(`W&B rows (TEST_SEED=${seed})`, () => {
  it("a history line has _step, _timestamp (s), _runtime from the run's start, and saev's metric names", () => {
    const line = historyLine({ ...row(24, 1_700_000_012_500), run_id: "r1" } as QueuedRow, 1_700_000_000_000);
    expect(line).toEqual({
      _step: 24, _timestamp: 1_700_000_012.5, _runtime: 12.5, loss: 1, mse: 0.5, l0: 12, l1: 3.5, sparsity: 0.01,
      "progress/n_patches_seen": 1600, "progress/learning_rate": 3e-4, "progress/sparsity_coeff": 8e-4,
    });
    expect(() => historyLine(row(1.5, 0), 0)).toThrow(/step/);
  });

  it("writes NaN and ±Infinity bare, and reads them back", () => {
    const text = encodeHistoryLine(row(4, 2000, NaN), 1000);
    expect(text).toContain('"loss":NaN');
    expect(wandbJson({ a: Infinity, b: -Infinity, s: "NaN Infinity", n: null })).toBe('{"a":Infinity,"b":-Infinity,"s":"NaN Infinity","n":null}');
    const back = parseWandbJson(text) as Record<string, number>;
    expect(back.loss).toBeNaN();
    expect(back._runtime).toBe(1);
    expect(parseWandbJson('{"s":"NaN \\"Infinity\\"","v":[-Infinity,1e-9]}')).toEqual({ s: 'NaN "Infinity"', v: [-Infinity, 1e-9] });
  });

  it("histograms match numpy.histogram on random inputs: len(bins) = len(values) + 1, counts sum to n", () => {
    for (let trial = 0; trial < 20; trial++) {
      const n = 1 + Math.floor(rand() * 3000);
      const nBins = 1 + Math.floor(rand() * 512);
      const values = Array.from({ length: n }, () => (rand() - 0.3) * 10 ** (rand() * 6 - 3));
      const h = histogram(values, nBins);
      expect(h._type).toBe("histogram");
      expect(h.values.length).toBe(nBins);
      expect(h.bins.length).toBe(nBins + 1);
      expect(h.bins[0]).toBe(Math.min(...values));
      expect(h.bins[nBins]).toBe(Math.max(...values));
      expect(h.values.reduce((a, b) => a + b, 0)).toBe(n);
      expect(h.values).toEqual(referenceCounts(values, h.bins));
    }
    expect(histogram([3, 3, 3], 4)).toEqual({ _type: "histogram", values: [0, 0, 3, 0], bins: [2.5, 2.75, 3, 3.25, 3.5] });
    expect(histogram([], 2)).toEqual({ _type: "histogram", values: [0, 0], bins: [0, 0.5, 1] });
    expect(() => histogram([1], 513)).toThrow(/512/);
    expect(() => histogram([NaN], 4)).toThrow(/finite/);
  });

  it("EvalMetrics become eval/ scalars, freqs as log10(freq + 1e-9) in 50 bins, mean_values without nulls", () => {
    const dSae = 256;
    const freqs = Array.from({ length: dSae }, (_, i) => (i % 7 === 0 ? 0 : rand() * 0.05));
    const meanValues = freqs.map((f) => (f === 0 ? null : rand() * 4));
    const ev: EvalMetrics = {
      l0: 10.5, l1: 2.25, mse: 0.125, fvu: 0.2, explained_variance: 0.8, n_dead: 37, n_almost_dead: 37, n_dense: 120,
      freqs, mean_values: meanValues, n_examples: 4096,
    };
    const s = evalSummary(ev);
    expect(Object.keys(s).sort()).toEqual(
      ["eval/explained_variance", "eval/freqs", "eval/fvu", "eval/l0", "eval/l1", "eval/mean_values", "eval/mse",
        "eval/n_almost_dead", "eval/n_dead", "eval/n_dense", "eval/n_examples"].sort(),
    );
    expect(s["eval/n_dead"]).toBe(37);
    const fh = s["eval/freqs"] as { values: number[]; bins: number[] };
    expect(fh.values.length).toBe(50);
    expect(fh.bins.length).toBe(51);
    expect(fh.bins[0]).toBeCloseTo(-9, 12); // log10(0 + 1e-9): the dead features
    expect(fh.values[0]).toBe(freqs.filter((f) => f === 0).length);
    expect(fh.values.reduce((a, b) => a + b, 0)).toBe(dSae);
    const logs = freqs.map((f) => Math.log10(f + 1e-9));
    expect(fh.values).toEqual(referenceCounts(logs, fh.bins));
    const mh = s["eval/mean_values"] as { values: number[]; bins: number[] };
    const fired = meanValues.filter((v): v is number => v !== null);
    expect(mh.values.reduce((a, b) => a + b, 0)).toBe(fired.length);
    expect(mh.bins.length).toBe(mh.values.length + 1);
    expect(mh.values).toEqual(referenceCounts(fired, mh.bins));
    // It survives the trip through the summary line.
    expect(parseWandbJson(wandbJson(s))).toEqual(s);
  });
});
