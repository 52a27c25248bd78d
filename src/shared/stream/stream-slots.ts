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
    /**
     * Leases one of the org's slots. `gaveUp` is aborted by a caller that stopped waiting for the answer (its
     * deadline passed): a lease granted after that has no holder, so it is released at once and the call
     * rejects with the signal's reason, instead of holding the slot until it lapses.
     */
    async acquire(orgId: string, gaveUp?: AbortSignal): Promise<SlotVerdict> {
      const key = openStreamsKey(o.prefixOf(orgId), orgId);
      const member = randomUUID();
      const drop = () => o.redis.zrem(key, member);
      let reply: [number, number];
      try {
        reply = (await acquireLua([key], [member, o.maxPerOrg, o.leaseMs])) as [number, number];
      } catch (err) {
        // A command that timed out (commandTimeout) was sent and may still run: its lease is dropped behind it
        // (same key, so same connection, so after it). Not awaited: Redis may be the reason for the error.
        drop().catch(() => undefined);
        throw err;
      }
      const [allowed, ms] = reply;
      if (allowed !== 1) return { allowed: false, msBeforeNext: ms };
      if (gaveUp?.aborted) {
        await drop();
        throw gaveUp.reason;
      }
      let released = false;
      return {
        allowed: true,
        msBeforeNext: 0,
        lease: {
          refresh: async () => {
            if (released) return;
            try {
              await refreshLua([key], [member, o.leaseMs]);
            } finally {
              // The refresh takes a lapsed lease again, so one that ran after the release's ZREM (ioredis
              // resends a script Redis answered NOSCRIPT for, behind the commands sent meanwhile) would hold
              // the slot again until it lapses: it is dropped once more.
              if (released) await drop();
            }
          },
          release: async () => {
            if (released) return;
            released = true;
            await drop();
          },
        },
      };
    },
  };
}

export type StreamSlots = ReturnType<typeof createStreamSlots>;
