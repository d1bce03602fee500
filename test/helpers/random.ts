/** Seeded randomness for tests: fresh inputs per run come from a logged seed, so failures reproduce. */
export { mulberry32 } from "../../runner/data/random";

export function testSeed(): number {
  const s = process.env.TEST_SEED ? Number(process.env.TEST_SEED) : (Date.now() ^ (process.pid << 8)) >>> 0;
  return s;
}

export function randomArray(rand: () => number, n: number, scale = 1): number[] {
  return Array.from({ length: n }, () => (rand() * 2 - 1) * scale);
}
