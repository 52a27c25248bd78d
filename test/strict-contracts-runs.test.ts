import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until } from './helpers/wait.js';

/** Contracts that show while jobs run: breaker accounting. */
describe('strict contracts while jobs run', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack(
      {
        ALLOWED_MODELS: 'malformed-model,down-model',
        BREAKER_FAILURE_THRESHOLD: '2',
        BREAKER_TIMEOUT_MS: '60000',
        JOB_ATTEMPTS: '3',
      },
      { worker: true },
    );
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  const enqueue = async (payload: object, auth = s.auth) => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  const view = async (id: string, waitMs = 20_000, auth = s.auth) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=${waitMs}`, headers: auth })).json();
  const deal = (startupId: string, model: string) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId }, options: { model } });
  const breaker = () => createCircuitBreaker({ redis: s.runtime.deps.redis, prefix: `${s.cfg.QUEUE_PREFIX}:agentq` });

  describe('circuit breaker accounting', () => {
    it('retries malformed answers without counting them against the provider', async () => {
      // Three malformed answers in a row: more than the threshold of 2 that opens the breaker.
      s.emulator.script({ malformed: true, match: { model: 'malformed-model' }, times: 3 });
      const failed = await view(await enqueue(deal('bad-1', 'malformed-model')));
      expect(failed.state).toBe('failed');
      expect(failed.attempts).toBe(3);
      expect(failed.error).toMatch(/^\[EBADOUTPUT\]/);
      expect(s.emulator.calls().filter((c) => c.model.includes('malformed-model'))).toHaveLength(3);
      expect(await breaker().state('gemini:malformed-model')).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
      // Another tenant's job on the same model runs at once, not delayed behind an open breaker.
      const other = await s.newKey();
      const ok = await view(await enqueue(deal('good-1', 'malformed-model'), { authorization: `Bearer ${other}` }), 20_000, { authorization: `Bearer ${other}` });
      expect(ok.state).toBe('completed');
      expect(ok.attempts).toBe(1);
    });

    it('still counts provider errors (5xx): the breaker opens at its threshold', async () => {
      s.emulator.script({ status: 503, match: { model: 'down-model' }, times: -1 });
      await enqueue(deal('down-1', 'down-model'));
      await until('the breaker of down-model to open', async () => (await breaker().state('gemini:down-model')).state === 'open');
    });
  });
});
