import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createResultCache, type CacheKeyParts } from '../src/shared/cache/result-cache.js';
import { guardKeys } from '../src/shared/core/queue-keys.js';
import type { AgentResult } from '../src/shared/core/types.js';
import { okResult } from './helpers/guard-context.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { deadline, until, waitsTimeout, within, POLL } from './helpers/wait.js';
import { nodeArgsFor } from './helpers/transpiled.js';

/** How long the cache process is given to exit once its stdin ended, then once killed. */
const CHILD_EXIT_MS = 10_000;
const CHILD_KILL_MS = 5_000;

const clients: Redis[] = [];
afterAll(() => clients.forEach((c) => c.disconnect()));

/** Commands sent on a client (every command ioredis writes goes through sendCommand). */
function counted(r: Redis): () => number {
  let n = 0;
  const send = r.sendCommand.bind(r);
  r.sendCommand = ((...a: Parameters<Redis['sendCommand']>) => (n++, send(...a))) as Redis['sendCommand'];
  return () => n;
}

/** One cache as a worker process builds it: a command connection and a subscriber of its own. */
async function cacheProcess(prefix: string) {
  const redis = new Redis(redisUrl());
  const subscriber = new Redis(redisUrl());
  clients.push(redis, subscriber);
  const seen: Array<{ orgId: string; agent?: string; at: number }> = [];
  const cache = createResultCache<AgentResult>({ redis, subscriber, prefix, l1Max: 100, l1TtlMs: 60_000, l2TtlS: 60, onInvalidation: (orgId, agent) => seen.push({ orgId, agent, at: performance.now() }) });
  const sent = counted(redis);
  // Subscribed once a lookup of a stored value is served from memory.
  const probe = { orgId: randomOrg(), agent: 'probe', action: 'a', model: 'm', promptVersion: 1, input: 'probe' };
  await cache.set(probe, okResult('probe'));
  await until('L1 from memory', async () => {
    const before = sent();
    return (await cache.get(probe))?.level === 'l1' && sent() === before;
  });
  return { cache, redis, subscriber, sent, seen };
}

const parts = (orgId = randomOrg(), agent = 'risk'): CacheKeyParts => ({ orgId, agent, action: 'analyze', model: 'gemini-2.5-flash', promptVersion: 1, input: { name: 'acme' } });

describe('result cache L1 served from memory, invalidated by broadcast', () => {
  it('an L1 hit sends no Redis command (and hands out a copy)', async () => {
    const a = await cacheProcess(randomPrefix());
    const p = parts();
    await a.cache.set(p, okResult({ score: 1 }));
    // A stored value enters L1 when read back (see result-cache.test.ts).
    expect((await a.cache.get(p))?.level).toBe('l2');
    const before = a.sent();
    const times: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const t = performance.now();
      const hit = await a.cache.get(p);
      times.push(performance.now() - t);
      expect(hit?.level).toBe('l1');
      if (i === 0) (hit!.value.data as { score: number }).score = 99;
    }
    expect(a.sent()).toBe(before);
    expect((await a.cache.get(p))!.value.data).toEqual({ score: 1 });
    times.sort((x, y) => x - y);
    console.log(`[figure] L1 hit from memory, 2000 gets: p50 ${times[1000].toFixed(4)} ms, p99 ${times[1980].toFixed(4)} ms`);
  });

  it('fromMemory with a view derives it once per L1 entry and hands each caller its own copy of it', async () => {
    const a = await cacheProcess(randomPrefix());
    const p = parts();
    await a.cache.set(p, okResult({ score: 1 }));
    await a.cache.get(p);
    let derived = 0;
    const view = (v: AgentResult): AgentResult => {
      derived++;
      return { ...v, cacheHit: 'l1', durationMs: 0 };
    };
    const first = a.cache.fromMemory(p, view)!;
    expect(first).toEqual({ ...okResult({ score: 1 }), cacheHit: 'l1', durationMs: 0 });
    (first.data as { score: number }).score = 99;
    for (let i = 0; i < 5; i++) expect(a.cache.fromMemory({ ...p, input: { name: 'acme' } }, view)).toEqual({ ...okResult({ score: 1 }), cacheHit: 'l1', durationMs: 0 });
    expect(derived).toBe(1);
    // Without a view: the value as stored.
    expect(a.cache.fromMemory(p)).toEqual(okResult({ score: 1 }));
    // A new value (a new L1 entry): derived again from it.
    await a.cache.invalidateOrg(p.orgId);
    await until('the invalidation applied', () => a.cache.fromMemory(p) === undefined);
    await a.cache.set(p, okResult({ score: 2 }));
    await a.cache.get(p);
    expect(a.cache.fromMemory(p, view)).toEqual({ ...okResult({ score: 2 }), cacheHit: 'l1', durationMs: 0 });
    expect(a.cache.fromMemory(p, view)).toEqual({ ...okResult({ score: 2 }), cacheHit: 'l1', durationMs: 0 });
    expect(derived).toBe(2);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('L1 hits from memory arm no timer (lru-cache caches its clock behind a 1 ms timer unless told not to: one per job)', async () => {
    const a = await cacheProcess(randomPrefix());
    const p = parts();
    await a.cache.set(p, okResult({ score: 1 }));
    await a.cache.get(p);
    expect(a.cache.fromMemory(p)).toEqual(okResult({ score: 1 }));
    const timers = vi.spyOn(globalThis, 'setTimeout');
    try {
      // Hits across turns of the event loop for a few milliseconds: a clock cached for 1 ms expires in between.
      const t0 = performance.now();
      let hits = 0;
      while (performance.now() - t0 < 10 || hits < 20) {
        expect(a.cache.prepare(p, `job-${hits}`)).toBeUndefined();
        expect(a.cache.fromMemory(p)).toEqual(okResult({ score: 1 }));
        expect((await a.cache.get(p))?.level).toBe('l1');
        hits++;
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      expect(timers).not.toHaveBeenCalled();
    } finally {
      timers.mockRestore();
    }
  });

  it('two caches on connections of their own: once the invalidation is observed, no stale hit; an agent bump spares the org\'s other agents', async () => {
    const prefix = randomPrefix();
    const a = await cacheProcess(prefix);
    const b = await cacheProcess(prefix);
    const delays: number[] = [];
    // One guard for the 20 bumps' waits together: a POLL guard each would add up past the test's timeout.
    const bumps = deadline(POLL.timeout, 'the 20 bumps');
    for (let i = 0; i < 20; i++) {
      const byAgent = i % 2 === 1;
      const p = parts();
      const otherAgent = { ...p, agent: 'other' };
      await a.cache.set(p, okResult(`v${i}`));
      await a.cache.set(otherAgent, okResult(`v${i}`));
      for (const x of [p, otherAgent]) expect(await b.cache.get(x)).toMatchObject({ level: 'l2' });
      expect(await b.cache.get(p)).toMatchObject({ level: 'l1' });
      const n = b.seen.length;
      const t0 = performance.now();
      if (byAgent) await a.cache.invalidateAgent(p.orgId, p.agent);
      else await a.cache.invalidateOrg(p.orgId);
      await until(`bump ${i}'s broadcast seen by B`, () => b.seen.length > n, bumps);
      delays.push(b.seen[n].at - t0);
      expect(b.seen[n]).toMatchObject({ orgId: p.orgId, agent: byAgent ? p.agent : undefined });
      expect(await b.cache.get(p)).toBeNull();
      // An agent bump leaves the org's other agents in L1; an org bump drops them.
      if (byAgent) expect(await b.cache.get(otherAgent)).toMatchObject({ level: 'l1' });
      else expect(await b.cache.get(otherAgent)).toBeNull();
    }
    delays.sort((x, y) => x - y);
    console.log(`[figure] invalidation bump -> observed by the other cache (same process), 20 bumps: p50 ${delays[10].toFixed(2)} ms, max ${delays[19].toFixed(2)} ms`);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('an agent bumped in every org (shared knowledge it reads changed): every org\'s copies of it go, other agents\' stay', async () => {
    const prefix = randomPrefix();
    const a = await cacheProcess(prefix);
    const b = await cacheProcess(prefix);
    const [p, q] = [parts(randomOrg(), 'reader'), parts(randomOrg(), 'reader')];
    const other = parts(p.orgId, 'other');
    for (const x of [p, q, other]) {
      await a.cache.set(x, okResult('v'));
      expect(await b.cache.get(x)).toMatchObject({ level: 'l2' });
      expect(await b.cache.get(x)).toMatchObject({ level: 'l1' });
    }
    const n = b.seen.length;
    await a.cache.invalidateAgentEverywhere('reader');
    await until('the broadcast seen by B', () => b.seen.length > n);
    expect(b.seen[n]).toMatchObject({ orgId: '', agent: 'reader' });
    for (const x of [p, q]) {
      expect(await b.cache.get(x)).toBeNull();
      expect(await a.cache.get(x)).toBeNull();
    }
    expect(await b.cache.get(other)).toMatchObject({ level: 'l1' });
    // Stored again, under the new versions: a hit again.
    await a.cache.set(p, okResult('v2'));
    expect(await b.cache.get(p)).toMatchObject({ level: 'l2', value: { data: 'v2' } });
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('two OS processes: the other process stops serving its L1 copy once the bump reaches it; the staleness bound is reported', async () => {
    const prefix = randomPrefix();
    const a = await cacheProcess(prefix);
    const child = spawn(process.execPath, nodeArgsFor('test/fixtures/cache-process.ts'), {
      env: { ...process.env, REDIS_URL: redisUrl(), CACHE_PREFIX: prefix },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const exited = new Promise((resolve) => child.once('close', resolve));
    const lines: Array<{ ready?: boolean; seen?: { orgId: string }; at?: number; got?: string; level?: string | null }> = [];
    createInterface({ input: child.stdout! }).on('line', (l) => {
      try {
        lines.push(JSON.parse(l));
      } catch {
        // not a line of the fixture's
      }
    });
    try {
      await until('the other process subscribed', () => lines.some((l) => l.ready));
      // One guard for the 20 bumps' waits together (three answers and a bump seen in each): a POLL guard each
      // would add up past the test's timeout.
      const bumps = deadline(POLL.timeout, 'the 20 bumps');
      const get = async (id: string, p: CacheKeyParts) => {
        child.stdin!.write(`${JSON.stringify({ get: id, parts: p })}\n`);
        return (await until(`answer ${id}`, () => lines.find((l) => l.got === id), bumps)).level;
      };
      const delays: number[] = [];
      for (let i = 0; i < 20; i++) {
        const p = parts();
        await a.cache.set(p, okResult(`v${i}`));
        expect(await get(`first${i}`, p)).toBe('l2');
        expect(await get(`again${i}`, p)).toBe('l1');
        const t0 = performance.timeOrigin + performance.now();
        await a.cache.invalidateOrg(p.orgId);
        const seen = await until(`bump ${i} seen by the other process`, () => lines.find((l) => l.seen?.orgId === p.orgId), bumps);
        delays.push(seen.at! - t0);
        expect(await get(`after${i}`, p)).toBeNull();
      }
      delays.sort((x, y) => x - y);
      console.log(`[figure] invalidation bump -> observed by another OS process, 20 bumps: p50 ${delays[10].toFixed(2)} ms, max ${delays[19].toFixed(2)} ms`);
    } finally {
      // Its stdin's end closes its connections and it exits. One that does not (a connect still retrying, a
      // fixture stuck before `ready`) is killed: an unguarded wait here ended in the bare test timeout, the child
      // left running.
      child.stdin!.end();
      await within(exited, CHILD_EXIT_MS, 'the cache process to exit once its stdin ended').catch(async () => {
        child.kill('SIGKILL');
        await within(exited, CHILD_KILL_MS, 'the cache process to exit on SIGKILL');
      });
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, CHILD_EXIT_MS, CHILD_KILL_MS));

  it('a process that lost its subscriber drops L1 and checks Redis until it is subscribed again', async () => {
    const prefix = randomPrefix();
    const a = await cacheProcess(prefix);
    const b = await cacheProcess(prefix);
    const p = parts();
    await a.cache.set(p, okResult('v1'));
    expect(await b.cache.get(p)).toMatchObject({ level: 'l2' });
    expect(await b.cache.get(p)).toMatchObject({ level: 'l1' });
    b.subscriber.disconnect();
    await until('subscriber closed', () => b.subscriber.status === 'end');
    // Missed broadcast: B cannot hear this bump, yet never serves the old value.
    await a.cache.invalidateOrg(p.orgId);
    const before = b.sent();
    expect(await b.cache.get(p)).toBeNull();
    expect(b.sent()).toBeGreaterThan(before);
    await a.cache.set(p, okResult('v2'));
    expect(await b.cache.get(p)).toEqual({ level: 'l2', value: okResult('v2') });
    // Not from memory while unsubscribed: each get checks the version in Redis, and nothing is answered
    // before a claim from the L1 copy (`fromMemory`).
    const mid = b.sent();
    expect(await b.cache.get(p)).toMatchObject({ level: 'l1', value: okResult('v2') });
    expect(b.sent()).toBe(mid + 1);
    expect(b.cache.fromMemory(p)).toBeUndefined();
    await b.subscriber.connect();
    await until('L1 from memory again', async () => {
      const s0 = b.sent();
      return (await b.cache.get(p))?.level === 'l1' && b.sent() === s0;
    });
    expect(b.cache.fromMemory(p)).toEqual(okResult('v2'));
    // Each call hands out its own copy.
    b.cache.fromMemory(p)!.data = 'changed by its caller';
    expect(b.cache.fromMemory(p)).toEqual(okResult('v2'));
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('the store of a computed value appends its usage entry in the same call; a cached value appends nothing', async () => {
    const prefix = randomPrefix();
    const a = await cacheProcess(prefix);
    const stream = guardKeys.usageStream(prefix);
    const p = parts();
    const usageEntry = { field: 'r', of: (v: AgentResult) => JSON.stringify({ data: v.data }) };
    const before = a.sent();
    const first = await a.cache.singleFlight(p, async () => okResult('computed'), { usageEntry });
    // One lookup and one store: the append rode on the store.
    expect(a.sent() - before).toBe(2);
    expect(first).toMatchObject({ from: 'call', usageAppended: true });
    const second = await a.cache.singleFlight(p, async () => okResult('never'), { usageEntry });
    expect(second).toMatchObject({ from: 'l2' });
    expect(second.usageAppended).toBeUndefined();
    const third = await a.cache.singleFlight(p, async () => okResult('never'), { usageEntry });
    expect(third).toMatchObject({ from: 'l1' });
    expect(third.usageAppended).toBeUndefined();
    const entries = await a.redis.xrange(stream, '-', '+');
    expect(entries.map(([, f]) => f)).toEqual([['r', JSON.stringify({ data: 'computed' })]]);
  });
});
