import { hash32 } from './seeded.js';

/**
 * The emulator's embedding: feature hashing of word unigrams (crudely stemmed) and per-word
 * character trigrams into `dims` buckets with a hashed sign, then L2-normalised. Texts that share
 * words share features, so a paraphrase scores high and unrelated text scores near zero; no model
 * weights are involved, so it is deterministic and cheap.
 */
const LIGHT = new Set(
  'a an the and or but of to in on at by for with from as is are was were be been it its this that these those i you he she we they what which who how do does did not no so than my our your their can could will would should'.split(' '),
);

function stem(raw: string): string {
  // British and American spellings ("summarise"/"summarize") should be one feature.
  const word = raw.replace(/is(e|ed|es|ing|ation)$/, 'iz$1');
  if (word.length > 5 && word.endsWith('ing')) return word.slice(0, -3);
  if (word.length > 4 && word.endsWith('ed')) return word.slice(0, -2);
  if (word.length > 4 && word.endsWith('es')) return word.slice(0, -2);
  if (word.length > 3 && word.endsWith('s') && !word.endsWith('ss')) return word.slice(0, -1);
  return word;
}

function add(vec: Float64Array, feature: string, weight: number): void {
  const h = hash32(feature);
  const sign = hash32(feature, 0x9e3779b9) & 1 ? 1 : -1;
  vec[h % vec.length] += sign * weight;
}

export function embedText(text: string, dims = 768): number[] {
  const vec = new Float64Array(Math.max(1, dims));
  const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  for (const raw of words) {
    const light = LIGHT.has(raw);
    const w = stem(raw);
    add(vec, `w:${w}`, light ? 0.15 : 1);
    if (light) continue;
    const padded = `<${w}>`;
    const grams = padded.length - 2;
    for (let i = 0; i < grams; i++) add(vec, `t:${padded.slice(i, i + 3)}`, 0.9 / Math.sqrt(grams));
  }
  let norm = 0;
  for (const x of vec) norm += x * x;
  // Empty or all-punctuation text still gets a valid unit vector rather than NaNs.
  if (norm === 0) {
    vec[hash32(text) % vec.length] = 1;
    norm = 1;
  }
  const scale = 1 / Math.sqrt(norm);
  return Array.from(vec, (x) => x * scale);
}

export function cosine(a: readonly number[], b: readonly number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb || 1);
}
