import { afterAll, describe, expect, it } from 'vitest';
import { defineLua, readLua } from '../src/shared/infra/lua.js';
import { createRedis, type RedisClient } from '../src/shared/infra/redis/connection.js';
import { randomPrefix, redisUrl } from './helpers/env.js';

const clients: RedisClient[] = [];
afterAll(() => clients.forEach((c) => c.disconnect()));

/**
 * A `-N.lua` script is defined once per key count, on its first call with that count. ioredis copies a client's
 * scripts into an auto-pipeline when it creates it, so a count first used while an auto-pipeline is pending
 * (created earlier in the same tick) must still reach Redis through it: without that, ioredis rejects the call
 * and then crashes the process on the reply it lacks ("results[i] is not iterable", ioredis #1931).
 */
describe('variable-key Lua on an auto-pipelined connection', () => {
  it('inlines includes of includes, each once: the lookup and the store build the namespace tag from one definition', () => {
    for (const file of ['result-cache-lookup-5.lua', 'result-cache-set-8.lua', 'fair-core-N.lua']) {
      const source = readLua(file);
      expect(source).not.toMatch(/^--- @include/m);
      expect(source.match(/local function resultCacheTag\(/g)).toHaveLength(1);
    }
    // The dispatcher's parts (includes/fair-*.lua), each pasted once, in the order the early answers need.
    const fair = readLua('fair-core-N.lua');
    // `local function f(`, or `f = function(` for the corrections' functions, created only for the calls that use them.
    const at = (fn: string) => {
      expect(fair.match(new RegExp(`(local function ${fn}|\\b${fn} = function)\\(`, 'g'))).toHaveLength(1);
      const i = fair.indexOf(`local function ${fn}(`);
      return i >= 0 ? i : fair.indexOf(`${fn} = function(`);
    };
    const order = ['claimOwn', 'releaseSlots', 'applyCorrections', 'activate', 'level', 'tryLane', 'dispatch', 'refundDispatch'].map(at);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    // The claim handing nothing over answers after claimOwn and before releaseSlots is created (found: not -1).
    const bareClaim = fair.indexOf('if claimUncorrected and #ARGV == 13 then');
    expect(bareClaim).toBeGreaterThan(order[0]);
    expect(bareClaim).toBeLessThan(order[1]);
  });

  it('a dispatch, the refill and a release that fills its slots answer before the parts only the other ops use are created', () => {
    // Each function a call creates costs Redis instructions (binding its upvalues): the refill, one claim in eight
    // under load, created the charge corrections', refunds', cancels' and parked store's ~15 for nothing.
    const fair = readLua('fair-core-N.lua');
    const answers = ["if op == 'dispatch' then", "elseif op == 'claim' and early then", "elseif op == 'release' and early then"].map((a) => fair.indexOf(a));
    const created = (fn: string) => fair.indexOf(`local function ${fn}(`);
    for (const at of answers) {
      expect(at).toBeGreaterThan(created('dispatch'));
      for (const fn of ['refundDispatch', 'cancelJob', 'storeParked']) expect(at).toBeLessThan(created(fn));
    }
  });

  it('a claim or release handing over charge corrections applies them before the lanes and the dispatch are created', () => {
    // A correction reads and writes token buckets alone: the ~60 functions of the lanes, the dispatch and the
    // releases' other parts cost such a claim ~240k Redis instructions (callgrind), more than its commands.
    const fair = readLua('fair-core-N.lua');
    const corrected = fair.indexOf("if (op == 'claim' and not claimUncorrected) or (op == 'release' and ARGV[6] ~= '0') then");
    const created = (fn: string) => fair.indexOf(`local function ${fn}(`);
    expect(corrected).toBeGreaterThan(fair.indexOf('applyCorrections = function('));
    expect(fair.indexOf('applyCorrections = function(')).toBeGreaterThan(created('tokenBucketAdjust'));
    // Those created only where used: a dispatch and a claim or release without corrections (`early`) skip them.
    expect(fair.indexOf("if op ~= 'dispatch' and not early then")).toBeLessThan(created('tokenBucketAdjust'));
    for (const fn of ['activate', 'wakeRefunded', 'tryLane', 'dispatch', 'refundDispatch']) expect(corrected).toBeLessThan(created(fn));
  });

  it('a key count first used while an auto-pipeline is pending runs in it, beside the calls queued before', async () => {
    const client = createRedis(redisUrl(), 'worker', { enableAutoPipelining: true });
    clients.push(client);
    const take = defineLua(client, 'token-bucket-take-N.lua');
    const p = randomPrefix();
    let sent = 0;
    // Same tick: the 1-key calls create the pending auto-pipeline, the 2- and 3-key calls define their commands.
    const calls = [
      take([`${p}:a`], [10, 0.001, 1]),
      take([`${p}:b`, `${p}:c`], [10, 0.001, 1, 10, 0.001, 2]),
      take([`${p}:a`], [10, 0.001, 1]),
      take([`${p}:d`, `${p}:e`, `${p}:f`], [10, 0.001, 1, 10, 0.001, 1, 10, 0.001, 1]),
    ].map((c) => c.then((r) => (sent++, r as number[])));
    const results = await Promise.all(calls);
    expect(sent).toBe(4);
    expect(results.map((r) => r[0])).toEqual([1, 1, 1, 1]);
    // Each call ran once: bucket a was taken twice (10 - 2 left), c once for 2 tokens.
    expect(Number(await client.hget(`${p}:a`, 'tokens'))).toBeCloseTo(8, 0);
    expect(Number(await client.hget(`${p}:c`, 'tokens'))).toBeCloseTo(8, 0);
  });
});
