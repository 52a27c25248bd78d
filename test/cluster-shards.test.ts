import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createSseParser } from '../src/producers/client/sse-parser.js';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { defineLua } from '../src/shared/infra/lua.js';
import { createRedis, redisTargetOf } from '../src/shared/infra/redis/connection.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';
import { startLocalCluster, type LocalCluster } from './helpers/cluster.js';
import { startStack, type Stack } from './helpers/stack.js';

const SHARDS = 12;
const startup = (name: string) => ({ startup: { name, industry: 'robotics', stage: 'seed', description: `${name} builds robots` } });

/**
 * QUEUE_SHARDS=12 on a real 3-primary Redis Cluster: orgs spread over twelve copies of the queue whose hash
 * tags sit four to a primary, and every path (jobs, listing, SSE, cancel, flows, pipelines, DLQ, plans,
 * cache invalidation, metrics) finds each org's data in its own shard.
 */
describe('queue shards on a Redis Cluster', () => {
  let cluster: LocalCluster;
  let s: Stack;
  const prefix = `{aq${randomUUID().slice(0, 6)}}`;
  const layout = queueShards(prefix, SHARDS);
  /** Orgs whose shards lie on every primary, two per primary. */
  const orgs: Array<{ org: string; shard: number; owner: number; auth: { authorization: string } }> = [];
  /** The job cancelled while running: it is in the dead-letter queue too (class cancelled). */
  let cancelledId = '';

  beforeAll(async () => {
    cluster = await startLocalCluster({ primaries: 3 });
    s = await startStack({ REDIS_CLUSTER_NODES: cluster.seeds, QUEUE_PREFIX: prefix, QUEUE_SHARDS: String(SHARDS), ADMIN_TOKEN: 'shards-admin-token', REDIS_AUTO_PIPELINING: 'on' }, { worker: true });
    const owners = await Promise.all(layout.prefixes.map((p) => cluster.ownerOf(p)));
    const perOwner = new Map<number, number>();
    for (let i = 0; orgs.length < 6; i++) {
      const org = `org_sh${i}_${randomUUID().slice(0, 4)}`;
      const shard = layout.ofOrg(org);
      const owner = owners[shard];
      if ((perOwner.get(owner) ?? 0) >= 2) continue;
      perOwner.set(owner, (perOwner.get(owner) ?? 0) + 1);
      orgs.push({ org, shard, owner, auth: { authorization: `Bearer ${await s.newKey(org)}` } });
    }
  }, 90_000);
  afterAll(async () => {
    await s?.close();
    await cluster?.stop();
  });

  it('lays twelve shard tags four to a primary and spreads orgs over them', async () => {
    const owners = await Promise.all(layout.prefixes.map((p) => cluster.ownerOf(p)));
    const counts = [...owners.reduce((m, o) => m.set(o, (m.get(o) ?? 0) + 1), new Map<number, number>()).values()];
    expect(counts.sort()).toEqual([4, 4, 4]);
    expect(new Set(layout.prefixes).size).toBe(SHARDS);
    const perShard = new Array<number>(SHARDS).fill(0);
    for (let i = 0; i < 1200; i++) perShard[layout.ofOrg(`org-${i}`)]++;
    // 100 orgs a shard on average: none empty, none with twice its share.
    expect(Math.min(...perShard)).toBeGreaterThan(50);
    expect(Math.max(...perShard)).toBeLessThan(200);
  });

  it('variable-key scripts for shards on different primaries, sent in one tick on one auto-pipelined connection, all run (key counts first used in that tick too)', async () => {
    const client = createRedis(redisTargetOf(s.cfg), 'worker', { enableAutoPipelining: true });
    try {
      const take = defineLua(client, 'token-bucket-take-N.lua');
      // One bucket in each shard, then two: 24 calls, eight per primary, in the same tick. The first two-bucket
      // call defines its command while every node's auto-pipeline is pending (lua.ts). Once the client knows the
      // slots: before that, its calls wait for them and are queued only after every definition.
      await take([`${layout.prefixes[0]}:agentq:tb:warm`], [10, 1, 1]);
      const one = layout.prefixes.map((p) => take([`${p}:agentq:tb:probe`], [10, 1, 1]));
      const two = layout.prefixes.map((p) => take([`${p}:agentq:tb:probe`, `${p}:agentq:tb:probe2`], [10, 1, 1, 10, 1, 1]));
      const results = await Promise.all([...one, ...two]);
      expect(results.map((r) => (r as number[])[0])).toEqual(new Array(2 * SHARDS).fill(1));
    } finally {
      client.disconnect();
    }
  });

  it('runs, lists and streams each org\'s jobs in its own shard, on every primary', async () => {
    const ids = await Promise.all(
      orgs.map(async (o) => {
        const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: o.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(`Sharded ${o.org}`) } });
        expect(post.statusCode).toBe(202);
        return post.json().id as string;
      }),
    );
    for (const [i, o] of orgs.entries()) {
      const done = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${ids[i]}?waitMs=20000`, headers: o.auth })).json();
      expect(done.state).toBe('completed');
      const list = (await s.app.inject({ method: 'GET', url: '/v1/jobs', headers: o.auth })).json() as Array<{ id: string }>;
      expect(list.map((j) => j.id)).toEqual([ids[i]]);
      // Another org cannot read it: the 404 of a missing job, from whichever shard it asks.
      const other = orgs[(i + 1) % orgs.length];
      expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${ids[i]}`, headers: other.auth })).statusCode).toBe(404);
      // The job hash is under the org's shard tag, on the primary that owns it.
      const node = new Redis(o.owner, '127.0.0.1');
      expect(await node.exists(`${layout.prefixes[o.shard]}:agent-jobs:${ids[i]}`), `job of ${o.org} on its shard's primary`).toBe(1);
      // Its shard dispatched from a reservoir leased from the model's global bucket under QUEUE_PREFIX (a
      // reservoir gets tokens only from a lease, and the shard dispatches only what it holds).
      const reservoirs = await node.keys(`${layout.prefixes[o.shard]}:agentq:tb:rpm:model:*`);
      expect(reservoirs.length, `reservoir in the shard of ${o.org}`).toBeGreaterThan(0);
      node.disconnect();
    }
    // Every primary holds data: the writes are spread, not all on one node.
    const primaries = (await cluster.commandsPerNode()).filter((n) => n.role === 'master');
    for (const n of primaries) {
      const r = new Redis(n.port, '127.0.0.1');
      expect(await r.dbsize(), `keys on primary ${n.port}`).toBeGreaterThan(0);
      r.disconnect();
    }

    // Two SSE clients at once, of orgs whose shards are on different primaries (the reader's XREAD may
    // only name streams of one slot).
    const pair = [orgs[0], orgs.find((o) => o.owner !== orgs[0].owner)!];
    const streams = await Promise.all(
      pair.map(async (o) => {
        // Held until both clients are reading, so both streams are open in the same process at once.
        const name = `Streamed ${o.org}`;
        s.emulator.script({ latencyMs: 1500, match: { promptIncludes: name } });
        const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: o.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(name), options: { stream: true } } });
        return createSseParser().feed((await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}/stream`, headers: o.auth })).body);
      }),
    );
    for (const events of streams) {
      expect(events.at(-1)?.data).toBe('[DONE]');
      expect(events.some((m) => m.event === 'message' && 'result' in JSON.parse(m.data))).toBe(true);
    }
  });

  it('cancels, fans out, runs pipelines and applies plans in the org\'s shard', async () => {
    const o = orgs[2];
    const held = `Held ${o.org}`;
    s.emulator.script({ hang: true, match: { promptIncludes: held } });
    const running = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: o.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(held) } });
    const hung = () => s.emulator.calls().find((c) => c.fault === 'hang');
    await vi.waitFor(() => expect(hung(), 'the held model call').toBeDefined(), POLL);
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${running.json().id}`, headers: o.auth })).json()).toMatchObject({ state: 'cancelling' });
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${running.json().id}?waitMs=20000`, headers: o.auth })).json()).toMatchObject({ state: 'cancelled' });
    cancelledId = running.json().id;
    // One not run yet: removed with its tombstone in one MULTI (cancel-remove-7.lua and BullMQ's removeJob), in the shard's slot.
    const parked = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: o.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(`Parked ${o.org}`), options: { delayMs: 60_000 } } });
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${parked.json().id}`, headers: o.auth })).json()).toMatchObject({ state: 'cancelled' });
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${parked.json().id}`, headers: o.auth })).json()).toMatchObject({ state: 'cancelled' });

    const tasks = ['a', 'b'].map((k) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `${k}-${o.org}` } }));
    const flow = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: o.auth, payload: { tasks } });
    expect(flow.statusCode).toBe(202);
    expect((await s.app.inject({ method: 'GET', url: `/v1/flows/${flow.json().id}?waitMs=20000`, headers: o.auth })).json()).toMatchObject({ state: 'completed' });

    const run = await s.app.inject({
      method: 'POST',
      url: '/v1/pipelines/wizard_completion',
      headers: o.auth,
      payload: { input: { companyName: 'Shard Pipe', answers: [{ question: 'What do you build?', answer: 'robots' }] } },
    });
    expect(run.statusCode).toBe(202);
    const ended = await until('the pipeline run finished', async () => {
      const r = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${run.json().id}?waitMs=20000`, headers: o.auth })).json();
      return r.state === 'completed' || r.state === 'failed' ? r : undefined;
    }, 90_000);
    expect(ended.state).toBe('completed');

    const admin = { authorization: 'Bearer shards-admin-token' };
    const put = await s.app.inject({ method: 'PUT', url: `/admin/orgs/${o.org}/plan`, headers: admin, payload: { concurrency: 3 } });
    expect(put.statusCode).toBe(200);
    expect(put.json()).toMatchObject({ org: o.org, effective: { concurrency: 3 } });
    // The plan is in the org's shard, where its dispatcher reads it, and nowhere else.
    const node = new Redis(o.owner, '127.0.0.1');
    expect(await node.hget(`${layout.prefixes[o.shard]}:fq:plan:${o.org}`, 'concurrency')).toBe('3');
    node.disconnect();

    const orgAdmin = { authorization: `Bearer ${await s.newKey(o.org, 'org-admin')}` };
    expect((await s.app.inject({ method: 'DELETE', url: '/v1/cache', headers: orgAdmin })).statusCode).toBeLessThan(300);
  }, waitsTimeout(POLL.timeout, 90_000));

  it('pages the dead-letter queue across shards oldest first, replays an entry, and sums the metrics', async () => {
    const failing = [orgs[3], orgs[4], orgs[5]];
    const ids: string[] = [];
    for (const o of failing) {
      const doomed = `Doomed ${o.org}`;
      s.emulator.script({ status: 400, times: -1, match: { promptIncludes: doomed } });
      const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: o.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: startup(doomed) } });
      const id = post.json().id as string;
      expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: o.auth })).json().state).toBe('failed');
      ids.push(id);
    }
    const operator = { authorization: `Bearer ${await s.operatorKey()}` };
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 10; page++) {
      const res = (await s.app.inject({ method: 'GET', url: `/v1/dlq?limit=1${cursor ? `&cursor=${cursor}` : ''}`, headers: operator })).json();
      seen.push(...res.entries.map((e: { id: string }) => e.id));
      cursor = res.nextCursor;
      if (!cursor) break;
    }
    // One page at a time through four shards: each entry once, in failure order (the cancelled job first).
    expect(seen).toEqual([cancelledId, ...ids]);

    s.emulator.clearFaults();
    const admin = { authorization: `Bearer ${await s.newKey(failing[1].org, 'org-admin')}` };
    const mine = (await s.app.inject({ method: 'GET', url: '/v1/dlq', headers: admin })).json();
    expect(mine.entries.map((e: { id: string }) => e.id)).toEqual([ids[1]]);
    expect((await s.app.inject({ method: 'POST', url: `/v1/dlq/${ids[1]}/retry`, headers: admin, payload: {} })).json()).toMatchObject({ id: ids[1], dlqRetries: 1 });
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${ids[1]}?waitMs=20000`, headers: failing[1].auth })).json().state).toBe('completed');

    const metrics = await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer shards-admin-token' } });
    expect(metrics.statusCode).toBe(200);
    // The failed counts of twelve agent queues, summed into one series: the cancelled job and two left.
    expect(metrics.body).toMatch(/agentq_queue_jobs\{queue="agent-jobs",state="failed"\} 3\b/);
    expect(metrics.body).toMatch(/agentq_dlq_size 3\b/);
    expect((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
  });
});
