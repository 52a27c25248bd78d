/**
 * The emulator's tokenizer: a run of letters/digits is one token, every other non-space character is
 * its own token. Real Gemini uses SentencePiece; this is cruder but exact and reproducible, so tests
 * can recount the texts themselves and compare with `usageMetadata`.
 */
const TOKEN_RE = /[\p{L}\p{M}\p{N}_]+|[^\s\p{L}\p{M}\p{N}_]/gu;

export function tokenize(text: string): string[] {
  return text.match(TOKEN_RE) ?? [];
}

/** `tokenize(text).length`, without the array; ASCII text (every prompt and answer here) without the regex. */
export function countTokens(text: string): number {
  let n = 0;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) return countByRegex(text);
    if ((c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95) {
      if (!inWord) n++;
      inWord = true;
    } else {
      inWord = false;
      // ASCII whitespace as the regex's \s sees it: tab, line feed, vertical tab, form feed, carriage return, space.
      if (c !== 32 && (c < 9 || c > 13)) n++;
    }
  }
  return n;
}

function countByRegex(text: string): number {
  let n = 0;
  TOKEN_RE.lastIndex = 0;
  while (TOKEN_RE.exec(text) !== null) n++;
  return n;
}
