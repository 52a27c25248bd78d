import type { RedisClient } from '../infra/redis/connection.js';

/** A parent's child as read with its children: its id and the creation time (BullMQ's `timestamp`) of the job under it. */
export interface ChildIncarnation {
  id: string;
  ts: number;
}

/**
 * The jobs under the ids of a parent's children that are still this parent's children (BullMQ's `parentKey`), each
 * with its creation time, in one round trip. A child's id can hold another job since: the child removed (a cancel, a
 * board removal, retention) and a new job made under its id (a pipeline step's id is its run's and step's; an
 * idempotency key sent again). That job is no child of the parent, and a cancel or removal on the parent's behalf
 * must leave it: its callers act on each child by this creation time (the dispatcher's `cancelMany`, the job
 * service's `cancel`), so one replaced after this read is left alone too. An id holding no job is left out.
 */
export async function childIncarnations(
  redis: Pick<RedisClient, 'multi'>,
  o: { jobKeyPrefix: string; parent: { id?: string; queueQualifiedName: string } },
  ids: string[],
): Promise<ChildIncarnation[]> {
  if (ids.length === 0) return [];
  const parentKey = `${o.parent.queueQualifiedName}:${o.parent.id}`;
  const read = redis.multi();
  for (const id of ids) read.hmget(o.jobKeyPrefix + id, 'timestamp', 'parentKey');
  const replies = (await read.exec()) ?? [];
  return ids.flatMap((id, i) => {
    const [err, fields] = replies[i] ?? [new Error('no reply')];
    if (err) throw err;
    const [ts, of] = fields as [string | null, string | null];
    return ts !== null && of === parentKey ? [{ id, ts: Number(ts) }] : [];
  });
}
