import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDirectProducer } from '../src/producers/direct-producer.js';
import { ValidationError } from '../src/shared/core/errors.js';
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
});
