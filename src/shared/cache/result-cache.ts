import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { defineLua, type RedisClient } from '../infra/lua.js';
import type { Logger } from '../core/logger.js';
import type { AgentResult } from '../core/types.js';
import { guardKeys } from '../core/queue-keys.js';
import { canonicalJson } from '../core/canonical-json.js';

export interface CacheKeyParts {
  orgId: string;
  agent: string;
  action: string;
  model: string;
  promptVersion: number;
  input: unknown;
}

export interface CacheHit<T> {
  level: 'l1' | 'l2';
  value: T;
}

export interface SingleFlightResult<T> {
  value: T;
  /** `call`: this caller ran `fn`; `l1`/`l2`: another call's result, read from the cache. */
  from: 'call' | 'l1' | 'l2';
}

export interface SingleFlightOptions<T> {
  /** Only values that pass are cached (default: all). Waiters on an uncached value call through themselves. */
  shouldCache?: (value: T) => boolean;
  /**
   * Who computes (e.g. the job id). A lock left by the same owner is taken over at once: it can only
   * be the owner's previous, dead incarnation, and waiting it out would stall the re-run.
   */
  owner?: string;
  signal?: AbortSignal;
}

export interface ResultCache<T = AgentResult> {
  get(parts: CacheKeyParts): Promise<CacheHit<T> | null>;
  /** Stores under the namespace versions current at the time of the write (`singleFlight` uses the versions read before the call instead). */
  set(parts: CacheKeyParts, value: T): Promise<boolean>;
  invalidateOrg(orgId: string): Promise<void>;
  invalidateAgent(orgId: string, agent: string): Promise<void>;
  /** Identical calls in flight at once across all processes run `fn` once; the others get its cached result. */
  singleFlight(parts: CacheKeyParts, fn: () => Promise<T>, opts?: SingleFlightOptions<T>): Promise<SingleFlightResult<T>>;
}

export interface ResultCacheOptions {
  redis: RedisClient;
  prefix: string;
  /** L1 entries per process. */
  l1Max: number;
  l1TtlMs: number;
  l2TtlS: number;
  /** The lock lapses this long after its holder stops renewing it (it renews every third of this). Default 15 000. */
  lockTtlMs?: number;
  /** Waiters give up waiting after this long and call through themselves. Default 120 000 (above the LLM timeout). */
  waitTimeoutMs?: number;
  /** Longest pause between two polls of a waiter. Default 200. */
  maxPollMs?: number;
  logger?: Logger;
}

export { canonicalJson };

/** sha256 of everything that determines an agent result. */
export function resultCacheHash(p: CacheKeyParts): string {
  const material = JSON.stringify([p.orgId, p.agent, p.action, p.model, p.promptVersion, canonicalJson(p.input)]);
  return createHash('sha256').update(material).digest('hex');
}


/**
 * Two-level result cache. L1 is an in-process LRU; L2 is Redis with a TTL. Invalidation bumps a
 * version counter per org and per org+agent; every entry records the versions ("tag") it was written
 * under, and a read whose tag is not the current one is a miss. No KEYS/SCAN: stale L2 entries are
 * overwritten or expire.
 *
 * Cost: every `get` is ONE round trip (a 4-key Lua script: 2-3 GETs). When this process's L1 copy is
 * current the reply is just the tag (a few bytes), so an L1 hit costs a round trip but no payload
 * transfer and no JSON parse; otherwise the reply carries the L2 entry. This round trip is what makes
 * another process's invalidation visible at once instead of after the L1 TTL.
 */
export function createResultCache<T = AgentResult>(opts: ResultCacheOptions): ResultCache<T> {
  const { redis, prefix } = opts;
  const lockTtlMs = opts.lockTtlMs ?? 15_000;
  const waitTimeoutMs = opts.waitTimeoutMs ?? 120_000;
  const maxPollMs = opts.maxPollMs ?? 200;
  const lookupLua = defineLua(redis, 'result-cache-lookup-4.lua');
  const setLua = defineLua(redis, 'result-cache-set-4.lua');
  const unlockLua = defineLua(redis, 'result-cache-unlock-1.lua');
  const renewLua = defineLua(redis, 'result-cache-renew-1.lua');
  const l1 = new LRUCache<string, { tag: string; value: T }>({ max: opts.l1Max, ttl: opts.l1TtlMs });

  const enc = encodeURIComponent;
  const orgVersionKey = (org: string) => guardKeys.resultOrgVersion(prefix, enc(org));
  const agentVersionKey = (org: string, agent: string) => guardKeys.resultAgentVersion(prefix, enc(org), enc(agent));
  const keysFor = (p: CacheKeyParts) => {
    const hash = resultCacheHash(p);
    return {
      hash,
      keys: [orgVersionKey(p.orgId), agentVersionKey(p.orgId, p.agent), guardKeys.resultEntry(prefix, hash), guardKeys.resultLock(prefix, hash)],
    };
  };

  /** `lock` is a token to try to take the single-flight lock on a miss, or '' to only look. */
  async function lookup(p: CacheKeyParts, lock: string, owner = '') {
    const { hash, keys } = keysFor(p);
    const local = l1.get(hash);
    const [tag, hit, lockState, json] = (await lookupLua(keys, [local?.tag ?? '', lock, lockTtlMs, owner])) as [string, number, number, string?];
    let found: CacheHit<T> | null = null;
    if (hit === 1 && local) {
      found = { level: 'l1', value: structuredClone(local.value) };
    } else if (hit === 2 && json !== undefined) {
      const value = JSON.parse(json) as T;
      l1.set(hash, { tag, value });
      found = { level: 'l2', value: structuredClone(value) };
    } else if (local) {
      l1.delete(hash);
    }
    return { hash, keys, tag, found, lockState };
  }

  /** Writes the entry (and releases `lockToken`'s lock in the same call). */
  async function store(keys: string[], hash: string, tag: string, value: T, lockToken = ''): Promise<boolean> {
    const [stored, current] = (await setLua(keys, [tag, JSON.stringify(value), opts.l2TtlS, lockToken])) as [number, string];
    if (stored === 1) l1.set(hash, { tag: current, value: structuredClone(value) });
    return stored === 1;
  }

  /** The value was paid for: failing to cache it must not fail the caller. False when the write failed. */
  async function storeQuietly(keys: string[], hash: string, tag: string, value: T, lockToken = ''): Promise<boolean> {
    return store(keys, hash, tag, value, lockToken).then(
      () => true,
      (err: unknown) => {
        opts.logger?.warn({ err }, 'result cache: store failed');
        return false;
      },
    );
  }

  return {
    async get(p) {
      return (await lookup(p, '')).found;
    },
    async set(p, value) {
      const { hash, keys } = keysFor(p);
      return store(keys, hash, '', value);
    },
    async invalidateOrg(orgId) {
      await redis.incr(orgVersionKey(orgId));
    },
    async invalidateAgent(orgId, agent) {
      await redis.incr(agentVersionKey(orgId, agent));
    },
    async singleFlight(p, fn, sfOpts = {}) {
      const shouldCache = sfOpts.shouldCache ?? (() => true);
      const deadline = Date.now() + waitTimeoutMs;
      const owner = sfOpts.owner ?? '';
      const token = `${owner}#${randomUUID()}`;
      let pause = 10;
      for (;;) {
        sfOpts.signal?.throwIfAborted();
        const { hash, keys, tag, found, lockState } = await lookup(p, token, owner);
        if (found) return { value: found.value, from: found.level };
        if (lockState === 2) {
          const renew = setInterval(() => {
            renewLua([keys[3]], [token, lockTtlMs]).catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: lock renewal failed'));
          }, Math.max(100, Math.floor(lockTtlMs / 3)));
          let released = false;
          try {
            const value = await fn();
            if (shouldCache(value)) released = await storeQuietly(keys, hash, tag, value, token);
            return { value, from: 'call' };
          } finally {
            clearInterval(renew);
            // Released on error (or an uncached value) too, so waiters stop waiting and one of them calls through.
            if (!released) await unlockLua([keys[3]], [token]).catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: unlock failed'));
          }
        }
        if (Date.now() >= deadline) {
          const value = await fn();
          if (shouldCache(value)) await storeQuietly(keys, hash, tag, value);
          return { value, from: 'call' };
        }
        // Another caller holds the lock: poll with backoff (jittered so waiters do not move in step).
        await sleep(Math.min(pause, Math.max(1, deadline - Date.now())) * (0.5 + Math.random() / 2), undefined, { signal: sfOpts.signal });
        pause = Math.min(pause * 2, maxPollMs);
      }
    },
  };
}
