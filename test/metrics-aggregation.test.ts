import { EventEmitter } from 'node:events';
import type { Worker } from 'bullmq';
import type { RedisClient } from '../src/shared/infra/redis/connection.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import type { DlqStore } from '../src/shared/ops/dlq-store.js';
import { attachOpsListeners } from '../src/workers/ops/worker-listeners.js';
import { metricsExchangeKey } from '../src/shared/core/queue-keys.js';
import { afterAll, describe, expect, it } from 'vitest';
import { createMetricsExchange } from '../src/shared/ops/metrics-exchange.js';
import { createOpsMetrics } from '../src/shared/ops/metrics.js';
import { createLogger } from '../src/shared/core/logger.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { parseProm, sampleSum } from './helpers/ops.js';

const logger = createLogger({ level: 'silent' });
const result = (model: string, input: number, output: number, costUsd: number, cacheHit?: 'l1' | 'l2' | 'semantic') => ({
  success: true,
  tokensUsed: { input, output },
  costUsd,
  durationMs: 10,
  model,
  ...(cacheHit ? { cacheHit } : {}),
});

describe('metrics across processes', () => {
  const clients: RedisClient[] = [];
  const connect = () => {
    const r = createRedis(redisUrl(), 'worker');
    clients.push(r);
    return r;
  };
  afterAll(() => clients.forEach((r) => r.disconnect()));

  it('sums the registries of several processes through Redis', async () => {
    const prefix = randomPrefix();
    // Two "worker processes" and one "API process", each with its own registry and connection.
    const w1 = createOpsMetrics();
    const w2 = createOpsMetrics();
    const api = createOpsMetrics();
    const x1 = createMetricsExchange({ redis: connect(), prefix, registry: w1.registry, logger });
    const x2 = createMetricsExchange({ redis: connect(), prefix, registry: w2.registry, logger });
    const xa = createMetricsExchange({ redis: connect(), prefix, registry: api.registry, logger });
    expect(new Set([x1.processId, x2.processId, xa.processId]).size).toBe(3);

    const job = { data: { agent: 'RiskAnalyzer', action: 'analyze_risks', enqueuedAt: 900 }, processedOn: 1000, finishedOn: 1500 };
    w1.jobCompleted(job, result('m-pro', 100, 50, 0.25));
    w1.jobCompleted(job, result('m-pro', 10, 5, 0, 'l1'));
    w2.jobCompleted(job, result('m-pro', 200, 70, 0.5));
    w2.jobFailed(job, 'provider');
    w1.jobStarted({ ...job, attemptsStarted: 1 });
    w2.jobStarted({ ...job, attemptsStarted: 1 });
    w2.jobStarted({ ...job, attemptsStarted: 2 });
    api.admissionRejected('rate_limit');
    w1.sseStreams.inc();
    api.sseStreams.set(2);
    await x1.publish();
    await x2.publish();

    const text = await (await xa.collect()).metrics();
    const samples = parseProm(text);
    expect(sampleSum(samples, 'agentq_cost_usd_total', { agent: 'RiskAnalyzer', model: 'm-pro' })).toBeCloseTo(0.75, 10);
    expect(sampleSum(samples, 'agentq_tokens_total', { direction: 'input' })).toBe(310);
    expect(sampleSum(samples, 'agentq_tokens_total', { direction: 'output' })).toBe(125);
    expect(sampleSum(samples, 'agentq_job_duration_seconds_count', { outcome: 'completed' })).toBe(3);
    expect(sampleSum(samples, 'agentq_job_duration_seconds_bucket', { outcome: 'completed', le: '0.5' })).toBe(3);
    expect(sampleSum(samples, 'agentq_job_errors_total', { type: 'provider' })).toBe(1);
    expect(sampleSum(samples, 'agentq_cache_hits_total', { level: 'l1' })).toBe(1);
    expect(sampleSum(samples, 'agentq_cache_misses_total', { level: 'l1' })).toBe(2);
    expect(sampleSum(samples, 'agentq_cache_misses_total', { level: 'semantic' })).toBe(2);
    // Only first starts count towards enqueue-to-start latency.
    expect(sampleSum(samples, 'agentq_job_start_latency_seconds_count')).toBe(2);
    expect(sampleSum(samples, 'agentq_admission_rejections_total', { reason: 'rate_limit' })).toBe(1);
    expect(sampleSum(samples, 'agentq_sse_streams_open')).toBe(3);

    // Counters keep growing: a later publish replaces the process's snapshot, it does not add to it.
    w1.jobCompleted(job, result('m-pro', 1, 1, 1));
    await x1.publish();
    await x1.publish();
    const later = parseProm(await (await xa.collect()).metrics());
    expect(sampleSum(later, 'agentq_cost_usd_total')).toBeCloseTo(1.75, 10);

    // A process that stops leaves its gauges, not its counts: they stay in the sum (a fall would read as a reset).
    await x2.close();
    const without = parseProm(await (await xa.collect()).metrics());
    expect(sampleSum(without, 'agentq_cost_usd_total')).toBeCloseTo(1.75, 10);
    expect(sampleSum(without, 'agentq_job_errors_total', { type: 'provider' })).toBe(1);
    await x1.close();
    await xa.close();
  });

  it('records dispatch latency without an org label, so orgs add no series', async () => {
    const m = createOpsMetrics();
    for (const orgId of ['org-a', 'org-b', 'org-c']) m.jobStarted({ data: { agent: 'A', action: 'a', orgId, enqueuedAt: 1000 }, processedOn: 1200, attemptsStarted: 1 });
    const series = parseProm(await m.registry.metrics()).filter((s) => s.name.startsWith('agentq_dispatch_latency_seconds'));
    expect(series.filter((s) => s.name === 'agentq_dispatch_latency_seconds_count')).toEqual([expect.objectContaining({ labels: {}, value: 3 })]);
    expect(series.every((s) => s.labels.org === undefined)).toBe(true);
  });

  it("measures start and dispatch latency from when a job became runnable: a caller's delayMs is not queue wait", async () => {
    const m = createOpsMetrics();
    // A worker stand-in emits BullMQ's `active` event, as the ops feature's listeners hear it.
    const worker = new EventEmitter();
    attachOpsListeners(worker as unknown as Worker<AgentJobData, AgentResult>, { store: {} as DlqStore, metrics: m, logger });
    const data = { orgId: 'org-a', agent: 'A', action: 'a', input: {}, enqueuedAt: 1000 };
    // Delayed 60 s, started 200 ms after the delay ran out; and an undelayed job started 300 ms after its enqueue.
    worker.emit('active', { data: { ...data, delayMs: 60_000 }, processedOn: 61_200, attemptsStarted: 1, opts: { delay: 0 } });
    worker.emit('active', { data, processedOn: 1300, attemptsStarted: 1, opts: {} });
    const samples = parseProm(await m.registry.metrics());
    for (const name of ['agentq_job_start_latency_seconds', 'agentq_dispatch_latency_seconds']) {
      expect(sampleSum(samples, `${name}_count`), name).toBe(2);
      expect(sampleSum(samples, `${name}_sum`), name).toBeCloseTo(0.5, 10);
      expect(sampleSum(samples, `${name}_bucket`, { le: '0.5' }), name).toBe(2);
    }
  });

  it('keeps the counts of a process that exits: $10 + $20, one exits, one more $1 job reads $31', async () => {
    const prefix = randomPrefix();
    const [w1, w2, api] = [createOpsMetrics(), createOpsMetrics(), createOpsMetrics()];
    const x1 = createMetricsExchange({ redis: connect(), prefix, registry: w1.registry, logger });
    const x2 = createMetricsExchange({ redis: connect(), prefix, registry: w2.registry, logger });
    const xa = createMetricsExchange({ redis: connect(), prefix, registry: api.registry, logger });
    const job = { data: { agent: 'A', action: 'a' }, processedOn: 1, finishedOn: 2 };
    for (let i = 0; i < 10; i++) w1.jobCompleted(job, result('m', 1, 1, 1));
    for (let i = 0; i < 20; i++) w2.jobCompleted(job, result('m', 1, 1, 1));
    w2.sseStreams.set(4);
    await x1.publish();
    await x2.publish();
    const scrape = async () => parseProm(await (await xa.collect()).metrics());
    expect(sampleSum(await scrape(), 'agentq_cost_usd_total')).toBe(30);
    expect(sampleSum(await scrape(), 'agentq_sse_streams_open')).toBe(4);

    await x2.close();
    w1.jobCompleted(job, result('m', 1, 1, 1));
    await x1.publish();
    const after = await scrape();
    expect(sampleSum(after, 'agentq_cost_usd_total')).toBe(31);
    expect(sampleSum(after, 'agentq_tokens_total', { direction: 'input' })).toBe(31);
    expect(sampleSum(after, 'agentq_job_duration_seconds_count')).toBe(31);
    expect(sampleSum(after, 'agentq_sse_streams_open')).toBe(0);
    // Every process leaving keeps the total too (the API last: it folds its own registry in).
    await x1.close();
    expect(sampleSum(await scrape(), 'agentq_cost_usd_total')).toBe(31);
    await xa.close();
    const reader = createMetricsExchange({ redis: connect(), prefix, registry: createOpsMetrics().registry, logger });
    expect(sampleSum(parseProm(await (await reader.collect()).metrics()), 'agentq_cost_usd_total')).toBe(31);
  });

  it('a process found stale while only slow is not counted twice when it publishes again', async () => {
    const prefix = randomPrefix();
    const [slow, api] = [createOpsMetrics(), createOpsMetrics()];
    const xs = createMetricsExchange({ redis: connect(), prefix, registry: slow.registry, logger, everyMs: 60_000 });
    const xa = createMetricsExchange({ redis: connect(), prefix, registry: api.registry, logger, everyMs: 60_000 });
    slow.jobFailed({ data: { agent: 'A', action: 'b' } }, 'timeout');
    await xs.publish();
    // Its snapshot ages past the stale limit (as if its event loop had been blocked): the scrape folds it.
    const key = metricsExchangeKey(prefix);
    const redis = connect();
    await redis.hset(key, xs.processId, JSON.stringify({ at: 1, metrics: JSON.parse((await redis.hget(key, xs.processId))!).metrics }));
    const errors = async () => sampleSum(parseProm(await (await xa.collect()).metrics()), 'agentq_job_errors_total');
    expect(await errors()).toBe(1);
    expect(await redis.hexists(key, xs.processId)).toBe(0);
    slow.jobFailed({ data: { agent: 'A', action: 'b' } }, 'timeout');
    await xs.publish();
    expect(await errors()).toBe(2);
    await xs.close();
    expect(await errors()).toBe(2);
    await xa.close();
  });

  it('folds a crashed process\'s stale snapshot into the retired totals once, and deletes it', async () => {
    const prefix = randomPrefix();
    const redis = connect();
    const dead = createOpsMetrics();
    dead.jobFailed({ data: { agent: 'A', action: 'b' } }, 'timeout');
    dead.sseStreams.set(3);
    await redis.hset(metricsExchangeKey(prefix), 'crashed-host:1:abc', JSON.stringify({ at: 1, metrics: await dead.registry.getMetricsAsJSON() }));
    const live = createOpsMetrics();
    live.jobFailed({ data: { agent: 'A', action: 'b' } }, 'timeout');
    const x = createMetricsExchange({ redis, prefix, registry: live.registry, logger, everyMs: 1000 });
    // Two API processes scrape at once and both find the crashed field stale: its counts are kept, once.
    const y = createMetricsExchange({ redis: connect(), prefix, registry: createOpsMetrics().registry, logger, everyMs: 1000 });
    await Promise.all([x.collect(), y.collect()]);
    const samples = parseProm(await (await x.collect()).metrics());
    expect(sampleSum(samples, 'agentq_job_errors_total', { type: 'timeout' })).toBe(2);
    expect(sampleSum(samples, 'agentq_sse_streams_open')).toBe(0);
    expect(await redis.hexists(metricsExchangeKey(prefix), 'crashed-host:1:abc')).toBe(0);
    await x.publish();
    expect(sampleSum(parseProm(await (await y.collect()).metrics()), 'agentq_job_errors_total', { type: 'timeout' })).toBe(2);
    await x.close();
    await y.close();
  });
});
