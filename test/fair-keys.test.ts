import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { fairPrefixes } from '../src/shared/core/queue-keys.js';
import { FAIR_KEY_NAMES, fairKeys } from '../src/shared/fair/fair-keys.js';
import { createFairLua } from '../src/shared/fair/fair-lua.js';
import { randomPrefix, redisUrl } from './helpers/env.js';

const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
const queues: Queue[] = [];
afterAll(async () => {
  await Promise.all(queues.map((q) => q.close()));
  redis.disconnect();
});

/**
 * The fair scripts take four prefixes as KEYS and build every key from them (fair-core-N.lua), while TypeScript
 * builds the same keys in fair-keys.ts: a name that differs on one side would split one key in two.
 */
describe('fair dispatcher keys', () => {
  const scriptNames = async (keys: ReturnType<typeof fairKeys>) =>
    createFairLua(redis, keys, { defaults: { weight: 1, concurrency: 0, rpm: { pro: 0, flash: 0 }, tpm: 0 }, leaseMs: 1000, bufferTarget: 1, maxBatch: 1, sweepMax: 1 }).scriptKeyNames();

  it('builds in Lua every key fair-keys.ts names, from the four it is given (as the runtime composes them)', async () => {
    const prefix = randomPrefix();
    const queue = new Queue('agent-jobs', { connection: redis, prefix });
    queues.push(queue);
    const keys = fairKeys({ ...fairPrefixes(prefix), queue });
    expect(keys.script).toHaveLength(4);
    expect(await scriptNames(keys)).toEqual(FAIR_KEY_NAMES.map((n) => keys.named[n]));
  });

  it('and with a bucket prefix of its own (as the tests compose them)', async () => {
    const prefix = randomPrefix();
    const queue = new Queue('fair', { connection: redis, prefix });
    queues.push(queue);
    const keys = fairKeys({ keyPrefix: `${prefix}:fq`, bucketPrefix: prefix, queue });
    expect(await scriptNames(keys)).toEqual(FAIR_KEY_NAMES.map((n) => keys.named[n]));
  });
});
