import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { sampleFromSchema, UnsatisfiableSchemaError } from '../dev/gemini-emulator/schema-sampler.js';
import { createRng } from '../dev/gemini-emulator/seeded.js';

/**
 * The emulator's structured answers are sampled from `responseJsonSchema`; the product validates each with zod,
 * so an answer zod rejects looks like a model fault (EBADOUTPUT). Every schema here is checked the same way: zod's
 * JSON Schema in, zod's own safeParse on what comes out, over 40 seeds.
 */
const words = ['invoice', 'export', 'crashes', 'billing', 'currency', 'swiss', 'francs'];
const toJson = (schema: z.ZodType): Record<string, unknown> => {
  const { $schema: _drop, ...json } = z.toJSONSchema(schema, { io: 'output', unrepresentable: 'any' }) as Record<string, unknown>;
  return json;
};
const sample = (schema: z.ZodType, seed: number): unknown => sampleFromSchema(toJson(schema), words, createRng(seed));

const cases: Record<string, z.ZodType> = {
  emailMax: z.object({ e: z.email().max(10) }),
  datetimeOffset: z.object({ d: z.iso.datetime({ offset: true }) }),
  datetimePrecision3: z.object({ d: z.iso.datetime({ precision: 3 }) }),
  dateMin: z.object({ d: z.iso.date() }),
  isoTime: z.object({ t: z.iso.time() }),
  isoDuration: z.object({ t: z.iso.duration() }),
  url: z.object({ u: z.url() }),
  httpUrl: z.object({ u: z.httpUrl() }),
  ipv4: z.object({ u: z.ipv4() }),
  ipv6: z.object({ u: z.ipv6() }),
  cidr: z.object({ u: z.cidrv4() }),
  cuid: z.object({ u: z.cuid() }),
  cuid2: z.object({ u: z.cuid2() }),
  ulid: z.object({ u: z.ulid() }),
  nanoid: z.object({ u: z.nanoid() }),
  base64: z.object({ u: z.base64() }),
  base64url: z.object({ u: z.base64url() }),
  e164: z.object({ u: z.e164() }),
  emoji: z.object({ u: z.emoji() }),
  jwt: z.object({ u: z.jwt() }),
  hex: z.object({ u: z.hex() }),
  guid: z.object({ u: z.guid() }),
  uuidv7: z.object({ u: z.uuidv7() }),
  lengthExact: z.object({ code: z.string().length(5) }),
  startsWith: z.object({ s: z.string().startsWith('ID-') }),
  endsWith: z.object({ s: z.string().endsWith('.json') }),
  includes: z.object({ s: z.string().includes('@') }),
  lowercase: z.object({ s: z.string().lowercase() }),
  uppercase: z.object({ s: z.string().uppercase() }),
  regex: z.object({ s: z.string().regex(/^[A-Z]{3}-\d{4}$/) }),
  regexBounded: z.object({ s: z.string().regex(/^(?:[a-z]+-)*[a-z]+$/).min(12).max(14) }),
  intRange: z.object({ n: z.int().min(1000).max(1005) }),
  multipleOf: z.object({ n: z.number().multipleOf(0.25).min(0).max(1) }),
  intMultiple: z.object({ n: z.int().multipleOf(7).min(1).max(10) }),
  gtLt: z.object({ n: z.number().gt(0).lt(0.001) }),
  gt5Lt6: z.object({ n: z.number().gt(5).lt(6) }),
  gt100: z.object({ n: z.number().gt(100) }),
  positiveInt: z.object({ n: z.int().positive() }),
  negative: z.object({ n: z.number().negative() }),
  negativeInt: z.object({ n: z.int().negative() }),
  nestedArr: z.object({ m: z.array(z.array(z.int().min(0).max(9)).min(2).max(2)).min(3) }),
  tuple: z.object({ t: z.tuple([z.string(), z.int(), z.boolean()]) }),
  tupleRest: z.object({ t: z.tuple([z.string()], z.int()) }),
  setUnique: z.object({ s: z.array(z.enum(['a', 'b', 'c'])).min(3).max(3) }),
  record: z.object({ r: z.record(z.enum(['x', 'y']), z.int()) }),
  partialRecord: z.object({ r: z.partialRecord(z.enum(['x', 'y']), z.int()) }),
  recordMinKeys: z.object({ r: z.record(z.string().regex(/^k_/), z.int()) }),
  recordKeyLength: z.object({ r: z.record(z.string().regex(/^[A-Z]{2}$/), z.int()) }),
  discUnion: z.discriminatedUnion('t', [z.object({ t: z.literal('a'), x: z.int() }), z.object({ t: z.literal('b'), y: z.string() })]),
  nullableEnum: z.object({ e: z.enum(['x', 'y']).nullable() }),
  literalMix: z.object({ l: z.union([z.literal(1), z.literal('one'), z.null()]) }),
  intersection: z.object({ i: z.intersection(z.object({ a: z.int() }), z.object({ b: z.string() })) }),
  intersectEnum: z.object({ i: z.enum(['a', 'b', 'c']).and(z.enum(['b', 'c'])) }),
  strict: z.strictObject({ a: z.string() }),
  maxPropsLike: z.object({ a: z.string().optional(), b: z.string().optional() }),
  bigMin: z.object({ arr: z.array(z.int()).min(20) }),
  stringMinMaxNum: z.object({ s: z.string().min(200) }),
  nonempty: z.object({ s: z.string().nonempty().max(1) }),
  dateStringish: z.object({ d: z.iso.datetime({ local: true }) }),
  boolLiteral: z.object({ b: z.literal(true) }),
  nanLikeNumber: z.object({ n: z.number().min(-1e-9).max(1e-9) }),
  optionalNullableDeep: z.object({ a: z.object({ b: z.object({ c: z.object({ d: z.object({ e: z.object({ f: z.object({ g: z.string() }).nullable() }) }) }) }) }) }),
  deepRequiredArr: z.object({ a: z.object({ b: z.object({ c: z.object({ d: z.object({ e: z.object({ f: z.array(z.int()).min(1) }) }) }) }) }) }),
  templateLiteral: z.object({ t: z.templateLiteral(['id-', z.number()]) }),
};

describe('emulator schema sampler: answers zod accepts', () => {
  for (const [name, schema] of Object.entries(cases)) {
    it(name, () => {
      const fails: string[] = [];
      for (let seed = 1; seed <= 40; seed++) {
        const v = sample(schema, seed);
        const r = schema.safeParse(v);
        if (!r.success) fails.push(`seed ${seed}: ${JSON.stringify(v)}: ${r.error.issues.map((i) => i.message).join('; ')}`);
        expect(sample(schema, seed), 'same seed, same answer').toEqual(v);
      }
      expect(fails).toEqual([]);
    });
  }

  it('refuses a numeric range that holds no value instead of answering outside it', () => {
    expect(() => sample(z.object({ n: z.int().gt(5).lt(6) }), 1)).toThrow(UnsatisfiableSchemaError);
  });

  it('refuses enums inside allOf that share no value', () => {
    expect(() => sample(z.object({ i: z.enum(['a']).and(z.enum(['b'])) }), 1)).toThrow(UnsatisfiableSchemaError);
  });

  it('refuses a pattern that cannot fit its length bounds instead of answering outside them', () => {
    const json = { type: 'object', properties: { s: { type: 'string', pattern: '^[A-Z]{3}-\\d{4}$', maxLength: 5 } }, required: ['s'] };
    expect(() => sampleFromSchema(json, words, createRng(1))).toThrow(UnsatisfiableSchemaError);
  });

  it('keeps a format within maxLength when the schema has no pattern to follow', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const v = sampleFromSchema({ type: 'string', format: 'email', maxLength: 10 }, words, createRng(seed)) as string;
      expect(z.email().max(10).safeParse(v).success, v).toBe(true);
    }
  });
});
