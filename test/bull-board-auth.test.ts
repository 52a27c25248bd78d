import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomOrg } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { failJobs } from './helpers/ops.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { redisUrl } from './helpers/env.js';

const ADMIN_TOKEN = 'adm-board-0d6b2f94c7e1a3';
const basic = (user: string, pass: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });

/** The first script the board page loads, e.g. `/admin/queues/static/js/main.<hash>.js`. */
function assetOf(html: string): string {
  const src = /<script defer src="([^"]+\.js)"/.exec(html)?.[1];
  if (!src) throw new Error('no script in the board page');
  return `/admin/queues/${src}`;
}

describe('Bull Board access', () => {
  let s: Stack;
  let operatorKey: string;
  let orgAdminKey: string;
  let asset: string;
  let failedId: string;

  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN }, { worker: false });
    operatorKey = await s.operatorKey();
    orgAdminKey = await s.newKey(randomOrg(), 'org-admin');
    const page = await s.app.inject({ method: 'GET', url: '/admin/queues', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    asset = assetOf(page.body);
    const conn = createRedis(redisUrl(), 'worker');
    try {
      [{ id: failedId }] = (await failJobs(s.runtime.queue, conn, s.cfg.QUEUE_PREFIX, [{ data: { orgId: s.orgId, input: { startup: { name: 'Secret Robotics' } } }, reason: 'Gemini API 503: down' }])) as Array<{ id: string }>;
    } finally {
      conn.disconnect();
    }
  });
  afterAll(async () => s?.close());

  it('answers 401 with a Basic challenge and no data for the page, its API and its assets', async () => {
    for (const url of ['/admin/queues', '/admin/queues/queue/agent-jobs', '/admin/queues/api/queues', `/admin/queues/api/queues/agent-jobs/${failedId}`, asset]) {
      const res = await s.app.inject({ method: 'GET', url });
      expect(res.statusCode, url).toBe(401);
      expect(res.headers['www-authenticate'], url).toMatch(/^Basic realm=/);
      expect(res.body, url).not.toMatch(/Secret Robotics|agent-jobs/);
    }
    const put = await s.app.inject({ method: 'PUT', url: `/admin/queues/api/queues/agent-jobs/${failedId}/retry` });
    expect(put.statusCode).toBe(401);
    expect(await s.runtime.queue.getJobState(failedId)).toBe('failed');
  });

  it('refuses wrong credentials, member keys and org-admin keys: job inputs are the operator’s only', async () => {
    expect((await s.app.inject({ method: 'GET', url: '/admin/queues', headers: basic('admin', 'not-the-token') })).statusCode).toBe(401);
    expect((await s.app.inject({ method: 'GET', url: '/admin/queues', headers: basic('root', ADMIN_TOKEN) })).statusCode).toBe(401);
    // Of the job's own org too: the board shows every org's inputs, so no tenant key opens it.
    const orgAdminOfTheJob = await s.newKey(s.orgId, 'org-admin');
    for (const key of [s.apiKey, orgAdminKey, orgAdminOfTheJob]) {
      for (const url of ['/admin/queues/api/queues?activeQueue=agent-jobs&status=failed', `/admin/queues/api/queues/agent-jobs/${failedId}`, '/admin/queues', asset]) {
        for (const headers of [{ authorization: `Bearer ${key}` }, basic('admin', key)]) {
          const res = await s.app.inject({ method: 'GET', url, headers });
          expect(res.statusCode, url).toBe(403);
          expect(res.body, url).not.toMatch(/Secret Robotics/);
        }
      }
    }
    // The positive control: the operator does see the input through the same API.
    const seen = await s.app.inject({ method: 'GET', url: `/admin/queues/api/queues/agent-jobs/${failedId}`, headers: { authorization: `Bearer ${operatorKey}` } });
    expect(seen.statusCode).toBe(200);
    expect(seen.body).toContain('Secret Robotics');
  });

  it('serves page, assets and API to the ADMIN_TOKEN (bearer or basic) and operator keys', async () => {
    for (const headers of [{ authorization: `Bearer ${ADMIN_TOKEN}` }, basic('admin', ADMIN_TOKEN), { authorization: `Bearer ${operatorKey}` }, basic('admin', operatorKey)]) {
      const page = await s.app.inject({ method: 'GET', url: '/admin/queues', headers });
      expect(page.statusCode).toBe(200);
      expect(page.headers['content-type']).toMatch(/text\/html/);
      expect((await s.app.inject({ method: 'GET', url: asset, headers })).statusCode).toBe(200);
      const api = await s.app.inject({ method: 'GET', url: '/admin/queues/api/queues?activeQueue=agent-jobs&status=failed', headers });
      expect(api.statusCode).toBe(200);
      const queues = api.json().queues;
      expect(queues.map((q: { name: string }) => q.name).sort()).toEqual(['agent-flows', 'agent-jobs', 'agent-maintenance']);
    }
  });

  it('lets the operator retry a job from the board API', async () => {
    const res = await s.app.inject({ method: 'PUT', url: `/admin/queues/api/queues/agent-jobs/${failedId}/retry`, headers: basic('admin', ADMIN_TOKEN) });
    expect(res.statusCode).toBe(204);
    expect(await s.runtime.queue.getJobState(failedId)).toBe('waiting');
  });

  it('refuses a status BullMQ would not act on with a 400 naming it, where the board answered 200 and did nothing', async () => {
    const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
    for (const url of ['/admin/queues/api/queues/agent-jobs/clean/bogus', '/admin/queues/api/queues/agent-jobs/clean/completed%20', '/admin/queues/api/queues/agent-jobs/retry/delayed']) {
      const res = await s.app.inject({ method: 'PUT', url, headers });
      expect(res.statusCode, url).toBe(400);
      expect(res.json(), url).toEqual({ error: 'invalid path', details: [{ path: 'queueStatus', message: expect.stringMatching(/completed/) }] });
    }
    // The statuses the board's page sends still work.
    expect((await s.app.inject({ method: 'PUT', url: '/admin/queues/api/queues/agent-jobs/clean/completed', headers })).statusCode).toBe(200);
    expect((await s.app.inject({ method: 'PUT', url: '/admin/queues/api/queues/agent-jobs/retry/failed', headers })).statusCode).toBe(200);
    // The documented contract says so too.
    const doc = (await s.app.inject({ method: 'GET', url: '/openapi.json' })).json();
    const clean = doc.paths['/admin/queues/api/queues/{queueName}/clean/{queueStatus}'].put.parameters.find((p: { name: string }) => p.name === 'queueStatus');
    expect(clean.schema.enum).toContain('delayed');
  });

  it("refuses a body or query the board's own schemas refuse with a 400 naming the field, where the board named none; a missing job's logs 404", async () => {
    const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
    const cases: Array<[string, string, unknown, string, string]> = [
      ['PUT', '/admin/queues/api/queues/agent-jobs/concurrency', { concurrency: -1 }, 'invalid body', 'concurrency'],
      ['PUT', '/admin/queues/api/queues/agent-jobs/concurrency', { concurrency: '3' }, 'invalid body', 'concurrency'],
      ['PATCH', `/admin/queues/api/queues/agent-jobs/${failedId}/delay`, { runAt: 'soon' }, 'invalid body', 'runAt'],
      ['PATCH', `/admin/queues/api/queues/agent-jobs/${failedId}/priority`, {}, 'invalid body', 'priority'],
      ['GET', '/admin/queues/api/queues?activeQueue=agent-jobs&page=abc', undefined, 'invalid query', 'page'],
    ];
    for (const [method, url, payload, error, path] of cases) {
      const res = await s.app.inject({ method: method as 'PUT', url, headers, ...(payload !== undefined ? { payload: payload as object } : {}) });
      expect(res.statusCode, url).toBe(400);
      expect(res.json(), `${url} ${JSON.stringify(payload)}`).toEqual({ error, details: [expect.objectContaining({ path, message: expect.stringMatching(/^ERRORS\./) })] });
    }
    // Nothing was changed by the refused calls, and a good body still reaches the board.
    expect(await s.runtime.queue.getGlobalConcurrency()).toBeNull();
    expect((await s.app.inject({ method: 'PUT', url: '/admin/queues/api/queues/agent-jobs/concurrency', headers, payload: { concurrency: 7 } })).statusCode).toBe(200);
    expect(await s.runtime.queue.getGlobalConcurrency()).toBe(7);
    await s.runtime.queue.removeGlobalConcurrency();
    // A missing job's logs are not found, where the board answered 200 [] as for a job without logs.
    const missing = await s.app.inject({ method: 'GET', url: '/admin/queues/api/queues/agent-jobs/no-such-job/logs', headers });
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toMatchObject({ error: 'job not found', details: [{ path: 'jobId' }] });
    const logs = await s.app.inject({ method: 'GET', url: `/admin/queues/api/queues/agent-jobs/${failedId}/logs`, headers });
    expect(logs.statusCode).toBe(200);
    expect((await s.app.inject({ method: 'GET', url: '/admin/queues/api/queues?activeQueue=agent-jobs&page=', headers })).statusCode).toBe(200);
  });
});

describe('Bull Board read-only, without ADMIN_TOKEN', () => {
  let s: Stack;
  let operatorKey: string;
  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN: '', BULL_BOARD_READ_ONLY: 'true' }, { worker: false });
    operatorKey = await s.operatorKey();
  });
  afterAll(async () => s?.close());

  it('accepts only operator keys, and refuses every mutation', async () => {
    expect((await s.app.inject({ method: 'GET', url: '/admin/queues', headers: basic('admin', '') })).statusCode).toBe(401);
    expect((await s.app.inject({ method: 'GET', url: '/admin/queues', headers: { authorization: 'Bearer anything' } })).statusCode).toBe(401);
    const headers = { authorization: `Bearer ${operatorKey}` };
    const api = await s.app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers });
    expect(api.statusCode).toBe(200);
    expect(api.json().queues.every((q: { readOnlyMode: boolean }) => q.readOnlyMode)).toBe(true);
    for (const [method, url] of [
      ['PUT', '/admin/queues/api/queues/agent-jobs/retry/failed'],
      ['PUT', '/admin/queues/api/queues/agent-jobs/pause'],
      ['POST', '/admin/queues/api/queues/agent-jobs/add'],
      ['PATCH', '/admin/queues/api/queues/agent-jobs/some-job/update-data'],
      ['PUT', '/admin/queues/api/queues/agent-jobs/clean/completed'],
      ['PUT', '/admin/queues/api/queues/agent-jobs/empty'],
    ] as const) {
      expect((await s.app.inject({ method, url, headers, payload: {} })).statusCode, url).toBe(403);
    }
  });
});
