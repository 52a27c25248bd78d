import { describe, expect, it } from 'vitest';
import { firstIllFormedPath, mayHoldLoneSurrogate } from '../src/producers/ill-formed-strings.js';

describe('lone surrogates in a parsed JSON body', () => {
  it('names the first bad string, key or value, in document order', () => {
    expect(firstIllFormedPath({ a: 'ok', b: ['x', 'y\ud800'], c: '\udc00' })).toBe('b.1');
    expect(firstIllFormedPath({ input: { startup: { name: 'a\udfff' } } })).toBe('input.startup.name');
    // A key: named as it reads, its bad unit shown as U+FFFD.
    expect(firstIllFormedPath({ input: { ['k\ud800']: 1 } })).toBe('input.k\ufffd');
    expect(firstIllFormedPath('\ud800')).toBe('(root)');
  });

  it('passes pairs, other characters and non-strings', () => {
    expect(firstIllFormedPath({ emoji: '\ud83d\ude00', n: 1, b: true, z: null, list: [[], {}], text: 'é€' })).toBeUndefined();
  });

  it('walks nesting deeper than the call stack', () => {
    const depth = 200_000;
    const parsed: unknown = JSON.parse(`${'['.repeat(depth)}"\\ud800"${']'.repeat(depth)}`);
    expect(firstIllFormedPath(parsed)).toBe(Array(depth).fill('0').join('.'));
  });

  it('looks only at bodies that escape a surrogate', () => {
    expect(mayHoldLoneSurrogate('{"a":"\\ud800"}')).toBe(true);
    expect(mayHoldLoneSurrogate('{"a":"\\uDBFF"}')).toBe(true);
    expect(mayHoldLoneSurrogate('{"a":"\\u00e9 \\ud7ff"}')).toBe(false);
  });
});
