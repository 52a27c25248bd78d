import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LUA_DIR, readLua } from '../src/shared/infra/lua.js';
import { redisUrl } from './helpers/env.js';

/**
 * includes/number-format.lua's fmt, the one number format of the scripts that store numbers (fair-core-N.lua and its
 * parts, token-bucket-take-N.lua, includes/token-bucket-adjust.lua), each of which had its own before. It runs here
 * beside those functions as they were, on the same doubles: the text each site stored must not move.
 */
const INCLUDE = readFileSync(new URL('includes/number-format.lua', LUA_DIR), 'utf8');
const BESIDE_THE_OLD = `${INCLUDE}
-- fair-core-N.lua's own fmt, before the include.
local function fairFmt(x)
  if x % 1 == 0 and x ~= 0 and x > -1e15 and x < 1e15 then return string.format('%d', x) end
  return string.format('%.17g', x)
end
-- token-bucket-take-N.lua's and token-bucket-adjust.lua's level format, before the include.
local function bucketFmt(left)
  local tokens
  if left % 1 == 0 and left > -1e15 and left < 1e15 then tokens = string.format('%d', left) else tokens = string.format('%.17g', left) end
  return tokens
end
local out = {}
for i = 1, #ARGV do
  local x = ARGV[i] * 1 -- '* 1', not '+ 0': -0 + 0 is +0
  out[i] = { fmt(x), fairFmt(x), bucketFmt(x) }
end
return out
`;

let redis: Redis;
beforeAll(() => {
  redis = new Redis(redisUrl());
});
afterAll(() => redis.disconnect());

const run = async (values: string[]) => (await redis.eval(BESIDE_THE_OLD, 0, ...values)) as [string, string, string][];

describe('number-format.lua fmt', () => {
  it('writes each kind of number in the digits `%.17g` gives it, -0 as "-0"', async () => {
    const pinned: [arg: string, text: string][] = [
      ['0', '0'],
      ['-0', '-0'],
      ['7', '7'],
      ['-5', '-5'],
      ['9.5', '9.5'],
      ['-5.5', '-5.5'],
      [String(10 - 1 / 3), '9.6666666666666661'],
      ['999999999999999', '999999999999999'],
      ['-999999999999999', '-999999999999999'],
      ['1000000000000000', '1000000000000000'],
      ['-1000000000000000', '-1000000000000000'],
      ['1000000000000001', '1000000000000001'],
      ['9007199254740993', '9007199254740992'], // past 2^53: the double it parses to
      ['36028797018963970', '36028797018963968'],
      ['1e16', '10000000000000000'],
      ['1e300', '1.0000000000000001e+300'],
      ['5e-324', '4.9406564584124654e-324'],
      ['1e999', 'inf'],
      ['-1e999', '-inf'],
      ['nan', 'nan'],
      ['-nan', '-nan'],
    ];
    const got = await run(pinned.map(([arg]) => arg));
    expect(pinned.map(([arg], i) => [arg, got[i][0]])).toEqual(pinned);
  });

  it("stores what each site's own function stored: fair-core's for every number, the buckets' for all but -0", async () => {
    // Edges, then random doubles of every magnitude (random bits), whole numbers around 2^53 and 1e15, fractions.
    const values = ['0', '-0', '1', '-1', '0.5', '-0.5', '1e15', '-1e15', '1e999', '-1e999', 'nan', '-nan'];
    for (const edge of [1e15, 2 ** 53, 2 ** 63, 2 ** 31]) for (let d = -3; d <= 3; d++) values.push(String(edge + d), String(-edge + d));
    const bits = new DataView(new ArrayBuffer(8));
    for (let i = 0; i < 600; i++) {
      bits.setUint32(0, (Math.random() * 2 ** 32) >>> 0);
      bits.setUint32(4, (Math.random() * 2 ** 32) >>> 0);
      const x = bits.getFloat64(0);
      if (!Number.isNaN(x)) values.push(String(x));
      values.push(String(Math.round((Math.random() - 0.5) * 2 ** (1 + (i % 62)))));
      values.push(String((Math.random() - 0.5) * 10 ** (i % 20)));
    }
    const got = await run(values);
    const fair = values.filter((_v, i) => got[i][0] !== got[i][1]);
    expect(fair).toEqual([]);
    // -0: the buckets wrote "0" ('%d'), fair-core "-0"; no bucket level is -0 (the header of number-format.lua).
    const buckets = values.filter((_v, i) => got[i][0] !== got[i][2]);
    expect(buckets).toEqual(['-0']);
  });

  it('is the one definition in each script that stores numbers, pasted once', () => {
    for (const file of ['fair-core-N.lua', 'token-bucket-take-N.lua', 'token-bucket-adjust-1.lua']) {
      const source = readLua(file);
      expect([file, source.split(INCLUDE).length - 1]).toEqual([file, 1]);
      expect([file, source.match(/\bfmt = function\(|local function fmt\(/g)]).toEqual([file, ['local function fmt(']]);
      expect([file, source.match(/'%\.17g'/g)?.length]).toEqual([file, 1]);
    }
  });
});
