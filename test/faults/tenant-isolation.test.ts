import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { UNTHROTTLED, figure } from '../helpers/faults.js';
import { registeredRoutes } from '../helpers/route-list.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * Org B holds a valid key and knows (or guesses) every id of org A. Through every route the app has, B
 * must reach none of A's jobs, streams, dead letters, cached results, semantic cache entries or chat facts,
 * and must change none of them.
 */
describe('tenant isolation', () => {
  let s: Stack;
  let base: string;
  /** A's org-admin (chat facts, the DLQ) and B's org-admin: B probes with every org route its role opens. */
  let adminA: string;
  let keyB: string;
  const secret = `SECRETA${randomUUID().slice(0, 8)}`;
  const ids: Record<string, string> = {};

  const call = async (key: string, method: string, url: string, body?: unknown) => {
    const res = await fetch(`${base}${url}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      // Above the longest long poll used here (waitMs=20000), so a slow job is reported by the assertion, not an abort.
      signal: AbortSignal.timeout(40_000),
    });
    return { status: res.status, text: await res.text() };
  };
  const asA = (method: string, url: string, body?: unknown) => call(adminA, method, url, body);
  const asB = (method: string, url: string, body?: unknown) => call(keyB, method, url, body);
  const waitJob = async (key: string, id: string) => JSON.parse((await call(key, 'GET', `/v1/jobs/${id}?waitMs=20000`)).text);
  const riskA = { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: `${secret} Robotics`, industry: 'robotics' } } };
  const question = { agent: 'KnowledgeAssistant', action: 'answer', input: { question: `What did we decide about ${secret} pricing?`, includeChatFacts: true } };

  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, JOB_ATTEMPTS: '1', CACHE_L1_TTL_MS: '600000' }, { worker: true });
    await s.app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(s.app.server.address() as AddressInfo).port}`;
    adminA = await s.newKey(s.orgId, 'org-admin');
    keyB = await s.newKey(undefined, 'org-admin');

    // A's data of every kind: a completed (and cached) job, an idempotent job, a streamed job, a dead letter,
    // a semantic cache entry, chat facts and a flow.
    const facts = await asA('POST', '/v1/knowledge/chat_facts', { documents: [{ external_id: 'fact-1', content: `What did we decide about ${secret} pricing? We decided on 49 dollars per seat.` }] });
    expect(facts.status).toBe(200);
    ids.job = JSON.parse((await asA('POST', '/v1/jobs', riskA)).text).id;
    expect((await waitJob(s.apiKey, ids.job)).state).toBe('completed');
    ids.idem = JSON.parse((await asA('POST', '/v1/jobs', { ...riskA, input: { startup: { name: `${secret} Idem` } }, options: { idempotencyKey: 'shared-key' } })).text).id;
    ids.semantic = JSON.parse((await asA('POST', '/v1/jobs', question)).text).id;
    const answered = await waitJob(s.apiKey, ids.semantic);
    expect(answered.state).toBe('completed');
    expect(JSON.stringify(answered.result.data.sources)).toContain('chat_fact');
    const stream = await fetch(`${base}/v1/stream`, { method: 'POST', headers: { authorization: `Bearer ${s.apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ ...riskA, input: { startup: { name: `${secret} Stream` } } }) });
    ids.stream = stream.headers.get('x-job-id')!;
    expect(await stream.text()).toContain('[DONE]');
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: `${secret} Dead` }, times: 1 });
    ids.dead = JSON.parse((await asA('POST', '/v1/jobs', { ...riskA, input: { startup: { name: `${secret} Dead` } } })).text).id;
    expect((await waitJob(s.apiKey, ids.dead)).state).toBe('failed');
    await vi.waitFor(async () => expect((await asA('GET', '/v1/dlq')).text).toContain(ids.dead), { timeout: 30_000, interval: 50 });
    const flow = await asA('POST', '/v1/flows/parallel', { tasks: [{ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: secret } }] });
    expect(flow.status).toBe(202);
    ids.flow = JSON.parse(flow.text).id;
  }, 90_000);
  afterAll(async () => s?.close());

  it('B reaches none of A\'s data through any route, and changes none of it', async () => {
    const routes = registeredRoutes(s.app.printRoutes({ commonPrefix: false }));
    expect(routes.length).toBeGreaterThan(15);
    const leaks: string[] = [];
    const aIds = Object.values(ids);
    const leaked = (text: string, url: string) => text.includes(secret) || aIds.some((id) => text.includes(id) && !url.includes(encodeURIComponent(id)) && !url.includes(id));
    let probes = 0;
    for (const r of routes) {
      const params = [...r.path.matchAll(/:(\w+)/g)].map((m) => m[1]);
      // Each id-bearing route is tried with every id of A; other parameters get plausible values.
      const values = params.length ? aIds : [''];
      for (const id of values) {
        // A segment such as `:name|:id` is one node shared by routes with different parameter names: an id wins.
        let url = r.path.replace(/:\w+(?:\|:\w+)*/g, (seg: string) => {
          const names = seg.split('|').map((x) => x.slice(1));
          if (names.includes('table')) return 'chat_facts';
          if (names.length === 1 && names[0] === 'name') return 'wizard-completion';
          return encodeURIComponent(id);
        });
        url = url.replace(/\*$/, 'api/queues');
        const body = r.method === 'GET' || r.method === 'DELETE' ? undefined : {};
        const res = await asB(r.method, url, body);
        probes++;
        if (leaked(res.text, url)) leaks.push(`${r.method} ${url} -> ${res.status}: ${res.text.slice(0, 200)}`);
        if (params.length && res.status < 400) leaks.push(`${r.method} ${url} answered ${res.status} to org B: ${res.text.slice(0, 200)}`);
        // Operator surfaces refuse a tenant key. The cost dashboard (/admin/usage) admits org-admins, for their
        // own org only: what it answers B is checked for A's data by the detector above.
        if ((r.path.startsWith('/admin') && !r.path.startsWith('/admin/usage')) || r.path === '/metrics') {
          if (res.status !== 401 && res.status !== 403) leaks.push(`${r.method} ${url} answered ${res.status} to an org-admin key of org B`);
        }
      }
    }
    // Lists and searches with B's own key: nothing of A's.
    const targeted: Array<[string, string, unknown?]> = [
      ['GET', '/v1/jobs'],
      ['GET', `/v1/jobs?agent=RiskAnalyzer&limit=1000`],
      ['GET', '/v1/dlq'],
      ['GET', '/v1/usage?groupBy=agent'],
      ['POST', '/v1/knowledge/search', { query: `${secret} pricing`, tables: ['chat_facts', 'playbooks', 'industry_packs'], threshold: 0 }],
      ['POST', '/v1/dlq/retry', {}],
    ];
    for (const [method, url, body] of targeted) {
      const res = await asB(method, url, body);
      probes++;
      if (leaked(res.text, url)) leaks.push(`${method} ${url} -> ${res.status}: ${res.text.slice(0, 300)}`);
    }
    // Positive control: the same detector does see A's data when A asks, so silence above means something.
    expect(leaked((await asA('GET', '/v1/jobs')).text, '/v1/jobs')).toBe(true);
    expect(leaked((await asA('GET', '/v1/dlq')).text, '/v1/dlq')).toBe(true);
    expect((await asA('POST', '/v1/knowledge/search', targeted[4][2])).text).toContain('49 dollars per seat');
    figure('tenant isolation: routes enumerated from printRoutes()', routes.map((r) => `${r.method} ${r.path}`));
    figure('tenant isolation: requests made as org B', probes);
    expect(leaks).toEqual([]);

    // A's things are all still there and unchanged.
    expect((await waitJob(s.apiKey, ids.job)).state).toBe('completed');
    expect((await waitJob(s.apiKey, ids.dead)).state).toBe('failed');
    expect((await asA('GET', `/v1/dlq/${ids.dead}`)).status).toBe(200);
  }, 120_000);

  it('B\'s identical requests share nothing with A: result cache, semantic cache, retrieval, idempotency keys', async () => {
    const generate = () => s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream').length;
    // A's repeat is a cache hit; B's identical input is not (and B's cache invalidation does not touch A's).
    const hitA = await waitJob(s.apiKey, JSON.parse((await asA('POST', '/v1/jobs', riskA)).text).id);
    expect(hitA.result.cacheHit).toMatch(/l1|l2/);
    expect((await asB('DELETE', '/v1/cache')).status).toBe(200);
    const before = generate();
    const b = await waitJob(keyB, JSON.parse((await asB('POST', '/v1/jobs', riskA)).text).id);
    expect(b.state).toBe('completed');
    expect(b.result.cacheHit).toBeUndefined();
    expect(generate()).toBe(before + 1);
    const hitAgain = await waitJob(s.apiKey, JSON.parse((await asA('POST', '/v1/jobs', riskA)).text).id);
    expect(hitAgain.result.cacheHit).toMatch(/l1|l2/);

    // The same question: no semantic hit for B, and retrieval finds none of A's chat facts.
    const qB = await waitJob(keyB, JSON.parse((await asB('POST', '/v1/jobs', question)).text).id);
    expect(qB.state).toBe('completed');
    expect(qB.result.cacheHit).toBeUndefined();
    expect(qB.result.data.sources.filter((x: { type: string }) => x.type === 'chat_fact')).toEqual([]);
    expect(JSON.stringify(qB)).not.toContain('49 dollars per seat');

    // The same idempotency key names a different job per org.
    const idemB = await asB('POST', '/v1/jobs', { ...riskA, input: { startup: { name: 'B Idem' } }, options: { idempotencyKey: 'shared-key' } });
    expect(idemB.status).toBe(202);
    expect(JSON.parse(idemB.text).id).not.toBe(ids.idem);
    const viewB = await waitJob(keyB, JSON.parse(idemB.text).id);
    expect(JSON.stringify(viewB)).not.toContain(secret);
  }, 60_000);
});
