import { defaultRegistry } from '../shared/agents/registry.js';
import { createAgentQueue, type RetentionOptions } from '../shared/queue/agent-queue.js';
import { createRedis, whenReady } from '../shared/infra/redis/connection.js';
import { createJobProducer, type EnqueueMeta, type EnqueuedJob, type InputValidator } from '../shared/queue/job-producer.js';

const DEFAULT_RETENTION: RetentionOptions = {
  attempts: 3,
  keepCompletedCount: 10_000,
  keepCompletedAgeS: 24 * 3600,
  keepFailedCount: 50_000,
  keepFailedAgeS: 14 * 24 * 3600,
};

/**
 * For services that share agentq's Redis: enqueues straight into the BullMQ queue, skipping HTTP, with
 * exactly the validation the API applies (same producer, same agent schemas). The caller is trusted to
 * name the org: this path has no API key.
 */
export async function createDirectProducer(opts: {
  redisUrl: string;
  prefix?: string;
  agents?: InputValidator;
  retention?: Partial<RetentionOptions>;
}) {
  const connection = createRedis(opts.redisUrl, 'api');
  await whenReady(connection);
  const queue = createAgentQueue({ connection, prefix: opts.prefix ?? '{agentq}', retention: { ...DEFAULT_RETENTION, ...opts.retention } });
  const producer = createJobProducer({ queue, agents: opts.agents ?? defaultRegistry() });
  return {
    enqueue: (job: unknown, meta: EnqueueMeta): Promise<EnqueuedJob> => producer.enqueue(job, meta),
    enqueueBulk: (jobs: unknown[], meta: EnqueueMeta): Promise<EnqueuedJob[]> => producer.enqueueBulk({ jobs }, meta),
    queue,
    async close() {
      await queue.close();
      connection.disconnect();
    },
  };
}
