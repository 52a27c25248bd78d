import { phrase, sentence, wordSource } from './text-writer.js';
import { FALLBACK_WORDS } from './prompt-words.js';
import type { Rng } from './seeded.js';
import { ascii, fromPattern } from './pattern-sampler.js';
import { BadRequestError } from './bad-request.js';

/**
 * Builds a value that validates against a response schema: either JSON Schema (`responseJsonSchema`,
 * e.g. zod 4's `z.toJSONSchema`) or Gemini's OpenAPI subset (`responseSchema`, upper-case TYPE names,
 * `nullable`, `propertyOrdering`, integers as strings). Strings are made of the prompt's own words.
 */
type Schema = Record<string, unknown>;

/** Past this nesting, optional parts are dropped and arrays shrink to minItems, so recursion ends. */
const SHRINK_DEPTH = 6;
const HARD_DEPTH = 40;

interface Ctx {
  root: Schema;
  words: readonly string[];
}

/**
 * A schema no value can satisfy (an empty range, a pattern beyond its lengths): Gemini refuses such a request
 * with 400 INVALID_ARGUMENT rather than answer, so the emulator refuses it too instead of sending a value the
 * caller's own validation would reject.
 */
export class UnsatisfiableSchemaError extends BadRequestError {
  readonly code = 'UNSATISFIABLE_SCHEMA';

  constructor(detail: string) {
    super(`* GenerateContentRequest.generation_config.response_json_schema: ${detail}`);
    this.name = 'UnsatisfiableSchemaError';
  }
}

export function sampleFromSchema(schema: unknown, words: readonly string[], rng: Rng): unknown {
  const root = asSchema(schema);
  return sample(root, { root, words }, 'value', 0, rng);
}

const asSchema = (s: unknown): Schema => (s && typeof s === 'object' && !Array.isArray(s) ? (s as Schema) : {});

function num(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
  return undefined;
}

function resolveRef(s: Schema, root: Schema, seen = 0): Schema {
  const ref = s.$ref;
  if (typeof ref !== 'string' || seen > 20) return s;
  let target: unknown = root;
  if (ref !== '#') {
    if (!ref.startsWith('#/')) return {};
    for (const raw of ref.slice(2).split('/')) {
      const part = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
      target = asSchema(target)[part];
    }
  }
  const { $ref: _ref, ...rest } = s;
  return resolveRef({ ...asSchema(target), ...rest }, root, seen + 1);
}

function typesOf(s: Schema): string[] {
  const raw = s.type;
  const list = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw])
    .map((t) => String(t).toLowerCase())
    .filter((t) => t !== 'type_unspecified');
  if (list.length > 0) return s.nullable === true && !list.includes('null') ? [...list, 'null'] : list;
  if (s.properties || s.additionalProperties || s.propertyNames || s.required) return ['object'];
  if (s.items || s.prefixItems) return ['array'];
  if (s.minimum !== undefined || s.maximum !== undefined) return ['number'];
  return ['string'];
}

function isNull(s: Schema, root: Schema): boolean {
  const r = resolveRef(s, root);
  if (r.const === null) return true;
  if (Array.isArray(r.enum) && r.enum.length > 0 && r.enum.every((v) => v === null)) return true;
  const t = typesOf(r);
  return r.type !== undefined && t.length === 1 && t[0] === 'null';
}

function mergeAllOf(s: Schema, root: Schema): Schema {
  const parts = (s.allOf as unknown[]).map((p) => resolveRef(asSchema(p), root));
  const { allOf: _allOf, ...rest } = s;
  const merged: Schema = { ...rest };
  const props: Schema = { ...asSchema(rest.properties) };
  const required = new Set<string>(Array.isArray(rest.required) ? (rest.required as string[]) : []);
  for (const p of parts) {
    const inner = p.allOf ? mergeAllOf(p, root) : p;
    for (const [k, v] of Object.entries(inner)) {
      if (k === 'properties') Object.assign(props, asSchema(v));
      else if (k === 'required' && Array.isArray(v)) v.forEach((r) => required.add(String(r)));
      else if (k === 'enum' && Array.isArray(v) && Array.isArray(merged.enum)) merged.enum = sameValues(merged.enum, v);
      else if (!(k in merged)) merged[k] = v;
    }
  }
  if (Object.keys(props).length > 0) merged.properties = props;
  if (required.size > 0) merged.required = [...required];
  if (Array.isArray(merged.enum) && 'const' in merged) merged.enum = sameValues(merged.enum, [merged.const]);
  if (Array.isArray(merged.enum) && merged.enum.length === 0) throw new UnsatisfiableSchemaError('the enums of an allOf share no value');
  return merged;
}

/** Every part of an allOf must hold, so its enums meet in the values all of them list. */
function sameValues(a: unknown[], b: unknown[]): unknown[] {
  const keep = new Set(b.map((v) => JSON.stringify(v)));
  return a.filter((v) => keep.has(JSON.stringify(v)));
}

function sample(input: Schema, ctx: Ctx, key: string, depth: number, rng: Rng): unknown {
  if (depth > HARD_DEPTH) return null;
  let s = resolveRef(input, ctx.root);
  // Merged first: an enum or const inside allOf narrows the value as much as one beside it.
  if (Array.isArray(s.allOf)) s = mergeAllOf(s, ctx.root);
  if ('const' in s) return s.const;
  if (Array.isArray(s.enum) && s.enum.length > 0) {
    const values = depth >= SHRINK_DEPTH || s.enum.length === 1 ? s.enum : s.enum.filter((v) => v !== null);
    return rng.pick(values.length > 0 ? values : s.enum);
  }
  const branches = (s.anyOf ?? s.oneOf) as unknown[] | undefined;
  if (Array.isArray(branches) && branches.length > 0) {
    const { anyOf: _a, oneOf: _o, ...outer } = s;
    const all = branches.map((b) => ({ ...outer, ...asSchema(b) }));
    const nulls = all.filter((b) => isNull(b, ctx.root));
    const others = all.filter((b) => !isNull(b, ctx.root));
    const pool = depth >= SHRINK_DEPTH && nulls.length > 0 ? nulls : others.length > 0 ? others : all;
    return sample(rng.pick(pool), ctx, key, depth, rng);
  }
  const types = typesOf(s);
  const concrete = types.filter((t) => t !== 'null');
  if (concrete.length === 0 || (types.includes('null') && depth >= SHRINK_DEPTH)) return null;
  switch (rng.pick(concrete)) {
    case 'object':
      return sampleObject(s, ctx, depth, rng);
    case 'array':
      return sampleArray(s, ctx, key, depth, rng);
    case 'integer':
      return sampleNumber(s, key, true, rng);
    case 'number':
      return sampleNumber(s, key, false, rng);
    case 'boolean':
      return rng.next() < 0.5;
    default:
      return sampleString(s, key, ctx.words, rng);
  }
}

function sampleObject(s: Schema, ctx: Ctx, depth: number, rng: Rng): Record<string, unknown> {
  const props = asSchema(s.properties);
  const required = new Set(Array.isArray(s.required) ? (s.required as unknown[]).map(String) : []);
  const ordering = Array.isArray(s.propertyOrdering) ? (s.propertyOrdering as string[]) : [];
  const keys = [...new Set([...ordering, ...Object.keys(props)])].filter((k) => k in props);
  const out: Record<string, unknown> = {};
  const extra = s.additionalProperties;
  const extraSchema = extra && typeof extra === 'object' ? asSchema(extra) : {};
  for (const k of keys) {
    if (!required.has(k) && depth >= SHRINK_DEPTH) continue;
    out[k] = sample(asSchema(props[k]), ctx, k, depth + 1, rng.fork(k));
  }
  for (const k of required) {
    if (!(k in out)) out[k] = sample(extraSchema, ctx, k, depth + 1, rng.fork(k));
  }
  const maxProps = num(s.maxProperties) ?? Infinity;
  let wanted = num(s.minProperties) ?? 0;
  if (keys.length === 0 && extra !== false && extra !== undefined && depth < SHRINK_DEPTH) wanted = Math.max(wanted, 2);
  if (Object.keys(out).length < wanted && extra !== false) {
    const names = propertyNames(s, ctx, rng);
    for (const name of names) {
      if (Object.keys(out).length >= Math.min(wanted, maxProps)) break;
      if (!(name in out)) out[name] = sample(extraSchema, ctx, name, depth + 1, rng.fork(name));
    }
  }
  return out;
}

function propertyNames(s: Schema, ctx: Ctx, rng: Rng): string[] {
  const pn = resolveRef(asSchema(s.propertyNames), ctx.root);
  if (Array.isArray(pn.enum)) return pn.enum.map(String);
  const next = wordSource(ctx.words.length > 0 ? ctx.words : FALLBACK_WORDS, rng.fork('propertyNames'));
  const names = new Set<string>();
  for (let i = 0; i < 64 && names.size < 16; i++) names.add(next().replace(/[^\p{L}\p{N}_]/gu, '_') || `key${i}`);
  for (let i = 0; names.size < 16; i++) names.add(`key${i}`);
  if (pn.pattern === undefined && pn.minLength === undefined && pn.maxLength === undefined && pn.format === undefined) return [...names];
  // Keys are strings of the propertyNames schema: the words that pass it, then strings sampled from it.
  const re = typeof pn.pattern === 'string' ? compile(pn.pattern) : undefined;
  const valid = (name: string) =>
    pn.format === undefined && name.length >= (num(pn.minLength) ?? 0) && name.length <= (num(pn.maxLength) ?? Infinity) && (re === undefined || re.test(name));
  const keys = new Set([...names].filter(valid));
  for (let i = 0; i < 32 && keys.size < 16; i++) keys.add(sampleString(pn, 'key', ctx.words, rng.fork(`propertyName#${i}`)));
  return [...keys];
}

function sampleArray(s: Schema, ctx: Ctx, key: string, depth: number, rng: Rng): unknown[] {
  const min = num(s.minItems) ?? 0;
  const max = num(s.maxItems) ?? Infinity;
  const prefix = Array.isArray(s.prefixItems) ? (s.prefixItems as unknown[]).map(asSchema) : [];
  const itemSchema = s.items && typeof s.items === 'object' ? asSchema(s.items) : s.items === false ? undefined : {};
  let count = depth >= SHRINK_DEPTH ? min : Math.min(Math.max(rng.int(2, 3), min), max);
  if (!itemSchema) count = Math.min(Math.max(count, prefix.length), prefix.length);
  count = Math.max(count, Math.min(prefix.length, max));
  const out: unknown[] = [];
  const seen = new Set<string>();
  for (let i = 0, tries = 0; out.length < count && tries < count * 8; tries++) {
    const idx = out.length;
    const schema = idx < prefix.length ? prefix[idx] : (itemSchema ?? {});
    const value = sample(schema, ctx, key, depth + 1, rng.fork(`${key}#${i++}`));
    if (s.uniqueItems === true) {
      const sig = JSON.stringify(value);
      if (seen.has(sig)) continue;
      seen.add(sig);
    }
    out.push(value);
  }
  return out;
}

function sampleNumber(s: Schema, key: string, integer: boolean, rng: Rng): number {
  const k = key.toLowerCase();
  let [dlo, dhi] = [0, 100];
  if (/score|confidence|probability|ratio|weight|similarity|certainty/.test(k) && !integer) [dlo, dhi] = [0, 1];
  else if (/rating|stars/.test(k)) [dlo, dhi] = [1, 5];
  const exMin = num(s.exclusiveMinimum) ?? (s.exclusiveMinimum === true ? num(s.minimum) : undefined);
  const exMax = num(s.exclusiveMaximum) ?? (s.exclusiveMaximum === true ? num(s.maximum) : undefined);
  const loIncl = s.exclusiveMinimum === true ? undefined : num(s.minimum);
  const hiIncl = s.exclusiveMaximum === true ? undefined : num(s.maximum);
  const lo = Math.max(loIncl ?? -Infinity, exMin ?? -Infinity);
  const hi = Math.min(hiIncl ?? Infinity, exMax ?? Infinity);
  let a = Math.max(lo, dlo);
  let b = Math.min(hi, dhi);
  const ok = (x: number) => x >= lo && x <= hi && (exMin === undefined || x > exMin) && (exMax === undefined || x < exMax);
  // A window that shrank to one excluded point (`< 0` meets the default 0..100 at 0 only) is as empty as a crossed one.
  if (a > b || (a === b && !ok(a))) [a, b] = lo >= dhi ? [lo, Math.min(hi, lo + (dhi - dlo))] : [Math.max(lo, hi - (dhi - dlo)), hi];
  const step = num(s.multipleOf);
  if (integer || step !== undefined) {
    const unit = step ?? 1;
    let first = Math.ceil(a / unit);
    let last = Math.floor(b / unit);
    if (exMin !== undefined && first * unit <= exMin) first++;
    if (exMax !== undefined && last * unit >= exMax) last--;
    if (integer && step !== undefined && !Number.isInteger(unit)) return Math.ceil(a);
    const n = last >= first ? rng.int(first, last) : first;
    const v = Number((n * unit).toFixed(10));
    if (!ok(v)) throw new UnsatisfiableSchemaError(`no ${integer ? 'integer' : `multiple of ${unit}`} lies within the bounds of "${key}"`);
    return v;
  }
  const v = a + (b - a) * (0.05 + 0.9 * rng.next());
  const rounded = Math.round(v * 100) / 100;
  if (ok(rounded)) return rounded;
  if (!ok(v)) throw new UnsatisfiableSchemaError(`no number lies within the bounds of "${key}"`);
  return v;
}


function hex(rng: Rng, n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += rng.int(0, 15).toString(16);
  return out;
}

function formatted(format: string, words: readonly string[], rng: Rng): string | undefined {
  const w = ascii(rng.pick(words.length > 0 ? words : FALLBACK_WORDS)) || 'user';
  const day = new Date(Date.UTC(2025, 0, 1) + rng.int(0, 364) * 86_400_000 + rng.int(0, 86_399) * 1000);
  const iso = day.toISOString().replace(/\.\d{3}Z$/, 'Z');
  switch (format.toLowerCase()) {
    case 'email':
    case 'idn-email':
      return `${w}@example.com`;
    case 'uuid':
    case 'guid':
      return `${hex(rng, 8)}-${hex(rng, 4)}-4${hex(rng, 3)}-${rng.pick(['8', '9', 'a', 'b'])}${hex(rng, 3)}-${hex(rng, 12)}`;
    case 'date-time':
      return iso;
    case 'date':
      return iso.slice(0, 10);
    case 'time':
      return iso.slice(11, 19);
    case 'duration':
      return `P${rng.int(1, 30)}D`;
    case 'uri':
    case 'url':
    case 'iri':
      return `https://example.com/${w}`;
    case 'hostname':
    case 'idn-hostname':
      return `${w}.example.com`;
    case 'ipv4':
      return `192.0.2.${rng.int(1, 254)}`;
    case 'ipv6':
      return `2001:db8::${rng.int(1, 0xfffe).toString(16)}`;
    case 'base64':
    case 'base64url':
      return Buffer.from(w).toString(format === 'base64' ? 'base64' : 'base64url');
    case 'jwt': {
      // zod decodes the header: it must be JSON naming an algorithm.
      const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: w, iat: Math.floor(day.getTime() / 1000) })}.${Buffer.from(hex(rng, 64), 'hex').toString('base64url')}`;
    }
    case 'emoji':
      return rng.pick(['✅', '✨', '👍', '🎉', '🚀']);
    case 'e164':
      return `+1555${String(rng.int(1_000_000, 9_999_999))}`;
    default:
      return undefined;
  }
}

/** The shape of each format `formatted` writes, as a pattern, for when its usual value is too long or short. */
const FORMAT_SHAPES: Record<string, string> = {
  email: '^[a-z][a-z0-9]{0,15}@[a-z]{1,12}\\.(com|org|io)$',
  uuid: '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$',
  'date-time': '^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{3})?Z$',
  date: '^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$',
  time: '^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$',
  duration: '^P[1-9][0-9]{0,3}D$',
  uri: '^https://[a-z]{1,12}\\.(com|org|io)(/[a-z0-9]{1,12}){0,4}$',
  hostname: '^[a-z]{1,12}(\\.[a-z]{1,12}){0,3}\\.(com|org|io)$',
  ipv4: '^192\\.0\\.2\\.([1-9]|[1-9][0-9]|1[0-9][0-9])$',
  ipv6: '^2001:db8::[1-9a-f][0-9a-f]{0,3}$',
  base64: '^([A-Za-z0-9+/]{4}){1,16}$',
  base64url: '^([A-Za-z0-9_-]{4}){1,16}$',
  e164: '^\\+[1-9][0-9]{6,14}$',
  emoji: '^(✅|✨)+$',
};
for (const [alias, shape] of [['idn-email', 'email'], ['guid', 'uuid'], ['url', 'uri'], ['iri', 'uri'], ['idn-hostname', 'hostname']]) FORMAT_SHAPES[alias] = FORMAT_SHAPES[shape];

const SENTENCE_KEYS = /(summary|description|explanation|reason|rationale|reasoning|answer|text|content|body|message|comment|feedback|analysis|details?|response|notes?)$/;
const SHORT_KEYS = /(name|title|label|tags?|keywords?|category|categories|topics?|terms?|subject|heading|entity|entities)$/;

function byKey(key: string, words: readonly string[], rng: Rng): string {
  const k = key.toLowerCase();
  if (SENTENCE_KEYS.test(k)) {
    const next = wordSource(words, rng);
    return Array.from({ length: rng.int(1, 2) }, () => sentence(next, rng)).join(' ');
  }
  if (/email/.test(k)) return formatted('email', words, rng)!;
  if (/(^|_)url$|uri$|link$/.test(k)) return formatted('uri', words, rng)!;
  if (/(^|_)id$|Id$/.test(key)) return `${ascii(rng.pick(words.length > 0 ? words : FALLBACK_WORDS)) || 'item'}-${hex(rng, 6)}`;
  if (SHORT_KEYS.test(k)) return phrase(words, rng, rng.int(1, 3));
  return phrase(words, rng, rng.int(2, 5));
}

function fitLength(value: string, min: number, max: number, words: readonly string[], rng: Rng): string {
  let out = value;
  const next = wordSource(words, rng.fork('pad'));
  while (out.length < min) out = `${out} ${next()}`.trim();
  if (out.length > max) {
    const cut = out.slice(0, max);
    const space = cut.lastIndexOf(' ');
    out = (space >= Math.max(min, 1) ? cut.slice(0, space) : cut).trimEnd();
    if (/[\uD800-\uDBFF]$/.test(out)) out = out.slice(0, -1);
    while (out.length < min) out += 'x';
  }
  return out;
}

/** The pattern as the validator compiles it: JSON Schema means ECMA-262, with `u` where the source allows it. */
function compile(pattern: string): RegExp | undefined {
  for (const flags of ['u', '']) {
    try {
      return new RegExp(pattern, flags);
    } catch {
      // Not valid under these flags; the next ones may take it.
    }
  }
  return undefined;
}

/** Realistic values for the common formats, tried on a pattern-only schema (zod's iso time, local datetime). */
function isoGuesses(rng: Rng): string[] {
  const at = new Date(Date.UTC(2025, 0, 1) + rng.int(0, 364) * 86_400_000 + rng.int(0, 86_399_999)).toISOString();
  return [at.replace(/\.\d{3}Z$/, 'Z'), at, at.slice(0, 19), at.slice(0, 10), at.slice(11, 19), at.slice(11, 16), at.slice(11, 23)];
}

function sampleString(s: Schema, key: string, words: readonly string[], rng: Rng): string {
  const min = num(s.minLength) ?? 0;
  const max = num(s.maxLength) ?? Infinity;
  const format = typeof s.format === 'string' ? s.format : '';
  const fmt = format ? formatted(format, words, rng) : undefined;
  const value = fmt ?? fitLength(byKey(key, words, rng), min, max, words, rng);
  const outside = fmt !== undefined && (fmt.length < min || fmt.length > max);
  // A format value that breaks the length bounds is regenerated from the format's own shape, within them.
  const pattern = typeof s.pattern === 'string' ? s.pattern : outside ? FORMAT_SHAPES[format.toLowerCase()] : undefined;
  if (pattern === undefined && outside) throw new UnsatisfiableSchemaError(`no ${format} value of length ${min}..${max} for "${key}"`);
  if (pattern === undefined) return value;
  const re = compile(pattern);
  if (!re) return value;
  const fits = (c: string) => re.test(c) && c.length >= min && c.length <= max;
  const w = words.length > 0 ? words : FALLBACK_WORDS;
  const candidates = [value, value.replace(/\s+/g, ''), value.replace(/\s+/g, '-'), value.replace(/\s+/g, '_'), ...w, ...w.map(ascii), 'abc', 'ABC', 'a1', '123', 'A1b2C3'];
  const found = candidates.find(fits) ?? isoGuesses(rng.fork('iso')).find(fits) ?? fromPattern(pattern, min, max, w, rng, fits);
  if (found === undefined) throw new UnsatisfiableSchemaError(`no string of length ${min}..${max} matches the pattern ${JSON.stringify(pattern)}${format ? ` (format ${format})` : ''} of "${key}"`);
  return found;
}
