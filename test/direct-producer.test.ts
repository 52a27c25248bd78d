import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createDirectProducer } from '../src/producers/direct-producer.js';
import { defineAction, defineAgent } from '../src/shared/agents/define-agent.js';
import { ConfigError } from '../src/shared/core/config.js';
import { ValidationError } from '../src/shared/core/errors.js';
import { idempotencyRecordKey } from '../src/shared/core/queue-keys.js';
import { idempotentJobId } from '../src/shared/queue/job-producer.js';
import { startStack, type Stack } from './helpers/stack.js';

describe('direct producer (services sharing Redis)', () => {
  let s: Stack;
  let producer: Awaited<ReturnType<typeof createDirectProducer>>;
  beforeAll(async () => {
    s = await startStack({}, { worker: true });
    producer = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    await producer?.close();
    await s?.close();
  });

  it('enqueues a job the workers run and the API serves to the same org', async () => {
    const { id } = await producer.enqueue({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'direct-1' } }, { orgId: s.orgId });
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.result.data.startupId).toBe('direct-1');
  });

  it('applies the API validation, with the same field paths', async () => {
    const before = await producer.queue.count();
    await expect(producer.enqueue({ agent: 'DealScorer', action: 'pipeline_summary', input: {} }, { orgId: s.orgId })).rejects.toThrow(ValidationError);
    const err = await producer
      .enqueueBulk([{ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'ok' } }, { agent: 'Nope', action: 'x', input: {} }], { orgId: s.orgId })
      .catch((e: ValidationError) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect(await producer.queue.count()).toBe(before);
  });

  it('refuses what a body could not hold or JSON would not keep, naming where, before any Redis call', async () => {
    const before = await producer.queue.count();
    const job = (meta: unknown) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'x', meta } });
    const refused = async (value: unknown, bulk = false) => {
      const err = await (bulk ? producer.enqueueBulk([job('ok'), value], { orgId: s.orgId }) : producer.enqueue(value, { orgId: s.orgId })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ValidationError);
      return (err as ValidationError).details[0];
    };
    expect(await refused(job({ n: Number.NaN }))).toEqual({ path: 'input.meta.n', message: expect.stringMatching(/NaN/) });
    expect(await refused(job([1, Infinity]))).toEqual({ path: 'input.meta.1', message: expect.stringMatching(/beyond a double's range/) });
    expect(await refused(job('x\ud800'))).toEqual({ path: 'input.meta', message: expect.stringMatching(/lone surrogate/) });
    expect(await refused(job(new Map([['a', 1]])))).toEqual({ path: 'input.meta', message: expect.stringMatching(/Map.*entries lost/) });
    expect(await refused(job({ big: 10n }))).toEqual({ path: 'input.meta.big', message: expect.stringMatching(/bigint/) });
    expect(await refused(job([undefined]))).toEqual({ path: 'input.meta.0', message: expect.stringMatching(/undefined.*null/) });
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    expect((await refused(job(cycle))).message).toMatch(/cycle/);
    // A bulk names the job by its place, as POST /v1/jobs/bulk does.
    expect((await refused(job({ f: () => 1 }), true)).path).toBe('jobs.1.input.meta.f');
    expect(await producer.queue.count()).toBe(before);
  });

  it('takes what JSON keeps as given: an undefined member left out, a Date as its ISO text', async () => {
    // An action whose `meta` is open (passthrough), so what the walk lets through reaches the stored job.
    const registry = s.runtime.deps.registry;
    registry.register(
      defineAgent({
        name: 'OpenDirect',
        description: 'test agent with an open object',
        actions: {
          run: defineAction({
            description: 'test',
            input: z.object({ meta: z.object({}) }),
            output: z.object({ ok: z.boolean() }),
            promptVersion: 1,
            model: 'fast',
            passthrough: ['meta'],
            prompt: () => ({ user: 'u' }),
          }),
        },
      }),
    );
    const open = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX, agents: registry });
    try {
      const at = new Date('2026-12-06T00:00:00Z');
      const { id } = await open.enqueue({ agent: 'OpenDirect', action: 'run', input: { meta: { at, gone: undefined, n: 1.5 } } }, { orgId: s.orgId });
      const stored = await open.queue.getJob(id);
      expect(stored?.data.input).toEqual({ meta: { at: at.toISOString(), n: 1.5 } });
      await expect(open.enqueue({ agent: 'OpenDirect', action: 'run', input: { meta: { n: Number.NaN } } }, { orgId: s.orgId })).rejects.toThrow(ValidationError);
    } finally {
      await open.close();
    }
  });
});

describe("direct producer: an idempotency key is kept the deployment's IDEMPOTENCY_TTL_S", () => {
  let s: Stack;
  const hostTtl = process.env.IDEMPOTENCY_TTL_S;
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => {
    if (hostTtl === undefined) delete process.env.IDEMPOTENCY_TTL_S;
    else process.env.IDEMPOTENCY_TTL_S = hostTtl;
    await s?.close();
  });

  /** The ms to live of the key's record the direct producer's enqueue under `key` wrote. */
  async function recordTtl(opts: Partial<Parameters<typeof createDirectProducer>[0]>, key: string): Promise<number> {
    const producer = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX, ...opts });
    try {
      const { id } = await producer.enqueue({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: key }, options: { idempotencyKey: key } }, { orgId: s.orgId });
      expect(id).toBe(idempotentJobId(s.orgId, key));
      return await s.runtime.deps.redis.pttl(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id));
    } finally {
      await producer.close();
    }
  }

  it('takes IDEMPOTENCY_TTL_S from the environment, as the API does; retention.idempotencyTtlS overrides it; a bad value is refused naming it', async () => {
    process.env.IDEMPOTENCY_TTL_S = '120';
    const fromEnv = await recordTtl({}, 'ttl-env');
    expect(fromEnv).toBeGreaterThan(0);
    expect(fromEnv).toBeLessThanOrEqual(120_000);
    const given = await recordTtl({ retention: { idempotencyTtlS: 30 } }, 'ttl-given');
    expect(given).toBeGreaterThan(0);
    expect(given).toBeLessThanOrEqual(30_000);
    process.env.IDEMPOTENCY_TTL_S = 'soon';
    const refused = createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX });
    await expect(refused).rejects.toThrow(ConfigError);
    await expect(refused).rejects.toThrow(/IDEMPOTENCY_TTL_S/);
    // Unset: a day, as the API's default.
    delete process.env.IDEMPOTENCY_TTL_S;
    expect(await recordTtl({}, 'ttl-default')).toBeGreaterThan(86_000_000);
  });
});

describe("direct producer: a job's attempts and retention are the deployment's, as the API's", () => {
  let s: Stack;
  const vars = ['JOB_ATTEMPTS', 'KEEP_COMPLETED_COUNT', 'KEEP_COMPLETED_AGE_S', 'KEEP_FAILED_COUNT', 'KEEP_FAILED_AGE_S'] as const;
  const host = Object.fromEntries(vars.map((v) => [v, process.env[v]]));
  beforeAll(async () => {
    s = await startStack({}, { worker: false });
  });
  afterAll(async () => {
    for (const v of vars) {
      if (host[v] === undefined) delete process.env[v];
      else process.env[v] = host[v];
    }
    await s?.close();
  });

  /** The stored options of the job the direct producer made for `startupId`. */
  async function storedOpts(opts: Partial<Parameters<typeof createDirectProducer>[0]>, startupId: string) {
    const producer = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX, ...opts });
    try {
      const { id } = await producer.enqueue({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId } }, { orgId: s.orgId });
      const job = await producer.queue.getJob(id);
      return { attempts: job?.opts.attempts, removeOnComplete: job?.opts.removeOnComplete, removeOnFail: job?.opts.removeOnFail };
    } finally {
      await producer.close();
    }
  }

  it('reads JOB_ATTEMPTS and KEEP_COMPLETED_* / KEEP_FAILED_* from the environment; `retention` wins; a bad value is refused naming it, before connecting', async () => {
    Object.assign(process.env, { JOB_ATTEMPTS: '5', KEEP_COMPLETED_COUNT: '7', KEEP_COMPLETED_AGE_S: '600', KEEP_FAILED_COUNT: '9', KEEP_FAILED_AGE_S: '900' });
    expect(await storedOpts({}, 'env-retention')).toEqual({ attempts: 5, removeOnComplete: { count: 7, age: 600 }, removeOnFail: { count: 9, age: 900 } });
    expect(await storedOpts({ retention: { attempts: 2, keepFailedAgeS: 60 } }, 'given-retention')).toEqual({
      attempts: 2,
      removeOnComplete: { count: 7, age: 600 },
      removeOnFail: { count: 9, age: 60 },
    });
    // Refused before any connection: a Redis nobody listens on would otherwise fail it with a connection error.
    const nowhere = 'redis://127.0.0.1:1';
    for (const [name, bad] of [
      ['JOB_ATTEMPTS', '0'],
      ['KEEP_COMPLETED_COUNT', 'many'],
      ['KEEP_FAILED_AGE_S', '-1'],
    ] as const) {
      const before = process.env[name];
      process.env[name] = bad;
      const err = await createDirectProducer({ redisTarget: nowhere, prefix: s.cfg.QUEUE_PREFIX, commandTimeoutMs: 500 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(name);
      process.env[name] = before;
    }
    // Unset: the config's defaults, as the API's.
    for (const v of vars) delete process.env[v];
    expect(await storedOpts({}, 'default-retention')).toEqual({
      attempts: 3,
      removeOnComplete: { count: 10_000, age: 24 * 3600 },
      removeOnFail: { count: 50_000, age: 14 * 24 * 3600 },
    });
  });
});

describe('direct producer on a sharded deployment (the layout recorded in Redis)', () => {
  let s: Stack;
  const hostShards = process.env.QUEUE_SHARDS;
  beforeAll(async () => {
    s = await startStack({ QUEUE_SHARDS: '4' }, { worker: true });
    // A host service that does not repeat the deployment's QUEUE_SHARDS.
    delete process.env.QUEUE_SHARDS;
  });
  afterAll(async () => {
    if (hostShards === undefined) delete process.env.QUEUE_SHARDS;
    else process.env.QUEUE_SHARDS = hostShards;
    await s?.close();
  });

  it('without a count takes the recorded one: its job runs and the API finds it', async () => {
    const producer = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX });
    try {
      const { id } = await producer.enqueue({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'direct-sharded' } }, { orgId: s.orgId });
      const res = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth });
      expect(res.statusCode).toBe(200);
      expect(res.json().state).toBe('completed');
      expect(producer.queueOf(s.orgId).opts.prefix).toBe(s.runtime.deps.cellOf(s.orgId).prefix);
    } finally {
      await producer.close();
    }
  }, 30_000);

  it('refuses to start with a count that differs from the recorded one, naming QUEUE_SHARDS and both counts', async () => {
    const refused = createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX, shards: 1 });
    await expect(refused).rejects.toThrow(ConfigError);
    await expect(refused).rejects.toThrow(/QUEUE_SHARDS=1: the queue under .* is laid out in 4 shard\(s\)/);
    process.env.QUEUE_SHARDS = '2';
    try {
      await expect(createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX })).rejects.toThrow(/QUEUE_SHARDS=2: .* laid out in 4 shard\(s\)/);
    } finally {
      delete process.env.QUEUE_SHARDS;
    }
    // The same count, given, is taken.
    const agreed = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX, shards: 4 });
    await agreed.close();
  });
});
