import { describe, expect, it } from 'vitest';
import { firstBodyFault, mayHoldHugeNumber, mayHoldLoneSurrogate, MAX_BODY_DEPTH } from '../src/producers/body-faults.js';

const strings = { strings: true };
const nest = (depth: number, leaf: string) => JSON.parse(`${'['.repeat(depth)}${leaf}${']'.repeat(depth)}`) as unknown;

describe('what a parsed JSON body may not hold', () => {
  it('names the first lone surrogate, key or value, in document order', () => {
    expect(firstBodyFault({ a: 'ok', b: ['x', 'y\ud800'], c: '\udc00' }, strings)?.path).toBe('b.1');
    expect(firstBodyFault({ input: { startup: { name: 'a\udfff' } } }, strings)).toEqual({ path: 'input.startup.name', message: expect.stringMatching(/lone surrogate/) });
    // A key: named as it reads, its bad unit shown as U+FFFD.
    expect(firstBodyFault({ input: { ['k\ud800']: 1 } }, strings)?.path).toBe('input.k\ufffd');
    expect(firstBodyFault('\ud800', strings)?.path).toBe('(root)');
    // Strings are read only when the text escaped a surrogate.
    expect(firstBodyFault({ a: 'y\ud800' }, { strings: false })).toBeUndefined();
  });

  it('passes pairs, other characters and non-strings', () => {
    expect(firstBodyFault({ emoji: '\ud83d\ude00', n: 1, b: true, z: null, list: [[], {}], text: 'é€' }, strings)).toBeUndefined();
  });

  it('refuses nesting deeper than the limit, naming where it goes too deep', () => {
    expect(firstBodyFault(nest(MAX_BODY_DEPTH, '1'), strings)).toBeUndefined();
    const fault = firstBodyFault({ input: { meta: nest(MAX_BODY_DEPTH, '1') } }, { strings: false });
    expect(fault?.message).toMatch(new RegExp(`deeper than ${MAX_BODY_DEPTH} levels`));
    // input (1), meta's array (2) ... the array at depth MAX_BODY_DEPTH + 1 is the first too deep.
    expect(fault?.path).toBe(['input', 'meta', ...Array(MAX_BODY_DEPTH - 2).fill('0')].join('.'));
    expect(firstBodyFault({ a: { b: { c: 1 } } }, { strings: false, maxDepth: 2 })?.path).toBe('a.b');
    // What the limit lets through serialises again (Node 20 fails at ~5,000 nested arrays).
    expect(() => JSON.stringify(nest(MAX_BODY_DEPTH, '1'))).not.toThrow();
  });

  it('walks nesting deeper than the call stack', () => {
    const depth = 200_000;
    expect(firstBodyFault(nest(depth, '"\\ud800"'), { strings: true, maxDepth: Infinity })?.path).toBe(Array(depth).fill('0').join('.'));
    expect(firstBodyFault(nest(depth, '1'), strings)?.message).toMatch(/deeper than/);
  });

  it('refuses a number beyond a double\'s range (Infinity, stored as null), only when the text may hold one', () => {
    const text = '{"input":{"meta":{"n":[1, 2.5e10, 1e400]}}}';
    expect(mayHoldHugeNumber(text)).toBe(true);
    expect(firstBodyFault(JSON.parse(text), { strings: false, numbers: true })).toEqual({ path: 'input.meta.n.2', message: expect.stringMatching(/beyond a double's range/) });
    expect(firstBodyFault(JSON.parse('[-1e309]'), { strings: false, numbers: true })?.path).toBe('0');
    expect(firstBodyFault(JSON.parse(`[${'9'.repeat(309)}]`), { strings: false, numbers: true })?.path).toBe('0');
    expect(firstBodyFault(JSON.parse('[1e308, -1.7e308, 5e-324, 1e-400]'), { strings: false, numbers: true })).toBeUndefined();
    expect(mayHoldHugeNumber('{"a":1e99,"b":12345678901234567890,"c":"1e400"}')).toBe(true); // a string may match: then the walk decides
    expect(mayHoldHugeNumber('{"a":1e99,"b":12345678901234567890}')).toBe(false);
    expect(mayHoldHugeNumber(`[${'9'.repeat(309)}]`)).toBe(true);
  });

  it('looks at strings only in bodies that escape a surrogate', () => {
    expect(mayHoldLoneSurrogate('{"a":"\\ud800"}')).toBe(true);
    expect(mayHoldLoneSurrogate('{"a":"\\uDBFF"}')).toBe(true);
    expect(mayHoldLoneSurrogate('{"a":"\\u00e9 \\ud7ff"}')).toBe(false);
  });

  it('an in-process value: refuses what JSON has no form for, takes what it keeps', () => {
    const values = { values: true };
    expect(firstBodyFault({ a: [1, Number.NaN] }, values)).toEqual({ path: 'a.1', message: expect.stringMatching(/NaN/) });
    expect(firstBodyFault({ a: -Infinity }, values)?.message).toMatch(/beyond a double's range/);
    expect(firstBodyFault({ a: { b: 1n } }, values)).toEqual({ path: 'a.b', message: expect.stringMatching(/bigint.*throws/) });
    expect(firstBodyFault({ f: () => 1 }, values)).toEqual({ path: 'f', message: expect.stringMatching(/function.*left out/) });
    expect(firstBodyFault([Symbol('s')], values)).toEqual({ path: '0', message: expect.stringMatching(/symbol.*null/) });
    expect(firstBodyFault({ s: new Set([1]) }, values)).toEqual({ path: 's', message: expect.stringMatching(/Set.*entries lost/) });
    expect(firstBodyFault({ u: new Uint8Array(2) }, values)?.message).toMatch(/Uint8Array/);
    expect(firstBodyFault({ list: [1, undefined] }, values)).toEqual({ path: 'list.1', message: expect.stringMatching(/undefined.*null/) });
    expect(firstBodyFault({ k: 'a\udc00' }, values)?.path).toBe('k');
    const cycle: unknown[] = [];
    cycle.push(cycle);
    expect(firstBodyFault({ c: cycle }, values)?.message).toMatch(/deeper than .* \(or a cycle\)/);
    // Kept as JSON keeps them: an undefined member is absent, a Date is its ISO text, booleans and null as they are.
    expect(firstBodyFault({ gone: undefined, at: new Date(0), ok: true, z: null, n: -0, s: '\ud83d\ude00' }, values)).toBeUndefined();
    // A parsed body never holds these, so the API's walk does not look for them (and its depth message names no cycle).
    expect(firstBodyFault({ a: [Number.NaN] }, { strings: false })).toBeUndefined();
    expect(firstBodyFault(nest(MAX_BODY_DEPTH + 1, '1'), { strings: false })?.message).not.toMatch(/cycle/);
  });
});
