import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import type { Job } from 'bullmq';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLlmClient } from '../src/shared/infra/llm/llm-client.js';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { createBreakerGuard } from '../src/workers/guards/breaker-guard.js';
import { createRouteGuard } from '../src/workers/guards/route-guard.js';
import { compose, DelayJobError, type JobContext, type Middleware } from '../src/workers/middleware.js';
import { createAgentCall } from '../src/workers/call-agent.js';
import { createAgentProcessor, type ProcessorDeps } from '../src/workers/processor.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { createRateLimitGuard } from '../src/workers/guards/rate-limit-guard.js';
import { createTokenBuckets } from '../src/shared/limits/token-bucket.js';
import { createPricing, DEFAULT_PRICES } from '../src/shared/infra/llm/pricing.js';
import { estimateTokens } from '../src/shared/queue/estimate-tokens.js';
import { LlmError } from '../src/shared/infra/llm/llm-errors.js';
import { randomPrefix, redisUrl } from './helpers/env.js';

/**
 * Who pays for a model call and who is blamed for it, through the real LLM client (real SDK, real HTTP) against a
 * fake Gemini whose answers each test sets: generate answers `genBody`; embed answers a per-day 429.
 */
/**
 * The generate answer: a body, or one per request URL (which names the model); HANG never answers; `status(n,
 * body)` answers with that HTTP status.
 */
let genBody: unknown = {};
const HANG = Symbol('hang');
/** A stream that sends these chunks (SSE, as Gemini's streamGenerateContent) and then nothing more, never ending. */
const STREAM_THEN_HANG = Symbol('stream-then-hang');
const streamThenHang = (...chunks: unknown[]) => ({ [STREAM_THEN_HANG]: chunks });
const STATUS = Symbol('status');
const status = (code: number, body: unknown) => ({ [STATUS]: code, body });
/** A per-minute 429 with RetryInfo, as Gemini sends it. */
const minute429 = status(429, {
  error: {
    code: 429,
    status: 'RESOURCE_EXHAUSTED',
    message: 'quota',
    details: [
      { '@type': 'type.googleapis.com/google.rpc.QuotaFailure', violations: [{ quotaId: 'GenerateRequestsPerMinutePerProjectPerModel' }] },
      { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '2s' },
    ],
  },
});
let server: Server;
let base = '';
const embedDay429 = {
  error: {
    code: 429,
    status: 'RESOURCE_EXHAUSTED',
    message: 'quota',
    details: [{ '@type': 'type.googleapis.com/google.rpc.QuotaFailure', violations: [{ quotaId: 'EmbedContentRequestsPerDayPerProjectPerModel' }] }],
  },
};
const redis = new Redis(redisUrl());
beforeAll(async () => {
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const embed = /embedContent|batchEmbedContents/.test(req.url ?? '');
      const body = typeof genBody === 'function' ? (genBody as (url: string) => unknown)(req.url ?? '') : genBody;
      if (body === HANG && !embed) return;
      if (body !== null && typeof body === 'object' && STREAM_THEN_HANG in body && !embed) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (const c of (body as { [STREAM_THEN_HANG]: unknown[] })[STREAM_THEN_HANG]) res.write(`data: ${JSON.stringify(c)}\r\n\r\n`);
        return;
      }
      const coded = body !== null && typeof body === 'object' && STATUS in body ? (body as { [STATUS]: number; body: unknown }) : undefined;
      res.writeHead(embed ? 429 : (coded?.[STATUS] ?? 200), { 'content-type': 'application/json' });
      res.end(JSON.stringify(embed ? embedDay429 : coded ? coded.body : body));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await redis.quit();
});

const MODEL = 'gemini-2.5-flash';
const Out = z.object({ score: z.number() });
const plain = { model: 'fast', output: Out, prompt: async () => ({ user: 'q' }) };
/** An action whose prompt searches its knowledge first (`search` as the worker binds it: searchFor). */
const searching = { ...plain, knowledge: ['chat_facts'], prompt: async (_i: unknown, c: { search?: (q: string) => Promise<unknown> }) => (await c.search!('q'), { user: 'q' }) };
const llm = () => createLlmClient({ apiKey: 'k', baseUrl: base, timeoutMs: 5000 });

/** A processor around `chain`, with a fair gate that records what it pauses and the usage rows it writes. */
function harness(
  action: object,
  middlewares: Middleware[],
  searchFor?: () => (q: string) => Promise<unknown>,
  onText?: () => (text: string) => Promise<void>,
  admitted: 'run' | 'run_unpaid' = 'run',
  deps: Pick<ProcessorDeps, 'embeddingCost' | 'onEmbeddingRecorded'> = {},
) {
  const client = llm();
  const rows: AgentRun[] = [];
  const deferred: Array<{ reason: string; model?: string }> = [];
  const corrections: Array<{ model: string; orgTokens?: number; modelTokens?: number }> = [];
  const gate = {
    admit: async () => admitted,
    defer: async (_j: unknown, _t: unknown, _u: number, reason: string, model?: string) => void deferred.push({ reason, ...(model ? { model } : {}) }),
    correct: (_org: string, model: string, d: { orgTokens?: number; modelTokens?: number }) => void corrections.push({ model, orgTokens: d.orgTokens, modelTokens: d.modelTokens }),
    refundUnspent: () => undefined,
    ended: () => undefined,
  };
  const proc = createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: action as never }), validateInput: (_a, _b, i) => i },
    chain: compose(middlewares, createAgentCall({ llm: client, ...(searchFor ? { searchFor: searchFor as never } : {}), ...(onText ? { onText } : {}) })),
    runs: { record: async (r) => void rows.push(r) },
    models: { fast: MODEL, pro: 'gemini-2.5-pro' },
    logger: createLogger({ level: 'silent' }),
    gate: gate as never,
    ...deps,
  });
  let n = 0;
  const run = () => {
    const job = { id: `j${++n}`, timestamp: Date.now(), data: { orgId: 'o', agent: 'A', action: 'a', input: {}, enqueuedAt: Date.now() }, attemptsMade: 0, opts: { attempts: 3 } };
    return proc(job as unknown as Job<AgentJobData, AgentResult>, 't').then(
      () => undefined,
      (e: Error) => e,
    );
  };
  return { client, rows, deferred, corrections, run };
}

describe('the prompt\'s knowledge search is not the generation model', () => {
  it("an embedding model's per-day 429 delays the job and pauses only the embedding model: the generation model is neither marked spent nor paused", async () => {
    const breaker = createCircuitBreaker({ redis, prefix: randomPrefix() });
    const h = harness(searching, [createBreakerGuard({ breaker })], () => async () => h.client.embed(['q']));
    const err = await h.run();
    expect(err?.name).toBe('DelayedError');
    expect(h.deferred).toEqual([{ reason: 'provider_quota', model: h.client.embeddingModel }]);
    expect(h.rows).toEqual([]);
    expect(await breaker.acquire(`gemini:${MODEL}`)).toMatchObject({ allowed: true });
    expect(await breaker.state(`gemini:${MODEL}`)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
  });

  it('a Postgres failure in the search never counts against the generation model\'s breaker', async () => {
    const breaker = createCircuitBreaker({ redis, prefix: randomPrefix(), failureThreshold: 2 });
    const pgDown = () => async () => {
      throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    };
    const h = harness(searching, [createBreakerGuard({ breaker })], pgDown);
    for (let i = 0; i < 3; i++) expect((await h.run())?.message).toMatch(/^\[ECONNREFUSED\] building the prompt failed/);
    expect(await breaker.state(`gemini:${MODEL}`)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    expect(h.deferred).toEqual([]);
  });
});

describe('an answer that fails is billed all the same', () => {
  const usageMetadata = { promptTokenCount: 1200, candidatesTokenCount: 300, thoughtsTokenCount: 50 };
  const usage = { input: 1200, output: 350, thoughts: 50 };
  const cost = createPricing().cost(MODEL, usage, 'standard');
  const answers = [
    { what: 'not JSON (cut at MAX_TOKENS)', text: '{"score": 1', finishReason: 'MAX_TOKENS' },
    { what: 'JSON off the output schema', text: '{"score":"high"}', finishReason: 'STOP' },
  ];
  for (const a of answers) {
    it(`an answer ${a.what}: the failed row and the TPM correction carry its usageMetadata`, async () => {
      genBody = { candidates: [{ content: { parts: [{ text: a.text }], role: 'model' }, finishReason: a.finishReason }], usageMetadata };
      const rateLimit = createRateLimitGuard({ buckets: createTokenBuckets({ redis, prefix: randomPrefix() }) });
      const h = harness(plain, [rateLimit]);
      expect((await h.run())?.message).toMatch(/^\[EBADOUTPUT\] /);
      expect(h.rows).toHaveLength(1);
      expect(h.rows[0]).toMatchObject({
        state: 'failed',
        model: MODEL,
        inputTokens: usage.input,
        outputTokens: usage.output,
        thoughtsTokens: usage.thoughts,
        costUsd: cost.costUsd,
        standardCostUsd: cost.standardCostUsd,
        tier: 'standard',
      });
      expect(h.rows[0].costUsd).toBeGreaterThan(0);
      // The dispatch charged the job's estimate: the correction brings both TPM buckets to what was used.
      const charged = estimateTokens({});
      expect(h.corrections).toEqual([{ model: MODEL, orgTokens: usage.input + usage.output - charged, modelTokens: usage.input + usage.output - charged }]);
    });
  }

  it("an attempt whose claim found its dispatch's charge taken (a stalled job fetched again) is not prepaid: the rate-limit guard takes its call's request and the org is charged its whole usage", async () => {
    genBody = { candidates: [{ content: { parts: [{ text: '{"score": 1}' }], role: 'model' }, finishReason: 'STOP' }], usageMetadata };
    const rateLimit = createRateLimitGuard({ buckets: createTokenBuckets({ redis, prefix: randomPrefix() }) });
    const h = harness(plain, [rateLimit], undefined, undefined, 'run_unpaid');
    expect(await h.run()).toBeUndefined();
    // The guard took the call's own requests and estimate (not prepaid); the org's TPM bucket gets what it used.
    expect(h.corrections).toEqual([{ model: MODEL, orgTokens: usage.input + usage.output, modelTokens: 0 }]);
  });
});

describe("an attempt's usage row carries every call it paid for", () => {
  const PRO = 'gemini-2.5-pro';
  const badMeta = { promptTokenCount: 1000, candidatesTokenCount: 200 };
  const goodMeta = { promptTokenCount: 1000, candidatesTokenCount: 100 };
  const answer = (text: string, usageMetadata: object) => ({ candidates: [{ content: { parts: [{ text }], role: 'model' }, finishReason: 'STOP' }], usageMetadata });
  const pricing = createPricing();

  it("a route's primary that answered unusably, then its fallback: the completed row sums both", async () => {
    genBody = (url: string) => (url.includes(PRO) ? answer('{"score": "bad"}', badMeta) : answer('{"score": 1}', goodMeta));
    const route = createRouteGuard({ routeFor: () => ({ primary: PRO, fallback: MODEL }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route]);
    expect(await h.run()).toBeUndefined();
    const bad = pricing.cost(PRO, { input: 1000, output: 200 }, 'standard');
    const good = pricing.cost(MODEL, { input: 1000, output: 100 }, 'standard');
    expect(h.rows).toHaveLength(1);
    expect(h.rows[0]).toMatchObject({ state: 'completed', model: MODEL, inputTokens: 2000, outputTokens: 300 });
    expect(h.rows[0].costUsd).toBeCloseTo(bad.costUsd + good.costUsd, 12);
  });

  it('a primary that answered unusably, then timed out, no fallback: the failed row carries the paid answer', async () => {
    let calls = 0;
    genBody = (url: string) => (url.includes(MODEL) && ++calls === 1 ? answer('{"score": "bad"}', badMeta) : HANG);
    const route = createRouteGuard({ routeFor: () => ({ primary: MODEL, retries: 1, timeoutMs: 200 }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route]);
    expect((await h.run())?.message).toMatch(/^\[ETIMEDOUT\] /);
    const one = pricing.cost(MODEL, { input: 1000, output: 200 }, 'standard');
    expect(h.rows).toMatchObject([{ state: 'failed', inputTokens: 1000, outputTokens: 200 }]);
    expect(h.rows[0].costUsd).toBeCloseTo(one.costUsd, 12);
  });

  it("a stream the route's timeout cut after chunks that reported the prompt's usage: the failed row carries what Gemini billed", async () => {
    // Gemini's chunks before the last carry the prompt's usage: the model read the prompt, and bills it.
    const promptMeta = { promptTokenCount: 1000, totalTokenCount: 1000 };
    genBody = streamThenHang({ candidates: [{ content: { parts: [{ text: '{"score"' }], role: 'model' }, index: 0 }], usageMetadata: promptMeta });
    const route = createRouteGuard({ routeFor: () => ({ primary: MODEL, timeoutMs: 300 }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const texts: string[] = [];
    const h = harness(plain, [route], undefined, () => async (t) => void texts.push(t));
    expect((await h.run())?.message).toMatch(/^\[ETIMEDOUT\] /);
    expect(texts).toEqual(['{"score"']);
    const prompt = pricing.cost(MODEL, { input: 1000, output: 0 }, 'standard');
    expect(h.rows).toMatchObject([{ state: 'failed', model: MODEL, inputTokens: 1000, outputTokens: 0 }]);
    expect(h.rows[0].costUsd).toBeCloseTo(prompt.costUsd, 12);
  });

  it("a prompt that cannot be built is not tried again on the route's fallback", async () => {
    genBody = answer('{"score": 1}', goodMeta);
    const route = createRouteGuard({ routeFor: () => ({ primary: 'gemini-2.5-pro', fallback: MODEL }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    let searches = 0;
    const h = harness(searching, [route], () => async () => {
      searches++;
      throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    });
    expect((await h.run())?.message).toMatch(/^\[ECONNREFUSED\] building the prompt failed/);
    expect(searches).toBe(1);
  });

  it('a primary tried twice, both answers unusable, no fallback: the failed row sums both', async () => {
    genBody = answer('{"score": "bad"}', badMeta);
    const route = createRouteGuard({ routeFor: () => ({ primary: MODEL, retries: 1 }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route]);
    expect((await h.run())?.message).toMatch(/^\[EBADOUTPUT\] /);
    const one = pricing.cost(MODEL, { input: 1000, output: 200 }, 'standard');
    expect(h.rows).toHaveLength(1);
    expect(h.rows[0]).toMatchObject({ state: 'failed', model: MODEL, inputTokens: 2000, outputTokens: 400 });
    expect(h.rows[0].costUsd).toBeCloseTo(2 * one.costUsd, 12);
  });
});

describe('a run delayed after calls it paid for: those calls get a row of their own', () => {
  const PRO = 'gemini-2.5-pro';
  const badMeta = { promptTokenCount: 1000, candidatesTokenCount: 200 };
  const answer = (text: string, usageMetadata: object) => ({ candidates: [{ content: { parts: [{ text }], role: 'model' }, finishReason: 'STOP' }], usageMetadata });
  const pricing = createPricing();
  /** The one row such a run writes: the delayed part, billed what the unusable answer cost, under its own part id. */
  const delayedPart = (rows: AgentRun[], model: string, reason: string) => {
    const paid = pricing.cost(model, { input: 1000, output: 200 }, 'standard');
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ state: 'delayed', attempt: 1, model, inputTokens: 1000, outputTokens: 200, tier: 'standard', error: reason });
    expect(rows[0].part).toMatch(/^[0-9a-f-]{36}$/);
    expect(rows[0].costUsd).toBeGreaterThan(0);
    expect(rows[0].costUsd).toBeCloseTo(paid.costUsd, 12);
    expect(rows[0].standardCostUsd).toBeCloseTo(paid.standardCostUsd, 12);
  };

  it("a primary that answered unusably, then its retry met a per-minute 429: the job is delayed and the paid answer is a 'delayed' row", async () => {
    let calls = 0;
    genBody = () => (++calls === 1 ? answer('{"score": "bad"}', badMeta) : minute429);
    const route = createRouteGuard({ routeFor: () => ({ primary: MODEL, retries: 1 }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route]);
    expect((await h.run())?.name).toBe('DelayedError');
    expect(calls).toBe(2);
    expect(h.deferred).toEqual([{ reason: 'provider_rate_limited', model: MODEL }]);
    delayedPart(h.rows, MODEL, 'provider_rate_limited');
  });

  it("a primary that answered unusably, then its fallback met a per-minute 429: the primary's answer is a 'delayed' row", async () => {
    genBody = (url: string) => (url.includes(PRO) ? answer('{"score": "bad"}', badMeta) : minute429);
    const route = createRouteGuard({ routeFor: () => ({ primary: PRO, fallback: MODEL }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route]);
    expect((await h.run())?.name).toBe('DelayedError');
    expect(h.deferred).toEqual([{ reason: 'provider_rate_limited', model: MODEL }]);
    delayedPart(h.rows, PRO, 'provider_rate_limited');
  });

  it("a primary that answered unusably, then its retry was refused before the call by a guard's delay: the paid answer is a 'delayed' row", async () => {
    genBody = answer('{"score": "bad"}', badMeta);
    let tries = 0;
    // As the rate limiter refuses a retry within the route when its buckets are short.
    const refuseSecond: Middleware = async (_ctx, next) => {
      if (++tries === 2) throw new DelayJobError(50, 'rate_limited');
      return next();
    };
    const route = createRouteGuard({ routeFor: () => ({ primary: MODEL, retries: 1 }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route, refuseSecond]);
    expect((await h.run())?.name).toBe('DelayedError');
    expect(h.deferred).toEqual([{ reason: 'rate_limited' }]);
    delayedPart(h.rows, MODEL, 'rate_limited');
  });

  it('a delay before any paid call writes no row', async () => {
    genBody = minute429;
    const route = createRouteGuard({ routeFor: () => ({ primary: PRO, fallback: MODEL }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const h = harness(plain, [route]);
    expect((await h.run())?.name).toBe('DelayedError');
    expect(h.rows).toEqual([]);
  });

  it("a delay before any paid call, after the run's embedding calls (its knowledge search): those are a 'delayed' row of their own, model cost 0, once per run", async () => {
    genBody = minute429;
    const route = createRouteGuard({ routeFor: () => ({ primary: MODEL }), agents: { get: () => undefined }, backoffBaseMs: 1 });
    const query = 'How did the pilot customers renew their contracts this quarter?';
    const recorded: Array<{ tokens: number; costUsd: number }> = [];
    // As the worker binds the prompt's search (worker-service.ts): its query's embedding goes on the run's count.
    const searchFor = (_org: string, _tables: readonly string[], ctx: JobContext) => async () => (ctx.embedded?.([query]), []);
    const h = harness(searching, [route], searchFor as never, undefined, 'run', {
      embeddingCost: (tokens) => (tokens * DEFAULT_PRICES.models['gemini-embedding-001'].input) / 1e6,
      onEmbeddingRecorded: (spend) => void recorded.push(spend),
    });
    expect((await h.run())?.name).toBe('DelayedError');
    expect(h.deferred).toEqual([{ reason: 'provider_rate_limited', model: MODEL }]);
    const tokens = Math.ceil(query.length / 4);
    expect(h.rows).toHaveLength(1);
    expect(h.rows[0]).toMatchObject({ state: 'delayed', attempt: 1, model: MODEL, inputTokens: 0, outputTokens: 0, costUsd: 0, error: 'provider_rate_limited', embeddingTokens: tokens, embeddingEstimated: true });
    expect(h.rows[0].part).toMatch(/^[0-9a-f-]{36}$/);
    expect(h.rows[0].embeddingCostUsd).toBeCloseTo((tokens * 0.15) / 1e6, 12);
    // Counted once, as the row went to the usage stream (agentq_embedding_{tokens,cost_usd}_total{source="attempt"}).
    expect(recorded).toEqual([{ tokens, costUsd: h.rows[0].embeddingCostUsd }]);
  });

  describe('what the route guard hands on', () => {
    const billed = (tier: 'standard' | 'batch', input: number) => ({ model: MODEL, tier, usage: { input, output: 10 }, costUsd: input / 1e6, standardCostUsd: (tier === 'batch' ? 2 * input : input) / 1e6 });
    const unusable = (b: ReturnType<typeof billed>) => Object.assign(new Error('bad output'), { code: 'EBADOUTPUT', retryable: true, billed: b });
    /** A route whose inner chain throws `errors` in turn (`beforeLast` runs before the last is thrown). */
    const thrownBy = async (errors: Error[], route: { retries?: number; fallback?: string }, beforeLast?: (c: AbortController) => void) => {
      const controller = new AbortController();
      const guard = createRouteGuard({ routeFor: () => ({ primary: MODEL, ...route }), agents: { get: () => undefined }, backoffBaseMs: 1 });
      let n = 0;
      const ctx = { agentName: 'A', actionName: 'a', model: MODEL, signal: controller.signal, logger: createLogger({ level: 'silent' }) } as unknown as JobContext;
      const err = await guard(ctx, async () => {
        if (n === errors.length - 1) beforeLast?.(controller);
        throw errors[n++];
      }).catch((e: unknown) => e);
      return { err: err as { billed?: unknown }, last: errors[errors.length - 1] };
    };

    it("a delay carries the run's paid calls summed, but not a stored batch answer (the re-run of the same attempt is served it again and bills it)", async () => {
      const { err, last } = await thrownBy([unusable(billed('batch', 100)), unusable(billed('standard', 200)), new DelayJobError(10, 'rate_limited')], { retries: 1, fallback: 'gemini-2.5-pro' });
      expect(err).toBe(last);
      expect(err.billed).toEqual(billed('standard', 200));
      const batchOnly = await thrownBy([unusable(billed('batch', 100)), new DelayJobError(10, 'rate_limited')], { retries: 1 });
      expect(batchOnly.err.billed).toBeUndefined();
    });

    it('a cancellation carries every paid call, the batch answer included: the attempt ends there', async () => {
      const { err, last } = await thrownBy([unusable(billed('batch', 100)), unusable(billed('standard', 200)), new DelayJobError(10, 'rate_limited')], { retries: 2 }, (c) => c.abort());
      expect(err).toBe(last);
      expect(err.billed).toMatchObject({ usage: { input: 300, output: 20 }, costUsd: expect.closeTo(300 / 1e6, 12) });
    });
  });
});

describe('a refusal fails the job at once', () => {
  const usageMetadata = { promptTokenCount: 900, candidatesTokenCount: 4 };
  /** Gemini's safety ratings, the one that blocked flagged; the failed reason names that category. */
  const rated = (blocked: string) =>
    ['HARM_CATEGORY_SEXUALLY_EXPLICIT', 'HARM_CATEGORY_HATE_SPEECH', 'HARM_CATEGORY_HARASSMENT', 'HARM_CATEGORY_DANGEROUS_CONTENT'].map((category) => (category === blocked ? { category, probability: 'HIGH', blocked: true } : { category, probability: 'NEGLIGIBLE' }));
  const refusals = [
    ...['SAFETY', 'PROHIBITED_CONTENT', 'RECITATION', 'BLOCKLIST', 'SPII'].map((finishReason) => ({
      what: `a candidate stopped for ${finishReason}`,
      body: { candidates: [{ finishReason, index: 0, ...(finishReason === 'SAFETY' ? { safetyRatings: rated('HARM_CATEGORY_DANGEROUS_CONTENT') } : {}) }], usageMetadata },
      reasons: { finishReason, ...(finishReason === 'SAFETY' ? { blockedCategories: ['HARM_CATEGORY_DANGEROUS_CONTENT'] } : {}) },
    })),
    {
      what: 'a blocked prompt',
      body: { promptFeedback: { blockReason: 'SAFETY', safetyRatings: rated('HARM_CATEGORY_HATE_SPEECH') }, usageMetadata },
      reasons: { blockReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_HATE_SPEECH'] },
    },
    { what: 'no candidate at all', body: { usageMetadata }, reasons: {} },
  ];
  for (const r of refusals) {
    it(`${r.what}: EBLOCKED, not retried, not a breaker failure, its tokens billed`, async () => {
      genBody = r.body;
      const err = await llm()
        .generate({ model: MODEL, prompt: 'q', responseJsonSchema: z.toJSONSchema(Out) })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LlmError);
      expect(err).toMatchObject({ code: 'EBLOCKED', retryable: false, model: MODEL, billed: { usage: { input: 900, output: 4 } }, ...r.reasons });
      const breaker = createCircuitBreaker({ redis, prefix: randomPrefix(), failureThreshold: 1 });
      const h = harness(plain, [createBreakerGuard({ breaker })]);
      const failed = await h.run();
      expect(failed).toMatchObject({ name: 'UnrecoverableError', code: 'EBLOCKED' });
      // The failed reason (what BullMQ and the DLQ keep) names the category that blocked, when one did.
      for (const category of (r.reasons as { blockedCategories?: string[] }).blockedCategories ?? []) expect(failed?.message).toContain(category);
      expect(h.rows).toMatchObject([{ state: 'failed', inputTokens: 900, outputTokens: 4 }]);
      expect(await breaker.state(`gemini:${MODEL}`)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    });
  }

  it('an answer cut at MAX_TOKENS stays a retryable EBADOUTPUT that says why', async () => {
    genBody = { candidates: [{ content: { parts: [{ text: '{"score": 1' }], role: 'model' }, finishReason: 'MAX_TOKENS' }], usageMetadata };
    const err = await llm()
      .generate({ model: MODEL, prompt: 'q', responseJsonSchema: z.toJSONSchema(Out) })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EBADOUTPUT', retryable: true, finishReason: 'MAX_TOKENS' });
  });
});
