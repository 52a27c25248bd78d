import { embedText } from '../../dev/gemini-emulator/emulator.js';
import { corpusText } from './corpus.js';

const DIMS = 768;

/**
 * Brute-force truth over corpus documents 0..n-1 in this process: their vectors as stored (6 decimals),
 * normalised, in one Float32Array (n x 768 x 4 bytes: 307 MB at 100k). An exact scan of 100k rows in PGlite
 * takes seconds a query. Scanning it streams the whole array through the CPU caches, so compute the truths
 * before timing anything (see vectors-large).
 */
export function createCorpusMirror(n: number) {
  const mirror = new Float32Array(n * DIMS);
  for (let i = 0; i < n; i++) {
    const v = embedText(corpusText(i), DIMS);
    let sq = 0;
    for (let d = 0; d < DIMS; d++) sq += Number(v[d].toFixed(6)) ** 2;
    const inv = 1 / (Math.sqrt(sq) || 1);
    for (let d = 0; d < DIMS; d++) mirror[i * DIMS + d] = Number(v[d].toFixed(6)) * inv;
  }
  /** The k documents nearest to `query` by cosine (their index and similarity), best first. */
  const nearest = (query: readonly number[], k: number): Array<{ index: number; similarity: number }> => {
    const qn = Math.sqrt(query.reduce((a, x) => a + x * x, 0)) || 1;
    const q = query.map((x) => x / qn);
    const best: Array<{ i: number; s: number }> = [];
    for (let i = 0; i < n; i++) {
      let dot = 0;
      for (let d = 0; d < DIMS; d++) dot += q[d] * mirror[i * DIMS + d];
      if (best.length < k || dot > best[best.length - 1].s) {
        best.push({ i, s: dot });
        best.sort((a, c) => c.s - a.s);
        if (best.length > k) best.pop();
      }
    }
    return best.map((x) => ({ index: x.i, similarity: x.s }));
  };
  return { nearest };
}
