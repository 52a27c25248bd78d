import { EMBEDDING_DIM, type EmbedFn } from '../../src/shared/knowledge/embedding.js';

// A deterministic stand-in for an embedding model, for DB-layer tests: hashed word and character-trigram
// features, normalised. Texts sharing content words score high, unrelated texts near 0; stop words and
// punctuation are ignored, so light paraphrases ("How can I reset my password?" / "how do I reset the
// password") land on (nearly) the same vector.
const STOP = new Set(
  'a an the of to in on for and or is are was were be been do does did can could should would will how what which who why when where i me my we our you your it its this that these those with by from at as please'.split(
    ' ',
  ),
);

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

const stem = (w: string) => (w.length > 3 && w.endsWith('s') ? w.slice(0, -1) : w);

export function hashEmbedOne(text: string): number[] {
  const v = new Array<number>(EMBEDDING_DIM).fill(0);
  const add = (feature: string, weight: number) => {
    const h = fnv1a(feature);
    v[h % EMBEDDING_DIM] += (h & 0x80000000 ? -1 : 1) * weight;
  };
  const words = text
    .toLowerCase()
    .replace(/[^a-z0-9\s]/g, ' ')
    .split(/\s+/)
    .filter((w) => w.length > 1 && !STOP.has(w))
    .map(stem);
  for (const w of words) {
    add(`w:${w}`, 1);
    const padded = `^${w}$`;
    for (let i = 0; i + 3 <= padded.length; i++) add(`t:${padded.slice(i, i + 3)}`, 0.25);
  }
  const norm = Math.hypot(...v);
  if (norm === 0) {
    v[0] = 1;
    return v;
  }
  return v.map((x) => x / norm);
}

/** An EmbedFn that also counts texts embedded, so tests can check an embedding was reused. */
export function createHashEmbed(): EmbedFn & { calls: number; texts: number } {
  const fn = (async (texts: string[]) => {
    fn.calls++;
    fn.texts += texts.length;
    return texts.map(hashEmbedOne);
  }) as EmbedFn & { calls: number; texts: number };
  fn.calls = 0;
  fn.texts = 0;
  return fn;
}

export const cosine = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);
