import { Job } from 'bullmq';
import type { ModelTier } from '../../shared/agents/define-agent.js';
import type { Logger } from '../../shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../../shared/core/types.js';
import type { FairScheduler } from '../../shared/fair/index.js';
import type { AgentQueue } from '../../shared/queue/agent-queue.js';
import { fairEntryOf } from '../../shared/queue/fair-entry.js';

/**
 * What is left at `now` of the caller's delay (`delayMs`, counted from the enqueue): none once it is over. The
 * enqueue's time by Redis's clock is recorded nowhere (BullMQ's add keeps the producer's; the lane call, which
 * counts a delay on Redis's clock, never came), so the job's age is measured as the grace's is: `enqueuedAt`
 * against this worker's clock. The script counts what is left from Redis's. The fair gate's enqueue carries no
 * delay, and needs none: a job reaching a worker without a slot has waited out its delay on its timer, or was
 * promoted by hand (Bull Board's "run now").
 */
export function leftOfDelay(data: Pick<AgentJobData, 'enqueuedAt' | 'delayMs'>, now: number): { delayMs?: number } {
  const left = data.delayMs ? data.enqueuedAt + data.delayMs - now : 0;
  return left > 0 ? { delayMs: left } : {};
}

/**
 * Lanes parked jobs the dispatcher does not know: a producer that died between BullMQ's add and the
 * dispatcher's lane (the only window the two-step enqueue has); one the caller delayed goes on a timer for what is
 * left of its delay (`leftOfDelay`: laned with none, a flow child asked to wait ran at once). Jobs younger than
 * `graceMs` are left alone: their producer may still be between the two steps. Runs as a maintenance task, a
 * page at a time.
 */
export function createFairOrphanSweep(deps: {
  queue: AgentQueue;
  scheduler: Pick<FairScheduler, 'orphans' | 'enqueue'>;
  agents: { resolve(agent: string, action: string): { action: { model: ModelTier } } };
  models: Record<ModelTier, string>;
  logger: Logger;
  pageSize?: number;
  graceMs?: number;
}) {
  const pageSize = deps.pageSize ?? 500;
  const graceMs = deps.graceMs ?? 10_000;
  return async function sweep(): Promise<{ scanned: number; laned: number }> {
    let offset = 0;
    let scanned = 0;
    let laned = 0;
    for (;;) {
      const page = await deps.scheduler.orphans(offset, pageSize);
      scanned += page.scanned;
      const jobs = await Promise.all(page.ids.map((id) => Job.fromId<AgentJobData, AgentResult>(deps.queue, id)));
      const now = Date.now();
      const due = jobs.filter((j): j is Job<AgentJobData, AgentResult> => Boolean(j?.data?.orgId) && now - j!.data.enqueuedAt >= graceMs);
      if (due.length) {
        // indexAt: the producer that died before laning the job had not indexed it either (its enqueue call does).
        const r = await deps.scheduler.enqueue(due.map((j) => ({ ...fairEntryOf(j, deps.agents, deps.models), indexAt: j.data.enqueuedAt, ...leftOfDelay(j.data, now) })));
        laned += due.length - r.skipped.length;
      }
      if (page.scanned < pageSize) break;
      // Laned jobs stay parked (and in the delayed set) until dispatched, so the offset moves past them too.
      offset += page.scanned;
    }
    if (laned) deps.logger.warn({ laned }, 'fair: parked jobs the dispatcher did not know were laned again');
    return { scanned, laned };
  };
}
