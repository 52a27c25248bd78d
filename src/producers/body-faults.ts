/**
 * What a parsed JSON body may not hold, whatever the route's schema says, because no later step can keep it:
 * - a lone UTF-16 surrogate (JSON may escape one: `"\ud800"`): Postgres text and Node's UTF-8 encoder turn it
 *   into U+FFFD, so the stored value would differ from the one accepted;
 * - a number too large for a double (`1e400`): it parses to Infinity, which JSON.stringify writes as null;
 * - nesting deeper than MAX_BODY_DEPTH: JSON.parse takes far more than JSON.stringify gives back (Node 20 fails
 *   to serialise ~5,000 nested arrays), so such a value, accepted where a schema is open (an action's
 *   `passthrough` object, a record), would fail the enqueue with a 500.
 * The body is refused with the path of the first such place (document order) instead.
 *
 * A value handed over in process (the direct producer) was never JSON text, so it may also hold what JSON has no
 * form for (`values`): NaN, a bigint, a function, a symbol, a Map or Set (stringified as `{}`), undefined in an
 * array (null), a cycle (deeper than any limit). Each is refused the same way, naming where it is.
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
const NAN_MESSAGE = 'not a number (NaN): it would be stored as null';
const notJson = (what: string, becomes: string) => `not JSON data (${what}): it would be stored as ${becomes}`;

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
 * one), so a common body costs a walk of its arrays and objects alone; `values` (an in-process value) reads
 * everything. Iterative: a recursive walk would itself overflow on what JSON.parse accepts.
 */
export function firstBodyFault(value: unknown, opts: { strings?: boolean; numbers?: boolean; values?: boolean; maxDepth?: number }): BodyFault | undefined {
  const maxDepth = opts.maxDepth ?? MAX_BODY_DEPTH;
  const strings = opts.strings === true || opts.values === true;
  const numbers = opts.numbers === true || opts.values === true;
  // Only what may hold a fault is visited: containers, strings when the text escapes a surrogate, numbers when it
  // holds a huge one, everything but null and booleans for an in-process value.
  const visits = (v: unknown) =>
    opts.values === true ? v !== null && typeof v !== 'boolean' : (typeof v === 'object' && v !== null) || (strings && typeof v === 'string') || (numbers && typeof v === 'number');
  const stack: Step[] = visits(value) ? [{ value, depth: 0 }] : [];
  while (stack.length) {
    const step = stack.pop()!;
    const v = step.value;
    if (typeof v === 'string') {
      if (!v.isWellFormed()) return { path: pathOf(step), message: LONE_SURROGATE_MESSAGE };
      continue;
    }
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) return { path: pathOf(step), message: Number.isNaN(v) ? NAN_MESSAGE : HUGE_NUMBER_MESSAGE };
      continue;
    }
    if (typeof v !== 'object' || v === null) {
      // Only an in-process value gets here: JSON.parse gives nothing else.
      // An array keeps an unserialisable value's place as null; an object leaves its member out.
      const inArray = step.parent !== undefined && Array.isArray(step.parent.value);
      // An object's undefined member is left out, as absent: what a TypeScript caller means by it.
      if (v === undefined && !inArray) continue;
      return { path: pathOf(step), message: notJson(typeof v, typeof v === 'bigint' ? 'nothing: serialising it throws' : inArray ? 'null' : 'nothing: it is left out') };
    }
    const depth = step.depth + 1;
    if (depth > maxDepth) return { path: pathOf(step), message: `nested deeper than ${maxDepth} levels of arrays and objects${opts.values === true ? ' (or a cycle)' : ''}` };
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) if (visits(v[i])) stack.push({ value: v[i], depth, parent: step, key: String(i) });
      continue;
    }
    if (opts.values === true) {
      // An object that says how it serialises (a Date) is taken as it does; a Map, a Set and the like lose their entries.
      if (typeof (v as { toJSON?: unknown }).toJSON === 'function') continue;
      if (v instanceof Map || v instanceof Set || v instanceof WeakMap || v instanceof WeakSet || ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
        return { path: pathOf(step), message: notJson(v.constructor.name, ArrayBuffer.isView(v) ? 'an object of its indices' : '{}, its entries lost') };
      }
    }
    const keys = Object.keys(v as object);
    // A bad key is named before anything under its object: the key itself, its bad unit shown as U+FFFD.
    const badKey = strings ? keys.find((key) => !key.isWellFormed()) : undefined;
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
