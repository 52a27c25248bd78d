import { Worker, type Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { QUEUE } from '../../src/shared/core/queue-names.js';

/**
 * Another worker's stalled check, run on demand: `stall(queue, id)` does what BullMQ's check does once a job's lock
 * lapsed (the job goes back to the wait list, counted as stalled), without waiting for a lock to lapse.
 * `maxStalledCount`: the checking worker's limit (BullMQ's default 1); past it the job goes back marked to fail,
 * and the worker that fetches it next fails it ('job stalled more than allowable limit') without its processor.
 */
export function createStalledCheck(redisUrl: string, prefix: string, opts: { maxStalledCount?: number } = {}) {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const checker = new Worker(QUEUE.agent, null, { connection, prefix, autorun: false, ...(opts.maxStalledCount !== undefined ? { maxStalledCount: opts.maxStalledCount } : {}) });
  return {
    async stall(queue: Queue, id: string): Promise<void> {
      await connection.del(`${queue.toKey(id)}:lock`);
      await connection.sadd(queue.toKey('stalled'), id);
      await connection.del(queue.toKey('stalled-check'));
      await (checker as unknown as { moveStalledJobsToWait(): Promise<void> }).moveStalledJobsToWait();
    },
    async close(): Promise<void> {
      await checker.close(true);
      connection.disconnect();
    },
  };
}
