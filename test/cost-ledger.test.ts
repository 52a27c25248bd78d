import { Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/shared/core/config.js';
import { idempotencyRecordKey } from '../src/shared/core/queue-keys.js';
import { createPricing, DEFAULT_PRICES } from '../src/shared/infra/llm/pricing.js';
import { chooseTier } from '../src/shared/queue/tier-choice.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { randomOrg } from './helpers/env.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';
import { createOrgStore } from '../src/shared/infra/db/orgs.js';
import { createRunStore } from '../src/shared/infra/db/agent-runs.js';
import { parseProm, riskJob, sampleSum } from './helpers/ops.js';

const ADMIN_TOKEN = 'adm-ledger-7f1d2c9a4b3e';

describe('prices: one table, dated, overridable', () => {
  it('prices cached input at its discount, thinking at the output price, and each tier by its multiplier', () => {
    const p = createPricing();
    const flash = DEFAULT_PRICES.models['gemini-2.5-flash'];
    // 1,000 prompt tokens of which 400 cached; 300 output tokens of which 200 thinking.
    const usage = { input: 1000, cached: 400, output: 300, thoughts: 200 };
    const standard = (600 * flash.input + 400 * flash.cachedInput! + 300 * flash.output) / 1e6;
    expect(p.cost('gemini-2.5-flash', usage).costUsd).toBeCloseTo(standard, 12);
    expect(p.cost('gemini-2.5-flash', usage, 'flex')).toEqual({ costUsd: expect.closeTo(standard * 0.5, 12), standardCostUsd: expect.closeTo(standard, 12) });
    expect(p.cost('gemini-2.5-flash', usage, 'batch').costUsd).toBeCloseTo(standard * 0.5, 12);
    expect(p.cost('gemini-2.5-flash', usage, 'priority').costUsd).toBeGreaterThan(standard);
    expect(DEFAULT_PRICES.asOf).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(DEFAULT_PRICES.source).toMatch(/^https:\/\/ai\.google\.dev\//);
  });

  it('PRICES_JSON overrides entries one by one and is validated at startup, naming the variable', () => {
    const cfg = parseConfig({ PRICES_JSON: JSON.stringify({ asOf: '2026-01-10', models: { 'gemini-2.5-flash': { input: 1 }, 'my-model': { input: 2, output: 4 } }, tiers: { priority: 2 } }) });
    const p = createPricing(cfg.PRICES_JSON);
    expect(p.table.asOf).toBe('2026-01-10');
    expect(p.priceOf('gemini-2.5-flash')).toMatchObject({ input: 1, output: DEFAULT_PRICES.models['gemini-2.5-flash'].output });
    expect(p.cost('my-model', { input: 1_000_000, output: 0 }, 'priority').costUsd).toBe(4);
    expect(() => parseConfig({ PRICES_JSON: JSON.stringify({ tiers: { flex: -1 } }) })).toThrow(ConfigError);
    expect(() => parseConfig({ PRICES_JSON: JSON.stringify({ models: { x: { input: 'cheap' } } }) })).toThrow(/PRICES_JSON/);
    expect(() => createPricing({ models: { 'brand-new': { input: 1 } } })).toThrow(/needs input and output/);
  });

  it('a deadline picks the cheapest tier that meets it; an explicit tier wins; a past deadline is refused', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(chooseTier({}, now)).toEqual({ tier: 'standard' });
    expect(chooseTier({ deadline: 3600 }, now)).toEqual({ tier: 'flex', deadlineAt: now + 3600_000 });
    expect(chooseTier({ deadline: 60 }, now)).toEqual({ tier: 'standard', deadlineAt: now + 60_000 });
    expect(chooseTier({ deadline: '2026-01-01T02:00:00Z' }, now).tier).toBe('flex');
    expect(chooseTier({ tier: 'priority', deadline: 3600 }, now).tier).toBe('priority');
    // A day or more away: Batch Mode (half price, target turnaround 24 h).
    expect(chooseTier({ deadline: 2 * 86_400 }, now)).toEqual({ tier: 'batch', deadlineAt: now + 2 * 86_400_000 });
    expect(chooseTier({ tier: 'batch' }, now)).toEqual({ tier: 'batch' });
    expect(() => chooseTier({ deadline: '2025-12-31T00:00:00Z' }, now)).toThrow(/invalid job request/);
  });

  it('an explicit batch tier whose deadline leaves its batch less than the margin plus the minimum turnaround is refused, naming the field', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    const policy = { flexMinDeadlineS: 600, batchMinDeadlineS: 3600, batchDeadlineMarginMs: 600_000, batchMinTurnaroundS: 3600 };
    const refused = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        return (err as { details?: unknown }).details;
      }
      return undefined;
    };
    // Margin 600 s + turnaround 3600 s: 4199 s is refused, 4200 s accepted.
    expect(refused(() => chooseTier({ tier: 'batch', deadline: 4199 }, now, policy, 'jobs.0.options.deadline'))).toEqual([
      { path: 'jobs.0.options.deadline', message: expect.stringMatching(/at least 4200 s away/) },
    ]);
    expect(chooseTier({ tier: 'batch', deadline: 4200 }, now, policy)).toEqual({ tier: 'batch', deadlineAt: now + 4_200_000 });
    // Chosen by deadline: batch only past both floors, else flex.
    expect(chooseTier({ deadline: 4199 }, now, policy).tier).toBe('flex');
    expect(chooseTier({ deadline: 4200 }, now, policy).tier).toBe('batch');
    // Without a deadline a batch job waits as long as Batch Mode takes.
    expect(chooseTier({ tier: 'batch' }, now, policy)).toEqual({ tier: 'batch' });
  });
});

describe('the cost ledger through the real SDK and the emulator', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN }, { worker: true });
    // Thinking on by default (as 2.5 models do) and a low implicit-cache minimum, so the agent's system
    // prompt is cached from its second use: every part of the bill is exercised.
    s.emulator.configureUsage({ thinkingByDefault: true, implicitCacheMinTokens: 20 });
  });
  afterAll(async () => s?.close());

  async function run(marker: string, options: Record<string, unknown> = {}) {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { ...riskJob(marker), options } });
    expect(res.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${res.json().id}?waitMs=20000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    return view;
  }

  it('bills each attempt at its tier, stores tier and token breakdown per run, and reports savings by tier', async () => {
    const std = await run('ledger-standard');
    const flex = await run('ledger-flex', { tier: 'flex' });
    const byDeadline = await run('ledger-deadline', { deadline: 7200 });
    const prio = await run('ledger-priority', { tier: 'priority' });
    expect(byDeadline.tier).toBe('flex');
    expect(byDeadline.deadline).toBeDefined();

    // What Gemini was asked: flex and priority carry config.serviceTier, standard sends none.
    const calls = s.emulator.calls().filter((c) => c.kind === 'generate');
    expect(calls.map((c) => c.serviceTier ?? 'none')).toEqual(['none', 'flex', 'flex', 'priority']);

    // Usage rows are written behind (a Redis Stream drained by the worker's sink).
    await usageWritten(s);
    const rows = (
      await s.infra.db.pool.query(
        'SELECT job_id, tier, input_tokens, output_tokens, cached_tokens, thoughts_tokens, cost_usd, standard_cost_usd, model FROM agent_runs WHERE job_id = ANY($1) ORDER BY created_at',
        [[std.id, flex.id, byDeadline.id, prio.id]],
      )
    ).rows;
    expect(rows.map((r) => r.tier)).toEqual(['standard', 'flex', 'flex', 'priority']);
    const pricing = createPricing();
    rows.forEach((r, i) => {
      const call = calls[i];
      // The ledger's tokens are Gemini's: output includes thinking; cached is part of the prompt.
      expect(r.input_tokens).toBe(call.promptTokens);
      expect(r.thoughts_tokens).toBe(call.thoughtsTokens);
      expect(r.output_tokens).toBe(call.outputTokens! + call.thoughtsTokens!);
      expect(r.cached_tokens).toBe(call.cachedTokens ?? 0);
      const want = pricing.cost(r.model, { input: r.input_tokens, output: r.output_tokens, cached: r.cached_tokens }, r.tier);
      expect(Number(r.cost_usd)).toBeCloseTo(want.costUsd, 7);
      expect(Number(r.standard_cost_usd)).toBeCloseTo(want.standardCostUsd, 7);
    });
    expect(rows.slice(1).every((r) => r.cached_tokens > 0)).toBe(true);
    expect(rows[0].thoughts_tokens).toBeGreaterThan(0);

    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage?groupBy=agent', headers: s.auth })).json();
    const tiers = Object.fromEntries(usage.byTier.map((t: { tier: string }) => [t.tier, t]));
    expect(Object.keys(tiers).sort()).toEqual(['flex', 'priority', 'standard']);
    expect(tiers.standard.savingsUsd).toBe(0);
    expect(tiers.flex.savingsUsd).toBeCloseTo(tiers.flex.standardCostUsd / 2, 7);
    expect(tiers.priority.savingsUsd).toBeLessThan(0);
    const group = usage.groups.find((g: { key: string }) => g.key === 'RiskAnalyzer');
    expect(group.tokens.cached).toBe(rows.reduce((n, r) => n + r.cached_tokens, 0));
    expect(group.savingsUsd).toBeCloseTo(group.standardCostUsd - group.costUsd, 7);

    const metrics = parseProm((await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body);
    expect(sampleSum(metrics, 'agentq_cost_usd_total', { tier: 'flex' })).toBeCloseTo(Number(rows[1].cost_usd) + Number(rows[2].cost_usd), 7);
    expect(sampleSum(metrics, 'agentq_cost_savings_usd_total', { tier: 'flex' })).toBeCloseTo(tiers.flex.savingsUsd, 7);
    expect(sampleSum(metrics, 'agentq_cost_savings_usd_total', { tier: 'priority' })).toBe(0);
  });

  it('a priority job Gemini serves at standard (past its priority limit) is billed and recorded at standard, streamed or not', async () => {
    s.emulator.script({ servedTier: 'standard', match: { serviceTier: 'priority' }, times: 2 });
    const job = await run('ledger-downgraded', { tier: 'priority' });
    const streamed = await run('ledger-downgraded-stream', { tier: 'priority', stream: true });
    const asked = s.emulator.calls().filter((c) => c.servedTier === 'standard');
    expect(asked.map((c) => [c.kind, c.serviceTier])).toEqual([
      ['generate', 'priority'],
      ['stream', 'priority'],
    ]);
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query('SELECT job_id, tier, cost_usd, standard_cost_usd FROM agent_runs WHERE job_id = ANY($1)', [[job.id, streamed.id]])).rows;
    expect(rows).toHaveLength(2);
    for (const r of rows) {
      expect(r.tier).toBe('standard');
      expect(Number(r.cost_usd)).toBeGreaterThan(0);
      expect(Number(r.cost_usd)).toBeCloseTo(Number(r.standard_cost_usd), 12);
    }
  });

  it('a cache hit\'s row carries the tier its own job asked for, at no cost, not the tier of the job it reuses', async () => {
    const computed = await run('ledger-hit', { tier: 'flex' });
    const hit = await run('ledger-hit', { tier: 'priority' });
    expect(hit.result.cacheHit).toMatch(/^l[12]$/);
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query('SELECT job_id, tier, cost_usd, cache_hit FROM agent_runs WHERE job_id = ANY($1)', [[computed.id, hit.id]])).rows;
    const byJob = Object.fromEntries(rows.map((r) => [r.job_id, r]));
    expect(byJob[computed.id]).toMatchObject({ tier: 'flex', cache_hit: null });
    expect(byJob[hit.id]).toMatchObject({ tier: 'priority', cache_hit: hit.result.cacheHit });
    expect(Number(byJob[hit.id].cost_usd)).toBe(0);
  });

  it('an idempotency key sent again after its job and its record were removed makes a new job under the same id: its usage is recorded too', async () => {
    const first = await run('ledger-idem', { idempotencyKey: 'ledger-idem-key' });
    await (await Job.fromId(s.runtime.queue, first.id))!.remove();
    // The key's record lapsed too (IDEMPOTENCY_TTL_S): within it the re-send would answer the removed job.
    await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, first.id));
    const second = await run('ledger-idem', { idempotencyKey: 'ledger-idem-key' });
    expect(second.id).toBe(first.id);
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query('SELECT job_ts, attempt FROM agent_runs WHERE job_id = $1 ORDER BY job_ts', [first.id])).rows;
    expect(rows).toHaveLength(2);
    expect(Number(rows[0].job_ts)).toBeLessThan(Number(rows[1].job_ts));
  });

  it('records a job\'s embedding calls (semantic cache lookup, knowledge search) on its row, estimated and said so, at the embedding price; /v1/usage shows them', async () => {
    // An org of its own: its /v1/usage holds this one job.
    const auth = { authorization: `Bearer ${await s.newKey()}` };
    const question = `How should we measure ledger-embed churn among pilot customers ${Date.now()}?`;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { agent: 'KnowledgeAssistant', action: 'answer', input: { question, includeChatFacts: true } } });
    expect(post.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${post.json().id}?waitMs=20000`, headers: auth })).json();
    expect(view.state).toBe('completed');
    await usageWritten(s);
    const [row] = (await s.infra.db.pool.query('SELECT cost_usd, embedding_tokens, embedding_cost_usd, embedding_estimated, embedding_model FROM agent_runs WHERE job_id = $1', [view.id])).rows;
    // The model they were made with (migration 028): the ledger's model split reads it, not whichever is configured then.
    expect(row.embedding_model).toBe(s.cfg.GEMINI_EMBEDDING_MODEL);
    // Two embeddings of the question: the semantic cache's lookup and the prompt's knowledge search (the store
    // reuses the lookup's). Gemini reports no usage for them: estimated, ~4 characters a token.
    const tokens = 2 * Math.ceil(question.length / 4);
    expect(row.embedding_tokens).toBe(tokens);
    expect(row.embedding_estimated).toBe(true);
    expect(Number(row.embedding_cost_usd)).toBeCloseTo((tokens * DEFAULT_PRICES.models['gemini-embedding-001'].input) / 1e6, 8);
    // The model call's cost stays what Gemini billed for it.
    expect(Number(row.cost_usd)).toBeCloseTo(view.result.costUsd, 8);
    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: auth })).json();
    expect(usage.total.embedding).toEqual({ tokens, costUsd: expect.closeTo(Number(row.embedding_cost_usd), 8), estimated: true, ingest: { tokens: 0, costUsd: 0 }, search: { tokens: 0, costUsd: 0 } });
    expect(usage.groups).toEqual([expect.objectContaining({ key: 'KnowledgeAssistant', embedding: usage.total.embedding })]);
  });

  it("records an org's knowledge ingestion (POST /v1/knowledge/:table) in its ledger, estimated and flagged: its /v1/usage shows the embedding, another org's nothing", async () => {
    const auth = { authorization: `Bearer ${await s.newKey(undefined, 'org-admin')}` };
    const other = { authorization: `Bearer ${await s.newKey(undefined, 'org-admin')}` };
    const documents = Array.from({ length: 12 }, (_, i) => ({ external_id: `ingest-ledger-${i}`, content: `Pilot customer ${i} renewed at ${100 + i}% net revenue retention` }));
    const res = await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: auth, payload: { documents } });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ inserted: 12 });
    // Written with the documents (no usage stream): Gemini reports no usage for embeddings, ~4 characters a token.
    const tokens = documents.reduce((n, d) => n + Math.ceil(d.content.length / 4), 0);
    const costUsd = (tokens * DEFAULT_PRICES.models['gemini-embedding-001'].input) / 1e6;
    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: auth })).json();
    expect(usage.total).toMatchObject({ jobs: 0, costUsd: 0, tokens: { input: 0, output: 0, total: 0 } });
    expect(usage.total.embedding).toEqual({ tokens, costUsd: expect.closeTo(costUsd, 8), estimated: true, ingest: { tokens, costUsd: expect.closeTo(costUsd, 8) }, search: { tokens: 0, costUsd: 0 } });
    // One request, one row (its 12 documents are one batch), under agent `knowledge`.
    expect(usage.groups).toEqual([expect.objectContaining({ key: 'knowledge', jobs: 0, embedding: usage.total.embedding })]);
    const byModel = (await s.app.inject({ method: 'GET', url: '/v1/usage?groupBy=model', headers: auth })).json();
    expect(byModel.groups).toEqual([expect.objectContaining({ key: 'gemini-embedding-001' })]);
    const theirs = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: other })).json();
    expect(theirs.groups).toEqual([]);
    expect(theirs.total.embedding).toEqual({ tokens: 0, costUsd: 0, estimated: true, ingest: { tokens: 0, costUsd: 0 }, search: { tokens: 0, costUsd: 0 } });
  });

  it("records an org's POST /v1/knowledge/search query embedding in its ledger (kind search, estimated, flagged), once per search: its /v1/usage shows it, another org's nothing", async () => {
    const auth = { authorization: `Bearer ${await s.newKey()}` };
    const other = { authorization: `Bearer ${await s.newKey()}` };
    const query = `How did search-ledger pilots renew their contracts ${Date.now()}?`;
    const res = await s.app.inject({ method: 'POST', url: '/v1/knowledge/search', headers: auth, payload: { query, tables: ['chat_facts', 'playbooks'] } });
    expect(res.statusCode).toBe(200);
    // Written before the answer (no usage stream): one embedding of the query, whatever the tables searched.
    const tokens = Math.ceil(query.length / 4);
    const costUsd = (tokens * DEFAULT_PRICES.models['gemini-embedding-001'].input) / 1e6;
    const rows = (await s.infra.db.pool.query("SELECT job_id, attempt, job_ts, agent, action, model, state, kind, cost_usd, embedding_tokens, embedding_cost_usd, embedding_estimated, request_id FROM agent_runs WHERE kind = 'search' AND request_id = $1", [res.headers['x-request-id']])).rows;
    expect(rows).toEqual([
      expect.objectContaining({ attempt: 1, agent: 'knowledge', action: 'search', model: 'gemini-embedding-001', state: 'completed', kind: 'search', embedding_tokens: tokens, embedding_estimated: true }),
    ]);
    expect(rows[0].job_id).toMatch(/^search:/);
    expect(Number(rows[0].job_ts)).toBe(0);
    expect(Number(rows[0].cost_usd)).toBe(0);
    expect(Number(rows[0].embedding_cost_usd)).toBeCloseTo(costUsd, 8);
    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: auth })).json();
    expect(usage.total).toMatchObject({ jobs: 0, costUsd: 0, durationMs: { p50: 0, p95: 0 } });
    expect(usage.total.embedding).toEqual({ tokens, costUsd: expect.closeTo(costUsd, 8), estimated: true, ingest: { tokens: 0, costUsd: 0 }, search: { tokens, costUsd: expect.closeTo(costUsd, 8) } });
    expect(usage.groups).toEqual([expect.objectContaining({ key: 'knowledge', jobs: 0, embedding: usage.total.embedding })]);
    // A refused search (bad input, before any embedding) records nothing.
    const bad = await s.app.inject({ method: 'POST', url: '/v1/knowledge/search', headers: auth, payload: { query, tables: ['nope'] } });
    expect(bad.statusCode).toBe(400);
    const after = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: auth })).json();
    expect(after.total.embedding.search.tokens).toBe(tokens);
    const theirs = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: other })).json();
    expect(theirs.groups).toEqual([]);
  });

  it("records the embedding calls of a run parked for its batch (no model call paid) as a 'delayed' row of its own, which /v1/usage counts", async () => {
    const auth = { authorization: `Bearer ${await s.newKey()}` };
    const question = `How should we measure ledger-parked churn among pilot customers ${Date.now()}?`;
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { agent: 'KnowledgeAssistant', action: 'answer', input: { question, includeChatFacts: true }, options: { tier: 'batch' } } });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    // Its semantic cache lookup and its prompt's knowledge search ran, then its call went to the batch tier: parked.
    await until('the job parked for its batch', async () => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json().waitingFor?.reason === 'waiting_for_batch');
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query("SELECT attempt, part, state, error, cost_usd, input_tokens, embedding_tokens, embedding_cost_usd, embedding_estimated FROM agent_runs WHERE job_id = $1 AND state = 'delayed'", [id])).rows;
    const tokens = 2 * Math.ceil(question.length / 4);
    const costUsd = (tokens * DEFAULT_PRICES.models['gemini-embedding-001'].input) / 1e6;
    expect(rows).toEqual([expect.objectContaining({ attempt: 1, state: 'delayed', error: 'waiting_for_batch', input_tokens: 0, embedding_tokens: tokens, embedding_estimated: true })]);
    expect(rows[0].part).not.toBe('');
    expect(Number(rows[0].cost_usd)).toBe(0);
    expect(Number(rows[0].embedding_cost_usd)).toBeCloseTo(costUsd, 8);
    const usage = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: auth })).json();
    // At least these: the job's next run (its batch answered) may have added its own by now.
    expect(usage.total.embedding).toMatchObject({ ingest: { tokens: 0 }, search: { tokens: 0 } });
    expect(usage.total.embedding.tokens).toBeGreaterThanOrEqual(tokens);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it("refuses an org's knowledge ingest once its monthly budget is spent (its embedding cost counted), as admission refuses its jobs: 429, same body, nothing embedded nor written", async () => {
    const orgId = randomOrg();
    const auth = { authorization: `Bearer ${await s.newKey(orgId, 'org-admin')}` };
    // Less than one ingest's estimated embedding cost (the smallest budget the column holds, $0.0001; 12 documents of
    // ~330 characters are ~1,000 tokens, ~$0.00015): the first ingest passes (nothing spent yet) and spends it.
    await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: orgId, monthlyBudgetUsd: 0.0001 });
    const documents = (tag: string) =>
      Array.from({ length: 12 }, (_, i) => ({ external_id: `budget-${tag}-${i}`, content: `Pilot customer ${i} renewed at ${100 + i}% net revenue retention. `.repeat(6) }));
    const first = await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: auth, payload: { documents: documents('a') } });
    expect(first.statusCode).toBe(200);
    const spent = (await s.app.inject({ method: 'GET', url: '/v1/usage', headers: auth })).json().total.embedding.costUsd;
    expect(spent).toBeGreaterThanOrEqual(0.0001);

    const refused = await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: auth, payload: { documents: documents('b') } });
    expect(refused.statusCode).toBe(429);
    // What admission answers a job of the same org: the same status, Retry-After and body.
    const job = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: riskJob('over-budget') });
    expect(job.statusCode).toBe(429);
    expect(refused.json()).toEqual({ error: 'monthly budget of $0.0001 reached', retryAfter: expect.any(Number) });
    expect(Object.keys(refused.json()).sort()).toEqual(Object.keys(job.json()).sort());
    expect(refused.json().error).toBe(job.json().error);
    expect(Number(refused.headers['retry-after'])).toBe(refused.json().retryAfter);
    expect(refused.json().retryAfter).toBeGreaterThan(0);
    // Refused before any embedding: no document written, no ledger row added.
    const written = await s.infra.db.pool.query("SELECT count(*)::int AS n FROM chat_facts WHERE org_id = $1 AND external_id LIKE 'budget-b-%'", [orgId]);
    expect(written.rows[0].n).toBe(0);
    const rows = await s.infra.db.pool.query("SELECT count(*)::int AS n FROM agent_runs WHERE org_id = $1 AND kind = 'ingest'", [orgId]);
    expect(rows.rows[0].n).toBe(1);
    // Counted as admission's quota refusals are.
    const metrics = parseProm((await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).body);
    expect(sampleSum(metrics, 'agentq_admission_rejections_total', { reason: 'quota' })).toBeGreaterThanOrEqual(2);
    // An org with budget left ingests as before.
    const other = { authorization: `Bearer ${await s.newKey(undefined, 'org-admin')}` };
    expect((await s.app.inject({ method: 'POST', url: '/v1/knowledge/chat_facts', headers: other, payload: { documents: documents('c') } })).statusCode).toBe(200);
  });

  it("refuses an org's POST /v1/knowledge/search once its monthly budget is spent, as its ingests and jobs: 429, same body, the query never embedded nor recorded", async () => {
    const orgId = randomOrg();
    const auth = { authorization: `Bearer ${await s.newKey(orgId)}` };
    await createOrgStore({ pool: s.infra.db.pool }).upsert({ id: orgId, monthlyBudgetUsd: 0.0001 });
    const search = () => s.app.inject({ method: 'POST', url: '/v1/knowledge/search', headers: auth, payload: { query: `How did over-budget pilots renew ${Date.now()}?`, tables: ['chat_facts'] } });
    // Budget left: the search answers (and records its query's embedding).
    expect((await search()).statusCode).toBe(200);
    // The month's spend past the budget (estimated embedding cost counts: an earlier ingest's, say).
    await createRunStore({ pool: s.infra.db.pool }).record({ jobId: `ingest:${orgId}`, attempt: 1, orgId, agent: 'knowledge', action: 'ingest:chat_facts', model: 'gemini-embedding-001', state: 'completed', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 1, embeddingTokens: 700, embeddingCostUsd: 0.000105, embeddingEstimated: true });

    const refused = await search();
    expect(refused.statusCode).toBe(429);
    const job = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: riskJob('search-over-budget') });
    expect(job.statusCode).toBe(429);
    expect(refused.json()).toEqual({ error: 'monthly budget of $0.0001 reached', retryAfter: expect.any(Number) });
    expect(refused.json()).toEqual({ ...job.json(), retryAfter: expect.any(Number) });
    expect(Number(refused.headers['retry-after'])).toBe(refused.json().retryAfter);
    // Refused before the query was embedded: the one search row is the first search's.
    const rows = await s.infra.db.pool.query("SELECT count(*)::int AS n FROM agent_runs WHERE org_id = $1 AND kind = 'search'", [orgId]);
    expect(rows.rows[0].n).toBe(1);
    // Bad input is still named first: the body is checked before the handler reads the budget.
    const bad = await s.app.inject({ method: 'POST', url: '/v1/knowledge/search', headers: auth, payload: { query: '' } });
    expect(bad.statusCode).toBe(400);
  });

  it('refuses a deadline in the past, naming the field', async () => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { ...riskJob('late'), options: { deadline: '2020-01-01T00:00:00Z' } } });
    expect(res.statusCode).toBe(400);
    expect(JSON.stringify(res.json().details)).toContain('options.deadline');
  });
});
