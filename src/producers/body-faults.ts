/**
 * What a parsed JSON body may not hold, whatever the route's schema says, because no later step can keep it:
 * - a lone UTF-16 surrogate (JSON may escape one: `"\ud800"`): Postgres text and Node's UTF-8 encoder turn it
 *   into U+FFFD, so the stored value would differ from the one accepted;
 * - a number too large for a double (`1e400`): it parses to Infinity, which JSON.stringify writes as null;
 * - nesting deeper than MAX_BODY_DEPTH: JSON.parse takes far more than JSON.stringify gives back (Node 20 fails
 *   to serialise ~5,000 nested arrays), so such a value, accepted where a schema is open (an action's
 *   `passthrough` object, a record), would fail the enqueue with a 500.
 * The body is refused with the path of the first such place (document order) instead.
 */

/** Deepest nesting of arrays and objects a body may have (the body itself is depth 1). */
export const MAX_BODY_DEPTH = 100;

/** Only a body whose text escapes a surrogate can hold one (raw lone surrogates are invalid UTF-8, refused earlier). */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;

export function mayHoldLoneSurrogate(text: string): boolean {
  return SURROGATE_ESCAPE.test(text);
}

/** Only a number with an exponent of 3 digits or more, or of 309 digits or more, can be beyond a double's range. */
const HUGE_NUMBER = /[eE][+]?\d{3}|\d{309}/;

export function mayHoldHugeNumber(text: string): boolean {
  return HUGE_NUMBER.test(text);
}

const LONE_SURROGATE_MESSAGE = 'not well-formed Unicode: a lone surrogate escape (\\uD800-\\uDFFF without its pair)';
const HUGE_NUMBER_MESSAGE = "a number beyond a double's range: it would be stored as null";

/** A value still to look at, how deep it is, and how it was reached (its parent's step, then its own key or index). */
interface Step {
  value: unknown;
  depth: number;
  parent?: Step;
  key?: string;
}

export interface BodyFault {
  /** Dotted, as the API names fields (`input.startup.name`, `tags.1`, `(root)`). */
  path: string;
  message: string;
}

/**
 * The first place in `value` no later step can keep (see above); undefined when there is none. Strings are read
 * only with `strings` (the body's text escapes a surrogate), numbers only with `numbers` (the text may hold a huge
 * one), so a common body costs a walk of its arrays and objects alone. Iterative: a recursive walk would itself
 * overflow on what JSON.parse accepts.
 */
export function firstBodyFault(value: unknown, opts: { strings?: boolean; numbers?: boolean; maxDepth?: number }): BodyFault | undefined {
  const maxDepth = opts.maxDepth ?? MAX_BODY_DEPTH;
  // Only what may hold a fault is visited: containers, strings when the text escapes a surrogate, numbers when it
  // holds a huge one.
  const visits = (v: unknown) => (typeof v === 'object' && v !== null) || (opts.strings === true && typeof v === 'string') || (opts.numbers === true && typeof v === 'number');
  const stack: Step[] = visits(value) ? [{ value, depth: 0 }] : [];
  while (stack.length) {
    const step = stack.pop()!;
    const v = step.value;
    if (typeof v === 'string') {
      if (!v.isWellFormed()) return { path: pathOf(step), message: LONE_SURROGATE_MESSAGE };
      continue;
    }
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) return { path: pathOf(step), message: HUGE_NUMBER_MESSAGE };
      continue;
    }
    const depth = step.depth + 1;
    if (depth > maxDepth) return { path: pathOf(step), message: `nested deeper than ${maxDepth} levels of arrays and objects` };
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) if (visits(v[i])) stack.push({ value: v[i], depth, parent: step, key: String(i) });
      continue;
    }
    const keys = Object.keys(v as object);
    // A bad key is named before anything under its object: the key itself, its bad unit shown as U+FFFD.
    const badKey = opts.strings ? keys.find((key) => !key.isWellFormed()) : undefined;
    if (badKey !== undefined) return { path: pathOf({ value: undefined, depth, parent: step, key: badKey.toWellFormed() }), message: LONE_SURROGATE_MESSAGE };
    for (let i = keys.length - 1; i >= 0; i--) {
      const child = (v as Record<string, unknown>)[keys[i]];
      if (visits(child)) stack.push({ value: child, depth, parent: step, key: keys[i] });
    }
  }
  return undefined;
}

function pathOf(step: Step): string {
  const keys: string[] = [];
  for (let s: Step | undefined = step; s?.key !== undefined; s = s.parent) keys.push(s.key);
  return keys.length ? keys.reverse().join('.') : '(root)';
}
