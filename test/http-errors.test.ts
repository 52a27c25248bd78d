import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawRequest } from './helpers/raw-http.js';
import { startStack, type Stack } from './helpers/stack.js';

/** A path segment no message may repeat back. */
const MARK = 'zq9echo';
const valid = { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'st-1' } };

/**
 * Every refusal, whoever raises it (a route's schema, fastify itself, the router), is JSON
 * `{ error, details?: [{ path, message }] }`, and none repeats the request's URL.
 */
describe('HTTP error shape', () => {
  let s: Stack;
  let port: number;
  beforeAll(async () => {
    s = await startStack({ BODY_LIMIT_BYTES: String(8 * 1024) });
    await s.app.listen({ host: '127.0.0.1', port: 0 });
    port = (s.app.server.address() as AddressInfo).port;
  });
  afterAll(async () => s?.close());

  const inject = (method: 'GET' | 'POST' | 'DELETE', url: string, o: { payload?: string | object; headers?: Record<string, string> } = {}) =>
    s.app.inject({ method, url, headers: { ...s.auth, ...o.headers }, payload: o.payload });

  function expectShape(res: { statusCode: number; headers: Record<string, unknown>; body: string }, status: number, error: RegExp) {
    expect(res.statusCode, res.body).toBe(status);
    expect(String(res.headers['content-type'])).toMatch(/application\/json/);
    const body = JSON.parse(res.body);
    expect(Object.keys(body).every((k) => k === 'error' || k === 'details')).toBe(true);
    expect(body.error).toMatch(error);
    for (const d of body.details ?? []) expect(Object.keys(d).sort()).toEqual(['message', 'path']);
    expect(res.body).not.toContain(MARK);
    return body as { error: string; details?: Array<{ path: string; message: string }> };
  }

  it('answers an unknown route 404 in the error shape, without the URL', async () => {
    expectShape(await inject('GET', `/v1/${MARK}`), 404, /no route for GET/);
    expectShape(await inject('POST', `/${MARK}?x=${MARK}`, { payload: {} }), 404, /no route for POST/);
    // A method the path does not have is a 404 too.
    expectShape(await inject('DELETE', '/v1/pipelines'), 404, /no route for DELETE/);
    // Under /v1 a key is asked for first, so route names are not probed without one.
    const anonymous = await s.app.inject({ method: 'GET', url: `/v1/${MARK}` });
    expectShape(anonymous, 401, /missing bearer token/);
  });

  it("maps fastify's own body errors to clear messages", async () => {
    expectShape(await inject('POST', '/v1/jobs', { payload: { ...valid, input: { startupId: 'x'.repeat(10_000) } } }), 413, /larger than 8192 bytes/);
    expectShape(await inject('POST', '/v1/jobs', { payload: JSON.stringify(valid), headers: { 'content-type': 'application/xml' } }), 415, /unsupported content-type/);
    // text/plain too (fastify parses it by default, and the schema would refuse the string as "expected object").
    expectShape(await inject('POST', '/v1/jobs', { payload: JSON.stringify(valid), headers: { 'content-type': 'text/plain' } }), 415, /unsupported content-type/);
    expectShape(await inject('POST', '/v1/jobs', { payload: '{"agent":', headers: { 'content-type': 'application/json' } }), 400, /not valid JSON/);
    // The parser's own message would quote the body, which may hold a secret.
    const quoted = expectShape(await inject('POST', '/v1/jobs', { payload: `aq_secret_${MARK}`, headers: { 'content-type': 'application/json' } }), 400, /not valid JSON/);
    expect(quoted.error).not.toContain('aq_secret');
    // An empty JSON body is "no body": the schema names what is missing.
    const empty = expectShape(await inject('POST', '/v1/jobs', { payload: '', headers: { 'content-type': 'application/json' } }), 400, /invalid body/);
    expect(empty.details?.[0].path).toBe('(root)');
  });

  it('answers a badly encoded URL and an over-long path parameter in the same shape, without the URL', async () => {
    expectShape(await inject('GET', `/v1/jobs/${MARK}%E0%A4%A`), 400, /not valid/);
    expectShape(await inject('GET', `/v1/jobs/${MARK}${'x'.repeat(200)}`), 414, /too long/);
    // Over a real socket too: the error comes from the router, before any hook.
    const res = await rawRequest(port, `GET /v1/jobs/${MARK}%E0%A4%A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    expect(JSON.parse(res.body).error).toBeTruthy();
    expect(res.body).not.toContain(MARK);
  });

  it('names each field a schema refuses: body bare, query as query.*, headers as headers.*', async () => {
    const body = expectShape(await inject('POST', '/v1/jobs', { payload: { ...valid, extra: 1, options: { priority: 0, attempts: 3 } } }), 400, /invalid body/);
    expect(body.details).toEqual(
      expect.arrayContaining([
        { path: 'extra', message: 'unknown field "extra"' },
        { path: 'options.attempts', message: 'unknown field "attempts"' },
        expect.objectContaining({ path: 'options.priority' }),
      ]),
    );
    const query = expectShape(await inject('GET', '/v1/jobs/abc?waitMs=soon&colour=red'), 400, /invalid query/);
    expect(query.details).toEqual(expect.arrayContaining([expect.objectContaining({ path: 'query.waitMs' }), { path: 'query.colour', message: 'unknown parameter "colour"' }]));
    const orgAdmin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    const table = expectShape(await inject('POST', `/v1/knowledge/${MARK}`, { payload: { documents: [{}] }, headers: orgAdmin }), 400, /invalid path/);
    expect(table.details?.[0].path).toBe('table');
    const header = expectShape(await inject('GET', '/v1/jobs/abc/stream', { headers: { 'last-event-id': 'yesterday' } }), 400, /invalid headers/);
    expect(header.details?.[0].path).toBe('headers.last-event-id');
  });

  it('checks the key before the schema', async () => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', payload: { nonsense: true } });
    expectShape(res, 401, /missing bearer token/);
    expect(res.headers['www-authenticate']).toBe('Bearer');
  });
});
