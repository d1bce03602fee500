import { describe, expect, it } from "vitest";
import { compact, duration, formatProgress } from "../../runner/progress";

const progress = (n: number) => ({
  kind: "progress" as const,
  group_id: "g7",
  step: 1200,
  n_steps: 5000,
  samples_per_s: 12_345,
  eta_s: 312,
  saes: Array.from({ length: n }, (_, i) => ({ run_id: `r${i}`, mse: i === 0 ? null : 0.012345, l0: i === 0 ? null : 31.25 })),
});

describe("progress line", () => {
  it("formats numbers and durations", () => {
    expect(compact(12_345)).toBe("12.3k");
    expect(compact(2.5e6)).toBe("2.5M");
    expect(compact(42)).toBe("42");
    expect(duration(45)).toBe("45s");
    expect(duration(185)).toBe("3m05s");
    expect(duration(7620)).toBe("2h07m");
    expect(duration(null)).toBe("?");
  });

  it("shows step, rate, ETA and the latest MSE/L0 per SAE", () => {
    expect(formatProgress(progress(2))).toBe("group g7  step 1200/5000 24%  12.3k samples/s  ETA 5m12s | r0 mse – L0 – | r1 mse 0.0123 L0 31.3");
  });

  it("stays within the width, saying how many SAEs it left out", () => {
    const line = formatProgress(progress(40), 120);
    expect(line.length).toBeLessThanOrEqual(120 + " | +40 more".length);
    expect(line).toMatch(/\| \+\d+ more$/);
    const shown = (line.match(/ mse /g) ?? []).length;
    expect(Number(/\+(\d+) more/.exec(line)![1])).toBe(40 - shown);
  });
});
