import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startRedisServer, type RedisServerHandle } from '../src/shared/infra/redis/redis-server.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL } from './helpers/wait.js';

describe('Redis outage at the API', () => {
  let redis: RedisServerHandle;
  let s: Stack;
  beforeAll(async () => {
    redis = await startRedisServer();
    s = await startStack({ REDIS_URL: redis.url });
  });
  afterAll(async () => {
    await s?.close();
    await redis?.stop();
  });

  const payload = { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'down-1' } };

  it('answers 503 fast (never hangs) while Redis is down, and recovers when it is back', async () => {
    expect((await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).statusCode).toBe(202);
    await redis.stop();
    const started = performance.now();
    const down = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload });
    const elapsedMs = performance.now() - started;
    expect(down.statusCode).toBe(503);
    expect(down.json().error).toMatch(/unavailable/);
    expect(down.headers['retry-after']).toBe('1');
    console.log(`enqueue with Redis down answered ${down.statusCode} in ${elapsedMs.toFixed(0)} ms`);
    const bulk = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: s.auth, payload: { jobs: [payload] } });
    expect(bulk.statusCode).toBe(503);
    expect((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(503);
    expect((await s.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);

    redis = await startRedisServer({ port: redis.port });
    await vi.waitFor(async () => expect((await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).statusCode).toBe(202), { ...POLL, interval: 100 });
    expect((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
  });
});
