import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { AgentAction } from '../src/shared/agents/define-agent.js';
import { createSemanticCache } from '../src/shared/cache/semantic-cache.js';
import { createSemanticCacheGuard } from '../src/workers/guards/semantic-cache-guard.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import type { EmbeddedPostgres } from '../src/shared/infra/db/embedded-postgres.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { AgentResult } from '../src/shared/core/types.js';
import type { JobContext } from '../src/workers/middleware.js';
import { createHashEmbed } from './helpers/hash-embed.js';
import { databaseUrl, randomOrg } from './helpers/env.js';
import { freshEmbeddedPostgres } from './helpers/fresh-embedded.js';

const scope = (orgId: string) => ({ orgId, agent: 'knowledge', action: 'ask', model: 'gemini-2.5-flash', promptVersion: 1 });

describe('semantic cache', () => {
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('hits on a paraphrase, misses on an unrelated question, and reuses the miss embedding on store', async () => {
    const embed = createHashEmbed();
    const cache = createSemanticCache({ pool, embed, ttlS: 60 });
    const s = scope(randomOrg());
    const miss = await cache.lookup({ ...s, text: 'How can I reset my password?' });
    expect(miss.hit).toBe(false);
    if (miss.hit) return;
    await cache.store({ ...s, text: 'How can I reset my password?', embedding: miss.embedding, response: { answer: 'Use the reset link.' } });
    expect(embed.texts).toBe(1);

    const hit = await cache.lookup({ ...s, text: 'how do I reset the password' });
    expect(hit).toMatchObject({ hit: true, response: { answer: 'Use the reset link.' } });
    expect(hit.hit && hit.similarity).toBeGreaterThanOrEqual(0.95);
    expect((await cache.lookup({ ...s, text: 'What is the weather in Paris today?' })).hit).toBe(false);
  });

  it('refuses to store an answer whose lookup came before an invalidation of its org and agent (or of the agent everywhere)', async () => {
    const cache = createSemanticCache({ pool, embed: createHashEmbed(), ttlS: 60 });
    const s = scope(randomOrg());
    const text = 'Which churn metric should a seed startup report?';
    for (const invalidate of [() => cache.invalidate(s.orgId, s.agent), () => cache.invalidate(s.orgId), () => cache.invalidateAgentEverywhere(s.agent)]) {
      const miss = await cache.lookup({ ...s, text });
      if (miss.hit) throw new Error('expected a miss');
      expect(miss.lookedAt).toBeInstanceOf(Date);
      // The answer is computed meanwhile; the knowledge it came from is replaced and the cache invalidated.
      await invalidate();
      expect(await cache.store({ ...s, text, embedding: miss.embedding, lookedAt: miss.lookedAt, response: 'stale' })).toBe(false);
      expect((await cache.lookup({ ...s, text })).hit).toBe(false);
    }
    // Another agent's invalidation does not refuse it; a lookup after the invalidation stores.
    const miss = await cache.lookup({ ...s, text });
    if (miss.hit) throw new Error('expected a miss');
    await cache.invalidate(s.orgId, 'another-agent');
    expect(await cache.store({ ...s, text, embedding: miss.embedding, lookedAt: miss.lookedAt, response: 'fresh' })).toBe(true);
    expect(await cache.lookup({ ...s, text })).toMatchObject({ hit: true, response: 'fresh' });
  });

  it('keeps a question holding a NUL (as U+FFFD), and declines an answer jsonb cannot hold instead of failing', async () => {
    const cache = createSemanticCache({ pool, embed: createHashEmbed(), ttlS: 60 });
    const s = scope(randomOrg());
    const question = 'How can I reset\u0000 my password?';
    expect(await cache.store({ ...s, text: question, response: { answer: 'Use the reset link.' } })).toBe(true);
    expect(await cache.lookup({ ...s, text: question })).toMatchObject({ hit: true, response: { answer: 'Use the reset link.' } });
    const { rows } = await pool.query<{ query: string }>('SELECT query FROM semantic_cache WHERE org_id = $1', [s.orgId]);
    expect(rows.map((r) => r.query)).toEqual(['How can I reset\uFFFD my password?']);
    const other = scope(randomOrg());
    expect(await cache.store({ ...other, text: 'q1', response: { answer: 'a NUL \u0000 in it' } })).toBe(false);
    expect(await cache.store({ ...other, text: 'q2', response: { answer: 'a lone \uD800 surrogate' } })).toBe(false);
    const left = await pool.query('SELECT 1 FROM semantic_cache WHERE org_id = $1', [other.orgId]);
    expect(left.rowCount).toBe(0);
  });

  it('respects a lower threshold for looser paraphrases', async () => {
    const cache = createSemanticCache({ pool, embed: createHashEmbed(), ttlS: 60, threshold: 0.85 });
    const strict = createSemanticCache({ pool, embed: createHashEmbed(), ttlS: 60 });
    const s = scope(randomOrg());
    await cache.store({ ...s, text: 'What is the refund policy for annual plans?', response: 'pro-rated' });
    const loose = await cache.lookup({ ...s, text: 'Which refund policy applies to annual plans?' });
    expect(loose.hit && loose.similarity).toBeLessThan(0.95);
    expect(loose).toMatchObject({ hit: true, response: 'pro-rated' });
    expect((await strict.lookup({ ...s, text: 'Which refund policy applies to annual plans?' })).hit).toBe(false);
  });

  it('never hits across orgs, agents, actions, models, prompt versions or input scopes, even for identical text', async () => {
    const cache = createSemanticCache({ pool, embed: createHashEmbed(), ttlS: 60 });
    const s = scope(randomOrg());
    const text = 'What is our current runway?';
    await cache.store({ ...s, text, response: 'org A secret: 14 months' });
    expect((await cache.lookup({ ...s, text })).hit).toBe(true);
    expect((await cache.lookup({ ...s, inputScope: '', text })).hit).toBe(true);
    await cache.store({ ...s, inputScope: 'startup-1', text, response: 'startup 1: 9 months' });
    expect(await cache.lookup({ ...s, inputScope: 'startup-1', text })).toMatchObject({ hit: true, response: 'startup 1: 9 months' });
    for (const other of [{ orgId: randomOrg() }, { agent: 'other' }, { action: 'other' }, { model: 'gemini-2.5-pro' }, { promptVersion: 2 }, { inputScope: 'startup-2' }]) {
      expect((await cache.lookup({ ...s, ...other, text })).hit).toBe(false);
    }
  });
});

// A private database: other test files share the default one and their stacks' ops sweep purges every
// expired row there, which raced this test's own purge (CI saw it return 0 once).
describe('semantic cache expiry', () => {
  let db: EmbeddedPostgres;
  let own: pg.Pool;
  beforeAll(async () => {
    db = await freshEmbeddedPostgres();
    own = createPool(db.url, { max: 2 });
    await migrate(own);
  });
  afterAll(async () => {
    await own?.end();
    await db?.stop();
  });

  it('ignores expired entries and purges them', async () => {
    const cache = createSemanticCache({ pool: own, embed: createHashEmbed(), ttlS: 3600 });
    const s = scope(randomOrg());
    const text = 'Which investors led the seed round?';
    await cache.store({ ...s, text, response: 'Acme Ventures' });
    expect((await cache.lookup({ ...s, text })).hit).toBe(true);
    const expiresIn = (await own.query("SELECT extract(epoch FROM expires_at - now()) AS s FROM semantic_cache WHERE org_id = $1", [s.orgId])).rows[0].s;
    expect(Number(expiresIn)).toBeGreaterThan(3500);
    // Move the entry's expiry into the past rather than sleeping through a TTL.
    await own.query("UPDATE semantic_cache SET expires_at = now() - interval '1 second' WHERE org_id = $1", [s.orgId]);
    expect((await cache.lookup({ ...s, text })).hit).toBe(false);
    expect(await cache.purgeExpired()).toBe(1);
    expect((await own.query('SELECT count(*)::int AS n FROM semantic_cache WHERE org_id = $1', [s.orgId])).rows[0].n).toBe(0);
  });
});

describe('semantic cache guard', () => {
  let pool: pg.Pool;
  const logger = createLogger({ level: 'silent' });
  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(() => pool.end());

  const action = (semantic: boolean): AgentAction =>
    ({
      description: 'ask',
      input: z.object({ question: z.string() }),
      output: z.object({ answer: z.string() }),
      promptVersion: 3,
      model: 'fast',
      prompt: (i: { question: string }) => ({ user: i.question }),
      ...(semantic ? { semanticKey: (i: { question: string }) => i.question } : {}),
    }) as AgentAction;

  const ctxFor = (orgId: string, question: string, semantic = true) =>
    ({ orgId, agentName: 'knowledge', actionName: 'ask', action: action(semantic), input: { question }, model: 'gemini-2.5-flash', logger }) as unknown as JobContext;

  const modelResult = (answer: string): AgentResult => ({
    success: true,
    data: { answer },
    tokensUsed: { input: 120, output: 40 },
    costUsd: 0.0002,
    durationMs: 900,
    model: 'gemini-2.5-flash',
  });

  it('runs the job on a miss, stores the result, and serves a paraphrase for free without calling next', async () => {
    const embed = createHashEmbed();
    const guard = createSemanticCacheGuard({ cache: createSemanticCache({ pool, embed, ttlS: 60 }) });
    const orgId = randomOrg();
    let calls = 0;
    const next = async () => {
      calls++;
      return modelResult('Use the reset link.');
    };
    const first = await guard(ctxFor(orgId, 'How can I reset my password?'), next);
    expect(first).toMatchObject({ success: true, costUsd: 0.0002 });
    expect(first.cacheHit).toBeUndefined();
    expect(embed.texts).toBe(1); // the miss embedding was reused for the store

    const second = await guard(ctxFor(orgId, 'how do I reset the password'), next);
    expect(calls).toBe(1);
    expect(second).toMatchObject({ success: true, data: { answer: 'Use the reset link.' }, cacheHit: 'semantic', costUsd: 0, tokensUsed: { input: 0, output: 0 }, model: 'gemini-2.5-flash' });

    // Same text from another org goes to the model.
    await guard(ctxFor(randomOrg(), 'how do I reset the password'), next);
    expect(calls).toBe(2);
  });

  it('does not cache failures, and leaves actions without semanticKey alone', async () => {
    const embed = createHashEmbed();
    const guard = createSemanticCacheGuard({ cache: createSemanticCache({ pool, embed, ttlS: 60 }) });
    const orgId = randomOrg();
    let calls = 0;
    const failing = async (): Promise<AgentResult> => {
      calls++;
      return { ...modelResult(''), success: false, error: 'model refused' };
    };
    await guard(ctxFor(orgId, 'Summarise the board deck'), failing);
    await guard(ctxFor(orgId, 'Summarise the board deck'), failing);
    expect(calls).toBe(2);

    const before = embed.calls;
    const plain = await guard(ctxFor(orgId, 'Summarise the board deck', false), async () => modelResult('x'));
    expect(plain.cacheHit).toBeUndefined();
    expect(embed.calls).toBe(before);
  });

  it('runs the job when the cache is unavailable', async () => {
    const guard = createSemanticCacheGuard({
      cache: {
        lookup: async () => {
          throw new Error('connection refused');
        },
        store: async () => {
          throw new Error('connection refused');
        },
      },
    });
    const result = await guard(ctxFor(randomOrg(), 'anything'), async () => modelResult('fresh'));
    expect(result).toMatchObject({ success: true, data: { answer: 'fresh' } });
  });

  it('counts each embedding call it made, also when the SQL after it failed and the job ran without the cache', async () => {
    const embed = createHashEmbed();
    // Postgres gone after the embedding calls: the lookup's match and the store's insert both fail.
    const down = { query: async () => Promise.reject(Object.assign(new Error('connection refused'), { code: 'ECONNREFUSED' })) } as unknown as pg.Pool;
    const guard = createSemanticCacheGuard({ cache: createSemanticCache({ pool: down, embed, ttlS: 60 }), logger });
    const embedded: string[] = [];
    const ctx = { ...ctxFor(randomOrg(), 'What runway does a seed startup need?'), embedded: (texts: readonly string[]) => embedded.push(...texts) } as JobContext;
    const result = await guard(ctx, async () => modelResult('18 months'));
    expect(result).toMatchObject({ success: true, data: { answer: '18 months' } });
    // Two paid calls (the lookup's, then the store's own, the lookup having returned no embedding): both counted.
    expect(embed.texts).toBe(2);
    expect(embedded).toEqual(['What runway does a seed startup need?', 'What runway does a seed startup need?']);
  });
});
