import { defaultRegistry } from '../shared/agents/registry.js';
import { configuredModels, isGiven, parseConfig } from '../shared/core/config.js';
import { fairKickChannel } from '../shared/core/queue-keys.js';
import { createFairSchedulerFromConfig } from '../shared/fair/from-config.js';
import { createAgentQueue, retentionOf, type RetentionOptions } from '../shared/queue/agent-queue.js';
import { queueShards } from '../shared/core/queue-shards.js';
import { followShardLayout } from '../shared/queue/shard-layout.js';
import { createRedis, logConnectionErrors, whenReady, type RedisTarget } from '../shared/infra/redis/connection.js';
import type { Logger } from '../shared/core/logger.js';
import { firstBodyFault } from './body-faults.js';
import { ValidationError } from '../shared/core/errors.js';
import { createJobProducer, type EnqueueMeta, type EnqueuedJob, type InputValidator } from '../shared/queue/job-producer.js';

/**
 * The deployment's variables this process reads: what shapes a job's lane, its shard, its allowed models, and the
 * job options every job carries (its attempts, how long it is kept, how long its idempotency key is kept).
 */
const READ_VARIABLES =
  /^(GEMINI_MODEL_(FAST|PRO)|MODEL_LIMITS|AGENT_ROUTES|ALLOWED_MODELS|ORG_[A-Z_]+|DISPATCH_BUFFER_RATIO|FAIR_LEASE_MS|QUEUE_SHARDS|IDEMPOTENCY_TTL_S|JOB_ATTEMPTS|KEEP_(COMPLETED|FAILED)_(COUNT|AGE_S))$/;

/**
 * What the API refuses in a body (body-faults.ts) and what JSON has no form for (NaN, a Map, a cycle...): an
 * in-process value is refused before any Redis call, with the path the API would name (`jobs.1.input...` in a bulk).
 */
function storableOrThrow(value: unknown): void {
  const fault = firstBodyFault(value, { values: true });
  if (fault) throw new ValidationError('invalid job request', [fault]);
}

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
  /**
   * The job options (attempts, retention, the key's record); each one given here wins over the environment's variable
   * (JOB_ATTEMPTS, KEEP_COMPLETED_COUNT / _AGE_S, KEEP_FAILED_COUNT / _AGE_S, IDEMPOTENCY_TTL_S).
   */
  retention?: Partial<RetentionOptions>;
  /**
   * Queue shards, as the deployment's `QUEUE_SHARDS` (default: that variable here, else the count the deployment
   * recorded in Redis). One that differs from the recorded count is refused (ConfigError naming QUEUE_SHARDS).
   */
  shards?: number;
  /** How long one Redis reply may take before the enqueue fails (default 2000 ms, as `REDIS_COMMAND_TIMEOUT_MS`). */
  commandTimeoutMs?: number;
  /**
   * Where its queues' Redis connection errors are logged (rate-limited, logConnectionErrors). Without one they are
   * dropped, never printed: the enqueue they fail rejects.
   */
  logger?: Logger;
}) {
  const prefix = opts.prefix ?? '{agentq}';
  // Only the variables that shape a job's lane, its shard, its allowed models and its job options: the host
  // service's other variables are not agentq's to judge. Checked before connecting: a bad value is a ConfigError naming it.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => READ_VARIABLES.test(k)));
  const read = parseConfig({ ...env, QUEUE_PREFIX: prefix });
  // The job options the API gives its jobs (`retentionOf`, as runtime.ts), from the same variables: until 2026-12-07
  // the attempts and retention were the config's defaults here whatever the deployment set (the key's record until
  // 2026-12-06), so a job enqueued directly retried and was kept differently from the same job sent to the API.
  const retention: RetentionOptions = { ...retentionOf(read), ...opts.retention };
  const given = opts.shards ?? (isGiven(env.QUEUE_SHARDS) ? read.QUEUE_SHARDS : undefined);
  const connection = createRedis(opts.redisTarget, 'api', opts.commandTimeoutMs ? { commandTimeout: opts.commandTimeoutMs } : {});
  let inForce: number;
  try {
    await whenReady(connection);
    inForce = await followShardLayout({ redis: connection, prefix, shards: given });
  } catch (err) {
    connection.disconnect();
    throw err;
  }
  const cfg = parseConfig({ ...env, QUEUE_PREFIX: prefix, QUEUE_SHARDS: String(inForce) });
  // Each org's jobs go to its queue shard, as the API would put them (same prefix, the layout recorded in Redis).
  const shards = queueShards(prefix, cfg.QUEUE_SHARDS);
  const cells = shards.prefixes.map((shardPrefix) => {
    const queue = createAgentQueue({ connection, prefix: shardPrefix, retention });
    logConnectionErrors(queue, opts.logger, 'agent queue (direct producer)');
    const producer = createJobProducer({
      queue,
      agents: opts.agents ?? defaultRegistry(),
      models: { fast: cfg.GEMINI_MODEL_FAST, pro: cfg.GEMINI_MODEL_PRO },
      allowedModels: configuredModels(cfg),
      scheduler: createFairSchedulerFromConfig({ redis: connection, queue, cfg, prefix: shardPrefix, shards: cfg.QUEUE_SHARDS }),
      retention,
      // Workers dispatch with the deployment's limits; this process only asks them to.
      dispatch: false,
      kick: () => connection.spublish(fairKickChannel(shardPrefix), '1'),
    });
    return { queue, producer };
  });
  const cellOf = (orgId: string) => cells[shards.ofOrg(orgId)];
  return {
    async enqueue(job: unknown, meta: EnqueueMeta): Promise<EnqueuedJob> {
      storableOrThrow(job);
      return cellOf(meta.orgId).producer.enqueue(job, meta);
    },
    async enqueueBulk(jobs: unknown[], meta: EnqueueMeta): Promise<EnqueuedJob[]> {
      storableOrThrow({ jobs });
      return cellOf(meta.orgId).producer.enqueueBulk({ jobs }, meta);
    },
    /** The agent queue of the first shard (with one shard, the queue); `queueOf` gives an org's. */
    queue: cells[0].queue,
    queueOf: (orgId: string) => cellOf(orgId).queue,
    async close() {
      for (const c of cells) await c.queue.close();
      connection.disconnect();
    },
  };
}
