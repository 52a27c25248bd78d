/**
 * The other process of the guards case's staleness rows: a result cache and a circuit breaker built as a
 * worker builds them (one command connection, one subscriber connection both listen on), reporting each
 * invalidation it applies as `{ seen: { orgId, agent }, at }` or `{ dropped: key, at }`, `at` taken on
 * arrival (`wallMs`: comparable with the parent's clock on one machine). Argument: JSON `{ redisUrl, prefix }`;
 * answers `{ id, op: 'acquire', key }` with the breaker's answer and the Redis commands it sent (0: from the view).
 */
import { createResultCache } from '../../src/shared/cache/result-cache.js';
import type { AgentResult } from '../../src/shared/core/types.js';
import { createRedis, whenReady } from '../../src/shared/infra/redis/connection.js';
import { createCircuitBreaker } from '../../src/shared/limits/circuit-breaker.js';
import { serveParent, toParent } from '../lib/child.js';
import { wallMs } from '../lib/stats.js';

const o = JSON.parse(process.argv[2]) as { redisUrl: string; prefix: string };
const redis = createRedis(o.redisUrl, 'worker');
const subscriber = createRedis(o.redisUrl, 'subscriber');
await whenReady(redis);
let sent = 0;
const send = redis.sendCommand.bind(redis) as (...a: unknown[]) => unknown;
// Every command ioredis writes goes through sendCommand: an acquire that sent none was answered from memory.
(redis as { sendCommand: unknown }).sendCommand = (...a: unknown[]) => (sent++, send(...a));
createResultCache<AgentResult>({
  redis,
  subscriber,
  prefix: o.prefix,
  l1Max: 100,
  l1TtlMs: 600_000,
  l2TtlS: 60,
  onInvalidation: (orgId, agent) => toParent({ seen: { orgId, agent }, at: wallMs() }),
});
const breaker = createCircuitBreaker({
  redis,
  subscriber,
  prefix: o.prefix,
  failureThreshold: 1,
  timeoutMs: 60_000,
  onInvalidation: (key) => toParent({ dropped: key, at: wallMs() }),
});
serveParent(async (msg: { op: string; key: string }) => {
  if (msg.op !== 'acquire') throw new Error(`unknown op ${msg.op}`);
  const before = sent;
  const answer = await breaker.acquire(msg.key);
  return { answer, commands: sent - before };
});
toParent({ ready: {} });
