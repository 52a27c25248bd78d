import { Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobService } from '../src/producers/job-service.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { startStack, type Stack } from './helpers/stack.js';

/**
 * DELETE of a job a worker fetches while the cancel runs: between the API reading the job's state
 * ("waiting") and removing it. The worker's claim in that window must read the cancel, or it would park
 * the job again for its lane (its slot already taken back) and run it later as if never cancelled.
 */
describe('cancelling a job a worker fetches meanwhile', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('the claim in the window reads the cancel, and the DELETE answers "cancelling", not an error', async () => {
    const { redis, cells: [{ queue, scheduler }] } = s.runtime.deps;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Race Co', industry: 'retail' } } } });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    const connection = new Redis(s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection, prefix: s.cfg.QUEUE_PREFIX, autorun: false });
    let claimInWindow: Awaited<ReturnType<typeof scheduler.claim>> | undefined;
    const jobs = createJobService({
      queue,
      queueEvents: () => {
        throw new Error('not used');
      },
      redis,
      prefix: s.cfg.QUEUE_PREFIX,
      cancelledTtlS: 60,
      scheduler: {
        why: (jobId) => scheduler.why(jobId),
        // The window: the job leaves its lane, then a worker fetches it (locked: it can no longer be removed)
        // and claims it before the API goes on.
        async cancel(jobId) {
          const done = await scheduler.cancel(jobId);
          await (await Job.fromId(queue, jobId))!.promote();
          const fetched = await worker.getNextJob('race-token');
          expect(fetched?.id).toBe(jobId);
          claimInWindow = await scheduler.claim(jobId);
          return done;
        },
      },
    });
    const view = await jobs.cancel(s.orgId, id);
    expect(view.state).toBe('cancelling');
    // Its slot was taken back (not held), and the cancel is read: the worker fails it, never parks it again.
    expect(claimInWindow).toMatchObject({ held: false, cancelled: true });
    expect(await (await Job.fromId(queue, id))!.getState()).toBe('active');
    await worker.close(true);
    connection.disconnect();
  });
});
