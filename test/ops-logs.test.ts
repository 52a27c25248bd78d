import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { captureLogs, marker, riskJob, type CapturedLogs } from './helpers/ops.js';

const ADMIN_TOKEN = 'adm-logs-93f0c2a4d18e6b7';

describe('logs', () => {
  let s: Stack;
  let logs: CapturedLogs;
  let operatorKey: string;
  let orgAdminKey: string;

  beforeAll(async () => {
    logs = captureLogs('debug');
    s = await startStack({ ADMIN_TOKEN }, { worker: true, logger: logs.logger });
    operatorKey = await s.operatorKey();
    orgAdminKey = await s.newKey(randomOrg(), 'org-admin');
  });
  afterAll(async () => s?.close());

  it("carries the caller's x-request-id from the HTTP request to the worker's lines for that job", async () => {
    const requestId = `req-${randomUUID()}`;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { ...s.auth, 'x-request-id': requestId }, payload: riskJob(marker()) });
    expect(post.statusCode).toBe(202);
    expect(post.headers['x-request-id']).toBe(requestId);
    const id = post.json().id;
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth })).json().state).toBe('completed');
    const done = await vi.waitFor(
      () => {
        const line = logs.lines().find((l) => l.jobId === id && l.msg === 'job completed');
        expect(line, 'worker log line').toBeDefined();
        return line!;
      },
      { timeout: 20_000, interval: 20 },
    );
    expect(done).toMatchObject({ requestId, jobId: id, orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks' });
    // Every worker line about this job is traceable, not just the last one.
    const workerLines = logs.lines().filter((l) => l.jobId === id && l.agent);
    expect(workerLines.length).toBeGreaterThan(0);
    expect(workerLines.every((l) => l.requestId === requestId)).toBe(true);
  });

  it("binds the caller's org to the request's lines after auth (once, after requestId), as a child of fastify's request logger did", async () => {
    const requestId = `req-${randomUUID()}`;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { ...s.auth, 'x-request-id': requestId }, payload: riskJob(marker()) });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    const enqueued = logs.raw().find((l) => l.includes(`"jobId":"${id}"`) && l.includes('"msg":"job enqueued"'));
    expect(enqueued, 'the handler line').toBeDefined();
    // Each binding once, in the order fastify's child and then the auth hook's child wrote them.
    expect(enqueued!.match(/"requestId":/g)).toHaveLength(1);
    expect(enqueued!.match(/"orgId":/g)).toHaveLength(1);
    expect(enqueued!.indexOf(`"requestId":"${requestId}","orgId":"${s.orgId}"`)).toBeGreaterThan(0);
    // fastify's own lines go through the reply's logger, made before auth: they carry the request id alone.
    const completed = logs.lines().find((l) => l.requestId === requestId && l.msg === 'request completed');
    expect(completed).toBeDefined();
    expect(completed!.orgId).toBeUndefined();
  });

  it('never writes an API key or the admin token, whichever way they were sent, nor a key made through the API', async () => {
    const basic = (user: string, pass: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });
    const calls = [
      { method: 'GET' as const, url: '/v1/dlq', headers: s.auth },
      { method: 'GET' as const, url: '/v1/dlq', headers: { authorization: `Bearer ${operatorKey}` } },
      { method: 'GET' as const, url: '/v1/keys', headers: { authorization: `Bearer ${orgAdminKey}` } },
      { method: 'GET' as const, url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } },
      { method: 'GET' as const, url: '/admin/queues', headers: basic('admin', ADMIN_TOKEN) },
      { method: 'GET' as const, url: '/admin/queues/api/queues', headers: basic('admin', operatorKey) },
      { method: 'GET' as const, url: '/admin/queues', headers: basic('admin', `${ADMIN_TOKEN}x`) },
      { method: 'GET' as const, url: '/v1/jobs/nope', headers: { authorization: `Bearer ${s.apiKey}x` } },
    ];
    for (const c of calls) await s.app.inject(c);
    // A key made through the API: its secret is in that one answer and in no log line.
    const made = await s.app.inject({ method: 'POST', url: '/v1/keys', headers: { authorization: `Bearer ${orgAdminKey}` }, payload: { role: 'org-admin' } });
    expect(made.statusCode).toBe(201);
    const madeKey = made.json().key as string;
    expect(logs.lines().some((l) => l.msg === 'api key created' && l.keyId === made.json().id)).toBe(true);
    const raw = logs.raw();
    expect(raw.length).toBeGreaterThan(calls.length);
    // The secret part of a key is its last 32 characters (`aq_<16 hex id>_<32 base64url>`); base64url may
    // itself contain '_', so it is cut by length, not split on '_'.
    const secretPart = (key: string) => key.slice(-32);
    const keys = [s.apiKey, operatorKey, orgAdminKey, madeKey];
    const secrets = [...keys, ...keys.map(secretPart), ADMIN_TOKEN, Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')];
    for (const secret of secrets) expect(raw.filter((line) => line.includes(secret))).toEqual([]);
  });
});
