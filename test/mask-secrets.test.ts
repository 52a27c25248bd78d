import { describe, expect, it } from 'vitest';
import { MASK, maskSecretText } from '../src/producers/mask-secrets.js';

describe('secret values in free text', () => {
  // base64url keys end in `-` or `_` one time in 32: each ending must be masked, whatever follows it.
  it.each(['-', '_', 'Z'])('masks an agentq key ending in %j, before text, punctuation or the end', (last) => {
    const key = `aq_0123456789abcdef_${'Ab3-'.repeat(7)}xyz${last}`;
    for (const text of [key, `${key}.`, `"${key}"`, `${key} and more`]) expect(maskSecretText(text)).toBe(text.replace(key, MASK));
  });

  it('masks Google keys ending in `-` and whole provider tokens, and leaves a longer lookalike alone', () => {
    const google = `AIza${'x7Qz'.repeat(8)}ab-`;
    expect(maskSecretText(`key=${google}!`)).toBe(`key=${MASK}!`);
    expect(maskSecretText('sk-abcdefghijklmnopqrstuvw-')).toBe(MASK);
    // 33 characters after the id: not an agentq key, so not cut in the middle.
    const longer = `aq_0123456789abcdef_${'a'.repeat(33)}`;
    expect(maskSecretText(longer)).toBe(longer);
  });
});
