/**
 * A seeded generator (mulberry32): rand(n) is an integer in [0, n), the same sequence on every
 * run. Not the `seed * 1103515245 % 2 ** 31` one-liner: in doubles that product loses its low
 * bits, and rand(2) came out 0 every time.
 */
export function seeded(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
}
