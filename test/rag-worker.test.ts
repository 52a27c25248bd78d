import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { agentqPrefix, guardKeys } from '../src/shared/core/queue-keys.js';
import { redisUrl } from './helpers/env.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';
import { startStack, type Stack } from './helpers/stack.js';

describe('RAG and the semantic cache through real jobs', () => {
  let s: Stack;
  let orgAdmin: { authorization: string };
  let operator: { authorization: string };
  let orgB: { authorization: string };
  const tag = `t${Date.now()}`;

  beforeAll(async () => {
    s = await startStack({}, { worker: true });
    orgAdmin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    operator = { authorization: `Bearer ${await s.operatorKey()}` };
    orgB = { authorization: `Bearer ${await s.newKey()}` };
  });
  afterAll(async () => s?.close());

  const ask = async (question: string, auth = s.auth, extra: object = {}) => {
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { agent: 'KnowledgeAssistant', action: 'answer', input: { question, includeChatFacts: true, ...extra } } });
    expect(post.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}?waitMs=20000`, headers: auth })).json();
    expect(view.state).toBe('completed');
    return view.result;
  };

  it('ingests documents, refusing unknown tables, bad rows, members, and tenant writes to shared tables', async () => {
    const facts = await s.app.inject({
      method: 'POST',
      url: '/v1/knowledge/chat_facts',
      headers: orgAdmin,
      payload: { documents: [{ external_id: `${tag}-f1`, content: `Our ${tag} churn rate is four percent monthly among pilot customers`, fact_type: 'metric' }] },
    });
    expect(facts.statusCode).toBe(200);
    expect(facts.json()).toMatchObject({ inserted: 1, total: 1 });
    const again = await s.app.inject({
      method: 'POST',
      url: '/v1/knowledge/chat_facts',
      headers: orgAdmin,
      payload: { documents: [{ external_id: `${tag}-f1`, content: `Our ${tag} churn rate is four percent monthly among pilot customers`, fact_type: 'metric' }] },
    });
    expect(again.json()).toMatchObject({ inserted: 0, updated: 1 });
    const playbook = await s.app.inject({
      method: 'POST',
      url: '/admin/knowledge/playbooks',
      headers: operator,
      payload: { documents: [{ external_id: `${tag}-p1`, title: `What is our ${tag} churn rate among pilot customers`, description: 'Measure churn among pilot customers monthly and interview churned customers' }] },
    });
    expect(playbook.statusCode).toBe(200);
    const pack = { documents: [{ external_id: 'x', industry: 'a', display_name: 'b' }] };
    // A member writes no knowledge; an org-admin only its org's rows; shared rows are the operator's.
    expect((await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: s.auth, payload: { documents: [{ external_id: 'm', content: 'member' }] } })).statusCode).toBe(403);
    expect((await s.app.inject({ method: 'POST', url: '/v1/knowledge/industry_packs', headers: s.auth, payload: pack })).statusCode).toBe(403);
    expect((await s.app.inject({ method: 'POST', url: '/admin/knowledge/industry_packs', headers: orgAdmin, payload: pack })).statusCode).toBe(403);
    const shared = await s.app.inject({ method: 'POST', url: '/v1/knowledge/industry_packs', headers: orgAdmin, payload: pack });
    expect(shared.statusCode).toBe(400);
    expect(shared.json().details[0]).toMatchObject({ path: 'table', message: expect.stringContaining('/admin/knowledge') });
    expect((await s.app.inject({ method: 'POST', url: '/admin/knowledge/chat_facts', headers: operator, payload: { documents: [{ external_id: 'x', content: 'y' }] } })).statusCode).toBe(400);
    const unknown = await s.app.inject({ method: 'POST', url: '/v1/knowledge/users', headers: orgAdmin, payload: { documents: [{ external_id: 'x' }] } });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json().details[0].path).toBe('table');
    const bad = await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: orgAdmin, payload: { documents: [{ external_id: 'ok', content: 'fine' }, { external_id: 'bad', content: 'x', confidence: 7 }] } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().details.map((d: { path: string }) => d.path).join(' ')).toMatch(/documents\.1.*confidence/);
  });

  it('answers with numbered citations and sources, and never shows one org another org’s facts', async () => {
    const a = await ask(`What is our ${tag} churn rate among pilot customers?`);
    expect(a.data.sources.length).toBeGreaterThan(0);
    const types = a.data.sources.map((x: { type: string }) => x.type);
    expect(types).toContain('chat_fact');
    expect(a.data.citations.every((n: number) => n >= 1 && n <= a.data.sources.length)).toBe(true);
    const b = await ask(`What is our ${tag} churn rate among pilot customers?`, orgB);
    expect(b.cacheHit).toBeUndefined();
    expect(b.data.sources.map((x: { type: string }) => x.type)).not.toContain('chat_fact');
    expect(b.data.sources.map((x: { type: string }) => x.type)).toContain('playbook');
    const search = await s.app.inject({ method: 'POST', url: '/v1/knowledge/search', headers: orgB, payload: { query: `${tag} churn rate`, tables: ['chat_facts'] } });
    expect(search.json().results).toEqual([]);
  });

  it('says so when nothing relevant is in the context', async () => {
    const r = await ask('zebra xylophone quantum marmalade', s.auth, { includePlaybooks: false, includeIndustryPacks: false });
    expect(r.data.foundRelevantContext).toBe(false);
    expect(r.data.sources).toEqual([]);
  });

  it('serves a paraphrase from the semantic cache, but not an unrelated question or another org', async () => {
    const q = `How can we lower ${tag} customer churn in the first quarter`;
    const first = await ask(q);
    expect(first.cacheHit).toBeUndefined();
    const para = await ask(`How can we lower ${tag} customer churn in the first quarter?`);
    expect(para.cacheHit).toBe('semantic');
    expect(para.costUsd).toBe(0);
    expect(para.data).toEqual(first.data);
    const unrelated = await ask(`Which ${tag} accounting software suits a hardware startup`);
    expect(unrelated.cacheHit).toBeUndefined();
    const other = await ask(q, orgB);
    expect(other.cacheHit).toBeUndefined();
  });

  it('a paraphrase about another startup, or drawing on other tables, is not answered from the semantic cache', async () => {
    const q = `What ${tag} onboarding steps cut time to first value for our pilot`;
    const scoped = (startupId: string, extra: object = {}) => ask(q, s.auth, { startupId, ...extra });
    expect((await scoped('s1')).cacheHit).toBeUndefined();
    const para = (startupId: string, extra: object = {}) => ask(`${q}?`, s.auth, { startupId, ...extra });
    expect((await para('s2')).cacheHit).toBeUndefined();
    expect((await para('s1', { includeChatFacts: false })).cacheHit).toBeUndefined();
    expect((await para('s1')).cacheHit).toBe('semantic');
  });

  it('an ingest invalidates the cached answers of the agents that search the table: its org\'s for org rows, every org\'s for shared rows', async () => {
    const q = `Which ${tag} pricing page layout converts best for self-serve signups`;
    const cached = async (auth: { authorization: string }) => (await ask(q, auth)).cacheHit as string | undefined;
    for (const auth of [s.auth, orgB]) {
      expect(await cached(auth)).toBeUndefined();
      expect(await cached(auth)).toMatch(/^l[12]$/);
    }
    // The version counters bumped: KnowledgeAssistant's in the org; no other agent's, no other org's.
    const redis = s.runtime.deps.redis;
    const keys = guardKeys;
    const prefix = agentqPrefix(s.cfg.QUEUE_PREFIX);
    const version = async (key: string) => Number((await redis.get(key)) ?? 0);
    const orgVersion = (org: string, agent: string) => version(keys.resultAgentVersion(prefix, encodeURIComponent(org), encodeURIComponent(agent)));
    const sharedVersion = (agent: string) => version(keys.resultSharedVersion(prefix, agent));
    const before = { a: await orgVersion(s.orgId, 'KnowledgeAssistant'), risk: await orgVersion(s.orgId, 'RiskAnalyzer'), shared: await sharedVersion('KnowledgeAssistant') };
    // The worker's L1 drops its copies when the broadcast reaches it: heard here too, on a connection of our own.
    const heard: string[] = [];
    const sub = new Redis(redisUrl());
    sub.on('smessage', (_ch: string, msg: string) => heard.push(msg));
    await sub.ssubscribe(keys.resultInvalidations(prefix));
    const broadcast = async (msg: string) => {
      await until(`invalidation ${JSON.stringify(msg)} broadcast`, () => heard.includes(msg));
      // The worker's subscriber was sent the same message in the same call: let its read run too.
      await new Promise((resolve) => setImmediate(resolve));
    };

    const facts = await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: orgAdmin, payload: { documents: [{ external_id: `${tag}-f2`, content: `Our ${tag} pricing page has three tiers` }] } });
    expect(facts.statusCode).toBe(200);
    expect(await orgVersion(s.orgId, 'KnowledgeAssistant')).toBe(before.a + 1);
    expect(await orgVersion(s.orgId, 'RiskAnalyzer')).toBe(before.risk);
    await broadcast(`${encodeURIComponent(s.orgId)}\nKnowledgeAssistant`);
    // The org's answer is computed again (exact and semantic caches both dropped); the other org's is still cached.
    expect(await cached(s.auth)).toBeUndefined();
    expect(await cached(orgB)).toMatch(/^l[12]$/);
    expect(await cached(s.auth)).toMatch(/^l[12]$/);

    const shared = await s.app.inject({ method: 'POST', url: '/admin/knowledge/playbooks', headers: operator, payload: { documents: [{ external_id: `${tag}-p2`, title: `${tag} pricing pages`, description: 'Lead with the plan most customers pick' }] } });
    expect(shared.statusCode).toBe(200);
    expect(await sharedVersion('KnowledgeAssistant')).toBe(before.shared + 1);
    expect(await sharedVersion('RiskAnalyzer')).toBe(0);
    await broadcast('\nKnowledgeAssistant');
    for (const auth of [s.auth, orgB]) expect(await cached(auth)).toBeUndefined();
    sub.disconnect();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));
});
