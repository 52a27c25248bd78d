import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { usageStreamKey } from '../src/shared/core/queue-keys.js';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { createRunAppender } from '../src/shared/infra/db/run-stream.js';
import { redisUrl } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

const riskInput = { startup: { name: 'Acme Robotics', industry: 'robotics', stage: 'seed', description: 'Warehouse picking robots for mid-size retailers' } };

/** The runtime's pool, failing every query like a Postgres that is down while `down.now` is set. */
const down = { now: false };
const flaky = (pool: pg.Pool) =>
  new Proxy(pool, {
    get(target, prop, receiver) {
      if (prop === 'query' || prop === 'connect') {
        return (...args: unknown[]) =>
          down.now ? Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' })) : (target[prop] as (...a: unknown[]) => unknown).apply(target, args);
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });

/**
 * With Postgres refusing rows, a worker started over the backlog `ids` make is held (`held` names the wait); with
 * Postgres back it takes jobs again, every row of `ids` is written, and a new job completes.
 */
async function heldThenResumed(s: Stack, ids: string[], held: string) {
  down.now = true;
  const worker = await s.startWorker();
  await until(held, () => !worker.takingJobs());
  down.now = false;
  await until('the worker taking jobs again', () => worker.takingJobs());
  const rows = await s.infra.db.pool.query<{ job_id: string }>('SELECT job_id FROM agent_runs WHERE job_id = ANY($1)', [ids]);
  expect(rows.rows.map((r) => r.job_id).sort()).toEqual([...ids].sort());
  // And it runs jobs again.
  const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput } });
  expect(post.statusCode).toBe(202);
  const got = await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}?waitMs=20000`, headers: s.auth });
  expect(got.json().state).toBe('completed');
}

describe('usage backlog brake: workers stop taking jobs while usage rows cannot reach Postgres', () => {
  let s: Stack;
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  beforeAll(async () => {
    s = await startStack({ USAGE_BACKLOG_MAX_ROWS: '3' }, { pool: flaky });
  });
  afterAll(async () => {
    down.now = false;
    await s?.close();
    redis.disconnect();
  });

  it('a backlog over USAGE_BACKLOG_MAX_ROWS pauses the worker; written back, it takes jobs again and none is lost', async () => {
    const key = usageStreamKey(s.cfg.QUEUE_PREFIX);
    const appender = createRunAppender({ redis, key });
    const ids = Array.from({ length: 5 }, (_, i) => `backlog-${s.orgId}-${i}`);
    for (const id of ids) {
      await appender.record({ jobId: id, attempt: 1, orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'gemini-2.5-pro', state: 'completed', inputTokens: 1, outputTokens: 1, costUsd: 0, durationMs: 1 });
    }
    await heldThenResumed(s, ids, 'the worker held by the backlog');
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});

describe('usage backlog brake over queue shards: USAGE_BACKLOG_MAX_ROWS bounds every shard\'s stream together', () => {
  let s: Stack;
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  beforeAll(async () => {
    s = await startStack({ USAGE_BACKLOG_MAX_ROWS: '3', QUEUE_SHARDS: '2' }, { pool: flaky });
  });
  afterAll(async () => {
    down.now = false;
    await s?.close();
    redis.disconnect();
  });

  it('rows under the limit in each shard but over it together hold the worker; written back, it takes jobs again', async () => {
    // Two rows in each shard's stream: four in all, over the limit of three, though no stream alone is.
    const layout = queueShards(s.cfg.QUEUE_PREFIX, 2);
    const ids: string[] = [];
    for (const prefix of layout.prefixes) {
      const appender = createRunAppender({ redis, key: usageStreamKey(prefix) });
      for (let i = 0; i < 2; i++) {
        const id = `backlog-${s.orgId}-${ids.length}`;
        ids.push(id);
        await appender.record({ jobId: id, attempt: 1, orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'gemini-2.5-pro', state: 'completed', inputTokens: 1, outputTokens: 1, costUsd: 0, durationMs: 1 });
      }
    }
    await heldThenResumed(s, ids, 'the worker held by the backlog of both shards');
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});
