const STOPWORDS = new Set(
  `a an the and or but if then else of to in on at by for with from as is are was were be been being it its this
  that these those i you he she we they me him her us them my your our their what which who whom whose when where
  why how do does did done have has had can could should would will shall may might must not no yes so than too
  very just also about into over under again all any both each few more most other some such only own same
  please give return write tell make list json answer question following using use based
  explain describe summarise summarize provide show find classify extract brief short detail detailed`.split(/\s+/),
);

/** Lower-case words of the prompt worth talking about, in first-seen order, without repeats. */
export function contentWords(text: string): string[] {
  const seen = new Set<string>();
  for (const m of text.toLowerCase().matchAll(/[\p{L}\p{N}][\p{L}\p{N}'-]*/gu)) {
    const w = m[0].replace(/['-]+$/, '');
    if (w.length < 3 || STOPWORDS.has(w) || /^\d+$/.test(w)) continue;
    seen.add(w);
  }
  return [...seen];
}

/** Filler used only when the prompt has no usable words at all. */
export const FALLBACK_WORDS = ['request', 'context', 'result', 'detail', 'approach', 'outcome', 'review', 'summary'];
