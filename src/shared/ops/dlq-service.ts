import { ConflictError, NotFoundError } from '../core/errors.js';
import type { DlqClass } from '../core/dlq-classify.js';
import type { DlqCursor, DlqEntry, DlqItem, DlqStore, RetryRefusal } from './dlq-store.js';

/** Whose entries a caller may touch: one org (its org-admin), or every org (the operator). */
export interface DlqScope {
  orgId?: string;
}

export interface DlqFilter {
  agent?: string;
  class?: DlqClass;
}

const visible = (scope: DlqScope, e: DlqEntry) => scope.orgId === undefined || e.orgId === scope.orgId;
const matches = (f: DlqFilter, e: DlqEntry) => (!f.agent || e.agent === f.agent) && (!f.class || e.class === f.class);

/**
 * What a refused retry of `item` answers: 404 once it left the failed set, 409 naming why otherwise (its flow or
 * run finished: `parent_finished` with the parent's id; or it changed since it was read).
 */
export function retryRefusalError(res: RetryRefusal, item: DlqItem): NotFoundError | ConflictError {
  if (res === 'not_failed') return new NotFoundError('dead-letter entry not found');
  if (res === 'parent_finished') {
    const parentId = item.job.parent?.id ?? '';
    return new ConflictError('the flow or pipeline run this job belongs to has finished and would never read its result; start a new one', { reason: res, parentId });
  }
  return new ConflictError('entry was retried by someone else since it was read; read it again');
}

/**
 * Retries, lists and deletes dead-letter entries. A retry is counted, its corrected input written and the job
 * moved back to wait with its attempts kept, all in one atomic step (DlqStore.retry): it gets one more attempt
 * per DLQ retry, and each attempt keeps a distinct number in agent_runs.
 */
export function createDlqService(deps: { store: DlqStore; validateInput: (agent: string, action: string, input: unknown) => unknown }) {
  const { store } = deps;

  async function retryItem(item: DlqItem, opts: { maxRetries?: number; requireClass?: DlqClass; input?: unknown } = {}): Promise<number | RetryRefusal> {
    // One step: the caller that wins the claim writes its input and moves the job, or nothing changes. A Redis
    // error is thrown as such (503), not answered as a missing entry.
    return store.retry(item, opts);
  }

  async function find(scope: DlqScope, id: string): Promise<DlqItem> {
    const item = await store.get(id);
    // Another org's entry answers exactly like a missing one.
    if (!item || !visible(scope, item.entry)) throw new NotFoundError('dead-letter entry not found');
    return item;
  }

  return {
    retryItem,

    async list(scope: DlqScope, q: DlqFilter & { cursor?: DlqCursor; limit: number }): Promise<{ entries: DlqEntry[]; next?: DlqCursor }> {
      const { items, next } = await store.scan({ after: q.cursor, limit: q.limit, filter: (e) => visible(scope, e) && matches(q, e) });
      return { entries: items.map((i) => i.entry), next };
    },

    async get(scope: DlqScope, id: string): Promise<DlqEntry> {
      return (await find(scope, id)).entry;
    },

    /** `input`, when given, replaces the job's input (already validated by the caller). */
    async retry(scope: DlqScope, id: string, input?: unknown): Promise<{ id: string; state: 'waiting' | 'prioritized'; dlqRetries: number }> {
      const item = await find(scope, id);
      const parsed = input === undefined ? undefined : deps.validateInput(item.entry.agent, item.entry.action, input);
      const res = await retryItem(item, { input: parsed });
      if (typeof res !== 'number') throw retryRefusalError(res, item);
      // As GET shows it: the retry moves the job back as BullMQ's own retry does, a job with a priority into the
      // priority set.
      return { id, state: item.job.opts.priority ? 'prioritized' : 'waiting', dlqRetries: res };
    },

    /** Retries up to `max` visible entries matching `filter`, oldest first; `more` when some were left. */
    async retryMany(scope: DlqScope, filter: DlqFilter, max: number): Promise<{ retried: number; more: boolean }> {
      let retried = 0;
      let after: DlqCursor | undefined;
      for (;;) {
        const { items, next } = await store.scan({ after, limit: max - retried, filter: (e) => visible(scope, e) && matches(filter, e) });
        for (const item of items) if (typeof (await retryItem(item)) === 'number') retried++;
        if (!next) return { retried, more: false };
        if (retried >= max) return { retried, more: true };
        after = next;
      }
    },

    async remove(scope: DlqScope, id: string): Promise<void> {
      await store.remove(await find(scope, id));
    },
  };
}

export type DlqService = ReturnType<typeof createDlqService>;
