import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { captureLogs, marker, riskJob, type CapturedLogs } from './helpers/ops.js';

const ADMIN_TOKEN = 'adm-logs-93f0c2a4d18e6b7';

describe('logs', () => {
  let s: Stack;
  let logs: CapturedLogs;
  let adminKey: string;

  beforeAll(async () => {
    logs = captureLogs('debug');
    s = await startStack({ ADMIN_TOKEN }, { worker: true, logger: logs.logger });
    adminKey = await s.newKey(randomOrg(), 'admin');
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

  it('never writes an API key or the admin token, whichever way they were sent', async () => {
    const basic = (user: string, pass: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });
    const calls = [
      { method: 'GET' as const, url: '/v1/dlq', headers: s.auth },
      { method: 'GET' as const, url: '/v1/dlq', headers: { authorization: `Bearer ${adminKey}` } },
      { method: 'GET' as const, url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } },
      { method: 'GET' as const, url: '/admin/queues', headers: basic('admin', ADMIN_TOKEN) },
      { method: 'GET' as const, url: '/admin/queues/api/queues', headers: basic('admin', adminKey) },
      { method: 'GET' as const, url: '/admin/queues', headers: basic('admin', `${ADMIN_TOKEN}x`) },
      { method: 'GET' as const, url: '/v1/jobs/nope', headers: { authorization: `Bearer ${s.apiKey}x` } },
    ];
    for (const c of calls) await s.app.inject(c);
    const raw = logs.raw();
    expect(raw.length).toBeGreaterThan(calls.length);
    // The secret part of a key is its last 32 characters (`aq_<16 hex id>_<32 base64url>`); base64url may
    // itself contain '_', so it is cut by length, not split on '_'.
    const secretPart = (key: string) => key.slice(-32);
    const secrets = [s.apiKey, adminKey, ADMIN_TOKEN, secretPart(s.apiKey), secretPart(adminKey), Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')];
    for (const secret of secrets) expect(raw.filter((line) => line.includes(secret))).toEqual([]);
  });
});
