/**
 * One of several processes taking from ONE shared token bucket as a saturated worker would: each refusal
 * waits the `msBeforeNext` the bucket returned, then tries again. Argument: JSON
 * `{ redisUrl, prefix, key, capacity, refillPerSec, startAt, durationMs, loops }`; answers
 * `{ ready: { admitted: number[] (Redis ms of each admission), refused } }`.
 */
import { createTokenBuckets } from '../../src/shared/limits/token-bucket.js';
import { createRedis, whenReady } from '../../src/shared/infra/redis/connection.js';
import { toParent } from '../lib/child.js';
import { sleep } from '../lib/stats.js';

const o = JSON.parse(process.argv[2]) as { redisUrl: string; prefix: string; key: string; capacity: number; refillPerSec: number; startAt: number; durationMs: number; loops: number };
const redis = createRedis(o.redisUrl, 'worker');
await whenReady(redis);
const buckets = createTokenBuckets({ redis, prefix: o.prefix });
const admitted: number[] = [];
let refused = 0;
await sleep(Math.max(0, o.startAt - Date.now()));
const end = o.startAt + o.durationMs;
await Promise.all(
  Array.from({ length: o.loops }, async () => {
    while (Date.now() < end) {
      const r = await buckets.take([{ key: o.key, capacity: o.capacity, refillPerSec: o.refillPerSec, cost: 1 }]);
      if (r.allowed) admitted.push(r.redisTimeMs);
      else {
        refused++;
        await sleep(Math.max(1, r.msBeforeNext));
      }
    }
  }),
);
redis.disconnect();
toParent({ ready: { admitted, refused } });
process.exit(0);
