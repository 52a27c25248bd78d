import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { Job, QueueEvents, Worker } from 'bullmq';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { createAgentQueue, type AgentQueue } from '../src/shared/queue/agent-queue.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { createJobService } from '../src/producers/job-service.js';
import type { AgentJobData } from '../src/shared/core/types.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { until } from './helpers/wait.js';

/**
 * The long poll registers its waiter before its first read and, once the process's events reader is live,
 * skips the state re-check. These pin the race that ordering must win: the job finishes right after the
 * first read saw it running. The poll must answer at once, never wait out `waitMs`.
 */
describe('long poll: a job that finishes right after the first read', () => {
  const prefix = randomPrefix();
  const org = randomOrg();
  const conns = [createRedis(redisUrl(), 'worker'), createRedis(redisUrl(), 'worker'), createRedis(redisUrl(), 'worker')];
  let queue: AgentQueue;
  let worker: Worker;
  const events: QueueEvents[] = [];

  beforeAll(async () => {
    queue = createAgentQueue({ connection: conns[0], prefix, retention: { attempts: 1, keepCompletedCount: 100, keepCompletedAgeS: 3600, keepFailedCount: 100, keepFailedAgeS: 3600 } });
    worker = new Worker(QUEUE.agent, null, { connection: conns[1], prefix, autorun: false });
  });
  afterEach(() => vi.restoreAllMocks());
  afterAll(async () => {
    for (const qe of events) await qe.close();
    await worker.close();
    await queue.close();
    for (const c of conns) c.disconnect();
  });

  /** `autorun: false`: a reader that has not read yet (its first XREAD, at `$`, would miss what came before). */
  function service(opts: { autorun?: boolean } = {}) {
    let qe: QueueEvents | undefined;
    return createJobService({
      queue,
      queueEvents: () => {
        if (!qe) events.push((qe = new QueueEvents(QUEUE.agent, { connection: createRedis(redisUrl(), 'worker'), prefix, autorun: opts.autorun ?? true })));
        return qe;
      },
      redis: conns[2],
      prefix,
      cancelledTtlS: 60,
      scheduler: { why: async () => null, cancel: async () => false, removed: async () => ({ freed: 0, forgotten: 0 }) },
    });
  }

  /** An active job, and a hook that completes it right after the poll's first state read returns. */
  async function activeJobCompletedAfterFirstRead(token: string) {
    await queue.add('job', { orgId: org, agent: 'DealScorer', action: 'pipeline_summary', input: {} } as unknown as AgentJobData);
    const job = (await worker.getNextJob(token))!;
    const realGetState = Job.prototype.getState;
    vi.spyOn(Job.prototype, 'getState').mockImplementationOnce(async function (this: Job) {
      const state = await realGetState.call(this);
      await job.moveToCompleted({ ok: true } as never, token, false);
      return state;
    });
    return job.id!;
  }

  /**
   * The poll's `waitMs`. A poll that waited it out also answers `completed` (the job finished long before): only
   * its time tells the two apart, and half of it does on any machine.
   */
  const WAIT_MS = 20_000;
  const ANSWERED_BEFORE_WAIT_MS = WAIT_MS / 2;

  async function poll(jobs: ReturnType<typeof service>, id: string) {
    const started = Date.now();
    const view = await jobs.wait(org, id, WAIT_MS);
    return { view, ms: Date.now() - started };
  }

  it('on a live events reader: woken by the event, with no state re-check and one read after it', async () => {
    const jobs = service();
    // Make the reader live: it has consumed an entry (its cursor is no longer `$`).
    const warm = await queue.add('warm', { orgId: org, agent: 'DealScorer', action: 'x', input: {} } as unknown as AgentJobData, { delay: 600_000 });
    await jobs.wait(org, warm.id!, 1);
    // Its first XREAD (at `$`) may not have reached Redis yet: nudge until an entry arrives.
    await until('the events reader to be live', async () => jobs.waiters.live() || void (await queue.add('nudge', { orgId: org } as unknown as AgentJobData, { delay: 600_000 })));

    const id = await activeJobCompletedAfterFirstRead('t-live');
    const stateChecks = vi.spyOn(queue, 'getJobState');
    const reads = vi.spyOn(Job, 'fromId');
    const { view, ms } = await poll(jobs, id);
    expect(view.state).toBe('completed');
    expect(view.result).toEqual({ ok: true });
    expect(view.finishedAt).toBeDefined();
    expect(ms).toBeLessThan(ANSWERED_BEFORE_WAIT_MS);
    expect(stateChecks).not.toHaveBeenCalled();
    expect(reads).toHaveBeenCalledTimes(2); // the first read, then one after the event
    expect(jobs.waiters.size()).toEqual({ jobs: 0, waiters: 0 });
  });

  it('on the first poll of a process (reader not live yet): the state check still ends the wait at once', async () => {
    // The reader delivers nothing here, as when its first XREAD starts after the job finished: only the state
    // check can end the wait. (A running reader may deliver the event first, which also ends it at once.)
    const jobs = service({ autorun: false });
    expect(jobs.waiters.live()).toBe(false);
    const id = await activeJobCompletedAfterFirstRead('t-first');
    const stateChecks = vi.spyOn(queue, 'getJobState');
    const { view, ms } = await poll(jobs, id);
    expect(view.state).toBe('completed');
    expect(ms).toBeLessThan(ANSWERED_BEFORE_WAIT_MS);
    expect(stateChecks).toHaveBeenCalledTimes(1);
    expect(jobs.waiters.size()).toEqual({ jobs: 0, waiters: 0 });
  });

  it('on the first poll of a process: a job that finishes after the state check still ends the wait (checked again until the reader is live)', async () => {
    // As on a cluster, where the reader's first XREAD (at `$`) comes long after its connection is ready: the
    // job's ending event is never delivered, and the one state check right after registering sees it running.
    const jobs = service({ autorun: false });
    await queue.add('job', { orgId: org, agent: 'DealScorer', action: 'pipeline_summary', input: {} } as unknown as AgentJobData);
    const job = (await worker.getNextJob('t-later'))!;
    const realGetJobState = queue.getJobState.bind(queue);
    const stateChecks = vi.spyOn(queue, 'getJobState').mockImplementationOnce(async (jobId: string) => {
      const state = await realGetJobState(jobId);
      await job.moveToCompleted({ ok: true } as never, 't-later', false);
      return state;
    });
    const { view, ms } = await poll(jobs, job.id!);
    expect(view.state).toBe('completed');
    // Without the re-check the poll waits out its WAIT_MS.
    expect(ms).toBeLessThan(ANSWERED_BEFORE_WAIT_MS);
    await expect(stateChecks.mock.results[0].value).resolves.toBe('active');
    expect(stateChecks.mock.calls.length).toBeGreaterThanOrEqual(2);
    expect(jobs.waiters.size()).toEqual({ jobs: 0, waiters: 0 });
  });
});
