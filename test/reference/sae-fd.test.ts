// The float64 reference checked against central finite differences, so the kernels are compared with a right answer.
import { describe, expect, it } from "vitest";
import { mulberry32, testSeed } from "../helpers/random";
import { backward, forward, PARAM_NAMES, type Hyper, type Params } from "./sae";

function randomCase(rand: () => number, kind: Hyper["kind"], bounds: number[]) {
  const d = 6, n = 14, B = 5;
  const r = (len: number, s: number) => Float64Array.from({ length: len }, () => (rand() * 2 - 1) * s);
  const p: Params = {
    W_enc: r(d * n, 0.8),
    b_enc: r(n, 0.2),
    W_dec: r(n * d, 0.5),
    b_dec: r(d, 0.3),
    log_threshold: Float64Array.from({ length: n }, () => Math.log(0.05 + 0.3 * rand())),
  };
  const x = r(B * d, 1);
  const hp: Hyper = { kind, d, n, coeff: 0.03, bandwidth: 0.2, bounds };
  return { p, x, B, hp };
}

describe("float64 reference gradients vs central finite differences", () => {
  for (const kind of ["relu", "jumprelu"] as const)
    for (const bounds of [[0, 14], [0, 3, 8, 14]]) {
      it(`${kind}, ${bounds.length - 1} prefix block(s)`, () => {
        const seed = testSeed();
        const { p, x, B, hp } = randomCase(mulberry32(seed), kind, bounds);
        const g = backward(p, x, B, hp, forward(p, x, B, hp));
        const h = 1e-6;
        let checked = 0;
        for (const name of PARAM_NAMES) {
          if (name === "log_threshold") continue; // JumpReLU's θ gradient is a pseudo-gradient (no derivative exists)
          for (let i = 0; i < p[name].length; i++) {
            const orig = p[name][i];
            p[name][i] = orig + h;
            const up = forward(p, x, B, hp);
            p[name][i] = orig - h;
            const down = forward(p, x, B, hp);
            p[name][i] = orig;
            // a step that flips an activation (or JumpReLU's gate) has no derivative: skip it
            if (up.l0 !== down.l0) continue;
            const fd = (up.loss - down.loss) / (2 * h);
            expect(Math.abs(g[name][i] - fd), `seed ${seed} ${name}[${i}]`).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(fd)));
            checked++;
          }
        }
        expect(checked).toBeGreaterThan(170);
      });
    }
});
