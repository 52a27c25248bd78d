import { randomUUID } from 'node:crypto';
import type { Queue } from 'bullmq';
import type { RedisClient } from '../infra/redis/connection.js';
import { readLua } from '../infra/lua.js';

/** What a removal of the job read did: `removed` (it, or nothing: no job held the id), `locked` (a worker holds it), `replaced` (another job holds the id, kept). */
export type IncarnationRemoval = 'removed' | 'locked' | 'replaced';

/**
 * BullMQ's removal of a job (`queue.remove`, its removeJob) for the job the caller read only (its `timestamp`): a job
 * made under the id since is left alone. The script's check, BullMQ's own removeJob and the script's release in one
 * MULTI on the queue's connection (remove-incarnation-2.lua), as the API's cancel removes (cancel-tombstone.ts).
 */
export function createIncarnationRemoval(queue: Queue) {
  const lua = readLua('remove-incarnation-2.lua');
  return async (id: string, jobTs: number, opts: { removeChildren?: boolean } = {}): Promise<IncarnationRemoval> => {
    const backend = queue.getBackend();
    const jobKey = queue.toKey(id);
    const keys = [jobKey, `${jobKey}:lock`];
    const holdToken = `agentq-remove-hold:${randomUUID()}`;
    const tx = (await backend.client).multi();
    const cmd = tx as unknown as ReturnType<RedisClient['multi']>;
    cmd.eval(lua, keys.length, ...keys, 'before', holdToken, String(jobTs));
    // BullMQ's own removeArgs (protected), as queue.remove sends them (children too, unless told not to).
    const removeArgs = (backend as unknown as { removeArgs(jobId: string, removeChildren: boolean): (string | number)[] }).removeArgs(id, opts.removeChildren ?? true);
    backend.execCommand(tx, 'removeJob', removeArgs);
    cmd.eval(lua, keys.length, ...keys, 'after', holdToken);
    const replies = await tx.exec();
    if (!replies) throw new Error(`removal of job ${id}: transaction aborted`);
    for (const [err] of replies) if (err) throw err;
    if (replies[0][1] === 'replaced') return 'replaced';
    const removed = replies[1][1];
    if (removed === 1) return 'removed';
    if (removed === 0) return 'locked';
    // -8: the job a job scheduler waits on (BullMQ's queue.remove throws for it as well); an agent job never is one.
    throw new Error(`removal of job ${id}: BullMQ refused it (${String(removed)})`);
  };
}
