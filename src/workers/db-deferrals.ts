import type { Job } from 'bullmq';
import type { Logger } from '../shared/core/logger.js';
import { databaseDelayMs } from '../shared/core/outcomes.js';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';

type AgentJob = Job<AgentJobData, AgentResult>;

/**
 * How long a job waits out an unavailable database: a deferral in a row for it (its run fetched right after the
 * run that deferred it last) waits twice as long as the one before, from `firstMs` up to `maxMs`.
 *
 * The count rides in the job's data (`dbDeferrals`), which the worker holds from the fetch: a run that meets no
 * outage reads it from memory and writes nothing (no Redis round trip on the normal path, none to clear it). Only
 * a deferral writes it, once, before the job is parked. "In a row" is told by BullMQ's own count of the job's
 * fetches (`attemptsStarted`, one per run, deferred or not): any other run in between (one that failed, a retry,
 * a start the fair gate parked for want of a slot) makes the next deferral a first one again.
 */
export function createDatabaseDeferrals(opts: { firstMs: number; maxMs: number; logger: Logger }) {
  return {
    /** The wait of this run's deferral, and the job's data noting it (written by `note`). */
    next(job: AgentJob): { delayMs: number; deferral: number } {
      const last = job.data.dbDeferrals;
      const deferral = last && last.ats === job.attemptsStarted - 1 ? last.n + 1 : 1;
      return { delayMs: databaseDelayMs(deferral, opts), deferral };
    },

    /**
     * Notes the deferral in the job's data (one command, only on this path). A write that fails costs only the
     * next wait's length (it starts over at `firstMs`): the job is parked all the same.
     */
    async note(job: AgentJob, deferral: number): Promise<void> {
      try {
        await job.updateData({ ...job.data, dbDeferrals: { n: deferral, ats: job.attemptsStarted } });
      } catch (err) {
        opts.logger.warn({ err, jobId: job.id }, 'could not note a database deferral in the job; its next one waits as a first one');
      }
    },
  };
}

export type DatabaseDeferrals = ReturnType<typeof createDatabaseDeferrals>;
