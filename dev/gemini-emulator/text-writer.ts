import { FALLBACK_WORDS } from './prompt-words.js';
import type { Rng } from './seeded.js';

const SENTENCES: ReadonlyArray<(w: () => string) => string> = [
  (w) => `${w()} is closely related to ${w()} and ${w()}.`,
  (w) => `In short, ${w()} depends on how ${w()} is handled.`,
  (w) => `A practical approach is to start with ${w()}, then review ${w()}.`,
  (w) => `The main consideration for ${w()} is ${w()}.`,
  (w) => `Overall, ${w()} and ${w()} should be evaluated together.`,
  (w) => `When ${w()} changes, ${w()} usually follows.`,
  (w) => `It helps to compare ${w()} with ${w()} before deciding.`,
  (w) => `The evidence on ${w()} points towards ${w()}.`,
];

const capitalise = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1);

/** Draws words from the prompt, cycling through a shuffled copy so a short prompt still varies. */
export function wordSource(words: readonly string[], rng: Rng): () => string {
  const pool = words.length > 0 ? [...words] : [...FALLBACK_WORDS];
  for (let i = pool.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  let i = 0;
  return () => pool[i++ % pool.length];
}

export function sentence(next: () => string, rng: Rng): string {
  return capitalise(rng.pick(SENTENCES)(next));
}

/** A few sentences about the prompt's own words: what a text answer from the emulator looks like. */
export function writeAnswer(words: readonly string[], rng: Rng, sentences = rng.int(3, 5)): string {
  const next = wordSource(words, rng);
  // Each template at most once per answer, in a seeded order, so answers do not repeat themselves.
  const order = wordSource(SENTENCES.map((_s, i) => String(i)), rng);
  const out: string[] = [];
  for (let i = 0; i < sentences; i++) out.push(capitalise(SENTENCES[Number(order())](next)));
  return out.join(' ');
}

/** `n` words of the prompt joined by spaces: names, titles, tags. */
export function phrase(words: readonly string[], rng: Rng, n: number): string {
  const next = wordSource(words, rng);
  return Array.from({ length: Math.max(1, n) }, next).join(' ');
}
