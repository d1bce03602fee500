// The per-kernel AuxK reference (./auxk.ts): it composes to ./topk.ts's auxK/auxKBackward, and coeff·aux's
// gradients match central finite differences (e and the denominator are constants: stop-gradient; steps that
// change the selection or a ReLU have no derivative and are skipped).
import { describe, expect, it } from "vitest";
import { mulberry32, testSeed } from "../helpers/random";
import { auxkTerms } from "./auxk";
import { PARAM_NAMES, zerosLike, type Params } from "./sae";
import { auxK, auxKBackward } from "./topk";

function randomCase(seed: number) {
  const rand = mulberry32(seed);
  const d = 6, n = 14, B = 5;
  const r = (len: number, s: number) => Float64Array.from({ length: len }, () => (rand() * 2 - 1) * s);
  const p: Params = { W_enc: r(d * n, 0.8), b_enc: r(n, 0.2), W_dec: r(n * d, 0.5), b_dec: r(d, 0.3), log_threshold: new Float64Array(n) };
  const x = r(B * d, 1);
  const e = r(B * d, 0.7);
  const dead = Uint8Array.from({ length: n }, () => (rand() < 0.45 ? 1 : 0));
  dead[1] = 1;
  const h = (q: Params) => {
    const out = new Float64Array(B * n);
    for (let b = 0; b < B; b++)
      for (let j = 0; j < n; j++) {
        let s = q.b_enc[j];
        for (let i = 0; i < d; i++) s += (x[b * d + i] - q.b_dec[i]) * q.W_enc[i * n + j];
        out[b * n + j] = s;
      }
    return out;
  };
  return { p, x, e, dead, h, B, n, d };
}

describe("AuxK reference, kernel by kernel", () => {
  it("composes to topk.ts's auxK and auxKBackward", () => {
    const seed = testSeed();
    const { p, x, e, dead, h, B, n, d } = randomCase(seed);
    const hv = h(p);
    for (const kAux of [1, 3, 100]) {
      const t = auxkTerms(p, x, hv, e, dead, kAux, 0.3, B, n, d);
      const ak = auxK(p, hv, e, dead, kAux, B, n, d);
      const g = zerosLike(p);
      auxKBackward(g, p, x, hv, e, ak, 0.3, B, n, d);
      expect(t.aux, `seed ${seed}`).toBeCloseTo(ak.aux, 12);
      expect(t.aux).toBeGreaterThan(0);
      for (let i = 0; i < B * d; i++) expect(t.r[i]).toBeCloseTo(e[i] - ak.eHat[i], 12);
      for (const name of PARAM_NAMES) for (let i = 0; i < g[name].length; i++) expect(t.grads[name][i], `seed ${seed} ${name}[${i}]`).toBeCloseTo(g[name][i], 12);
    }
    // Nothing dead: aux = 0 and no gradient.
    const none = auxkTerms(p, x, hv, e, new Uint8Array(n), 3, 0.3, B, n, d);
    expect(none.aux).toBe(0);
    for (const name of PARAM_NAMES) expect(none.grads[name].every((v) => v === 0)).toBe(true);
  });

  it("coeff·aux's gradients match central finite differences", () => {
    const seed = testSeed();
    const { p, x, e, dead, h, B, n, d } = randomCase(seed);
    const coeff = 0.7, kAux = 2;
    const t0 = auxkTerms(p, x, h(p), e, dead, kAux, coeff, B, n, d);
    const loss = () => {
      const hv = h(p);
      const t = auxkTerms(p, x, hv, e, dead, kAux, coeff, B, n, d);
      return { value: coeff * t.aux, sel: `${Array.from(t.act, (v) => (v > 0 ? 1 : 0)).join("")}` };
    };
    const step = 1e-6;
    let checked = 0, skipped = 0;
    for (const name of PARAM_NAMES) {
      if (name === "log_threshold") continue;
      for (let i = 0; i < p[name].length; i++) {
        const orig = p[name][i];
        p[name][i] = orig + step;
        const up = loss();
        p[name][i] = orig - step;
        const down = loss();
        p[name][i] = orig;
        if (up.sel !== down.sel) {
          skipped++;
          continue;
        }
        const fd = (up.value - down.value) / (2 * step);
        expect(Math.abs(t0.grads[name][i] - fd), `seed ${seed} ${name}[${i}]`).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(fd)));
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(170);
    expect(skipped).toBeLessThan(10);
    // the aux term must reach every parameter kind, or the check says little
    for (const name of ["W_enc", "b_enc", "W_dec", "b_dec"] as const) expect(t0.grads[name].some((v) => Math.abs(v) > 1e-6), name).toBe(true);
  });
});
