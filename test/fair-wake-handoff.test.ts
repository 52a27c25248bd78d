import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { fairKickChannel } from '../src/shared/core/queue-keys.js';
import { subscribeShardChannel } from '../src/shared/infra/redis/shard-channel.js';
import { redisUrl } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';

/**
 * A wake-up an enqueue's dispatch leaves (a delayed job's timer, a lane asleep on a limit) must reach a process
 * with a dispatch loop: the API's enqueue is told it without taking it and asks the workers (fair kick channel),
 * whose next dispatch takes it. Before, the API process took it and armed nothing: the job waited for a worker's
 * safety poll, up to 10 s after it was due (a batched rate-limit wake-up was seen lost that way).
 */
describe('fair dispatch: the wake-up an enqueue leaves goes to the workers', () => {
  let s: Stack;
  let sub: Redis;
  beforeAll(async () => {
    s = await startStack({}, { worker: true });
    sub = new Redis(redisUrl());
  });
  afterAll(async () => {
    sub?.disconnect();
    await s?.close();
  });

  it('kicks the workers after an enqueue that leaves a timer, and a worker takes the wake-up', async () => {
    const kicks: string[] = [];
    const channel = fairKickChannel(s.cfg.QUEUE_PREFIX);
    sub.on('smessage', (ch: string, msg: string) => ch === channel && kicks.push(msg));
    await subscribeShardChannel(sub, channel).subscribed;
    const wakeKey = s.runtime.deps.cells[0].scheduler.keys.named.wake;

    // Nothing left to wake up: no kick (the workers are not asked for a dispatch per enqueue).
    const now = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'wake-now' } } });
    expect(now.statusCode).toBe(202);
    await vi.waitFor(async () => expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${now.json().id}`, headers: s.auth })).json().state).toBe('completed'), { timeout: 15_000 });
    expect(kicks).toEqual([]);

    const delayMs = 1500;
    const later = await s.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      headers: s.auth,
      payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'wake-later' }, options: { delayMs } },
    });
    expect(later.statusCode).toBe(202);
    await vi.waitFor(() => expect(kicks.length).toBeGreaterThanOrEqual(1), { timeout: 10_000 });
    // A worker's dispatch took the wake-up (its timer is armed): the time it names is the job's not-before time.
    await vi.waitFor(async () => expect(Number(await s.runtime.deps.redis.get(wakeKey))).toBeGreaterThan(0), { timeout: 10_000 });
    const view = await vi.waitFor(
      async () => {
        const v = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${later.json().id}`, headers: s.auth })).json();
        expect(v.state).toBe('completed');
        return v;
      },
      { timeout: 30_000, interval: 50 },
    );
    expect(view.result.data.startupId).toBe('wake-later');
  });
});
