import type { Logger } from '../../shared/core/logger.js';
import type { DlqCursor, DlqEntry, DlqStore } from '../../shared/ops/dlq-store.js';
import type { DlqService } from '../../shared/ops/dlq-service.js';

export interface ReprocessOutcome {
  retried: number;
  skippedBreakerOpen: number;
  /** Flow children and pipeline steps whose flow or run has finished: their result would never be read. */
  skippedParentFinished: number;
  /** Claimed by a concurrent run or moved meanwhile. */
  lost: number;
}

/**
 * One scheduled pass over the DLQ: retries the oldest `retryable` entries whose DLQ retry count is under
 * `maxRetries`, at most `batch` of them. Poison and cancelled entries are never touched; entries whose
 * model is behind an open circuit breaker are skipped (and stay eligible for the next pass), and so are flow
 * children and pipeline steps whose flow or run has finished (refused by the claim, before any model call). Safe to run
 * concurrently: each retry is claimed atomically on (job, retry count).
 */
export function createDlqReprocessor(deps: {
  store: DlqStore;
  service: Pick<DlqService, 'retryItem'>;
  /** True when every model the entry could run on is behind an open breaker. */
  blocked: (entry: DlqEntry) => Promise<boolean>;
  maxRetries: number;
  batch: number;
  logger: Logger;
}) {
  const eligible = (e: DlqEntry) => e.class === 'retryable' && e.dlqRetries < deps.maxRetries;

  return {
    async run(): Promise<ReprocessOutcome> {
      const out: ReprocessOutcome = { retried: 0, skippedBreakerOpen: 0, skippedParentFinished: 0, lost: 0 };
      const blockedByKey = new Map<string, Promise<boolean>>();
      let after: DlqCursor | undefined;
      while (out.retried < deps.batch) {
        const { items, next } = await deps.store.scan({ after, filter: eligible, limit: deps.batch - out.retried });
        for (const item of items) {
          const key = `${item.entry.agent}\0${item.entry.action}\0${item.entry.model ?? ''}`;
          if (!blockedByKey.has(key)) blockedByKey.set(key, deps.blocked(item.entry));
          if (await blockedByKey.get(key)) {
            out.skippedBreakerOpen++;
            continue;
          }
          const res = await deps.service.retryItem(item, { maxRetries: deps.maxRetries, requireClass: 'retryable' });
          if (typeof res === 'number') {
            out.retried++;
            deps.logger.info({ jobId: item.entry.id, orgId: item.entry.orgId, agent: item.entry.agent, dlqRetries: res }, 'dead-letter entry retried');
          } else if (res === 'parent_finished') out.skippedParentFinished++;
          else out.lost++;
        }
        if (!next) break;
        after = next;
      }
      if (out.retried || out.skippedBreakerOpen || out.skippedParentFinished || out.lost) deps.logger.info(out, 'dead-letter reprocessing pass');
      return out;
    },
  };
}

export type DlqReprocessor = ReturnType<typeof createDlqReprocessor>;
