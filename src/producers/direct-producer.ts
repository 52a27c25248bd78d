import { defaultRegistry } from '../shared/agents/registry.js';
import { configuredModels, parseConfig } from '../shared/core/config.js';
import { fairKickChannel } from '../shared/core/queue-keys.js';
import { createFairSchedulerFromConfig } from '../shared/fair/from-config.js';
import { createAgentQueue, type RetentionOptions } from '../shared/queue/agent-queue.js';
import { createRedis, whenReady, type RedisTarget } from '../shared/infra/redis/connection.js';
import { createJobProducer, type EnqueueMeta, type EnqueuedJob, type InputValidator } from '../shared/queue/job-producer.js';

const LANE_VARIABLES = /^(GEMINI_MODEL_(FAST|PRO)|MODEL_LIMITS|AGENT_ROUTES|ALLOWED_MODELS|ORG_[A-Z_]+|DISPATCH_BUFFER_RATIO|FAIR_LEASE_MS)$/;

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
  /** A Redis URL, or a cluster's seed nodes (`{ cluster: [{ host, port }], password? }`). */
  redisTarget: RedisTarget;
  prefix?: string;
  agents?: InputValidator;
  retention?: Partial<RetentionOptions>;
  /** How long one Redis reply may take before the enqueue fails (default 2000 ms, as `REDIS_COMMAND_TIMEOUT_MS`). */
  commandTimeoutMs?: number;
}) {
  const connection = createRedis(opts.redisTarget, 'api', opts.commandTimeoutMs ? { commandTimeout: opts.commandTimeoutMs } : {});
  await whenReady(connection);
  const prefix = opts.prefix ?? '{agentq}';
  const retention = { ...DEFAULT_RETENTION, ...opts.retention };
  const queue = createAgentQueue({ connection, prefix, retention });
  // Only the variables that shape a job's lane and its allowed models: the host service's other variables are not agentq's to judge.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => LANE_VARIABLES.test(k)));
  const cfg = parseConfig({ ...env, QUEUE_PREFIX: prefix });
  const producer = createJobProducer({
    queue,
    agents: opts.agents ?? defaultRegistry(),
    models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO },
    allowedModels: configuredModels(cfg),
    scheduler: createFairSchedulerFromConfig({ redis: connection, queue, cfg }),
    retention,
    // Workers dispatch with the deployment's limits; this process only asks them to.
    kick: () => connection.spublish(fairKickChannel(prefix), '1'),
  });
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
