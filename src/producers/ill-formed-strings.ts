/**
 * JSON may escape a lone UTF-16 surrogate (`"\ud800"`), which parses into a string no UTF-8 store can hold:
 * Postgres text and Node's UTF-8 encoder turn it into U+FFFD, so the stored value would differ from the one
 * accepted. Such a body is refused with the path of the first bad string (a key or a value) instead.
 */

/** Only a body whose text escapes a surrogate can hold one (raw lone surrogates are invalid UTF-8, refused earlier). */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;

export function mayHoldLoneSurrogate(text: string): boolean {
  return SURROGATE_ESCAPE.test(text);
}

/** The dotted path (`input.startup.name`, `(root)`) of the first string key or value that is not well-formed UTF-16. */
export function firstIllFormedPath(value: unknown, path: string[] = []): string | undefined {
  if (typeof value === 'string') return value.isWellFormed() ? undefined : name(path);
  if (typeof value !== 'object' || value === null) return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const at = firstIllFormedPath(value[i], [...path, String(i)]);
      if (at) return at;
    }
    return undefined;
  }
  for (const [key, v] of Object.entries(value)) {
    if (!key.isWellFormed()) return name([...path, key.toWellFormed()]);
    const at = firstIllFormedPath(v, [...path, key]);
    if (at) return at;
  }
  return undefined;
}

const name = (path: string[]) => (path.length ? path.join('.') : '(root)');
