import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { FairScheduler } from '../src/shared/fair/fair-scheduler.js';
import { monitorRedis, testScheduler } from './helpers/fair.js';
import { PARK_AT_MS, parkedJobFields, parkedJobOptions } from '../src/shared/fair/park.js';
import { agentJobOptions } from '../src/shared/queue/agent-queue.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { POLL } from './helpers/wait.js';

const FLASH = 'gemini-2.5-flash';
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const defaults = agentJobOptions({ attempts: 3, keepCompletedCount: 100, keepCompletedAgeS: 3600, keepFailedCount: 50, keepFailedAgeS: 7200 });

async function setup(): Promise<{ prefix: string; redis: Redis; queue: Queue; scheduler: FairScheduler }> {
  const prefix = randomPrefix();
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const queue = new Queue('fair', { connection: redis, prefix, defaultJobOptions: defaults });
  cleanups.push(() => redis.quit());
  cleanups.push(() => queue.close());
  return { prefix, redis, queue, scheduler: testScheduler(redis, queue, prefix) };
}

interface Spec {
  id: string;
  data: unknown;
  priority?: number;
}

/** Everything BullMQ keeps of the queue: every key under its prefix, by type, event ids left out. */
async function bullState(c: { redis: Redis; queue: Queue }) {
  const base = c.queue.toKey('');
  const keys = (await c.redis.keys(`${base}*`)).sort();
  const out: Record<string, unknown> = {};
  for (const key of keys) {
    const name = key.slice(base.length);
    const type = await c.redis.type(key);
    if (type === 'hash') {
      const h = await c.redis.hgetall(key);
      // The stored options are JSON: BullMQ's script encodes them with cjson, whose key order is its own.
      out[name] = h.opts ? { ...h, opts: JSON.parse(h.opts) } : h;
    } else if (type === 'zset') out[name] = await c.redis.zrange(key, 0, -1, 'WITHSCORES');
    else if (type === 'stream') out[name] = (await c.redis.xrange(key, '-', '+')).map(([, fields]) => fields);
    else if (type === 'string') out[name] = await c.redis.get(key);
    else out[name] = type;
  }
  return out;
}

describe('parked jobs stored by the dispatcher\'s enqueue (op add)', () => {
  it('writes what BullMQ\'s own add of the same parked jobs writes: job hashes, delayed scores, events, id counter (not the marker)', async () => {
    const now = Date.now();
    const specs: Spec[] = [
      { id: 'p-1', data: { orgId: 'o', input: { text: 'a "quoted" 😀 text\n' } } },
      { id: 'p-2', data: { orgId: 'o', n: 2.5, list: [1, null, { deep: true }] }, priority: 7 },
      { id: 'p-3', data: {} },
    ];
    const byBull = await setup();
    const byFair = await setup();
    // A job already there before either add: the scores continue after it, and a second add of it is a duplicate.
    for (const c of [byBull, byFair]) await c.queue.add('j', { first: true }, parkedJobOptions('p-0', undefined, now));
    // Its marker popped, as a worker's wait would: the adds below set it again or not.
    for (const c of [byBull, byFair]) await c.redis.del(c.queue.toKey('marker'));
    await byBull.queue.addBulk(specs.map((s) => ({ name: 'j', data: s.data, opts: parkedJobOptions(s.id, s.priority, now) })));
    await byBull.queue.add('j', { again: true }, parkedJobOptions('p-0', undefined, now));
    const org = randomOrg();
    const stores = [...specs, { id: 'p-0', data: { again: true } }].map((s) => ({
      jobId: s.id,
      orgId: org,
      model: FLASH,
      estTokens: 1,
      store: parkedJobFields(byFair.queue, 'j', s.data, { ...defaults, ...parkedJobOptions(s.id, s.priority, now) }),
    }));
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(byFair.prefix)) seen.push(line);
    });
    const r = await byFair.scheduler.enqueue(stores, { dispatch: false });
    // The lanes are written last in the call.
    await vi.waitFor(() => expect(seen.some((l) => l.includes('"ZADD"') && l.includes(':fq:lane:'))).toBe(true), POLL);
    monitor.close();
    expect(r.skipped).toEqual([]);
    // The call knows the delayed scores it wrote: only p-0, stored before, is read back (to find it parked).
    expect(seen.filter((l) => l.includes('"ZSCORE"') && l.includes(byFair.queue.toKey('delayed'))).map((l) => /"ZSCORE" "[^"]*" "([^"]*)"/.exec(l)?.[1])).toEqual(['p-0']);
    const [bull, fair] = [await bullState(byBull), await bullState(byFair)];
    expect(Object.keys(bull)).toEqual(['delayed', 'events', 'id', 'marker', 'meta', 'p-0', 'p-1', 'p-2', 'p-3']);
    // All but BullMQ's delay marker, which would name the parked time (years away) and wake every worker blocked on
    // the marker for nothing: a parked job leaves only through a dispatch, whose push adds the marker it needs.
    const { marker, ...bullButMarker } = bull;
    expect(marker).toEqual(['1', String(PARK_AT_MS)]);
    expect(fair).toEqual(bullButMarker);
    // The duplicate left p-0 as it was, and said so in the events.
    expect((fair['p-0'] as Record<string, string>).data).toBe('{"first":true}');
    expect((fair.events as string[][]).map((f) => `${f[1]} ${f[3]}`)).toEqual(['added p-0', 'delayed p-0', 'added p-1', 'delayed p-1', 'added p-2', 'delayed p-2', 'added p-3', 'delayed p-3', 'duplicated p-0']);
    // Every job read back by BullMQ is the same job.
    for (const s of specs) {
      const [a, b] = [await byBull.queue.getJob(s.id), await byFair.queue.getJob(s.id)];
      expect(b!.opts).toEqual(a!.opts);
      expect(b!.data).toEqual(s.data);
      expect([b!.timestamp, b!.delay, b!.priority]).toEqual([now, PARK_AT_MS - now, s.priority ?? 0]);
    }
    // Each is laned once; p-0, parked but in no lane (as a crash between an add and its lane leaves a job), too.
    expect((await byFair.scheduler.dispatch()).promoted.sort()).toEqual(['p-0', 'p-1', 'p-2', 'p-3']);
    expect((await byFair.scheduler.dispatch()).promoted).toEqual([]);
  });

  it('sets BullMQ\'s delay marker as BullMQ\'s add does when a job delayed by BullMQ (not parked) is due first', async () => {
    const now = Date.now();
    const byBull = await setup();
    const byFair = await setup();
    // A job BullMQ itself delays for a minute (as a retry's backoff is): its time is the marker's, parked jobs or not.
    for (const c of [byBull, byFair]) await c.queue.add('j', {}, { jobId: 'd-1', delay: 60_000, timestamp: now });
    await byBull.queue.add('j', {}, parkedJobOptions('p-1', undefined, now));
    // The marker is popped by a worker's wait: gone before the parked add, which must set it again as BullMQ's does.
    for (const c of [byBull, byFair]) await c.redis.del(c.queue.toKey('marker'));
    await byBull.queue.add('j', {}, parkedJobOptions('p-2', undefined, now));
    await byFair.scheduler.enqueue(
      ['p-1', 'p-2'].map((jobId) => ({ jobId, orgId: randomOrg(), model: FLASH, estTokens: 0, store: parkedJobFields(byFair.queue, 'j', {}, { ...defaults, ...parkedJobOptions(jobId, undefined, now) }) })),
      { dispatch: false },
    );
    const marker = async (c: { redis: Redis; queue: Queue }) => c.redis.zrange(c.queue.toKey('marker'), 0, -1, 'WITHSCORES');
    expect(await marker(byBull)).toEqual(['1', String(now + 60_000)]);
    expect(await marker(byFair)).toEqual(await marker(byBull));
  });

  it('gives the jobs past a delayed timestamp\'s 4096th the top score, as BullMQ does', async () => {
    const now = Date.now();
    const top = (PARK_AT_MS + 1) * 0x1000 - 1;
    const byBull = await setup();
    const byFair = await setup();
    for (const c of [byBull, byFair]) await c.redis.zadd(c.queue.toKey('delayed'), top - 1, 'seed');
    const ids = ['c-1', 'c-2', 'c-3'];
    await byBull.queue.addBulk(ids.map((id) => ({ name: 'j', data: {}, opts: parkedJobOptions(id, undefined, now) })));
    await byFair.scheduler.enqueue(
      ids.map((jobId) => ({ jobId, orgId: randomOrg(), model: FLASH, estTokens: 0, store: parkedJobFields(byFair.queue, 'j', {}, { ...defaults, ...parkedJobOptions(jobId, undefined, now) }) })),
      { dispatch: false },
    );
    const scores = async (c: { redis: Redis; queue: Queue }) => c.redis.zrange(c.queue.toKey('delayed'), 0, -1, 'WITHSCORES');
    expect(await scores(byFair)).toEqual(await scores(byBull));
    expect((await scores(byFair)).filter((_, i) => i % 2 === 1)).toEqual([String(top - 1), String(top), String(top), String(top)]);
  });

  it('refuses to store a job that is not parked, or has a parent', async () => {
    const c = await setup();
    expect(() => parkedJobFields(c.queue, 'j', {}, { jobId: 'x' })).toThrow(/only a parked job/);
    expect(() => parkedJobFields(c.queue, 'j', {}, { ...parkedJobOptions('x'), parent: { id: 'p', queue: 'bull:q' } })).toThrow(/only a parked job/);
  });
});
