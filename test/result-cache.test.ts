import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { canonicalJson, createResultCache, KEY_MEMO_MAX_CHARS, resultCacheHash, type CacheKeyParts, type ResultCache } from '../src/shared/cache/result-cache.js';
import type { AgentResult } from '../src/shared/core/types.js';
import { guardKeys } from '../src/shared/core/queue-keys.js';
import { okResult } from './helpers/guard-context.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, waitsTimeout } from './helpers/wait.js';
// Counted, not changed: each call is one hash of a key's parts. Injected, not vi.mock'ed: test files share a
// worker's module graph (isolate: false), so a module mocked here may already be loaded unmocked.
let hashCount = 0;
const hashes = () => hashCount;
const countingHash = (p: CacheKeyParts) => {
  hashCount++;
  return resultCacheHash(p);
};

const clients: Redis[] = [];
const client = () => {
  const r = new Redis(redisUrl());
  clients.push(r);
  return r;
};
afterAll(async () => {
  await Promise.all(clients.map((c) => c.quit()));
});

/** Two cache instances on separate clients: two worker processes sharing one Redis. */
function pair(over: Partial<Parameters<typeof createResultCache>[0]> = {}) {
  const prefix = randomPrefix();
  const redises = [client(), client()];
  const make = (redis: Redis) => createResultCache<AgentResult>({ redis, prefix, l1Max: 100, l1TtlMs: 60_000, l2TtlS: 60, hashParts: countingHash, ...over });
  return [make(redises[0]), make(redises[1]), prefix, redises] as const;
}

/** Counts the Lua calls naming `key` sent on these clients: every single-flight lookup of that key is one. */
function luaCallsNaming(redises: readonly Redis[], key: string): () => number {
  let n = 0;
  for (const r of redises) {
    const send = r.sendCommand.bind(r);
    r.sendCommand = ((cmd: Parameters<Redis['sendCommand']>[0], ...rest: unknown[]) => {
      if (/^eval/i.test(cmd.name) && cmd.args.some((a) => String(a) === key)) n++;
      return (send as (...a: unknown[]) => ReturnType<Redis['sendCommand']>)(cmd, ...rest);
    }) as Redis['sendCommand'];
  }
  return () => n;
}

/** A gated fn: `started` resolves once it runs (so the caller holds the lock), `release` lets it finish. */
function gated(value: AgentResult) {
  let release!: () => void;
  let markStarted!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const started = new Promise<void>((r) => (markStarted = r));
  const fn = async () => {
    markStarted();
    await gate;
    return value;
  };
  return { fn, started, release };
}

const parts = (over: Partial<CacheKeyParts> = {}): CacheKeyParts => ({
  orgId: randomOrg(),
  agent: 'risk',
  action: 'analyze',
  model: 'gemini-2.5-flash',
  promptVersion: 1,
  input: { name: 'acme', sector: 'fintech' },
  ...over,
});

describe('cache keys', () => {
  it('canonical JSON sorts keys at every depth and drops undefined like JSON', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { f: 1, e: undefined }], c: 'x' } })).toBe('{"a":{"c":"x","d":[3,{"f":1}]},"b":1}');
    expect(canonicalJson(undefined)).toBe('null');
  });

  it('hashes inputs that differ only in key order alike, and every other part apart', () => {
    const p = parts();
    expect(resultCacheHash({ ...p, input: { sector: 'fintech', name: 'acme' } })).toBe(resultCacheHash(p));
    for (const over of [{ orgId: 'other' }, { agent: 'x' }, { action: 'x' }, { model: 'x' }, { promptVersion: 2 }, { input: { name: 'acme' } }]) {
      expect(resultCacheHash({ ...p, ...over })).not.toBe(resultCacheHash(p));
    }
  });
});

describe('result cache', () => {
  let a: ResultCache<AgentResult>;
  let b: ResultCache<AgentResult>;
  beforeAll(() => {
    [a, b] = pair();
  });

  it('serves from L2 first in every process, the one that wrote too, then from its L1', async () => {
    const p = parts();
    expect(await a.get(p)).toBeNull();
    await a.set(p, okResult({ score: 7 }));
    // A value is kept in a process's memory only once asked for again (most miss jobs' inputs never recur).
    expect(await a.get(p)).toEqual({ level: 'l2', value: okResult({ score: 7 }) });
    expect(await a.get(p)).toEqual({ level: 'l1', value: okResult({ score: 7 }) });
    expect(await b.get(p)).toEqual({ level: 'l2', value: okResult({ score: 7 }) });
    expect(await b.get(p)).toMatchObject({ level: 'l1' });
  });

  it('a computed value goes to L2 alone: the next identical call reads it from Redis, the one after from memory', async () => {
    const [c] = pair();
    const p = parts();
    expect(await c.singleFlight(p, async () => okResult('computed'))).toMatchObject({ from: 'call' });
    expect(await c.singleFlight(p, async () => okResult('not called'))).toMatchObject({ from: 'l2', value: { data: 'computed' } });
    expect(await c.singleFlight(p, async () => okResult('not called'))).toMatchObject({ from: 'l1', value: { data: 'computed' } });
  });

  it("a computed value's store without a bill sends one '' for it, not a bill's 9 arguments: the row appended, the ride's reply handed back", async () => {
    const [c, , prefix, [redis]] = pair();
    const usageKey = guardKeys.usageStream(prefix);
    const sent: string[][] = [];
    const send = redis.sendCommand.bind(redis);
    redis.sendCommand = ((cmd: Parameters<Redis['sendCommand']>[0], ...rest: unknown[]) => {
      if (/^eval/i.test(cmd.name) && cmd.args.some((a) => String(a) === usageKey)) sent.push(cmd.args.map(String));
      return (send as (...a: unknown[]) => ReturnType<Redis['sendCommand']>)(cmd, ...rest);
    }) as Redis['sendCommand'];
    const replies: unknown[] = [];
    // A ride that reads nothing (no consumer) and acknowledges nothing: its reply is the stream's length.
    const rider = { key: usageKey, take: () => ({ args: ['g', '', 500] }), done: (_: unknown, reply: unknown) => replies.push(reply) };
    const out = await c.singleFlight(parts(), async () => okResult('computed'), { usageEntry: { field: 'r', of: () => 'the row', rider } });
    expect(out).toMatchObject({ from: 'call', usageAppended: true });
    // sha, key count, 8 keys, then tag, json, ttl, lock token, entry, field, the bill's '' and the ride's 3.
    expect(sent).toHaveLength(1);
    expect(sent[0].slice(10)).toEqual([expect.any(String), expect.any(String), '60', expect.any(String), 'the row', 'r', '', 'g', '', '500']);
    expect(replies).toEqual([[[], 1, 0]]);
    expect((await redis.xrange(usageKey, '-', '+')).map(([, f]) => f)).toEqual([['r', 'the row']]);
  });

  it('hands out copies, so a caller mutating a hit cannot change the cache', async () => {
    const p = parts();
    await a.set(p, okResult({ score: 1 }));
    const hit = await a.get(p);
    (hit!.value.data as { score: number }).score = 99;
    expect((await a.get(p))!.value.data).toEqual({ score: 1 });
  });

  it('invalidateOrg from another process is seen at once by L1 and L2', async () => {
    const p = parts();
    const sameOrgOtherAgent = { ...p, agent: 'other' };
    await a.set(p, okResult('v1'));
    await a.set(sameOrgOtherAgent, okResult('v1'));
    expect(await a.get(p)).toMatchObject({ level: 'l2' });
    expect(await a.get(p)).toMatchObject({ level: 'l1' });
    await b.invalidateOrg(p.orgId);
    expect(await a.get(p)).toBeNull();
    expect(await a.get(sameOrgOtherAgent)).toBeNull();
    expect(await b.get(p)).toBeNull();
    // New entries after the bump are served normally.
    await b.set(p, okResult('v2'));
    expect(await a.get(p)).toEqual({ level: 'l2', value: okResult('v2') });
  });

  it('invalidateAgent drops that agent of that org only', async () => {
    const p = parts();
    const otherAgent = { ...p, agent: 'other' };
    const otherOrg = { ...p, orgId: randomOrg() };
    for (const x of [p, otherAgent, otherOrg]) {
      await a.set(x, okResult('v1'));
      expect(await a.get(x)).toMatchObject({ level: 'l2' });
    }
    await b.invalidateAgent(p.orgId, p.agent);
    expect(await a.get(p)).toBeNull();
    expect(await a.get(otherAgent)).toMatchObject({ level: 'l1' });
    expect(await a.get(otherOrg)).toMatchObject({ level: 'l1' });
  });

  it('expires L1 after its TTL and L2 after its TTL', async () => {
    const [x, y, prefix] = pair({ l1TtlMs: 50, l2TtlS: 1 });
    const p = parts();
    await x.set(p, okResult('short'));
    const writtenBy = Date.now();
    const ttl = await clients[0].pttl(`${prefix}:rc:e:${resultCacheHash(p)}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(1000);
    // Time itself is the input here: the clock has to pass each TTL, counted from the write.
    const past = (ms: number) => vi.waitFor(() => expect(Date.now()).toBeGreaterThan(writtenBy + ms), { ...POLL, interval: 5 });
    await past(60);
    // L1 lapsed; the entry comes back from L2.
    expect(await x.get(p)).toMatchObject({ level: 'l2' });
    await past(1100);
    expect(await y.get(p)).toBeNull();
    expect(await x.get(p)).toBeNull();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('never stores a result computed before an invalidation', async () => {
    const p = parts();
    const { fn, started, release } = gated(okResult('computed on old data'));
    const flight = a.singleFlight(p, fn);
    await started;
    await b.invalidateOrg(p.orgId);
    release();
    expect((await flight).from).toBe('call');
    expect(await b.get(p)).toBeNull();
  });
});

describe('single flight', () => {
  it('20 concurrent identical calls across two instances run fn once and all get its value', async () => {
    const [a, b, prefix, redises] = pair();
    const p = parts();
    const lookups = luaCallsNaming(redises, `${prefix}:rc:lock:${resultCacheHash(p)}`);
    let calls = 0;
    const fn = async () => {
      calls++;
      // The holder answers once every caller has looked the key up (and all but one found it locked).
      await vi.waitFor(() => expect(lookups()).toBeGreaterThanOrEqual(20), POLL);
      return okResult({ n: calls });
    };
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).singleFlight(p, fn)));
    expect(calls).toBe(1);
    expect(results.every((r) => (r.value.data as { n: number }).n === 1)).toBe(true);
    expect(results.filter((r) => r.from === 'call')).toHaveLength(1);
  });

  it('when the lock holder fails, waiters proceed: one calls through and the rest share its result', async () => {
    const [a, b, prefix, redises] = pair();
    const p = parts();
    const lookups = luaCallsNaming(redises, `${prefix}:rc:lock:${resultCacheHash(p)}`);
    let calls = 0;
    const fn = async () => {
      calls++;
      // Fails (or answers) once every caller has looked the key up and all but the holder wait.
      await vi.waitFor(() => expect(lookups()).toBeGreaterThanOrEqual(10), POLL);
      if (calls === 1) throw new Error('upstream blew up');
      return okResult('second try');
    };
    const settled = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).singleFlight(p, fn)));
    expect(calls).toBe(2);
    const rejected = settled.filter((s) => s.status === 'rejected');
    expect(rejected).toHaveLength(1);
    expect((rejected[0] as PromiseRejectedResult).reason.message).toBe('upstream blew up');
    const values = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value.value.data] : []));
    expect(values).toEqual(Array(9).fill('second try'));
  });

  it('does not cache values shouldCache refuses', async () => {
    const [a] = pair();
    const p = parts();
    const failed: AgentResult = { ...okResult(null), success: false, error: 'bad output' };
    await a.singleFlight(p, async () => failed, { shouldCache: (r) => r.success });
    expect(await a.get(p)).toBeNull();
  });

  it('hashes a job\'s parts once: singleFlight reuses the key prepare computed for the same input object, lookup or L1 hit', async () => {
    const [a] = pair();
    const h0 = hashes();
    const hashed = () => hashes() - h0;
    let name = 'acme';
    const input = {
      get name() {
        return name;
      },
    };
    const p = parts({ input });
    const prepared = a.prepare(p, 'job-1')!;
    expect(hashed()).toBe(1);
    const first = await a.singleFlight({ ...p }, async () => okResult('computed'), { owner: 'job-1', prefetched: prepared });
    expect(first).toMatchObject({ from: 'call', value: { data: 'computed' } });
    expect(hashed()).toBe(1);
    // An equal input in another object finds the entry written under the prepared key (in L2: a computed value is kept
    // in memory, and its parts' key remembered, once found cached; so this one hashes).
    const again = await a.singleFlight({ ...p, input: { name: 'acme' } }, async () => okResult('not called'), { owner: 'job-2', prefetched: prepared });
    expect(again).toMatchObject({ from: 'l2', value: { data: 'computed' } });
    expect(hashed()).toBe(2);
    // Another input, or other parts with the same input object: their own key, not the prepared one.
    const otherInput = await a.singleFlight({ ...p, input: { name: 'other' } }, async () => okResult('other input'), { owner: 'job-4', prefetched: prepared });
    expect(otherInput).toMatchObject({ from: 'call', value: { data: 'other input' } });
    const other = await a.singleFlight({ ...p, action: 'summarize' }, async () => okResult('other'), { owner: 'job-3', prefetched: prepared });
    expect(other).toMatchObject({ from: 'call', value: { data: 'other' } });
    expect(hashed()).toBe(4);
    // A job whose claim carried no lookup (prepare returns none on an L1 hit): its singleFlight still reuses the key.
    // Other parts with that input object in between get their own key and leave the prepared one.
    a.prepare(p, 'job-5');
    expect(hashed()).toBe(4);
    expect(await a.singleFlight({ ...p, action: 'translate' }, async () => okResult('translated'), { owner: 'job-6' })).toMatchObject({ from: 'call', value: { data: 'translated' } });
    expect(hashed()).toBe(5);
    expect(await a.singleFlight({ ...p }, async () => okResult('not called'), { owner: 'job-5' })).toMatchObject({ value: { data: 'computed' } });
    expect(hashed()).toBe(5);
    // Taken once: a later call keys the input again (an input written after its job's lookup is not served a stale key).
    name = 'renamed';
    expect(await a.singleFlight({ ...p }, async () => okResult('renamed'), { owner: 'job-7' })).toMatchObject({ from: 'call', value: { data: 'renamed' } });
    expect(hashed()).toBe(6);
  });

  it('remembers the key of parts found cached: a later job\'s equal input (another object) takes it unhashed', async () => {
    const [a] = pair();
    const p = parts();
    const h0 = hashes();
    const firstKeys = a.prepare(p, 'job-1')!.keys;
    expect(hashes() - h0).toBe(1);
    // Not found cached, not remembered (most miss jobs' inputs never recur): the next equal input hashes again.
    expect(a.prepare({ ...p, input: { name: 'acme', sector: 'fintech' } }, 'job-2')!.keys).toEqual(firstKeys);
    expect(hashes() - h0).toBe(2);
    await a.singleFlight(p, async () => okResult('computed'), { owner: 'job-1' });
    expect(hashes() - h0).toBe(2);
    // Found cached (read back from L2): remembered from then on, for each job's own parsed object.
    expect(await a.get({ ...p, input: { name: 'acme', sector: 'fintech' } })).toMatchObject({ level: 'l2', value: { data: 'computed' } });
    expect(hashes() - h0).toBe(3);
    a.prepare({ ...p, input: { name: 'acme', sector: 'fintech' } }, 'job-3');
    expect(await a.get({ ...p, input: { name: 'acme', sector: 'fintech' } })).toMatchObject({ level: 'l1', value: { data: 'computed' } });
    expect(hashes() - h0).toBe(3);
    // Key order makes other JSON: hashed once more, to the same key (then remembered too).
    expect(await a.get({ ...p, input: { sector: 'fintech', name: 'acme' } })).toMatchObject({ level: 'l1' });
    expect(await a.get({ ...p, input: { sector: 'fintech', name: 'acme' } })).toMatchObject({ level: 'l1' });
    expect(hashes() - h0).toBe(4);
    // Other parts with an equal input: their own key.
    a.prepare({ ...p, model: 'gemini-2.5-pro', input: { name: 'acme', sector: 'fintech' } }, 'job-4');
    expect(hashes() - h0).toBe(5);
  });

  it('does not remember parts whose JSON is longer than KEY_MEMO_MAX_CHARS: the memo stays small whatever the inputs', async () => {
    const [a] = pair();
    const big = { name: 'acme', notes: 'x'.repeat(KEY_MEMO_MAX_CHARS) };
    const p = parts({ input: big });
    const h0 = hashes();
    await a.set(p, okResult('big'));
    // Found cached, yet hashed every time: a large input is not kept.
    expect(await a.get({ ...p, input: { ...big } })).toMatchObject({ level: 'l2' });
    expect(await a.get({ ...p, input: { ...big } })).toMatchObject({ level: 'l1' });
    a.prepare({ ...p, input: { ...big } }, 'job-2');
    expect(hashes() - h0).toBe(4);
  });

  it('a waiter stops waiting after waitTimeoutMs and calls through itself', async () => {
    const [a, b] = pair({ waitTimeoutMs: 100 });
    const p = parts();
    const { fn, started, release } = gated(okResult('holder'));
    const holder = a.singleFlight(p, fn);
    await started;
    const waiter = await b.singleFlight(p, async () => okResult('waiter'));
    expect(waiter).toMatchObject({ from: 'call', value: { data: 'waiter' } });
    release();
    expect((await holder).value.data).toBe('holder');
  });

  it('a waiter gives up when its signal aborts', async () => {
    const [a, b] = pair();
    const p = parts();
    const { fn, started, release } = gated(okResult('holder'));
    const holder = a.singleFlight(p, fn);
    await started;
    const ac = new AbortController();
    const waiter = b.singleFlight(p, async () => okResult('waiter'), { signal: ac.signal });
    ac.abort();
    await expect(waiter).rejects.toThrow(/abort/i);
    release();
    await holder;
  });
});

describe('single-flight lock lifetime', () => {
  it('lets the same owner (a re-delivered job) take over the lock its dead incarnation left', async () => {
    const [a, , prefix] = pair();
    const p = parts();
    await client().set(`${prefix}:rc:lock:${resultCacheHash(p)}`, 'job-7#dead-process', 'PX', 60_000);
    let calls = 0;
    const out = await a.singleFlight(p, async () => (calls++, okResult('fresh')), { owner: 'job-7' });
    expect(out.from).toBe('call');
    expect(calls).toBe(1);
  });

  it('makes another owner wait for a live holder, whose renewals keep a short lock alive', async () => {
    const [a, b, prefix] = pair({ lockTtlMs: 600, waitTimeoutMs: 30_000 });
    const p = parts();
    const lockKey = `${prefix}:rc:lock:${resultCacheHash(p)}`;
    const g = gated(okResult('slow'));
    const first = a.singleFlight(p, g.fn, { owner: 'job-1' });
    await g.started;
    let otherCalled = false;
    const second = b.singleFlight(p, async () => ((otherCalled = true), okResult('other')), { owner: 'job-2' });
    // Four renewals (one every third of the TTL) outlast the lock's own TTL: only renewal keeps it. A renewal
    // shows as the lock's PTTL going up; samples that miss one only undercount.
    const redis = client();
    let renewals = 0;
    let lastTtl = await redis.pttl(lockKey);
    // Taken for the TTL the owner asked for (the script hands it to SET PX as sent).
    expect(lastTtl).toBeGreaterThan(0);
    expect(lastTtl).toBeLessThanOrEqual(600);
    await vi.waitFor(
      async () => {
        const ttl = await redis.pttl(lockKey);
        expect(ttl, 'the lock lapsed').toBeGreaterThan(0);
        if (ttl > lastTtl) renewals++;
        lastTtl = ttl;
        expect(renewals).toBeGreaterThanOrEqual(4);
      },
      { ...POLL, interval: 20 },
    );
    expect(await redis.get(lockKey)).toMatch(/^job-1#/);
    g.release();
    expect((await first).from).toBe('call');
    expect((await second).from).not.toBe('call');
    expect(otherCalled).toBe(false);
  });
});
