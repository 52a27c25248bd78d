import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createResultCache, type ResultCache } from '../src/shared/cache/result-cache.js';
import { createResultCacheGuard } from '../src/workers/guards/result-cache-guard.js';
import type { AgentResult } from '../src/shared/core/types.js';
import type { Middleware } from '../src/workers/middleware.js';
import { guardContext, okResult } from './helpers/guard-context.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';

describe('result cache guard', () => {
  let redis: Redis;
  let cache: ResultCache<AgentResult>;
  let guard: Middleware;
  const prefix = randomPrefix();

  beforeAll(() => {
    redis = new Redis(redisUrl());
    cache = createResultCache<AgentResult>({ redis, prefix, l1Max: 100, l1TtlMs: 60_000, l2TtlS: 60 });
    guard = createResultCacheGuard({ cache });
  });
  afterAll(async () => {
    await redis.quit();
  });

  it('calls through on a miss, then serves the same job from cache at no cost', async () => {
    const orgId = randomOrg();
    let calls = 0;
    // The call "took" ten minutes, so a hit that copied its duration could not pass for its own lookup.
    const answer = { ...okResult({ answer: 42 }, { input: 100, output: 50 }), durationMs: 600_000 };
    const next = async () => {
      calls++;
      return answer;
    };
    const first = await guard(guardContext({ orgId, stream: true }), next);
    expect(first).toEqual(answer);
    const lookupStarted = performance.now();
    const second = await guard(guardContext({ orgId }), next);
    const lookupMs = performance.now() - lookupStarted;
    expect(calls).toBe(1);
    // From L2: a computed value enters this process's L1 once read back (the next identical job is an L1 hit).
    expect(second).toMatchObject({ success: true, data: { answer: 42 }, cacheHit: 'l2', tokensUsed: { input: 0, output: 0 }, costUsd: 0 });
    expect(await guard(guardContext({ orgId }), next)).toMatchObject({ cacheHit: 'l1', data: { answer: 42 }, costUsd: 0 });
    // A hit reports its own lookup: no longer than the guard call took, seen from outside.
    expect(second.durationMs).toBeGreaterThanOrEqual(0);
    expect(second.durationMs).toBeLessThanOrEqual(Math.ceil(lookupMs));
    // Another input, model or prompt version is another entry.
    await guard(guardContext({ orgId, input: { q: 'other' } }), next);
    await guard(guardContext({ orgId, model: 'gemini-other' }), next);
    await guard(guardContext({ orgId, action: { promptVersion: 2 } as never }), next);
    expect(calls).toBe(4);
  });

  it('a hit carries no billed tier nor standard-tier cost: those were the storing job\'s call, not this one', async () => {
    const orgId = randomOrg();
    const billed: AgentResult = { ...okResult({ answer: 'flex' }, { input: 100, output: 50 }), costUsd: 0.001, tier: 'flex', standardCostUsd: 0.002 };
    const call = async () => billed;
    expect(await guard(guardContext({ orgId }), call)).toEqual(billed);
    // Another process's guard on the same Redis (empty L1): its hit comes from L2.
    const other = createResultCacheGuard({ cache: createResultCache<AgentResult>({ redis, prefix, l1Max: 100, l1TtlMs: 60_000, l2TtlS: 60 }) });
    const hits = [await guard(guardContext({ orgId }), call), await guard(guardContext({ orgId }), call), await other(guardContext({ orgId }), call)];
    expect(hits.map((h) => h.cacheHit)).toEqual(['l2', 'l1', 'l2']);
    for (const hit of hits) {
      expect(hit).toMatchObject({ data: { answer: 'flex' }, costUsd: 0, tokensUsed: { input: 0, output: 0 } });
      expect(hit).not.toHaveProperty('tier');
      expect(hit).not.toHaveProperty('standardCostUsd');
    }
  });

  it('does not cache a fallback route\'s answer: the next identical job tries the primary again', async () => {
    const orgId = randomOrg();
    const routes: Array<'primary' | 'fallback'> = ['fallback', 'primary', 'primary'];
    let calls = 0;
    const next = async (): Promise<AgentResult> => ({ ...okResult({ n: calls }), route: routes[calls++] });
    expect(await guard(guardContext({ orgId }), next)).toMatchObject({ route: 'fallback' });
    expect(await guard(guardContext({ orgId }), next)).toMatchObject({ route: 'primary', data: { n: 1 } });
    expect(await guard(guardContext({ orgId }), next)).toMatchObject({ cacheHit: 'l2', data: { n: 1 } });
    expect(calls).toBe(2);
  });

  it('does not cache unsuccessful results', async () => {
    const orgId = randomOrg();
    let calls = 0;
    const next = async (): Promise<AgentResult> => {
      calls++;
      return { ...okResult(null), success: false, error: 'output failed validation' };
    };
    await guard(guardContext({ orgId }), next);
    const again = await guard(guardContext({ orgId }), next);
    expect(calls).toBe(2);
    expect(again.cacheHit).toBeUndefined();
  });

  it('calls through uncached when the cache is unavailable', async () => {
    const offline = new Redis(redisUrl(), { lazyConnect: true, enableOfflineQueue: false });
    const broken = createResultCacheGuard({
      cache: createResultCache<AgentResult>({ redis: offline, prefix: randomPrefix(), l1Max: 10, l1TtlMs: 1000, l2TtlS: 1 }),
    });
    await expect(broken(guardContext(), async () => okResult('direct'))).resolves.toMatchObject({ data: 'direct' });
    offline.disconnect();
  });

  it('propagates the error of the call itself', async () => {
    await expect(guard(guardContext({ orgId: randomOrg() }), () => Promise.reject(new Error('llm down')))).rejects.toThrow('llm down');
  });
});
