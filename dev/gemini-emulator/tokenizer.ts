/**
 * The emulator's tokenizer: a run of letters/digits is one token, every other non-space character is
 * its own token. Real Gemini uses SentencePiece; this is cruder but exact and reproducible, so tests
 * can recount the texts themselves and compare with `usageMetadata`.
 */
const TOKEN_RE = /[\p{L}\p{M}\p{N}_]+|[^\s\p{L}\p{M}\p{N}_]/gu;

export function tokenize(text: string): string[] {
  return text.match(TOKEN_RE) ?? [];
}

export function countTokens(text: string): number {
  let n = 0;
  TOKEN_RE.lastIndex = 0;
  while (TOKEN_RE.exec(text) !== null) n++;
  return n;
}
