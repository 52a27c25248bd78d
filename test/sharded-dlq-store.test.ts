import { describe, expect, it } from 'vitest';
import type { DlqCursor, DlqEntry, DlqItem, DlqStore } from '../src/shared/ops/dlq-store.js';
import { shardedDlqStore } from '../src/shared/ops/sharded-dlq-store.js';

const before = (a: DlqCursor, b: DlqCursor) => a.score < b.score || (a.score === b.score && a.id < b.id);

/** A shard's failed set in memory, scanned as the Redis store scans it: after a cursor, limit and maxScan. */
function memoryStore(prefix: string, failed: Array<{ id: string; score: number; org: string }>): DlqStore {
  const item = (f: { id: string; score: number; org: string }): DlqItem => ({
    entry: { id: f.id, orgId: f.org } as DlqEntry,
    job: { prefix } as DlqItem['job'],
    position: { score: f.score, id: f.id },
  });
  const sorted = [...failed].sort((a, b) => (before(a, b) ? -1 : 1));
  return {
    recordFailure: async () => 0,
    retry: async () => 0,
    remove: async () => undefined,
    get: async (id) => {
      const f = sorted.find((x) => x.id === id);
      return f && { ...item(f), position: undefined };
    },
    scan: async ({ after, filter, limit, maxScan = 5000 }) => {
      const items: DlqItem[] = [];
      let scanned = 0;
      for (const f of sorted.filter((x) => !after || before(after, x))) {
        scanned++;
        const i = item(f);
        if (filter(i.entry)) items.push(i);
        if (items.length >= limit || scanned >= maxScan) return { items, next: { score: f.score, id: f.id } };
      }
      return { items };
    },
  };
}

describe('the dead-letter queue over several queue shards', () => {
  const a = memoryStore('{q.s0}', [
    { id: 'a1', score: 1, org: 'x' },
    { id: 'a4', score: 4, org: 'y' },
    { id: 'a5', score: 5, org: 'x' },
  ]);
  const b = memoryStore('{q.s1}', [
    { id: 'b2', score: 2, org: 'x' },
    { id: 'b3', score: 3, org: 'x' },
    { id: 'b6', score: 6, org: 'y' },
  ]);
  const store = shardedDlqStore(new Map([['{q.s0}', a], ['{q.s1}', b]]));

  async function pages(limit: number, filter: (e: DlqEntry) => boolean = () => true, maxScan?: number) {
    const seen: string[][] = [];
    let after: DlqCursor | undefined;
    for (let i = 0; i < 20; i++) {
      const page = await store.scan({ ...(after ? { after } : {}), filter, limit, ...(maxScan ? { maxScan } : {}) });
      seen.push(page.items.map((it) => it.entry.id));
      if (!page.next) return seen;
      after = page.next;
    }
    throw new Error('no last page');
  }

  it('pages both shards as one failed set, oldest first, each entry once', async () => {
    expect((await pages(2)).flat()).toEqual(['a1', 'b2', 'b3', 'a4', 'a5', 'b6']);
    expect(await pages(4)).toEqual([['a1', 'b2', 'b3', 'a4'], ['a5', 'b6']]);
    expect(await pages(10)).toEqual([['a1', 'b2', 'b3', 'a4', 'a5', 'b6']]);
  });

  it('a shard that stopped early (maxScan) holds back what lies past where it stopped', async () => {
    // Only org y's entries pass; one raw entry scanned per shard per page: shard b stops at b2 and shard a at a1,
    // so nothing past the earlier of the two is returned yet, and nothing is skipped.
    const seen = await pages(5, (e) => e.orgId === 'y', 1);
    expect(seen.flat()).toEqual(['a4', 'b6']);
  });

  it('finds an entry by id in whichever shard holds it, and hands each item to its own shard', async () => {
    expect((await store.get('b3'))?.entry.id).toBe('b3');
    expect(await store.get('nope')).toBeUndefined();
    await expect(store.retry({ entry: { id: 'z' } as DlqEntry, job: { prefix: '{q.s9}' } as DlqItem['job'] }, {})).rejects.toThrow(/no dead-letter store/);
  });
});
