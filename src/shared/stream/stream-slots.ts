import { randomUUID } from 'node:crypto';
import type { RedisClient } from '../infra/redis/connection.js';
import { defineLua } from '../infra/lua.js';
import { openStreamsKey } from '../core/queue-keys.js';

export interface SlotVerdict {
  allowed: boolean;
  /** When refused: ms until the earliest lease of the org lapses (a hint for Retry-After). */
  msBeforeNext: number;
  /** The lease to refresh and release; set when allowed. */
  lease?: StreamLease;
}

export interface StreamLease {
  refresh(): Promise<void>;
  release(): Promise<void>;
}


/**
 * A per-org cap on open SSE streams across every API process: each stream leases a ZSET member that its
 * heartbeat refreshes; a process that dies leaves leases that lapse after `leaseMs`.
 */
export function createStreamSlots(o: {
  redis: RedisClient;
  /** The queue prefix of an org's shard: its lease set lives there with the rest of the org's keys. */
  prefixOf(orgId: string): string;
  maxPerOrg: number;
  leaseMs: number;
}) {
  const acquireLua = defineLua(o.redis, 'stream-slot-acquire-1.lua');
  const refreshLua = defineLua(o.redis, 'stream-slot-refresh-1.lua');

  return {
    async acquire(orgId: string): Promise<SlotVerdict> {
      const key = openStreamsKey(o.prefixOf(orgId), orgId);
      const member = randomUUID();
      const [allowed, ms] = (await acquireLua([key], [member, o.maxPerOrg, o.leaseMs])) as [number, number];
      if (allowed !== 1) return { allowed: false, msBeforeNext: ms };
      let released = false;
      return {
        allowed: true,
        msBeforeNext: 0,
        lease: {
          refresh: async () => {
            if (!released) await refreshLua([key], [member, o.leaseMs]);
          },
          release: async () => {
            if (released) return;
            released = true;
            await o.redis.zrem(key, member);
          },
        },
      };
    },
  };
}

export type StreamSlots = ReturnType<typeof createStreamSlots>;
