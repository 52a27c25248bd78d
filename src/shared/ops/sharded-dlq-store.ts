import type { DlqCursor, DlqItem, DlqStore } from './dlq-store.js';

const before = (a: DlqCursor, b: DlqCursor) => a.score < b.score || (a.score === b.score && a.id < b.id);

/**
 * The dead-letter queue over every queue shard (app/cell.ts) as one: a job's entry is handled by its own
 * shard's store (the job's prefix names it), and a scan merges the shards' failed sets oldest first, so
 * one cursor (failure time, id) pages through all of them. One store: that store.
 */
export function shardedDlqStore(stores: ReadonlyMap<string, DlqStore>): DlqStore {
  const all = [...stores.values()];
  if (all.length === 1) return all[0];
  const storeOf = (item: { job: { prefix: string } }): DlqStore => {
    const store = stores.get(item.job.prefix);
    if (!store) throw new Error(`no dead-letter store for queue prefix ${item.job.prefix}`);
    return store;
  };
  return {
    recordFailure: async (job, c, reason) => storeOf({ job }).recordFailure(job, c, reason),
    retry: async (item, opts) => storeOf(item).retry(item, opts),
    remove: async (item) => storeOf(item).remove(item),

    async get(id) {
      // Ids are unique across shards (random, or derived from the org, which lives in one shard).
      for (const item of await Promise.all(all.map((s) => s.get(id)))) if (item) return item;
      return undefined;
    },

    async scan(opts) {
      const pages = await Promise.all(all.map((s) => s.scan(opts)));
      // A shard that stopped early (limit or maxScan) was read up to its `next`: past the earliest such
      // frontier another page must continue, so nothing after it is returned now.
      let frontier: DlqCursor | undefined;
      for (const p of pages) if (p.next && (!frontier || before(p.next, frontier))) frontier = p.next;
      const merged = pages
        .flatMap((p) => p.items)
        .filter((i) => !frontier || !before(frontier, i.position!))
        .sort((a, b) => (before(a.position!, b.position!) ? -1 : 1));
      const items: DlqItem[] = merged.slice(0, opts.limit);
      if (items.length === opts.limit && (merged.length > opts.limit || frontier)) return { items, next: items[items.length - 1].position! };
      return frontier ? { items, next: frontier } : { items };
    },
  };
}
