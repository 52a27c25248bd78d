import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { UNTHROTTLED } from './helpers/faults.js';
import { until } from './helpers/wait.js';
import { markedJob, openQueue, postBulk } from './helpers/fair.js';
import { startStack, type Stack } from './helpers/stack.js';
import type { Queue } from 'bullmq';
import { SMALL_WORKER_MAX_ASK } from '../src/shared/fair/buffer-ask.js';

/**
 * A worker's ask for BullMQ's wait list (fair/buffer-ask.ts) reaches the dispatcher: the fixed share while it is
 * idle, its cap once it finishes jobs fast enough (its concurrency, or SMALL_WORKER_MAX_ASK for a worker of lower
 * concurrency, as this one). DISPATCH_BUFFER_MS is a second here, so a few dozen jobs a second already ask for the
 * cap, on a busy machine too.
 */
describe('dispatch buffer sized by the workers', () => {
  let s: Stack;
  let queue: Queue;
  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, WORKER_CONCURRENCY: '10', DISPATCH_BUFFER_MS: '1000', JOB_ATTEMPTS: '1' }, { worker: true });
    queue = openQueue(s);
  }, 90_000);
  afterAll(async () => {
    await queue?.close();
    await s?.close();
  });

  it("registers the fixed share, then the worker's rate-sized ask, with the dispatcher", async () => {
    const scheduler = s.runtime.deps.cells[0].scheduler;
    const asks = async () => (await s.runtime.deps.redis.hvals(scheduler.keys.named.workerConc)).map(Number);
    // Idle: ratio 0.5 x concurrency 10.
    await until('the worker registered', async () => (await asks()).length === 1);
    expect(await asks()).toEqual([5]);
    const org = `org_buf_${randomUUID().slice(0, 6)}`;
    const key = await s.newKey(org);
    // Each call answers after 50 ms: 600 jobs at concurrency 10 take three seconds or more, many rate windows.
    const tag = randomUUID().slice(0, 8);
    s.emulator.script({ latencyMs: 50, match: { promptIncludes: `buf${tag}-` }, times: -1 });
    const ids = await postBulk(s, key, Array.from({ length: 600 }, (_, i) => markedJob(`buf${tag}-${i}`)));
    // The registered ask, sampled until the jobs are done: the cap while they run fast enough (back to the fixed
    // share once the worker is idle again, so waiting for the value alone could miss it on a slow machine).
    let highest = 0;
    await until(
      'all jobs completed',
      async () => {
        highest = Math.max(highest, ...(await asks()));
        return (await queue.getJobCountByTypes('completed')) >= ids.length;
      },
      60_000,
    );
    expect(highest).toBe(SMALL_WORKER_MAX_ASK);
  }, 90_000);
});
