import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { RedisClient } from '../infra/redis/connection.js';
import type { Logger } from '../core/logger.js';
import { metricsExchangeKey } from '../core/queue-keys.js';

/**
 * Worker processes serve no HTTP, so each process writes its registry's `getMetricsAsJSON()` into one
 * Redis hash (`<prefix>:agentq:metrics`, a field per process) every `everyMs`. A scrape of any API
 * process sums its own live registry with every other field younger than `staleMs` using prom-client's
 * `AggregatorRegistry.aggregate` (counters and histograms add up; gauges add up too, so only gauges that
 * count something per process belong there). Fields are stamped with Redis time, so host clocks do not
 * matter; stale fields (a crashed process) are dropped and deleted at scrape. A process that exits takes
 * its counts with it: Prometheus sees that as a counter reset, as it would for a restarted server.
 */
export function createMetricsExchange(deps: { redis: RedisClient; prefix: string; registry: Registry; everyMs?: number; staleMs?: number; processId?: string; logger: Logger }) {
  // 15 s: a common scrape interval, so a scrape rarely sees a snapshot older than one interval; 5 cmds each.
  const everyMs = deps.everyMs ?? 15_000;
  const staleMs = deps.staleMs ?? everyMs * 3;
  const key = metricsExchangeKey(deps.prefix);
  const self = deps.processId ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const redisNow = async () => {
    const [s, us] = await deps.redis.time();
    return Number(s) * 1000 + Math.floor(Number(us) / 1000);
  };

  async function publish(): Promise<void> {
    const metrics = await deps.registry.getMetricsAsJSON();
    const at = await redisNow();
    await deps.redis.multi().hset(key, self, JSON.stringify({ at, metrics })).pexpire(key, staleMs).exec();
  }

  return {
    processId: self,
    publish,

    /** Starts publishing (idempotent). The timer never keeps the process alive. */
    start() {
      if (timer || closed) return;
      timer = setInterval(() => {
        publish().catch((err: unknown) => deps.logger.warn({ err: (err as Error).message }, 'could not publish metrics to Redis'));
      }, everyMs);
      timer.unref();
      void publish().catch(() => {});
    },

    /** This process's live metrics summed with every other process's last fresh snapshot. */
    async collect(): Promise<Registry> {
      const [fields, now] = await Promise.all([deps.redis.hgetall(key), redisNow()]);
      const snapshots: object[][] = [await deps.registry.getMetricsAsJSON()];
      const stale: string[] = [];
      for (const [field, raw] of Object.entries(fields)) {
        if (field === self) continue;
        try {
          const { at, metrics } = JSON.parse(raw) as { at: number; metrics: object[] };
          if (now - at > staleMs) stale.push(field);
          else snapshots.push(metrics);
        } catch {
          stale.push(field);
        }
      }
      if (stale.length) await deps.redis.hdel(key, ...stale);
      return AggregatorRegistry.aggregate(snapshots) as unknown as Registry;
    },

    async close(): Promise<void> {
      closed = true;
      clearInterval(timer);
      timer = undefined;
      await deps.redis.hdel(key, self).catch(() => {});
    },
  };
}

export type MetricsExchange = ReturnType<typeof createMetricsExchange>;
