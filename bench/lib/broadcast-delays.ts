import type { ResultCache } from '../../src/shared/cache/result-cache.js';
import type { AgentResult } from '../../src/shared/core/types.js';
import type { RedisClient } from '../../src/shared/infra/lua.js';
import { createCircuitBreaker, type AcquireResult } from '../../src/shared/limits/circuit-breaker.js';
import { startChild, type BenchChild } from './child.js';
import { wallMs } from './stats.js';

type Acquired = { answer: AcquireResult; commands: number };

/** Sends `send` every 20 ms until the child reports what `match` picks: its subscription is then live. */
async function untilHeard(child: BenchChild, match: (m: any) => boolean, send: () => Promise<unknown>): Promise<void> {
  const heard = child.next(match, 60_000);
  const timer = setInterval(() => void send(), 20);
  try {
    await send();
    await heard;
  } finally {
    clearInterval(timer);
  }
}

/**
 * How long another OS process (a bench child built as a worker: `children/broadcast-listener.ts`) serves a
 * stale answer after a write here: `count` result-cache version bumps (what `DELETE /v1/cache` and a
 * knowledge ingest send) and `count` breaker opens, one at a time. Each delay runs from this process's clock
 * taken before the write is sent to the child's clock on the message's arrival (wall clock, sub-ms, one
 * machine), so it bounds the staleness from above. Before each open the child's breaker answers the key from
 * memory, and after the drop it asks Redis and is refused: the open is what the child learned, not an expiry.
 */
export async function broadcastDelays(opts: { redisUrl: string; redis: RedisClient; prefix: string; cache: ResultCache<AgentResult>; count: number }): Promise<{ cacheMs: number[]; breakerMs: number[] }> {
  const child = startChild('broadcast-listener', [JSON.stringify({ redisUrl: opts.redisUrl, prefix: opts.prefix })]);
  try {
    await child.ready;
    const opener = createCircuitBreaker({ redis: opts.redis, prefix: opts.prefix, failureThreshold: 1, timeoutMs: 60_000 });
    await untilHeard(child, (m) => m?.seen?.orgId === 'bench-broadcast-probe', () => opts.cache.invalidateOrg('bench-broadcast-probe'));
    await untilHeard(child, (m) => m?.dropped === 'bench-broadcast-probe', () => opener.markExhausted('bench-broadcast-probe', 1000));
    const cacheMs: number[] = [];
    for (let i = 0; i < opts.count; i++) {
      const orgId = `bench-broadcast-${i}`;
      const seen = child.next<{ at: number }>((m) => m?.seen?.orgId === orgId);
      const t0 = wallMs();
      await opts.cache.invalidateOrg(orgId);
      cacheMs.push((await seen).at - t0);
    }
    const breakerMs: number[] = [];
    for (let i = 0; i < opts.count; i++) {
      const key = `gemini:bench-broadcast-${i}`;
      await child.request<Acquired>({ op: 'acquire', key });
      const before = await child.request<Acquired>({ op: 'acquire', key });
      if (before.commands !== 0 || !before.answer.allowed) throw new Error(`the child's breaker did not answer ${key} from its view: ${JSON.stringify(before)}`);
      const dropped = child.next<{ at: number }>((m) => m?.dropped === key);
      const t0 = wallMs();
      await opener.onFailure(key, false);
      breakerMs.push((await dropped).at - t0);
      const after = await child.request<Acquired>({ op: 'acquire', key });
      if (after.commands !== 1 || after.answer.allowed) throw new Error(`the child's breaker was not refused ${key} after the drop: ${JSON.stringify(after)}`);
    }
    return { cacheMs, breakerMs };
  } finally {
    await child.stop();
  }
}
