import type { Feature, FeatureDeps } from '../feature.js';
import type { FeatureFactory } from '../runtime.js';
import { createBatchCollector, type BatchPoint } from '../../workers/ops/batch-collector.js';
import { createRunAppender } from '../../shared/infra/db/run-stream.js';
import { usageStreamKey } from '../../shared/core/queue-keys.js';

export interface BatchFeatureOptions {
  /** Fault tests only (test/fixtures/batch-worker-process.ts): runs at each point of a collector run. */
  at?: (point: BatchPoint) => void | Promise<void>;
}

/**
 * The batch tier's collector in worker processes: every BATCH_POLL_MS one run (a Redis lock keeps it to one
 * process at a time) submits due requests per model as one Gemini batch and hands finished batches' answers
 * to their jobs. Without Gemini Batch Mode (no `batches`), batch-tier jobs run on the standard tier.
 */
export function createBatchFeature(options: BatchFeatureOptions = {}): FeatureFactory {
  return (deps) => batchFeatureOf(deps, options);
}

export const batchFeature: FeatureFactory = createBatchFeature();

function batchFeatureOf(deps: FeatureDeps, options: BatchFeatureOptions): Feature {
  const { cfg } = deps;
  const log = deps.logger.child({ component: 'batch' });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;

  return {
    name: 'batch',
    async startBackground() {
      const batches = deps.batches;
      if (!batches) return;
      // One collector per queue shard (app/cell.ts): each shard's pending requests, batches and lock.
      const collectors = deps.cells.map((cell) => {
        let woke = false;
        const collector = createBatchCollector({
          store: cell.batchStore,
          batches,
          // Back in its lane now, if it still waits (not cancelled, not already run by its own fallback timer); a
          // job the dispatcher does not know (no fair dispatch) is promoted by BullMQ.
          wake: async (id) => {
            if ((await cell.queue.getJobState(id)) !== 'delayed') return;
            woke = true;
            if (await cell.scheduler.repark(id, 0, 'batch')) return;
            await (await cell.queue.getJob(id))?.promote().catch(() => undefined);
          },
          // An answer a job no longer takes is still its usage: onto the shard's usage stream, as an attempt's row.
          record: createRunAppender({ redis: deps.redis, key: usageStreamKey(cell.prefix) }).record,
          jobOf: async (id) => {
            const job = await cell.queue.getJob(id);
            return job ? { state: await job.getState(), timestamp: job.timestamp } : undefined;
          },
          maxRequests: cfg.BATCH_MAX_REQUESTS,
          maxAgeMs: cfg.BATCH_MAX_AGE_MS,
          deadlineMarginMs: cfg.BATCH_DEADLINE_MARGIN_MS,
          displayPrefix: `agentq-${cell.prefix.replace(/[^a-zA-Z0-9-]/g, '')}`,
          // The collector binds its own component ('batch-collector'): a child of `log` carried two.
          logger: deps.logger,
          ...(options.at ? { at: options.at } : {}),
        });
        return async () => {
          woke = false;
          await collector.run(Math.max(cfg.BATCH_LOCK_MS, cfg.BATCH_POLL_MS * 4));
          // The cell's scheduler is not this process's dispatch loop's: a wake-up this dispatch leaves goes to the
          // loops (the scheduler's kick), not taken here and dropped.
          if (woke) await cell.scheduler.dispatch();
        };
      });
      const tick = async () => {
        for (const run of collectors) await run();
      };
      timer = setInterval(() => {
        running ??= tick()
          .catch((err: unknown) => log.warn({ err }, 'batch collector run failed; retried next tick'))
          .finally(() => (running = undefined));
      }, cfg.BATCH_POLL_MS);
      timer.unref();
    },
    async close() {
      if (timer) clearInterval(timer);
      await running;
    },
  };
}
