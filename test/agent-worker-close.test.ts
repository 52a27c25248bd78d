import { DelayedError, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createAgentWorker, type AgentWorkerOptions } from '../src/workers/agent-worker.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { AgentJobData } from '../src/shared/core/types.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

describe('agent worker shutdown', () => {
  const connections: Redis[] = [];
  const redis = () => {
    const r = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    connections.push(r);
    return r;
  };
  afterAll(() => connections.forEach((c) => c.disconnect()));

  /** A queue on a fresh prefix, the warnings its workers log, and a worker (concurrency 1) running `processor`. */
  function setup(o: { lockDurationMs?: number } = {}) {
    const prefix = randomPrefix();
    const queue = new Queue<AgentJobData>('agent-jobs', { connection: redis(), prefix });
    const warnings: Array<Record<string, unknown>> = [];
    const logger = createLogger({ level: 'silent' });
    logger.warn = ((obj: Record<string, unknown>) => void warnings.push(obj)) as typeof logger.warn;
    const workerOf = (processor: AgentWorkerOptions['processor']) =>
      createAgentWorker({
        connection: redis(),
        subscriber: redis(),
        prefix,
        processor,
        concurrency: 1,
        lockDurationMs: o.lockDurationMs ?? 30_000,
        stalledIntervalMs: 30_000,
        backoff: { baseMs: 10, maxMs: 10 },
        logger,
      });
    return { queue, warnings, workerOf };
  }

  it('waits for a running job within the grace period, then closes by force without waiting for it', async () => {
    const { queue, warnings, workerOf: running } = setup();
    let release!: () => void;
    const started: string[] = [];
    const workerOf = (body: () => Promise<void>) =>
      running(async (job) => {
        started.push(job.data.agent);
        await body();
        return { data: {}, model: 'm' } as never;
      });
    // This job ends when the test says so.
    const worker = workerOf(() => new Promise<void>((resolve) => (release = resolve)));
    await worker.ready();
    const quick = await queue.add('j', { orgId: 'o', agent: 'quick', action: 'a', input: {} } as AgentJobData);
    await vi.waitFor(() => expect(started).toEqual(['quick']), POLL);
    // BullMQ keeps no AbortController for the job (its processor takes two parameters): nothing for its
    // cancelJob to abort. The worker's own Cancellation serves cancels (test/cancel-active.test.ts).
    expect(worker.worker.cancelJob(quick.id!)).toBe(false);
    // Within the grace period: the close waits for the job and reports nothing.
    const closing = worker.close(60_000);
    release();
    await closing;
    expect(warnings).toEqual([]);
    expect(await queue.getJobCounts('completed', 'active')).toEqual({ completed: 1, active: 0 });

    // This one never ends.
    const stuck = workerOf(() => new Promise<void>(() => undefined));
    await stuck.ready();
    await queue.add('j', { orgId: 'o', agent: 'stuck', action: 'a', input: {} } as AgentJobData);
    await vi.waitFor(() => expect(started).toEqual(['quick', 'stuck']), POLL);
    // Past the grace period the close returns although the job never ends (its lock is left to lapse).
    await stuck.close(100);
    expect(warnings).toEqual([expect.objectContaining({ graceMs: 100, running: 1 })]);
    expect(await queue.getJobCounts('active')).toEqual({ active: 1 });
    expect(stuck.worker.closing).toBeTruthy();
    await queue.obliterate({ force: true });
    await queue.close();
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('does not wait at shutdown for a job its processor moved to delayed (BullMQ emits no completed or failed for it)', async () => {
    const { queue, warnings, workerOf } = setup();
    // What a rate limit or the fair gate's park does: the job goes back to Redis, delayed, and the attempt ends.
    const worker = workerOf(async (job, token) => {
      await job.moveToDelayed(Date.now() + 60_000, token);
      throw new DelayedError();
    });
    await worker.ready();
    await queue.add('j', { orgId: 'o', agent: 'limited', action: 'a', input: {} } as AgentJobData);
    await vi.waitFor(async () => expect(await queue.getJobCounts('delayed', 'active')).toEqual({ delayed: 1, active: 0 }), POLL);
    // Nothing runs: the close finds nothing to wait for (a job still counted would hold it for the whole grace).
    await worker.close(1_000);
    expect(warnings).toEqual([]);
    await queue.obliterate({ force: true });
    await queue.close();
  });
  it('does not wait at shutdown for a job whose lock it lost (BullMQ refuses its outcome and emits no completed or failed)', async () => {
    const { queue, warnings, workerOf } = setup({ lockDurationMs: 1_000 });
    let release!: () => void;
    let started = false;
    const worker = workerOf(async () => {
      started = true;
      await new Promise<void>((resolve) => (release = resolve));
      return { data: {}, model: 'm' } as never;
    });
    const renewalFailed: string[][] = [];
    worker.worker.on('lockRenewalFailed', (ids) => renewalFailed.push(ids));
    let errors = 0;
    worker.worker.on('error', () => errors++);
    await worker.ready();
    const job = await queue.add('j', { orgId: 'o', agent: 'held', action: 'a', input: {} } as AgentJobData);
    await vi.waitFor(() => expect(started).toBe(true), POLL);
    // Another worker's stalled check would do this once the lock lapsed: the lock is gone, the renewal fails.
    await redis().del(`${queue.toKey(job.id!)}:lock`);
    await vi.waitFor(() => expect(renewalFailed).toEqual([[job.id]]), POLL);
    const before = errors;
    release();
    // BullMQ refuses the completion (the lock is missing): an error, the job still active, no completed or failed.
    await vi.waitFor(() => expect(errors).toBeGreaterThan(before), POLL);
    expect(await queue.getJobState(job.id!)).toBe('active');
    await worker.close(1_000);
    expect(warnings.filter((w) => 'graceMs' in w)).toEqual([]);
    await queue.obliterate({ force: true });
    await queue.close();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));
});
