import { expect } from 'vitest';
import { parkedJobOptions } from '../../src/shared/fair/index.js';
import type { Stack } from './stack.js';
import { until } from './wait.js';

/**
 * A flow's child removed (another removal, a cancel) and a new job of `org` made under its id (a pipeline step's id
 * is its run's and step's), which is no child of the flow, then dispatched by `dispatch`: it holds a slot and its
 * dispatch's charge. Returns the new job's creation time.
 */
export async function replaceChild(s: Stack, org: string, id: string, dispatch: () => Promise<unknown>): Promise<number> {
  const { scheduler, queue } = s.runtime.deps.cells[0];
  const old = (await queue.getJob(id))!;
  await scheduler.cancel(id);
  await queue.remove(id);
  await scheduler.removed([id]);
  await until('a clock past the child read', () => Date.now() > old.timestamp);
  await queue.add(old.name, old.data, parkedJobOptions(id));
  await scheduler.enqueue([{ jobId: id, orgId: org, model: 'gemini-2.5-flash', estTokens: 100 }], { dispatch: false });
  await dispatch();
  expect(await queue.getJobState(id)).toBe('waiting');
  expect(await s.runtime.deps.redis.zrange(scheduler.keys.leases, 0, -1)).toContain(id);
  return (await queue.getJob(id))!.timestamp;
}
