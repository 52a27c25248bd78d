import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { defineLua, type RedisClient } from '../infra/lua.js';
import { subscribeShardChannel } from '../infra/redis/shard-channel.js';
import { closesOf } from '../infra/redis/connection-closes.js';
import type { Logger } from '../core/logger.js';
import type { AgentResult } from '../core/types.js';
import { guardKeys } from '../core/queue-keys.js';
import { canonicalJson } from '../core/canonical-json.js';
import type { UsageBill, UsageRider } from '../infra/db/run-stream.js';

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
  /** The `usageEntry` of the computed value was appended to the usage stream by the store (same script). */
  usageAppended?: boolean;
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
  /**
   * The usage stream entry of a value this caller computes (the attempt's `agent_runs` row): appended by
   * the store script, so recording the attempt costs no round trip of its own. Not called for cached values.
   * `bill`: the row's bill (a flow child's), asked after `of`, summed on the job's and its parent's hashes by the same call.
   */
  usageEntry?: { field: string; of: (value: T) => string; bill?: () => UsageBill | undefined; rider?: UsageRider };
  /** The first lookup, already run (`prepare`, delivered); ignored unless delivered for the same parts and owner. */
  prefetched?: PreparedLookup;
}

/**
 * A lookup with its single-flight lock attempt, prepared to run inside another script of the same hash tag
 * (the fair dispatcher's claim: `keys` / `args` as result-cache-lookup-5.lua takes them), so a miss costs no
 * round trip of its own. `deliver` hands the reply back; `singleFlight` then starts from it. `discard` frees
 * the lock the reply took when the value is not computed after all (the job did not reach its cache guard).
 */
export interface PreparedLookup {
  keys: readonly string[];
  args: Array<string | number>;
  deliver(reply: unknown): void;
  discard(): Promise<void>;
}

export interface ResultCache<T = AgentResult> {
  get(parts: CacheKeyParts): Promise<CacheHit<T> | null>;
  /**
   * The lookup `singleFlight(parts, ..., { owner, prefetched })` would start with, to run elsewhere; undefined
   * when L1 answers from memory (no Redis read needed at all).
   */
  prepare(parts: CacheKeyParts, owner?: string): PreparedLookup | undefined;
  /**
   * The value L1 holds for `parts`, from memory (no Redis call), when an L1 hit of `singleFlight` would serve
   * it (the invalidation broadcast is live); undefined otherwise. Each call parses its own copy. Takes the key
   * `prepare` computed for the same parts, as `singleFlight` does. `view`: the value as this caller hands it out
   * (a pure function of the value, JSON in and out, the same function each call): derived once per L1 entry and
   * kept beside it as JSON, so each later hit parses the view, with no derivation of its own.
   */
  fromMemory(parts: CacheKeyParts, view?: (value: T) => T): T | undefined;
  /** Stores under the namespace versions current at the time of the write (`singleFlight` uses the versions read before the call instead). */
  set(parts: CacheKeyParts, value: T): Promise<boolean>;
  invalidateOrg(orgId: string): Promise<void>;
  invalidateAgent(orgId: string, agent: string): Promise<void>;
  /** The agent's answers in every org (shared knowledge it reads changed): one counter, one broadcast. */
  invalidateAgentEverywhere(agent: string): Promise<void>;
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
  /**
   * A connection of its own for the invalidation broadcast. With it, an L1 hit is served from memory (no Redis
   * call): every invalidation is pushed to this process, which drops the L1 copies it concerns, and while this
   * connection is down L1 is dropped and unused. Without it, every `get` checks the namespace version in Redis.
   */
  subscriber?: RedisClient;
  /** Called when this process has applied an invalidation broadcast (tests, metrics); `orgId` '' is every org. */
  onInvalidation?: (orgId: string, agent: string | undefined) => void;
  logger?: Logger;
  /** The hash of a key's parts (default `resultCacheHash`): injected by tests that count how often parts are hashed. */
  hashParts?: (p: CacheKeyParts) => string;
}

export { canonicalJson };

/** Index of the single-flight lock among a lookup's keys (keysFor): the lock scripts take it alone. */
const LOCK_KEY = 4;
/** result-cache-set-8.lua's arguments for no bill: one '' where a bill's 9 arguments go (the script reads no more). */
const NO_BILL: readonly string[] = [''];
/** Distinct parts whose hash and keys one cache remembers (`keysFor`). */
const KEY_MEMO_MAX = 1024;
/**
 * Longest plain JSON of parts the memo keeps (UTF-16 units): the memo holds at most KEY_MEMO_MAX x this (4-8 MB) however
 * large the inputs are; a larger input is hashed per job, as before the memo (its hashing is small beside its call).
 */
export const KEY_MEMO_MAX_CHARS = 4096;

/** A key's hash and the keys of its scripts; `plain`: the parts' JSON it may be remembered by (keyMemo). */
interface Keys {
  hash: string;
  keys: readonly string[];
  plain?: string;
}

/** sha256 of everything that determines an agent result. */
export function resultCacheHash(p: CacheKeyParts): string {
  const material = JSON.stringify([p.orgId, p.agent, p.action, p.model, p.promptVersion, canonicalJson(p.input)]);
  return createHash('sha256').update(material).digest('hex');
}


/**
 * Two-level result cache. L1 is an in-process LRU of values read from L2 (a stored value enters it once a lookup
 * here reads it back: the input recurred); L2 is Redis with a TTL. Invalidation bumps a
 * version counter per org, per org+agent, or per agent in every org (shared knowledge it reads changed); every
 * entry records the versions ("tag") it was written under, and a read whose tag is not the current one is a miss. No KEYS/SCAN: stale L2 entries are
 * overwritten or expire.
 *
 * Cost: with a `subscriber`, an L1 hit makes no Redis call: invalidations (version bump + SPUBLISH in one
 * script) are broadcast and each process drops the L1 copies they concern as the message arrives; a lookup
 * whose reply was in flight across an invalidation does not fill L1. Without a subscriber (or while it is
 * disconnected) every `get` is ONE round trip (a 5-key Lua script: an MGET and a GET) that checks the L1 copy's tag,
 * which makes another process's invalidation visible at once instead of after the L1 TTL.
 */
export function createResultCache<T = AgentResult>(opts: ResultCacheOptions): ResultCache<T> {
  const { redis, prefix } = opts;
  const hashParts = opts.hashParts ?? resultCacheHash;
  const lockTtlMs = opts.lockTtlMs ?? 15_000;
  const waitTimeoutMs = opts.waitTimeoutMs ?? 120_000;
  const maxPollMs = opts.maxPollMs ?? 200;
  const lookupLua = defineLua(redis, 'result-cache-lookup-5.lua');
  const setLua = defineLua(redis, 'result-cache-set-8.lua');
  const usageKey = guardKeys.usageStream(prefix);
  const unlockLua = defineLua(redis, 'lock-release-1.lua');
  const renewLua = defineLua(redis, 'result-cache-renew-1.lua');
  const bumpLua = defineLua(redis, 'result-cache-bump-1.lua');
  const closes = closesOf(redis);
  // L1 keeps the value's JSON: each hit parses its own copy (a caller may change what it gets), which costs
  // less than structuredClone of the object and hands out exactly what an L2 hit would.
  // ttlResolution 0: each age check reads the clock (a fraction of a microsecond) instead of caching it for 1 ms
  // behind a timer, which lru-cache arms again at the first check after each expiry: about one timer per job.
  // `view`: fromMemory's view of the value, as JSON, for the function that derived it (written on first use).
  const l1 = new LRUCache<string, { tag: string; json: string; org: string; agent: string; view?: { of: (value: T) => T; json: string } }>({ max: opts.l1Max, ttl: opts.l1TtlMs, ttlResolution: 0 });
  const channel = guardKeys.resultInvalidations(prefix);
  /** L1 served from memory: only while the broadcast is subscribed, so no invalidation can pass unseen. */
  let l1Live = false;
  /** Bumped on every invalidation seen (and on losing the broadcast): a reply read before it must not fill L1. */
  let epoch = 0;

  function invalidateLocal(org: string | undefined, agent: string | undefined): void {
    epoch++;
    if (org === undefined) {
      l1.clear();
      return;
    }
    // '' (never an org id): the agent's copies in every org.
    const drop: string[] = [];
    l1.forEach((e, k) => {
      if ((org === '' || e.org === org) && (agent === undefined || e.agent === agent)) drop.push(k);
    });
    for (const k of drop) l1.delete(k);
  }

  const sub = opts.subscriber;
  if (sub) {
    const live = () => {
      // Whatever was invalidated while unsubscribed is unknown: start from an empty L1.
      invalidateLocal(undefined, undefined);
      l1Live = true;
    };
    sub.on('smessage', (ch: string, msg: string) => {
      if (ch !== channel) return;
      const [org, agent] = msg.split('\n');
      invalidateLocal(org, agent);
      opts.onInvalidation?.(decodeURIComponent(org), agent === undefined ? undefined : decodeURIComponent(agent));
    });
    // A sharded channel (SSUBSCRIBE): on a cluster it is served by the shard that holds the version counters.
    const subscription = subscribeShardChannel(sub, channel, {
      onLive: live,
      // Lost connection or subscription: messages may be missed, so L1 is dropped and bypassed until subscribed again.
      onLost: () => {
        l1Live = false;
        invalidateLocal(undefined, undefined);
      },
      onError: (err) => opts.logger?.warn({ err }, 'result cache: could not subscribe to invalidations again; L1 stays off until it is'),
    });
    subscription.subscribed.catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: could not subscribe to invalidations; L1 stays off until it is'));
  }

  const enc = encodeURIComponent;
  const orgVersionKey = (org: string) => guardKeys.resultOrgVersion(prefix, enc(org));
  const agentVersionKey = (org: string, agent: string) => guardKeys.resultAgentVersion(prefix, enc(org), enc(agent));
  const sharedVersionKey = (agent: string) => guardKeys.resultSharedVersion(prefix, enc(agent));
  /**
   * Hash and keys by the parts' plain JSON, for parts found cached lately: a cached job's input recurs by definition,
   * and one native stringify costs a fraction of canonicalising the input and hashing it (the larger part of an L1
   * hit's own CPU). Equal JSON is an equal canonical form for the JSON data inputs are (parsed job data, its schema's
   * output). Emptied whole when full: it holds what recurs now, and the next inputs refill it. Only parts whose
   * lookup found a value (`admitKeys`) go in, not every part seen: a first-seen input (every miss job's) would sit
   * here for the next 1024 jobs' time, ~1 KB each, long enough to be promoted to old space at a few hundred jobs a
   * second, and most never recur; so the second job of an input hashes too, and the third on does not.
   */
  const keyMemo = new Map<string, Keys>();
  // In the order the lookup and set scripts take them: the three version counters, the entry, the lock (LOCK_KEY).
  const keysFor = (p: CacheKeyParts): Keys => {
    const plain = JSON.stringify([p.orgId, p.agent, p.action, p.model, p.promptVersion, p.input]);
    const known = keyMemo.get(plain);
    if (known) return known;
    const hash = hashParts(p);
    // Frozen: one array is handed to every job with these parts (callers copy it into their script calls).
    const keys = Object.freeze([orgVersionKey(p.orgId), agentVersionKey(p.orgId, p.agent), sharedVersionKey(p.agent), guardKeys.resultEntry(prefix, hash), guardKeys.resultLock(prefix, hash)]);
    return plain.length > KEY_MEMO_MAX_CHARS ? { hash, keys } : { hash, keys, plain };
  };
  /** Remembers the keys of parts a lookup found cached (a recurring input): see keyMemo. */
  const admitKeys = (k: Keys): void => {
    if (k.plain === undefined || keyMemo.has(k.plain)) return;
    if (keyMemo.size >= KEY_MEMO_MAX) keyMemo.clear();
    keyMemo.set(k.plain, k);
  };

  /** A prepared lookup's state: what it was prepared for, the epoch before it was sent, the reply once delivered. */
  interface Prefetch {
    hash: string;
    owner: string;
    token: string;
    seen: number;
    reply?: LookupReply;
    consumed: boolean;
  }
  type LookupReply = [tag: string, hit: number, lockState: number, json?: string];
  const prefetches = new WeakMap<PreparedLookup, Prefetch>();

  /**
   * The key `prepare` computed for a job's parts, by input object, taken by the job's `singleFlight` when it is
   * given the same parts (the same input object: inputs are parsed job data, never written): hashing
   * canonicalises the whole input, the largest CPU cost of a cached job's lookup, and a job's parts are the same
   * at its claim and in its guard. Kept whether or not `prepare` returned a lookup (an L1 hit returns none).
   * Anything else hashes.
   */
  const preparedKeys = new WeakMap<object, { parts: CacheKeyParts; k: Keys }>();
  const isObject = (v: unknown): v is object => typeof v === 'object' && v !== null;

  function takePreparedKeys(p: CacheKeyParts): Keys | undefined {
    if (!isObject(p.input)) return undefined;
    const prepared = preparedKeys.get(p.input);
    const q = prepared?.parts;
    if (!q || q.orgId !== p.orgId || q.agent !== p.agent || q.action !== p.action || q.model !== p.model || q.promptVersion !== p.promptVersion) return undefined;
    preparedKeys.delete(p.input);
    return prepared!.k;
  }

  /** The prepared lookup's delivered reply for these keys, taken once (a second `singleFlight` looks again). */
  function takePrefetched(prepared: PreparedLookup | undefined, hash: string, owner: string): Prefetch | undefined {
    const pre = prepared && prefetches.get(prepared);
    if (!pre || pre.consumed || pre.reply === undefined || pre.hash !== hash || pre.owner !== owner) return undefined;
    pre.consumed = true;
    return pre;
  }

  /**
   * `lock` is a token to try to take the single-flight lock on a miss, or '' to only look. `pre`: the reply
   * of this lookup, already run inside the claim (sent with no L1 tag, so it reads as a miss or an entry).
   */
  async function lookup(p: CacheKeyParts, lock: string, owner = '', pre?: Prefetch, k = keysFor(p)) {
    const { hash, keys } = k;
    const local = pre ? undefined : l1.get(hash);
    if (local && l1Live) {
      admitKeys(k);
      return { hash, keys, tag: local.tag, found: { level: 'l1', value: JSON.parse(local.json) as T } as CacheHit<T>, lockState: 0 };
    }
    const seen = pre ? pre.seen : epoch;
    const [tag, hit, lockState, json] = pre?.reply ?? ((await lookupLua(keys, [local?.tag ?? '', lock, lockTtlMs, owner])) as LookupReply);
    let found: CacheHit<T> | null = null;
    if (hit === 1 && local) {
      found = { level: 'l1', value: JSON.parse(local.json) as T };
    } else if (hit === 2 && json !== undefined) {
      remember(hash, p, tag, json, seen);
      found = { level: 'l2', value: JSON.parse(json) as T };
    } else if (local) {
      l1.delete(hash);
    }
    if (found) admitKeys(k);
    return { hash, keys, tag, found, lockState };
  }

  /**
   * Fills L1 unless an invalidation was seen since the Redis read that produced `tag` was sent. Called for a value
   * read from L2 only: one this process stored (computed) goes to L2 alone, and enters L1 when a later lookup here
   * reads it back (the input recurred). Kept for 60 s among 10,000 entries, every miss job's answer outlived
   * several scavenges and was promoted (~0.7 KB a job), to be freed by a major collection, which is what makes the
   * tail at a moderate load; most never recur.
   */
  function remember(hash: string, p: CacheKeyParts, tag: string, json: string, seenEpoch: number): void {
    if (epoch === seenEpoch) l1.set(hash, { tag, json, org: enc(p.orgId), agent: enc(p.agent) });
  }

  /** Writes the entry (and releases `lockToken`'s lock, and appends `usage`, in the same call). */
  async function store(keys: readonly string[], tag: string, value: T, lockToken = '', usage?: SingleFlightOptions<T>['usageEntry']): Promise<boolean> {
    const json = JSON.stringify(value);
    const entry = usage ? usage.of(value) : '';
    const bill = usage?.bill?.();
    // The run sink's acknowledgements and reads go with the append (only to the stream it reads). Taken last,
    // right before the call: every ride taken is handed back.
    const rider = usage?.rider?.key === usageKey ? usage.rider : undefined;
    const ride = rider?.take();
    let reply: [number, unknown?] | undefined;
    const closesBefore = closes();
    try {
      // Without a bill its two keys are the stream's (any key of the tag: never read), and its arguments one ''.
      const billKeys = bill?.keys ?? [usageKey, usageKey];
      reply = (await setLua([...keys, usageKey, ...billKeys], [tag, json, opts.l2TtlS, lockToken, entry, usage?.field ?? '', ...(bill?.args ?? NO_BILL), ...(ride?.args ?? [])])) as [number, unknown?];
    } finally {
      // Across a reconnect the ride's part of the reply may be a re-sent call's: what the first one read is lost.
      if (ride) rider!.done(ride, closes() === closesBefore ? reply?.[1] : undefined);
    }
    return reply[0] === 1;
  }

  /**
   * The value was paid for: failing to cache it must not fail the caller. False when the write failed (then
   * nothing of it happened: the lock is still held and `usage` was not appended).
   */
  async function storeQuietly(keys: readonly string[], tag: string, value: T, lockToken = '', usage?: SingleFlightOptions<T>['usageEntry']): Promise<boolean> {
    return store(keys, tag, value, lockToken, usage).then(
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
    prepare(p, owner = '') {
      const k = keysFor(p);
      const { hash, keys } = k;
      if (isObject(p.input)) preparedKeys.set(p.input, { parts: p, k });
      if (l1Live && l1.has(hash)) {
        admitKeys(k);
        return undefined;
      }
      const pre: Prefetch = { hash, owner, token: `${owner}#${randomUUID()}`, seen: epoch, consumed: false };
      const prepared: PreparedLookup = {
        keys,
        // No L1 tag: the reply is a miss or the entry itself, whatever L1 holds by the time it is read.
        args: ['', pre.token, lockTtlMs, owner],
        deliver(reply) {
          pre.reply = reply as LookupReply;
        },
        async discard() {
          if (pre.consumed || pre.reply?.[2] !== 2) return;
          pre.consumed = true;
          await unlockLua([keys[LOCK_KEY]], [pre.token]).catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: unlock failed'));
        },
      };
      prefetches.set(prepared, pre);
      return prepared;
    },
    fromMemory(p, view) {
      if (!l1Live) return undefined;
      const k = takePreparedKeys(p) ?? keysFor(p);
      const local = l1.get(k.hash);
      if (!local) return undefined;
      admitKeys(k);
      if (!view) return JSON.parse(local.json) as T;
      if (local.view?.of === view) return JSON.parse(local.view.json) as T;
      const seen = view(JSON.parse(local.json) as T);
      local.view = { of: view, json: JSON.stringify(seen) };
      return seen;
    },
    async set(p, value) {
      return store(keysFor(p).keys, '', value);
    },
    async invalidateOrg(orgId) {
      await bumpLua([orgVersionKey(orgId)], [channel, enc(orgId)]);
    },
    async invalidateAgent(orgId, agent) {
      await bumpLua([agentVersionKey(orgId, agent)], [channel, `${enc(orgId)}\n${enc(agent)}`]);
    },
    async invalidateAgentEverywhere(agent) {
      // No org: every org's copies of the agent's answers (an org id is never empty, so '' cannot be one).
      await bumpLua([sharedVersionKey(agent)], [channel, `\n${enc(agent)}`]);
    },
    async singleFlight(p, fn, sfOpts = {}) {
      const shouldCache = sfOpts.shouldCache ?? (() => true);
      const deadline = Date.now() + waitTimeoutMs;
      const owner = sfOpts.owner ?? '';
      const k = takePreparedKeys(p) ?? keysFor(p);
      let pre = takePrefetched(sfOpts.prefetched, k.hash, owner);
      // The prefetched reply's lock (if it took one) was taken under its token: renewed, stored and freed with it.
      const token = pre?.token ?? `${owner}#${randomUUID()}`;
      let pause = 10;
      for (;;) {
        if (sfOpts.signal?.aborted) {
          if (pre?.reply?.[2] === 2) await unlockLua([k.keys[LOCK_KEY]], [token]).catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: unlock failed'));
          sfOpts.signal.throwIfAborted();
        }
        const { keys, tag, found, lockState } = await lookup(p, token, owner, pre, k);
        pre = undefined;
        if (found) return { value: found.value, from: found.level };
        if (lockState === 2) {
          const renew = setInterval(() => {
            renewLua([keys[LOCK_KEY]], [token, lockTtlMs]).catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: lock renewal failed'));
          }, Math.max(100, Math.floor(lockTtlMs / 3)));
          let released = false;
          try {
            const value = await fn();
            if (shouldCache(value)) released = await storeQuietly(keys, tag, value, token, sfOpts.usageEntry);
            return { value, from: 'call', usageAppended: released && sfOpts.usageEntry !== undefined };
          } finally {
            clearInterval(renew);
            // Released on error (or an uncached value) too, so waiters stop waiting and one of them calls through.
            if (!released) await unlockLua([keys[LOCK_KEY]], [token]).catch((err: unknown) => opts.logger?.warn({ err }, 'result cache: unlock failed'));
          }
        }
        if (Date.now() >= deadline) {
          const value = await fn();
          const appended = shouldCache(value) && (await storeQuietly(keys, tag, value, '', sfOpts.usageEntry));
          return { value, from: 'call', usageAppended: appended && sfOpts.usageEntry !== undefined };
        }
        // Another caller holds the lock: poll with backoff (jittered so waiters do not move in step).
        await sleep(Math.min(pause, Math.max(1, deadline - Date.now())) * (0.5 + Math.random() / 2), undefined, { signal: sfOpts.signal });
        pause = Math.min(pause * 2, maxPollMs);
      }
    },
  };
}
