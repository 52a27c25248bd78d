import type { Queue } from 'bullmq';
import { primariesOf, type RedisClient } from '../shared/infra/redis/connection.js';
import { Gauge, Registry } from 'prom-client';
import type { BreakerSnapshot } from '../shared/limits/circuit-breaker.js';
import { guardKeys } from '../shared/core/queue-keys.js';

const QUEUE_STATES = ['waiting', 'prioritized', 'active', 'delayed', 'failed'] as const;
const BREAKER_VALUE = { closed: 0, halfOpen: 1, open: 2 } as const;

const globEscape = (s: string) => s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);

/** Keys of every breaker that has state in Redis (`<breakerPrefix>:cb:<key>`). */
export async function breakerKeysIn(redis: RedisClient, breakerPrefix: string): Promise<string[]> {
  const head = guardKeys.breakerHead(breakerPrefix);
  const keys = new Set<string>();
  // SCAN walks one node's keyspace: on a cluster, every primary's (breakers of each model may live anywhere).
  for (const node of primariesOf(redis)) {
    let cursor = '0';
    do {
      const [next, batch] = await node.scan(cursor, 'MATCH', `${globEscape(head)}*`, 'COUNT', 500);
      for (const k of batch) keys.add(k.slice(head.length));
      cursor = next;
    } while (cursor !== '0');
  }
  return [...keys];
}

/**
 * Gauges read from Redis when scraped, on a registry of their own: they describe shared state (queues,
 * breakers), so they are read once by the scraping process and never summed across processes.
 */
export function createScrapeGauges(deps: {
  /** Every queue, of every queue shard: a name's counts are summed over its shards. */
  queues: Queue[];
  /** The agent queue of each shard (their failed sets are the dead-letter queue). */
  agentQueues: Queue[];
  breakerState: (key: string) => Promise<Pick<BreakerSnapshot, 'state'>>;
  /** Breaker keys to report: those in Redis plus the configured models' (shown closed when absent). */
  breakerKeys: () => Promise<string[]>;
  /** The fair dispatcher's per-org state (orgs with work waiting or in flight). */
  orgGauges?: () => Promise<Array<{ org: string; waiting: number; inFlight: number; throttledS: number }>>;
  /** Usage rows appended and not yet committed to `agent_runs` (the usage stream's length). */
  usageBacklog?: () => Promise<number>;
}) {
  const registry = new Registry();
  const registers = [registry];
  new Gauge({
    name: 'agentq_queue_jobs',
    help: 'Jobs per queue and state, read from Redis at scrape',
    labelNames: ['queue', 'state'] as const,
    registers,
    async collect() {
      this.reset();
      const counts = await Promise.all(deps.queues.map((q) => q.getJobCounts(...QUEUE_STATES)));
      deps.queues.forEach((q, i) => {
        for (const state of QUEUE_STATES) this.inc({ queue: q.name, state }, counts[i][state] ?? 0);
      });
    },
  });
  new Gauge({
    name: 'agentq_dlq_size',
    help: 'Entries in the dead-letter queue (the agent queue failed set)',
    registers,
    async collect() {
      const counts = await Promise.all(deps.agentQueues.map((q) => q.getFailedCount()));
      this.set(counts.reduce((a, b) => a + b, 0));
    },
  });
  if (deps.usageBacklog) {
    const backlog = deps.usageBacklog;
    // The stream is not capped (a row is never dropped): while no sink can write, it grows in Redis memory.
    // This is what to alert on, before a noeviction Redis refuses writes.
    new Gauge({
      name: 'agentq_usage_backlog_rows',
      help: 'Usage rows waiting in the usage stream for a sink to write them to agent_runs',
      registers,
      async collect() {
        this.set(await backlog());
      },
    });
  }
  new Gauge({
    name: 'agentq_circuit_breaker_state',
    help: 'Circuit breaker state per key: 0 closed, 1 half-open, 2 open',
    labelNames: ['key'] as const,
    registers,
    async collect() {
      this.reset();
      const keys = await deps.breakerKeys();
      const states = await Promise.all(keys.map((k) => deps.breakerState(k)));
      keys.forEach((key, i) => this.set({ key }, BREAKER_VALUE[states[i].state] ?? 0));
    },
  });
  if (deps.orgGauges) {
    // One read serves the three gauges of a scrape: they are collected one after another.
    let last: { at: number; rows: Awaited<ReturnType<NonNullable<typeof deps.orgGauges>>> } | undefined;
    const rows = async () => {
      if (!last || Date.now() - last.at > 500) last = { at: Date.now(), rows: await deps.orgGauges!() };
      return last.rows;
    };
    const perOrg = (name: string, help: string, pick: (r: { waiting: number; inFlight: number; throttledS: number }) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['org'] as const,
        registers,
        async collect() {
          this.reset();
          for (const r of await rows()) this.set({ org: r.org }, pick(r));
        },
      });
    perOrg('agentq_org_jobs_waiting', 'Jobs of an org waiting for the fair dispatcher (lanes and timers)', (r) => r.waiting);
    perOrg('agentq_org_jobs_in_flight', 'Jobs of an org holding a dispatcher slot (in BullMQ wait or running)', (r) => r.inFlight);
    perOrg('agentq_org_throttled_seconds', 'Seconds an org\'s lanes have slept on a rate limit or model block, cumulative', (r) => r.throttledS);
  }
  return registry;
}
