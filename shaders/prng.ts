/**
 * A small counter-based PRNG: every draw is a pure hash of (seed, stream, index), so any runner (or a resumed
 * run) reproduces any draw without replaying the ones before it. Used for weight init (sae.seed), Matryoshka
 * prefix draws (sae.seed, step) and synthetic data (data.seed, example index).
 *
 * The hash is Chris Wellons' "triple32" integer mixer applied over the words of the key; it passes the usual
 * avalanche tests, which is plenty for init and data (this is not a cryptographic generator).
 */

/** Mixes one 32-bit word (triple32: bias ≈ 0.02, full avalanche). */
export function mix32(x: number): number {
  x = x >>> 0;
  x ^= x >>> 17;
  x = Math.imul(x, 0xed5ad4bb);
  x ^= x >>> 11;
  x = Math.imul(x, 0xac4c1b51);
  x ^= x >>> 15;
  x = Math.imul(x, 0x31848bab);
  x ^= x >>> 14;
  return x >>> 0;
}

const hi32 = (n: number): number => Math.floor(n / 4294967296) >>> 0;

/** A 32-bit hash of (seed, stream, index); seed and index may be any non-negative integer below 2^53. */
export function hash32(seed: number, stream: number, index: number): number {
  let h = mix32(seed >>> 0);
  h = mix32(h ^ hi32(seed) ^ 0x9e3779b9);
  h = mix32(h ^ (stream >>> 0));
  h = mix32(h ^ (index >>> 0));
  return mix32(h ^ hi32(index) ^ 0x85ebca6b);
}

/** Uniform in [0, 1), from 53 bits (two hashes). */
export function uniformAt(seed: number, stream: number, index: number): number {
  const a = hash32(seed, stream, 2 * index) >>> 5; // 27 bits
  const b = hash32(seed, stream, 2 * index + 1) >>> 6; // 26 bits
  return (a * 67108864 + b) / 9007199254740992;
}

/** Standard normal (Box–Muller on two uniforms; the log's argument is never 0). */
export function normalAt(seed: number, stream: number, index: number): number {
  const u1 = 1 - uniformAt(seed, stream, 2 * index); // (0, 1]
  const u2 = uniformAt(seed, stream, 2 * index + 1);
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/** A sequential view of one (seed, stream): draw i is uniformAt(seed, stream, i). */
export class CounterRng {
  private counter = 0;
  constructor(
    readonly seed: number,
    readonly stream = 0,
  ) {}
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * uniformAt(this.seed, this.stream, this.counter++);
  }
  normal(mean = 0, std = 1): number {
    return mean + std * normalAt(this.seed, this.stream, this.counter++);
  }
}

/** Streams in use, so no two purposes share draws. */
export const STREAMS = {
  W_ENC: 1,
  W_DEC: 2,
  MATRYOSHKA: 3,
  DATA_FEATURES: 16,
  DATA_PROBS: 17,
  DATA_FIRE: 18,
  DATA_MAGNITUDE: 19,
  DATA_NOISE: 20,
  DATA_SHUFFLE: 21,
} as const;

/**
 * A bijection of [0, n) keyed by (seed, round key): a 4-round Feistel network on the smallest even bit width
 * that holds n, with cycle walking. O(1) memory, so epochs of any size shuffle without an index array.
 */
export function permuteIndex(i: number, n: number, seed: number, key: number): number {
  if (n <= 1) return 0;
  let bits = Math.ceil(Math.log2(n));
  if (bits % 2) bits++;
  const half = bits / 2;
  const mask = 2 ** half - 1;
  let x = i;
  do {
    let left = Math.floor(x / 2 ** half);
    let right = x % 2 ** half;
    for (let r = 0; r < 4; r++) {
      const f = hash32(seed, STREAMS.DATA_SHUFFLE, (key * 4 + r) * 2 ** half + right) & mask;
      [left, right] = [right, (left ^ f) >>> 0];
    }
    x = left * 2 ** half + right;
  } while (x >= n);
  return x;
}
