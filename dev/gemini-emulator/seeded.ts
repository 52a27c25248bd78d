/** FNV-1a, 32-bit: stable across runs and platforms, which is all determinism needs. */
export function hash32(text: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  int(lo: number, hi: number): number;
  pick<T>(items: readonly T[]): T;
  /** A child generator whose stream depends only on this seed and `label`, not on draw order. */
  fork(label: string): Rng;
}

/**
 * mulberry32: tiny, fast, and good enough to pick words and numbers. A class rather than closures: an answer
 * makes one per fork (per schema field), and under tsx every closure is also renamed (`__name`) as it is made.
 */
class Mulberry32 implements Rng {
  private state: number;

  constructor(private readonly seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }

  fork(label: string): Rng {
    return new Mulberry32(hash32(label, this.seed));
  }
}

export function createRng(seed: number): Rng {
  return new Mulberry32(seed);
}
