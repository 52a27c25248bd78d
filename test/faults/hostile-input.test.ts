import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServerHandle } from '../../src/shared/infra/redis/redis-server.js';
import { figure } from '../helpers/faults.js';
import { rawRequest } from '../helpers/raw-http.js';
import { startStack, type Stack } from '../helpers/stack.js';

/** Rows counted per table: this stack's org's rows where the table has an org (other fault files run beside this one). */
const TABLES: Record<string, string> = {
  orgs: 'WHERE id = $1',
  api_keys: 'WHERE org_id = $1',
  agent_runs: 'WHERE org_id = $1',
  chat_facts: 'WHERE org_id = $1',
  playbooks: 'WHERE org_id = $1 OR org_id IS NULL',
  industry_packs: '',
  semantic_cache: 'WHERE org_id = $1',
  schema_migrations: '',
};
const SQL = [`'; DROP TABLE agent_runs; --`, `" OR 1=1 --`, `api_keys`, `pg_catalog.pg_tables`, `x; SELECT * FROM api_keys`, `$1::text`, `\\x00`, `%27%3B`];
const valid = { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Hostile Co', industry: 'fintech' } } };
const nest = (depth: number, leaf: string) => '['.repeat(depth) + leaf + ']'.repeat(depth);

interface Probe {
  name: string;
  method: string;
  url: string;
  body?: string;
  headers?: Record<string, string>;
}

/**
 * Requests no client should send, over real HTTP. Invalid ones must be refused with a 4xx and a JSON body
 * and leave Redis (keys, memory), the queue and the database exactly as they were; hostile but valid text
 * is stored as data and breaks nothing.
 */
describe('hostile input', () => {
  let s: Stack;
  let port: number;
  let queue: Queue;
  let redis: Redis;
  /** An org-admin of the stack's org: every org route (DLQ, cache, knowledge writes included) reaches its validation. */
  let auth: { authorization: string };

  let own: RedisServerHandle;

  beforeAll(async () => {
    // A redis-server of its own: its memory and keys are compared before and after, with other fault files
    // running beside this one.
    own = await startRedisServer();
    s = await startStack({ BODY_LIMIT_BYTES: String(256 * 1024), REDIS_URL: own.url });
    auth = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    await s.app.listen({ host: '127.0.0.1', port: 0 });
    port = (s.app.server.address() as AddressInfo).port;
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    redis = new Redis(s.cfg.REDIS_URL);
  });
  afterAll(async () => {
    redis?.disconnect();
    await queue?.close();
    await s?.close();
    await own?.stop();
  });

  /** Every key under this stack's prefix except the admission counters (a refused request is still counted). */
  async function keys(): Promise<string[]> {
    const out: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await redis.scan(cursor, 'MATCH', `${s.cfg.QUEUE_PREFIX}*`, 'COUNT', 1000);
      cursor = next;
      out.push(...batch.filter((k) => !k.includes(':adm:')));
    } while (cursor !== '0');
    return out.sort();
  }
  async function snapshot() {
    const counts: Record<string, number> = {};
    for (const [t, where] of Object.entries(TABLES)) {
      counts[t] = (await s.infra.db.pool.query(`SELECT count(*)::int AS n FROM ${t} ${where}`, where ? [s.orgId] : [])).rows[0].n;
    }
    const memory = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
    return { keys: await keys(), counts, jobs: await queue.getJobCounts(), memory };
  }

  const http = async (p: Probe) => {
    const res = await fetch(`http://127.0.0.1:${port}${p.url}`, {
      method: p.method,
      headers: { authorization: auth.authorization, ...(p.body !== undefined ? { 'content-type': 'application/json' } : {}), ...p.headers },
      body: p.body,
    });
    return { status: res.status, contentType: res.headers.get('content-type') ?? '', text: await res.text() };
  };

  function invalidProbes(): Probe[] {
    const post = (name: string, url: string, body: unknown): Probe => ({ name, method: 'POST', url, body: typeof body === 'string' ? body : JSON.stringify(body) });
    const probes: Probe[] = [
      post('oversized body (1 MB over a 256 KB limit)', '/v1/jobs', { ...valid, input: { startup: { name: 'x', description: 'y'.repeat(1024 * 1024) } } }),
      post('oversized bulk body', '/v1/jobs/bulk', { jobs: Array.from({ length: 1000 }, () => ({ ...valid, input: { startup: { name: 'z'.repeat(400) } } })) }),
      post('10k-deep array as the body', '/v1/jobs', nest(10_000, '1')),
      post('10k-deep array in a string field', '/v1/jobs', `{"agent":"RiskAnalyzer","action":"analyze_risks","input":{"startup":{"name":${nest(10_000, '"x"')}}}}`),
      post('100k-deep array as the body', '/v1/jobs', nest(100_000, '1')),
      post('10k-deep object', '/v1/jobs/bulk', '{"a":'.repeat(10_000) + '1' + '}'.repeat(10_000)),
      post('100k-deep array holding a lone surrogate', '/v1/jobs', nest(100_000, '"\\ud800"')),
      post('lone surrogate in a field', '/v1/jobs', `{"agent":"RiskAnalyzer","action":"analyze_risks","input":{"startup":{"name":"x\\udc00"}}}`),
      post('malformed JSON', '/v1/jobs', '{"agent": "RiskAnalyzer", '),
      post('__proto__ key', '/v1/jobs', '{"__proto__":{"admin":true},"agent":"RiskAnalyzer","action":"analyze_risks","input":{}}'),
      post('agent is a number', '/v1/jobs', { ...valid, agent: 123 }),
      post('action is an array', '/v1/jobs', { ...valid, action: ['analyze_risks'] }),
      post('input is a string', '/v1/jobs', { ...valid, input: 'startup' }),
      post('startup.name is an object', '/v1/jobs', { ...valid, input: { startup: { name: { $gt: '' } } } }),
      post('priority is a string', '/v1/jobs', { ...valid, options: { priority: 'high' } }),
      post('negative delay', '/v1/jobs', { ...valid, options: { delayMs: -1 } }),
      post('unknown option', '/v1/jobs', { ...valid, options: { attempts: 1000 } }),
      post('unknown top-level field', '/v1/jobs', { ...valid, orgId: 'someone-else' }),
      post('unknown agent', '/v1/jobs', { ...valid, agent: 'NoSuchAgent' }),
      post('unknown action', '/v1/jobs', { ...valid, action: 'no_such_action' }),
      post('bulk: jobs is a string', '/v1/jobs/bulk', { jobs: 'all' }),
      post('bulk: empty', '/v1/jobs/bulk', { jobs: [] }),
      post('bulk: 1001 jobs', '/v1/jobs/bulk', { jobs: Array.from({ length: 1001 }, () => valid) }),
      post('bulk: one bad job among good ones', '/v1/jobs/bulk', { jobs: [valid, valid, { ...valid, agent: 'Nope' }] }),
      post('stream: unknown agent', '/v1/stream', { ...valid, agent: 'Nope' }),
      post('flows: wrong types', '/v1/flows/parallel', { jobs: 'x' }),
      post('knowledge search: foreign table', '/v1/knowledge/search', { query: 'x', tables: ['api_keys'] }),
      post('knowledge search: threshold is a string', '/v1/knowledge/search', { query: 'x', threshold: '0; DROP TABLE orgs' }),
      { name: 'wrong content type', method: 'POST', url: '/v1/jobs', body: JSON.stringify(valid), headers: { 'content-type': 'text/plain' } },
      { name: 'usage: groupBy injection', method: 'GET', url: `/v1/usage?groupBy=${encodeURIComponent('agent; DROP TABLE agent_runs')}` },
      { name: 'usage: from injection', method: 'GET', url: `/v1/usage?from=${encodeURIComponent("2024-01-01' OR '1'='1")}` },
      { name: 'list: unknown state', method: 'GET', url: `/v1/jobs?state=${encodeURIComponent("completed' --")}` },
      { name: 'dlq: unknown class', method: 'GET', url: `/v1/dlq?class=${encodeURIComponent("x' OR 1=1")}` },
      { name: 'long poll: waitMs is text', method: 'GET', url: '/v1/jobs/abc?waitMs=forever' },
      { name: '10k-char Authorization header', method: 'GET', url: '/v1/jobs/abc', headers: { authorization: `Bearer ${'A'.repeat(10_000)}` } },
      { name: '10k-char x-request-id and custom header on a bad body', method: 'POST', url: '/v1/jobs', body: '{}', headers: { 'x-request-id': 'r'.repeat(10_000), 'x-anything': 'h'.repeat(10_000) } },
    ];
    // A model name that is a plain identifier (even `api_keys`) is a valid name; the others must be refused.
    for (const sql of SQL.filter((x) => !/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/.test(x))) probes.push(post(`model = ${sql}`, '/v1/jobs', { ...valid, options: { model: sql } }));
    for (const sql of SQL) {
      const e = encodeURIComponent(sql);
      probes.push(
        post(`agent = ${sql}`, '/v1/jobs', { ...valid, agent: sql }),
        post(`action = ${sql}`, '/v1/jobs', { ...valid, action: sql }),
        post(`knowledge table = ${sql}`, `/v1/knowledge/${e}`, { documents: [{ external_id: 'x', content: 'y' }] }),
        post(`pipeline name = ${sql}`, `/v1/pipelines/${e}`, {}),
        post(`flow preset = ${sql}`, `/v1/flows/${e}`, {}),
        { name: `job id = ${sql}`, method: 'GET', url: `/v1/jobs/${e}` },
        { name: `cancel job id = ${sql}`, method: 'DELETE', url: `/v1/jobs/${e}` },
        { name: `stream job id = ${sql}`, method: 'GET', url: `/v1/jobs/${e}/stream` },
        { name: `dlq id = ${sql}`, method: 'GET', url: `/v1/dlq/${e}` },
        { name: `dlq retry id = ${sql}`, method: 'POST', url: `/v1/dlq/${e}/retry`, body: '{}' },
        { name: `flow id = ${sql}`, method: 'GET', url: `/v1/flows/${e}` },
        { name: `pipeline run id = ${sql}`, method: 'GET', url: `/v1/pipelines/runs/${e}` },
        { name: `list agent filter = ${sql}`, method: 'GET', url: `/v1/jobs?agent=${e}` },
      );
    }
    return probes;
  }

  it('refuses invalid requests with a 4xx JSON answer and changes nothing', async () => {
    const before = await snapshot();
    const failures: string[] = [];
    const statuses: Record<number, number> = {};
    for (const p of invalidProbes()) {
      let r;
      try {
        r = await http(p);
      } catch (err) {
        failures.push(`${p.name}: request failed: ${(err as Error).message}`);
        continue;
      }
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      let json: unknown;
      try {
        json = JSON.parse(r.text);
      } catch {
        json = undefined;
      }
      if (r.status < 400 || r.status > 499) failures.push(`${p.name}: status ${r.status} ${r.text.slice(0, 200)}`);
      else if (!r.contentType.includes('application/json') || typeof (json as { error?: unknown })?.error !== 'string') failures.push(`${p.name}: not a JSON error body (${r.contentType}): ${r.text.slice(0, 200)}`);
    }

    // Bytes no HTTP client would send: invalid UTF-8 in the body and in header values.
    const bad = Buffer.from([0xc3, 0x28, 0xff, 0xfe, 0xed, 0xa0, 0x80]);
    const body = Buffer.concat([Buffer.from('{"agent":"Risk'), bad, Buffer.from('Analyzer","action":"analyze_risks","input":{"startup":{"name":"x"}}}')]);
    const raw = [
      {
        name: 'invalid UTF-8 in the agent name',
        head: `POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth.authorization}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
        body,
      },
      {
        name: 'invalid UTF-8 in the Authorization header',
        head: Buffer.concat([Buffer.from('GET /v1/jobs/abc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '), bad, Buffer.from('\r\nConnection: close\r\n\r\n')]),
        body: Buffer.alloc(0),
      },
      {
        name: 'invalid UTF-8 in x-request-id, invalid body',
        head: Buffer.concat([Buffer.from(`POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth.authorization}\r\nX-Request-Id: `), bad, Buffer.from('\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n')]),
        body: Buffer.from('{}'),
      },
    ];
    for (const r of raw) {
      const res = await rawRequest(port, r.head, r.body);
      statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      if (res.status < 400 || res.status > 499) failures.push(`${r.name}: status ${res.status} ${res.body.slice(0, 200)}`);
      else if (!(res.headers['content-type'] ?? '').includes('application/json')) failures.push(`${r.name}: not JSON: ${res.body.slice(0, 200)}`);
    }
    figure('hostile input: statuses of invalid requests', statuses);
    const after = await snapshot();
    figure('hostile input: Redis used_memory change (bytes)', after.memory - before.memory);
    expect(failures).toEqual([]);
    expect(after.keys).toEqual(before.keys);
    expect(after.jobs).toEqual(before.jobs);
    expect(after.counts).toEqual(before.counts);
    expect(after.memory - before.memory).toBeLessThan(1024 * 1024);
    // Still serving.
    expect((await http({ name: 'health', method: 'GET', url: '/healthz' })).status).toBe(200);
  }, 90_000);

  it('stores hostile but valid text as data and breaks nothing', async () => {
    const before = await snapshot();
    const text = `${SQL.join(' | ')} \u0000 \uFFFD ${'ü'.repeat(10)}`;
    const job = await http({ name: 'job', method: 'POST', url: '/v1/jobs', body: JSON.stringify({ ...valid, input: { startup: { name: SQL[0], industry: SQL[4], description: text } }, options: { idempotencyKey: SQL[1] } }) });
    expect(job.status).toBe(202);
    const { id } = JSON.parse(job.text);
    const stored = await queue.getJob(id);
    expect(stored!.data.input).toEqual({ startup: { name: SQL[0], industry: SQL[4], description: text } });
    const search = await http({ name: 'search', method: 'POST', url: '/v1/knowledge/search', body: JSON.stringify({ query: text, limit: 5 }) });
    expect(search.status).toBe(200);
    expect(Array.isArray(JSON.parse(search.text).results)).toBe(true);
    const cache = await http({ name: 'cache', method: 'DELETE', url: `/v1/cache?agent=${encodeURIComponent(SQL[0])}` });
    expect(cache.status).toBe(200);
    const usage = await http({ name: 'usage', method: 'GET', url: '/v1/usage?groupBy=agent' });
    expect(usage.status).toBe(200);
    const after = await snapshot();
    // Every table is still there with the same rows (the job is in Redis, not yet run: parked for the fair
    // dispatcher, which BullMQ counts as delayed, or already dispatched to its wait list), but for the search's
    // ledger row: its query's embedding call, billed to the org (kind 'search').
    expect(after.counts).toEqual({ ...before.counts, agent_runs: before.counts.agent_runs + 1 });
    const searchRows = await s.infra.db.pool.query("SELECT count(*)::int AS n FROM agent_runs WHERE org_id = $1 AND kind = 'search'", [s.orgId]);
    expect(searchRows.rows[0].n).toBe(1);
    const queued = (c: Record<string, number>) => (c.waiting ?? c.wait ?? 0) + (c.delayed ?? 0);
    expect(queued(after.jobs)).toBe(queued(before.jobs) + 1);
  }, 30_000);
});
