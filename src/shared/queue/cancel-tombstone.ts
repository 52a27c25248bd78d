import { cancelledKey } from '../core/cancel.js';
import type { RedisClient } from '../infra/redis/connection.js';

/**
 * The tombstone the API's cancel leaves for a job it removed before it ran (kept KEEP_FAILED_AGE_S): the job's
 * view at its cancel, without the org it names, or undefined when there is none for this org's job. Read by
 * `GET /v1/jobs/:id` once the job is gone, and by an idempotent re-send whose job is gone, so both say "cancelled".
 * It outlives the key's record (IDEMPOTENCY_TTL_S), after which the key makes a later job under the same id: that
 * job's add deletes the tombstone (fair-store-parked.lua, job-producer.ts addWithRecords), so one read here always
 * describes the id's last job.
 */
export async function readCancelTombstone(redis: Pick<RedisClient, 'get'>, prefix: string, orgId: string, id: string): Promise<Record<string, unknown> | undefined> {
  const raw = await redis.get(cancelledKey(prefix, id));
  if (!raw) return undefined;
  const { orgId: owner, ...view } = JSON.parse(raw) as Record<string, unknown> & { orgId?: string };
  return owner === orgId ? view : undefined;
}
