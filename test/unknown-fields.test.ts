import { describe, expect, it } from 'vitest';
import { unknownFields } from '../src/shared/agents/unknown-fields.js';

// unknownFields keeps its split passthrough patterns across calls: each call's answer must
// still be its own, and a passthrough list changed in place must count as changed.
describe('unknownFields across calls', () => {
  it('hands each call its own list', () => {
    const first = unknownFields({ a: 1, typo: 2 }, { a: 1 });
    const second = unknownFields({ b: { c: 1, other: 2 } }, { b: { c: 1 } });
    const none = unknownFields({ a: 1 }, { a: 1 });
    expect(first).toEqual(['typo']);
    expect(second).toEqual(['b.other']);
    expect(none).toEqual([]);
  });

  it('follows a passthrough list changed in place', () => {
    const passthrough = ['meta'];
    expect(unknownFields({ meta: { x: 1 }, other: { y: 1 } }, { meta: {}, other: {} }, passthrough)).toEqual(['other.y']);
    passthrough[0] = 'other';
    expect(unknownFields({ meta: { x: 1 }, other: { y: 1 } }, { meta: {}, other: {} }, passthrough)).toEqual(['meta.x']);
  });

  it('keeps what a passthrough object accepts in the parsed value', () => {
    const parsed: { meta: Record<string, unknown> } = { meta: {} };
    expect(unknownFields({ meta: { x: 1 } }, parsed, ['meta'])).toEqual([]);
    expect(parsed.meta).toEqual({ x: 1 });
  });
});
