import { randomUUID } from 'node:crypto';
import type { Job, Queue } from 'bullmq';
import { cancelledKey, cancelRequestedKey } from '../core/cancel.js';
import { jobStreamKey } from '../core/queue-keys.js';
import type { RedisClient } from '../infra/redis/connection.js';
import { readLua } from '../infra/lua.js';

/**
 * The tombstone the API's cancel leaves for a job it removed before it ran (kept KEEP_FAILED_AGE_S): the job's
 * view at its cancel, without the org it names, or undefined when there is none for this org's job. Read by
 * `GET /v1/jobs/:id` once the job is gone, and by an idempotent re-send whose job is gone, so both say "cancelled".
 * It outlives the key's record (IDEMPOTENCY_TTL_S), after which the key makes a later job under the same id: that
 * job's add deletes the tombstone (fair-store-parked.lua, job-producer.ts addWithRecords), so one read here always
 * describes the id's last job. Written with the removal, atomically (`createCancelRemoval`): a tombstone written
 * after it could land after such an add, on the new job.
 */
export async function readCancelTombstone(redis: Pick<RedisClient, 'get'>, prefix: string, orgId: string, id: string): Promise<Record<string, unknown> | undefined> {
  const raw = await redis.get(cancelledKey(prefix, id));
  if (!raw) return undefined;
  const { orgId: owner, ...view } = JSON.parse(raw) as Record<string, unknown> & { orgId?: string };
  return owner === orgId ? view : undefined;
}

/** What a cancel's removal did (cancel-remove-7.lua): only `removed` removed the job and wrote its tombstone. */
export type CancelRemoval = 'removed' | 'locked' | 'finished' | 'replaced' | 'gone';

export interface TombstoneWrite {
  /** The job's view at its cancel, with the org it names (`readCancelTombstone` answers it to that org only). */
  tombstone: Record<string, unknown>;
  ttlS: number;
  /** A streaming job's terminal entry (field / value pairs) and how long its stream is then kept. */
  stream?: { entry: string[]; ttlS: number };
}

/**
 * Removes a job that has not run and writes its tombstone in one step: the script's check, BullMQ's own removeJob
 * (every key BullMQ's removal touches, a parent's dependencies included, as `job.remove()`) and the script's
 * release in one MULTI on the queue's connection, all under the queue prefix's hash tag. The job removed is the
 * one read (`job.timestamp`): a job made under the id since is left alone, and so is one that finished meanwhile.
 */
export function createCancelRemoval(o: { queue: Queue; prefix: string }) {
  const lua = readLua('cancel-remove-7.lua');
  return async (job: Job, w: TombstoneWrite): Promise<CancelRemoval> => {
    const { queue, prefix } = o;
    const id = job.id!;
    const backend = queue.getBackend();
    const jobKey = queue.toKey(id);
    const keys = [jobKey, `${jobKey}:lock`, queue.toKey('completed'), queue.toKey('failed'), cancelledKey(prefix, id), cancelRequestedKey(prefix, id), jobStreamKey(prefix, id)];
    const holdToken = `agentq-cancel-hold:${randomUUID()}`;
    const tx = (await backend.client).multi();
    const cmd = tx as unknown as ReturnType<RedisClient['multi']>;
    cmd.eval(lua, keys.length, ...keys, 'before', holdToken, id, String(job.timestamp), JSON.stringify(w.tombstone), w.ttlS, w.stream ? w.stream.ttlS : '', ...(w.stream?.entry ?? []));
    // BullMQ's own removeArgs (protected), as job.remove() sends them, so an upgrade that changes them is followed:
    // children removed too (an agent job has none).
    const removeArgs = (backend as unknown as { removeArgs(jobId: string, removeChildren: boolean): (string | number)[] }).removeArgs(id, true);
    backend.execCommand(tx, 'removeJob', removeArgs);
    cmd.eval(lua, keys.length, ...keys, 'after', holdToken);
    const replies = await tx.exec();
    if (!replies) throw new Error(`cancel of job ${id}: transaction aborted`);
    for (const [err] of replies) if (err) throw err;
    const outcome = replies[0][1] as CancelRemoval;
    // The script's `removed` is BullMQ's removal (1): only a job scheduler's job is refused otherwise (-8), and an
    // agent job never is one.
    if (outcome === 'removed' && replies[1][1] !== 1) throw new Error(`cancel of job ${id}: BullMQ refused the removal (${String(replies[1][1])})`);
    return outcome;
  };
}
