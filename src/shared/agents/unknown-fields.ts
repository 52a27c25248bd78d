/**
 * Unknown fields in an agent's input. zod objects strip keys they do not know, so a typo in an optional
 * field (`industy`) would vanish without a word; comparing what the caller sent with what the schema kept
 * finds every such key, at any depth, whatever the schema is built of (unions, intersections, records and
 * `z.looseObject` keep what they accept, so they are never reported).
 *
 * `passthrough` lists the objects (dotted paths inside `input`, `*` for any array index or key) whose unknown
 * fields the action accepts: they are kept in the parsed input, not reported.
 */
export function unknownFields(raw: unknown, parsed: unknown, passthrough: readonly string[] = []): string[] {
  const found: string[] = [];
  walk(raw, parsed, [], patternsOf(passthrough), found);
  return found;
}

const NO_PATTERNS: string[][] = [];

/**
 * Split once per list: an action's `passthrough` is the same array for every job it validates (the worker checks
 * every attempt's input), and splitting it made arrays and strings per attempt (an empty list, the usual one, still
 * made an array). Kept with the entries it was split from, so a list changed in place is split again.
 */
const splitPatterns = new WeakMap<readonly string[], { from: string[]; patterns: string[][] }>();
function patternsOf(passthrough: readonly string[]): string[][] {
  if (passthrough.length === 0) return NO_PATTERNS;
  const known = splitPatterns.get(passthrough);
  if (known && sameEntries(known.from, passthrough)) return known.patterns;
  const patterns = passthrough.map((p) => p.split('.').filter(Boolean));
  splitPatterns.set(passthrough, { from: [...passthrough], patterns });
  return patterns;
}

function sameEntries(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

function matches(pattern: string[], path: string[]): boolean {
  return pattern.length === path.length && pattern.every((seg, i) => seg === '*' || seg === path[i]);
}

/**
 * `path` is one array pushed and popped on the way down (this runs on every key of every job's input, so
 * no copy per key); a reported path is joined from it.
 */
function walk(raw: unknown, parsed: unknown, path: string[], patterns: string[][], found: string[]): void {
  if (Array.isArray(raw) && Array.isArray(parsed)) {
    // A schema that changes an array's length (a transform) leaves nothing to compare element by element.
    if (raw.length !== parsed.length) return;
    for (let i = 0; i < raw.length; i++) {
      path.push(String(i));
      walk(raw[i], parsed[i], path, patterns, found);
      path.pop();
    }
    return;
  }
  if (!isPlainObject(raw) || !isPlainObject(parsed)) return;
  const open = patterns.length > 0 && patterns.some((p) => matches(p, path));
  for (const key in raw) {
    if (!Object.hasOwn(raw, key)) continue;
    const value = raw[key];
    if (value === undefined) continue;
    if (!Object.hasOwn(parsed, key)) {
      if (open) parsed[key] = value;
      else found.push(path.length ? `${path.join('.')}.${key}` : key);
      continue;
    }
    path.push(key);
    walk(value, parsed[key], path, patterns, found);
    path.pop();
  }
}
