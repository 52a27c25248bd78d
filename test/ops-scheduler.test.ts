import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DLQ_REPROCESS_TASK, FAIR_ORPHANS_TASK, SEMANTIC_CACHE_SWEEP_TASK } from '../src/app/features/ops.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { startStack, type Stack } from './helpers/stack.js';
import { marker, riskJob } from './helpers/ops.js';

describe('DLQ reprocessing on the maintenance job scheduler', () => {
  let s: Stack;
  let maintenance: Queue;

  beforeAll(async () => {
    s = await startStack({ DLQ_REPROCESS_EVERY_MS: '1000', DLQ_MAX_RETRIES: '1', JOB_ATTEMPTS: '1', BREAKER_FAILURE_THRESHOLD: '1000' }, { worker: true });
    maintenance = new Queue(QUEUE.maintenance, { connection: s.runtime.deps.redis, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    await maintenance?.close();
    await s?.close();
  });

  const enqueue = async (payload: Record<string, unknown>) => (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json().id as string;
  const state = (id: string) => s.runtime.queue.getJobState(id);
  const retries = async (id: string) => Number((await s.runtime.deps.redis.hget(`${s.cfg.QUEUE_PREFIX}:agentq:dlq:${id}`, 'retries')) ?? 0);

  it('registers the DLQ scheduler at DLQ_REPROCESS_EVERY_MS, the fair orphan sweep every minute and the semantic-cache sweep', async () => {
    const schedulers = await maintenance.getJobSchedulers();
    expect(schedulers.map((j) => j.key).sort()).toEqual([DLQ_REPROCESS_TASK, FAIR_ORPHANS_TASK, SEMANTIC_CACHE_SWEEP_TASK].sort());
    expect(schedulers.find((j) => j.key === SEMANTIC_CACHE_SWEEP_TASK)!.every).toBe(s.cfg.SEMANTIC_CACHE_SWEEP_EVERY_MS);
    expect(schedulers.find((j) => j.key === DLQ_REPROCESS_TASK)!.every).toBe(1000);
    expect(schedulers.find((j) => j.key === FAIR_ORPHANS_TASK)!.every).toBe(60_000);
  });

  it('retries a retryable entry by itself and leaves poison alone', async () => {
    const outage = marker();
    const bad = marker();
    s.emulator.script([
      { status: 503, match: { promptIncludes: outage } },
      { status: 400, match: { promptIncludes: bad } },
    ]);
    const retryable = await enqueue(riskJob(outage));
    const poison = await enqueue(riskJob(bad));
    await vi.waitFor(async () => expect(await state(poison), 'poison job to fail').toBe('failed'), { timeout: 20_000, interval: 50 });
    // The outage is over (its fault fired once), so the scheduled retry succeeds.
    await vi.waitFor(async () => expect(await state(retryable), 'scheduled retry to complete').toBe('completed'), { timeout: 40_000, interval: 50 });
    expect(await retries(retryable)).toBe(1);

    // Two more passes after the poison entry failed, and it is still untouched.
    const passes = await maintenance.getCompletedCount();
    await vi.waitFor(async () => expect(await maintenance.getCompletedCount(), 'two more reprocessing passes').toBeGreaterThanOrEqual(passes + 2), { timeout: 40_000, interval: 200 });
    expect(await state(poison)).toBe('failed');
    expect(await retries(poison)).toBe(0);
  }, 90_000);
});
