import type { RedisClient } from '../infra/redis/connection.js';

/** A parent's child as read with its children: its id and the creation time (BullMQ's `timestamp`) of the job under it. */
export interface ChildIncarnation {
  id: string;
  ts: number;
}

/** A child read with whether BullMQ's active list holds it (a worker runs it), in the same round trip. */
export interface ChildIncarnationState extends ChildIncarnation {
  active: boolean;
}

type Read = { jobKeyPrefix: string; parent: { id?: string; queueQualifiedName: string } };

/**
 * The jobs under the ids of a parent's children that are still this parent's children (BullMQ's `parentKey`), each
 * with its creation time, in one round trip. A child's id can hold another job since: the child removed (a cancel, a
 * board removal, retention) and a new job made under its id (a pipeline step's id is its run's and step's; an
 * idempotency key sent again). That job is no child of the parent, and a cancel or removal on the parent's behalf
 * must leave it: its callers act on each child by this creation time (the dispatcher's `cancelMany`, the job
 * service's `cancel`), so one replaced after this read is left alone too. An id holding no job is left out.
 * With `activeKey` (the queue's active list), each child also says whether a worker runs it, read in the same MULTI:
 * a flow's cancel orders its children by it, and read by BullMQ's getJobState it took a round trip per child.
 */
export async function childIncarnations(redis: Pick<RedisClient, 'multi'>, o: Read, ids: string[]): Promise<ChildIncarnation[]>;
export async function childIncarnations(redis: Pick<RedisClient, 'multi'>, o: Read & { activeKey: string }, ids: string[]): Promise<ChildIncarnationState[]>;
export async function childIncarnations(redis: Pick<RedisClient, 'multi'>, o: Read & { activeKey?: string }, ids: string[]): Promise<Array<ChildIncarnation & { active?: boolean }>> {
  if (ids.length === 0) return [];
  const parentKey = `${o.parent.queueQualifiedName}:${o.parent.id}`;
  const read = redis.multi();
  for (const id of ids) {
    read.hmget(o.jobKeyPrefix + id, 'timestamp', 'parentKey');
    // As BullMQ's getState finds an active job: in the active list (a job moves out of it and into a finished or
    // delayed set in one script call, so no job is in both).
    if (o.activeKey) read.lpos(o.activeKey, id);
  }
  const replies = (await read.exec()) ?? [];
  const per = o.activeKey ? 2 : 1;
  const reply = (i: number) => {
    const [err, value] = replies[i] ?? [new Error('no reply')];
    if (err) throw err;
    return value;
  };
  return ids.flatMap((id, i) => {
    const [ts, of] = reply(i * per) as [string | null, string | null];
    if (ts === null || of !== parentKey) return [];
    return [o.activeKey ? { id, ts: Number(ts), active: reply(i * per + 1) !== null } : { id, ts: Number(ts) }];
  });
}
