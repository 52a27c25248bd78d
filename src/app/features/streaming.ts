import { jobListRoutes, streamRoutes } from '../../producers/area-routes.js';
import type { FeatureFactory } from '../runtime.js';
import type { Feature, FeatureDeps } from '../feature.js';
import { createRedis } from '../../shared/infra/redis/connection.js';
import { createOrgJobIndexReader } from '../../shared/queue/org-job-index.js';
import { createStreamPublisher } from '../../workers/stream-publisher.js';
import { createStreamReader, type StreamReader } from '../../shared/stream/stream-reader.js';
import { createStreamSlots } from '../../shared/stream/stream-slots.js';
import { DEFAULT_SSE_HEARTBEAT_MS } from '../../shared/core/stream-event.js';

export interface StreamingOptions {
  /** Heartbeat comment interval of SSE responses; also refreshes the stream's lease. Default 15 s. */
  heartbeatMs?: number;
  /** Open SSE streams per org across all API processes; beyond it, 429. Default 100. */
  maxStreamsPerOrg?: number;
  /** Approximate cap on entries per job stream (XADD MAXLEN ~). Default 10 000. */
  maxLen?: number;
  /** How long a job's stream stays readable once the job ended. Default 1 h (then SSE answers from the job). */
  endTtlS?: number;
  /** Expiry of a stream whose job never ends (its worker died for good). Default 24 h. */
  runningTtlS?: number;
  /** Longest single blocking read of the shared reader. Default 5 s (it is woken before, when streams are added). */
  readerBlockMs?: number;
  /** Jobs read from Redis per page of `GET /v1/jobs`. Default 200. */
  listPageSize?: number;
}

/**
 * Streaming results to clients: SSE for job streams, `POST /v1/stream`, the chunked job listing, and the
 * worker side that writes streaming jobs' chunks, progress and outcome to per-job Redis Streams.
 */
export function streamingFeature(opts: StreamingOptions = {}): FeatureFactory {
  return (deps: FeatureDeps): Feature => {
    const { cfg, redis, logger } = deps;
    const log = logger.child({ component: 'stream' });
    const heartbeatMs = opts.heartbeatMs ?? DEFAULT_SSE_HEARTBEAT_MS;
    const maxStreamsPerOrg = opts.maxStreamsPerOrg ?? 100;
    const publisher = createStreamPublisher({
      redis,
      maxLen: opts.maxLen ?? 10_000,
      runningTtlS: opts.runningTtlS ?? 24 * 3600,
      endTtlS: opts.endTtlS ?? 3600,
      logger: log,
    });
    // One blocking reader per queue shard, opened on its first SSE client: an XREAD may only name streams
    // of one cluster slot, and each shard's streams share its slot.
    const readers = new Map<number, StreamReader>();
    const readerOf = (orgId: string) => {
      const { index } = deps.cellOf(orgId);
      let reader = readers.get(index);
      if (!reader) {
        reader = createStreamReader({
          connect: () => createRedis(deps.infra.redisTarget, 'worker'),
          control: redis,
          blockMs: opts.readerBlockMs ?? 5000,
          count: 500,
          logger: log,
        });
        readers.set(index, reader);
      }
      return reader;
    };

    return {
      name: 'streaming',

      routes(app) {
        streamRoutes(app, {
          redis,
          prefixOf: (orgId) => deps.cellOf(orgId).prefix,
          jobs: deps.jobs,
          queueOf: (orgId) => deps.cellOf(orgId).queue,
          producer: deps.producer,
          reader: readerOf,
          heartbeatMs,
          maxStreamsPerOrg,
          enqueueDeadlineMs: cfg.ENQUEUE_DEADLINE_MS,
          openStreams: deps.metrics.sseStreams,
          // A lease outlives two missed heartbeats, so only a dead process's streams lapse.
          slots: createStreamSlots({ redis, prefixOf: (orgId) => deps.cellOf(orgId).prefix, maxPerOrg: maxStreamsPerOrg, leaseMs: heartbeatMs * 3 }),
        });
        // Each org's index and jobs are in its own shard: one index reader per cell, the org picks it.
        const indexes = deps.cells.map(({ queue, prefix: cellPrefix }) => {
          const k = queue.keys;
          return createOrgJobIndexReader({
            redis,
            prefix: cellPrefix,
            keys: { job: k[''], completed: k.completed, failed: k.failed, delayed: k.delayed, prioritized: k.prioritized, waitingChildren: k['waiting-children'], active: k.active },
          });
        });
        jobListRoutes(app, {
          index: { pages: (orgId, filter, pageSize) => indexes[deps.cellOf(orgId).index].pages(orgId, filter, pageSize) },
          agentExists: (name) => deps.registry.get(name) !== undefined,
          pageSize: opts.listPageSize ?? 200,
        });
      },

      onText: (ctx) => publisher.sink(ctx),
      onDelay: (ctx, reason, delayMs) => publisher.delayed(ctx, reason, delayMs),
      onAnswer: (ctx) => publisher.answered(ctx),
      attachWorker: (worker) => publisher.attach(worker),

      async close() {
        await publisher.drain();
        for (const reader of readers.values()) await reader.close();
      },
    };
  };
}
