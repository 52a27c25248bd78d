import { Worker, type Queue } from 'bullmq';
import { logConnectionErrors, type RedisClient } from '../../shared/infra/redis/connection.js';
import type { Logger } from '../../shared/core/logger.js';
import { QUEUE } from '../../shared/core/queue-names.js';
import { IDLE_DRAIN_DELAY_S } from '../worker-options.js';
import { closeAfterGrace, createInFlight } from '../in-flight.js';

export interface MaintenanceTask {
  /** Job scheduler id and job name. */
  name: string;
  everyMs: number;
  run: () => Promise<unknown>;
}

/**
 * Periodic housekeeping as BullMQ job schedulers on the maintenance queue: whichever worker process is
 * free takes each run, so N worker processes still run a task once per interval. Upserting the same
 * scheduler id from every process is idempotent (the interval of the last upsert wins).
 */
export function createMaintenance(deps: { queue: Queue; connection: RedisClient; prefix: string; tasks: MaintenanceTask[]; logger: Logger }) {
  let worker: Worker | undefined;
  const byName = new Map(deps.tasks.map((t) => [t.name, t]));
  const inFlight = createInFlight();

  return {
    async start(): Promise<void> {
      for (const t of deps.tasks) {
        await deps.queue.upsertJobScheduler(t.name, { every: t.everyMs }, { name: t.name, opts: { removeOnComplete: 100, removeOnFail: 100 } });
      }
      worker = new Worker(
        QUEUE.maintenance,
        (job) =>
          inFlight.run(job, async () => {
            const task = byName.get(job.name);
            if (!task) throw new Error(`no maintenance task named "${job.name}" in this process`);
            return task.run();
          }),
        { connection: deps.connection, prefix: deps.prefix, concurrency: 1, drainDelay: IDLE_DRAIN_DELAY_S },
      );
      inFlight.attach(worker);
      worker.on('failed', (job, err) => deps.logger.warn({ task: job?.name, err: err.message }, 'maintenance task failed'));
      logConnectionErrors(worker, deps.logger, 'maintenance worker', { msg: 'maintenance worker error' });
      await worker.waitUntilReady();
    },

    /** As the agent worker closes: no new run, the one in hand within `graceMs`, then a forced close (in-flight.ts). */
    async close(graceMs: number): Promise<void> {
      if (worker) await closeAfterGrace(worker, inFlight, graceMs, deps.logger);
    },
  };
}
