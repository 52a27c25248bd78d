/**
 * What Postgres cannot hold, in one place: text columns take no NUL, and an error of class 22 (data exception:
 * a bad encoding, a NUL or lone surrogate escape in jsonb, a number out of range) or 23 (integrity: a NULL or
 * CHECK a row breaks) is about the row, not about Postgres being down or busy.
 */

/**
 * Free text as Postgres can store it: a NUL (which no text column holds) becomes U+FFFD. For text kept for
 * people to read (an error message, a cached question), where a refused row would cost more than the character.
 */
export function storableText(s: string): string;
export function storableText(s: string | null | undefined): string | null;
export function storableText(s: string | null | undefined): string | null {
  return s == null ? null : s.includes('\u0000') ? s.replaceAll('\u0000', '\uFFFD') : s;
}

/** An error Postgres raises for what a row holds (SQLSTATE class 22 or 23): retried as it is, it fails again. */
export function refusedForContent(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^2[23][0-9A-Z]{3}$/.test(code);
}
