/**
 * A deterministic synthetic corpus for the vector case: text number `i` is always the same, so the bench
 * process and the PGlite process agree on it without shipping vectors between them. Words mix a startup
 * vocabulary with generated pseudo-words, so neighbourhoods are neither trivial nor random noise.
 */
const DOMAIN =
  'market growth revenue churn hiring robotics logistics fintech pricing seed series runway burn customer acquisition retention enterprise sales channel partner regulation compliance security cloud data model inference latency supply chain warehouse fleet battery solar health clinic insurance lending payments fraud identity privacy marketplace creator subscription founder investor board equity debt margin gross net forecast pipeline deal close renewal expansion upsell onboarding support ticket outage incident roadmap feature launch beta pilot contract procurement tender audit tax payroll benefits culture remote office europe asia america latam africa export import tariff shipping freight drone sensor chip fab lab trial patent license brand campaign seo content community referral viral cohort funnel conversion activation engagement dashboard analytics warehouse lakehouse pipeline agent assistant chatbot copilot workflow automation integration api sdk platform'.split(
    ' ',
  );
const SYLLABLES = 'ka lo mi nu pe ra si to vu ze bra cle dri fro gli pla sto tri qua xen yor zal mor tek vin sol'.split(' ');

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PSEUDO: string[] = (() => {
  const rnd = mulberry32(7);
  const words = new Set<string>();
  while (words.size < 3000) {
    const n = 2 + Math.floor(rnd() * 2);
    words.add(Array.from({ length: n }, () => SYLLABLES[Math.floor(rnd() * SYLLABLES.length)]).join(''));
  }
  return [...words];
})();

function words(rnd: () => number, count: number): string {
  const out: string[] = [];
  for (let k = 0; k < count; k++) out.push(rnd() < 0.6 ? DOMAIN[Math.floor(rnd() * DOMAIN.length)] : PSEUDO[Math.floor(rnd() * PSEUDO.length)]);
  return out.join(' ');
}

/** Corpus document `i`. */
export function corpusText(i: number): string {
  const rnd = mulberry32(1_000_003 * (i + 1));
  return words(rnd, 8 + Math.floor(rnd() * 7));
}

/** Query `j`: a partial paraphrase of some corpus document (half its words, plus noise), or fresh text. */
export function queryText(j: number, corpusSize: number): string {
  const rnd = mulberry32(77_777 * (j + 1));
  if (rnd() < 0.3) return words(rnd, 10);
  const base = corpusText(Math.floor(rnd() * corpusSize)).split(' ');
  const kept = base.filter(() => rnd() < 0.6);
  return [...kept, words(rnd, 3)].join(' ');
}

/** pgvector's text form, 6 decimals (vectors are unit length). */
export const vectorLiteral = (v: readonly number[]): string => `[${v.map((x) => x.toFixed(6)).join(',')}]`;
