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

/** A value still to look at, and how it was reached (its parent's step, then its own key or index). */
interface Step {
  value: unknown;
  parent?: Step;
  key?: string;
}

/**
 * The dotted path (`input.startup.name`, `tags.1`, `(root)`) of the first string key or value that is not
 * well-formed UTF-16, in document order; undefined when there is none. Iterative: JSON.parse takes nesting far
 * deeper than the call stack (a body of 200,000 nested arrays), which a recursive walk would answer with a 500.
 */
export function firstIllFormedPath(value: unknown): string | undefined {
  const todo: Step[] = [{ value }];
  while (todo.length) {
    const step = todo.pop()!;
    const v = step.value;
    if (typeof v === 'string') {
      if (!v.isWellFormed()) return pathOf(step);
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) todo.push({ value: v[i], parent: step, key: String(i) });
    } else if (typeof v === 'object' && v !== null) {
      const entries = Object.entries(v);
      // A bad key is named before anything under the object: the key itself, its bad unit shown as U+FFFD.
      const badKey = entries.find(([key]) => !key.isWellFormed());
      if (badKey) return pathOf({ value: undefined, parent: step, key: badKey[0].toWellFormed() });
      for (let i = entries.length - 1; i >= 0; i--) todo.push({ value: entries[i][1], parent: step, key: entries[i][0] });
    }
  }
  return undefined;
}

function pathOf(step: Step): string {
  const keys: string[] = [];
  for (let s: Step | undefined = step; s?.key !== undefined; s = s.parent) keys.push(s.key);
  return keys.length ? keys.reverse().join('.') : '(root)';
}
