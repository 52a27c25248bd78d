import { get } from 'node:http';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { orgJobsKey } from '../src/shared/core/queue-keys.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import { createOrgJobIndexReader, type JobRow } from '../src/shared/queue/org-job-index.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

const TOTAL = 10_000;
const NOTE = 'x'.repeat(5000);

// Live heap after a full collection: without it, garbage makes heap figures meaningless.
v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const liveHeap = () => {
  gc();
  return process.memoryUsage().heapUsed;
};
const PAGE = 200;

describe('GET /v1/jobs (chunked listing)', () => {
  let s: Stack;
  let port: number;
  let bigOrg: string;
  let bigKey: string;

  beforeAll(async () => {
    s = await startStack({}, { worker: true, features: [streamingFeature({ listPageSize: PAGE })] });
    await s.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = s.app.server.address();
    port = typeof addr === 'object' && addr ? addr.port : 0;
    // 10k jobs of one org, delayed so the worker leaves them alone, through the producer's bulk path.
    bigOrg = `org_big_${Math.random().toString(36).slice(2, 8)}`;
    bigKey = await s.newKey(bigOrg);
    for (let i = 0; i < TOTAL; i += 1000) {
      const jobs = Array.from({ length: 1000 }, (_, j) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `s-${i + j}` }, options: { delayMs: 3_600_000 } }));
      const added = await s.runtime.deps.producer.enqueueBulk({ jobs }, { orgId: bigOrg });
      // A sizeable progress payload makes the listing (~50 MB) larger than loopback socket buffers can ever
      // grow (here tcp_rmem max 32 MB + tcp_wmem max 4 MB), so only backpressure can stop the server paging.
      await Promise.all(added.map(async ({ id }) => (await Job.fromId(s.runtime.queue, id))!.updateProgress({ note: NOTE })));
    }
  }, 120_000);
  afterAll(async () => s?.close());

  /** Streams the response body without keeping it; `onChunk` sees each piece. */
  function request(path: string, key: string, onResponse?: (res: import('node:http').IncomingMessage) => void) {
    return new Promise<{ status: number; headers: import('node:http').IncomingHttpHeaders; chunks: number; body: string }>((resolve, reject) => {
      get({ host: '127.0.0.1', port, path, headers: { authorization: `Bearer ${key}` } }, (res) => {
        let chunks = 0;
        let body = '';
        onResponse?.(res);
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          chunks++;
          body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, chunks, body }));
        res.on('error', reject);
      }).on('error', reject);
    });
  }

  it('streams 10k jobs as one JSON array in many chunks, newest first, each once', async () => {
    const r = await request('/v1/jobs', bigKey);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    expect(r.headers['transfer-encoding']).toBe('chunked');
    expect(r.headers['content-length']).toBeUndefined();
    expect(r.chunks).toBeGreaterThan(20);
    const list = JSON.parse(r.body) as Array<{ id: string; agent: string; action: string; state: string; createdAt: string }>;
    expect(list).toHaveLength(TOTAL);
    expect(new Set(list.map((j) => j.id)).size).toBe(TOTAL);
    expect(list[0]).toMatchObject({ agent: 'DealScorer', action: 'pipeline_summary', state: 'delayed', attempts: 0, progress: { note: NOTE } });
    for (let i = 1; i < list.length; i++) expect(list[i].createdAt <= list[i - 1].createdAt).toBe(true);
  });

  it('reads pages only as fast as the client takes them (backpressure), with flat memory', async () => {
    // Page reads are counted on the API's own client (its page script names the org's index as first key).
    // Not with MONITOR: ioredis misparses monitor lines that share a TCP read with MONITOR's OK under load.
    let pages = 0;
    const indexKey = orgJobsKey(s.cfg.QUEUE_PREFIX, bigOrg);
    const redis = s.runtime.deps.redis as Redis;
    // A plain wrapper, not vi.spyOn: a spy keeps every call's arguments (the pages' replies) alive on the heap.
    const send = redis.sendCommand;
    redis.sendCommand = function (this: Redis, command, stream) {
      const c = command as unknown as { name: string; args: unknown[] };
      if ((c.name === 'evalsha' || c.name === 'eval') && String(c.args[2]) === indexKey) pages++;
      return send.call(this, command, stream);
    };
    try {
      let paused: number | undefined;
      let heapWhilePaused = 0;
      const heapBefore = liveHeap();
      const r = await new Promise<{ bytes: number; objects: number }>((resolve, reject) => {
        get({ host: '127.0.0.1', port, path: '/v1/jobs', headers: { authorization: `Bearer ${bigKey}` } }, (res) => {
          let bytes = 0;
          let objects = 0;
          let tail = '';
          // Hold the response unread: the server must stop paging once the socket is full. Read on once it
          // has paged and then paged no more over three checks in a row.
          res.pause();
          let last = -1;
          let held = 0;
          vi.waitFor(
            () => {
              held = pages > 0 && pages === last ? held + 1 : 0;
              last = pages;
              expect(held, 'checks in a row without a new page').toBeGreaterThanOrEqual(3);
            },
            { timeout: 20_000, interval: 100 },
          ).then(() => {
            paused = pages;
            heapWhilePaused = liveHeap();
            res.on('data', (d: Buffer) => {
              bytes += d.length;
              const text = tail + d.toString('utf8');
              objects += text.split('"id":"').length - 1;
              tail = text.slice(-5); // shorter than the pattern, so no match is counted twice
            });
            res.resume();
          }, reject);
          res.on('end', () => resolve({ bytes, objects }));
          res.on('error', reject);
        }).on('error', reject);
      });
      expect(r.objects).toBe(TOTAL);
      expect(pages).toBeGreaterThanOrEqual(TOTAL / PAGE);
      // Socket buffers take some pages; without backpressure all of them would have been read by now.
      expect(paused).toBeLessThan(0.8 * (TOTAL / PAGE));
      // Mid-response the server holds a page or two, not the listing (buffering would hold most of it).
      expect(heapWhilePaused - heapBefore).toBeLessThan(r.bytes / 8);
    } finally {
      redis.sendCommand = send;
    }
  });

  it('filters by state, agent and since, skips jobs removed by retention, and is per org', async () => {
    const risk = (name: string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name, industry: 'robotics', stage: 'seed', description: 'Listing fixture' } } });
    const deal = (startupId: string) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId } });
    const post = async (payload: object) => {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload });
      expect(res.statusCode).toBe(202);
      const id = res.json().id as string;
      // Distinct creation times, so the newest-first order has one answer: the next job is created once the clock has moved on.
      const createdAt = (await s.runtime.queue.getJob(id))!.timestamp;
      await vi.waitFor(() => expect(Date.now()).toBeGreaterThan(createdAt), POLL);
      return id;
    };
    const waitDone = (id: string) => s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth }).then((r) => r.json());
    s.emulator.script({ status: 400, message: 'bad request', match: { promptIncludes: 'fail-me-now' } });

    const removed = await post(risk('Soon Gone'));
    const r1 = await post(risk('Done Risk'));
    const d1 = await post(deal('done-deal'));
    const f1 = await post(risk('fail-me-now'));
    const r2 = await post({ ...risk('Much Later'), options: { delayMs: 600_000 } });
    const r3 = await post({ ...risk('Never Mind'), options: { delayMs: 600_000 } });
    expect((await waitDone(removed)).state).toBe('completed');
    expect((await waitDone(r1)).state).toBe('completed');
    expect((await waitDone(d1)).state).toBe('completed');
    expect((await waitDone(f1)).state).toBe('failed');
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${r3}`, headers: s.auth })).statusCode).toBe(200);
    // Retention removes a finished job; its id is still in the index until a listing passes over it.
    await s.runtime.queue.remove(removed);

    const list = async (qs = '', key = s.apiKey) => {
      const r = await request(`/v1/jobs${qs}`, key);
      expect(r.status).toBe(200);
      return JSON.parse(r.body) as Array<{ id: string; state: string; agent: string; createdAt: string; result?: unknown; error?: string }>;
    };
    const all = await list();
    expect(all.map((j) => j.id)).toEqual([r3, r2, f1, d1, r1]);
    expect(all.map((j) => j.state)).toEqual(['cancelled', 'delayed', 'failed', 'completed', 'completed']);
    expect(all[3].result).toMatchObject({ success: true });
    expect(all[2].error).toMatch(/400/);
    expect(await s.runtime.deps.redis.zscore(orgJobsKey(s.cfg.QUEUE_PREFIX, s.orgId), removed)).toBeNull();

    expect((await list('?state=completed')).map((j) => j.id)).toEqual([d1, r1]);
    expect((await list('?state=cancelled')).map((j) => j.id)).toEqual([r3]);
    expect((await list('?agent=DealScorer')).map((j) => j.id)).toEqual([d1]);
    expect((await list('?agent=RiskAnalyzer&state=failed')).map((j) => j.id)).toEqual([f1]);
    expect((await list('?agent=RiskAnalyzer&state=delayed')).map((j) => j.id)).toEqual([r2]);
    const since = all.find((j) => j.id === f1)!.createdAt;
    expect((await list(`?since=${encodeURIComponent(since)}`)).map((j) => j.id)).toEqual([r3, r2, f1]);
    expect((await list(`?since=${Date.parse(since)}&state=delayed`)).map((j) => j.id)).toEqual([r2]);
    expect((await list('?limit=2')).map((j) => j.id)).toEqual([r3, r2]);

    // Another org sees none of them.
    expect(await list('', await s.newKey())).toEqual([]);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('rejects bad filters with 400 naming the field', async () => {
    for (const [qs, path] of [
      ['?state=sleeping', 'query.state'],
      ['?since=yesterday', 'query.since'],
      ['?agent=NoSuchAgent', 'query.agent'],
      ['?limit=0', 'query.limit'],
    ]) {
      const res = await s.app.inject({ method: 'GET', url: `/v1/jobs${qs}`, headers: s.auth });
      expect(res.statusCode, qs).toBe(400);
      expect(res.json().details.map((d: { path: string }) => d.path)).toContain(path);
    }
    const unknown = await s.app.inject({ method: 'GET', url: '/v1/jobs?colour=red', headers: s.auth });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json().details[0].message).toMatch(/colour/);
    expect((await s.app.inject({ method: 'GET', url: '/v1/jobs' })).statusCode).toBe(401);
  });
});

describe('org job index pages (the cursor between two pages)', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => s?.close());

  const reader = () => {
    const cell = s.runtime.deps.cells[0];
    const k = cell.queue.keys;
    return createOrgJobIndexReader({ redis: s.runtime.deps.redis, prefix: cell.prefix, keys: { job: k[''], completed: k.completed, failed: k.failed, delayed: k.delayed, prioritized: k.prioritized, waitingChildren: k['waiting-children'], active: k.active } });
  };
  /** Completed jobs of `org` enqueued at `at` (a bulk request's jobs share one score). */
  const completedJobs = async (org: string, at: number, ids: string[]) => {
    const { redis, cells } = s.runtime.deps;
    const k = cells[0].queue.keys;
    for (const id of ids) {
      await redis.hset(`${k['']}${id}`, 'name', 'DealScorer:pipeline_summary', 'timestamp', String(at), 'finishedOn', String(at + 5));
      await redis.zadd(k.completed, at + 5, id);
      await redis.zadd(orgJobsKey(cells[0].prefix, org), at, id);
    }
  };
  const listAll = async (org: string, pageSize: number) => {
    const ids: string[] = [];
    for await (const page of reader().pages(org, {}, pageSize)) for (const r of page) ids.push(r.id);
    return ids;
  };

  it('lists every live job once when jobs already listed at the cursor\'s score leave the index between pages', async () => {
    const org = `org_cursor_${Math.random().toString(36).slice(2, 8)}`;
    const ids = ['j1', 'j2', 'j3', 'j4', 'j5', 'j6'].map((j) => `${org}-${j}`);
    await completedJobs(org, Date.now(), ids);
    const pages = reader().pages(org, {}, 2);
    const first = await pages.next();
    const seen = first.value!.map((r: JobRow) => r.id);
    expect(seen).toHaveLength(2);
    // Retention removes the two jobs just listed; another listing of the org (a dashboard's poll) drops their index entries.
    const k = s.runtime.deps.cells[0].queue.keys;
    for (const id of seen) await s.runtime.deps.redis.del(`${k['']}${id}`);
    expect(await listAll(org, 100)).toEqual([...ids].reverse().filter((id) => !seen.includes(id)));
    for (let p = await pages.next(); !p.done; p = await pages.next()) seen.push(...p.value.map((r) => r.id));
    expect(seen).toEqual([...ids].reverse());
  });

  it('pages neither repeat nor skip across scores and within one, whatever the page size', async () => {
    const org = `org_pages_${Math.random().toString(36).slice(2, 8)}`;
    const at = Date.now();
    // Three bulks of different sizes, and ids that do not sort like their enqueue order.
    await completedJobs(org, at, ['c', 'a', 'e', 'b', 'd']);
    await completedJobs(org, at - 1, ['z', 'y']);
    await completedJobs(org, at - 2, ['m', 'k', 'x']);
    const expected = ['e', 'd', 'c', 'b', 'a', 'z', 'y', 'x', 'm', 'k'];
    for (const size of [1, 2, 3, 4, 5, 100]) expect(await listAll(org, size), `page size ${size}`).toEqual(expected);
    // A job enqueued between two pages is newer than the cursor: the listing under way does not repeat nor lose one.
    const pages = reader().pages(org, {}, 3);
    const seen = (await pages.next()).value!.map((r: JobRow) => r.id);
    await completedJobs(org, at + 1, ['newer']);
    for (let p = await pages.next(); !p.done; p = await pages.next()) seen.push(...p.value.map((r) => r.id));
    expect(seen).toEqual(expected);
  });
});
