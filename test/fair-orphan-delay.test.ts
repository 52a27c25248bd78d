import { FlowProducer } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import type { Logger } from '../src/shared/core/logger.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { createAgentQueue } from '../src/shared/queue/agent-queue.js';
import { createJobProducer } from '../src/shared/queue/job-producer.js';
import { createFairOrphanSweep } from '../src/workers/ops/fair-orphans.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { redisNow, testScheduler } from './helpers/fair.js';

/**
 * A flow's children are added by BullMQ's FlowProducer (parent links) and laned by the dispatcher in a second
 * call: a producer that dies between the two leaves them parked and unknown to the dispatcher, and the orphan
 * sweep lanes them. A child the caller asked to delay keeps what is left of its delay, counted from its enqueue:
 * laned with none, it ran at once.
 */

const FLASH = 'gemini-2.5-flash';
const models = { fast: FLASH, pro: 'gemini-2.5-pro' };
const retention = { attempts: 3, keepCompletedCount: 100, keepCompletedAgeS: 3600, keepFailedCount: 100, keepFailedAgeS: 3600 };
const logger = { warn: () => {}, debug: () => {}, info: () => {} } as unknown as Logger;

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('the orphan sweep and a caller\'s delay', () => {
  it('a delayed flow child whose producer died before laning it is laned on a timer for the rest of its delay, not at once', async () => {
    const prefix = randomPrefix();
    const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const queue = createAgentQueue({ connection: redis, prefix, retention });
    const flows = new FlowProducer({ connection: redis, prefix });
    cleanups.push(() => redis.quit());
    cleanups.push(() => queue.close());
    cleanups.push(() => flows.close());
    const scheduler = testScheduler(redis, queue as never, prefix);
    // The producer's process dies after BullMQ's add of the flow, before its lane call reaches Redis.
    const dying = createJobProducer({
      queue,
      agents: defaultRegistry(),
      models,
      allowedModels: [models.fast, models.pro],
      scheduler: { enqueue: () => Promise.reject(new Error('producer died between the add and the lane')), why: () => Promise.resolve(null) },
      retention,
      flows,
    });
    const org = randomOrg();
    const meta = { orgId: org };
    const task = (startupId: string, delayMs?: number) => dying.prepare({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId }, options: delayMs ? { delayMs } : {} }, meta);
    // Enqueued 30 s ago (by the producer's clock, which in this test is Redis's): one child's 60 s delay has
    // 30 s to go, another's 10 s delay is over, a third asked for none.
    const agoMs = 30_000;
    const realNow = Date.now.bind(Date);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => realNow() - agoMs);
    let pending, elapsed, undelayed;
    try {
      [pending, elapsed, undelayed] = [task('pending', 60_000), task('elapsed', 10_000), task('undelayed')];
      const parent = { name: 'parallel', queueName: QUEUE.flows, data: { kind: 'parallel', orgId: org, children: [] }, opts: { jobId: `flow-${org}` } };
      await expect(dying.enqueueFlow(parent, [pending, elapsed, undelayed], meta)).rejects.toThrow('producer died');
    } finally {
      spy.mockRestore();
    }
    const ids = [pending, elapsed, undelayed].map((p) => p.opts.jobId);
    expect((await scheduler.orphans(0, 100)).ids.sort()).toEqual([...ids].sort());

    const sweep = createFairOrphanSweep({ queue, scheduler, agents: defaultRegistry(), models, logger });
    const before = await redisNow(redis);
    expect(await sweep()).toMatchObject({ laned: 3 });
    const after = await redisNow(redis);
    const stage = (id: string) => redis.hget(`${scheduler.keys.named.jobPrefix}${id}`, 'st');

    // The pending child waits on its timer until its enqueue time plus its delay: 30 s from now, not 60 s.
    expect(await stage(pending.opts.jobId)).toBe('timer');
    const due = Number(await redis.zscore(scheduler.keys.named.timers, pending.opts.jobId));
    expect(due).toBeGreaterThanOrEqual(before + 60_000 - agoMs - 1_000);
    expect(due).toBeLessThanOrEqual(after + 60_000 - agoMs + 1_000);
    expect(await scheduler.why(pending.opts.jobId)).toMatchObject({ reason: 'delayed' });
    // The two others are laned and dispatched now; the pending one is not.
    expect(await stage(elapsed.opts.jobId)).toBe('lease');
    expect(await stage(undelayed.opts.jobId)).toBe('lease');
    expect((await queue.getWaiting()).map((j) => j.id).sort()).toEqual([elapsed.opts.jobId, undelayed.opts.jobId].sort());
    expect(await queue.getJobState(pending.opts.jobId)).toBe('delayed');
    expect((await scheduler.orphans(0, 100)).ids).toEqual([]);
  });
});
