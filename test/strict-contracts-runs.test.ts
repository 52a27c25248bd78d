import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { createKnowledgeFeature } from '../src/app/features/knowledge.js';
import { opsFeature } from '../src/app/features/ops.js';
import { orchestrationFeature } from '../src/app/features/orchestration.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import { createSseParser, type SseMessage } from '../src/producers/client/sse-parser.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until } from './helpers/wait.js';

/** Contracts that show while jobs run: breaker accounting. */
describe('strict contracts while jobs run', () => {
  let s: Stack;
  let base: string;
  beforeAll(async () => {
    s = await startStack(
      {
        ALLOWED_MODELS: 'malformed-model,down-model',
        BREAKER_FAILURE_THRESHOLD: '2',
        BREAKER_TIMEOUT_MS: '60000',
        JOB_ATTEMPTS: '3',
        // The 2,000-odd long polls and enqueues of the long-poll test verify their one key once, not in Postgres
        // each (the suite's TTL of 0): no test here revokes a key, and the suite's one PGlite is shared.
        AUTH_CACHE_TTL_MS: '600000',
      },
      // A heartbeat far beyond the test: a stream that ends did not wait for one.
      { worker: true, features: [createKnowledgeFeature, orchestrationFeature, opsFeature, streamingFeature({ heartbeatMs: 600_000 })] },
    );
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
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

  describe('long polls', () => {
    const listeners = (e: { eventNames(): Array<string | symbol>; listenerCount(n: string | symbol): number }) =>
      e.eventNames().reduce((n, name) => n + e.listenerCount(name), 0);

    it('1,000 long polls on 100 jobs share one listener set, leave none behind, and warn nothing', { timeout: 120_000 }, async () => {
      const warnings: string[] = [];
      const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
      process.on('warning', onWarning);
      try {
        const jobs = s.runtime.deps.jobs;
        // Warm-up: the shared listeners are attached on first use; that is the baseline.
        const warm = await enqueue({ ...deal('warm', s.cfg.GEMINI_MODEL_FAST), options: { delayMs: 600_000 } });
        await view(warm, 1);
        const base = { events: listeners(jobs.queueEvents()), queue: listeners(s.runtime.queue) };

        // Waits that time out: 100 delayed jobs, 10 polls each.
        const delayed = await Promise.all(Array.from({ length: 100 }, (_, i) => enqueue({ ...deal(`late-${i}`, s.cfg.GEMINI_MODEL_FAST), options: { delayMs: 600_000 } })));
        const timedOut = await Promise.all(delayed.flatMap((id) => Array.from({ length: 10 }, () => view(id, 300))));
        expect(timedOut.every((v) => v.state === 'delayed')).toBe(true);
        expect(jobs.waiters.size()).toEqual({ jobs: 0, waiters: 0 });
        expect({ events: listeners(jobs.queueEvents()), queue: listeners(s.runtime.queue) }).toEqual(base);

        // Waits that end with the job: 100 jobs the worker runs, 10 polls each, all started before they finish.
        const ids = await Promise.all(Array.from({ length: 100 }, (_, i) => enqueue(deal(`poll-${i}`, s.cfg.GEMINI_MODEL_FAST))));
        const finished = await Promise.all(ids.flatMap((id) => Array.from({ length: 10 }, () => view(id, 25_000))));
        expect(finished.map((v) => v.state)).toEqual(finished.map(() => 'completed'));
        expect(jobs.waiters.size()).toEqual({ jobs: 0, waiters: 0 });
        expect({ events: listeners(jobs.queueEvents()), queue: listeners(s.runtime.queue) }).toEqual(base);

        await new Promise((r) => setImmediate(r));
        expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);
      } finally {
        process.off('warning', onWarning);
      }
    });

    it('a long poll on a waiting job that is cancelled returns at once, cancelled', async () => {
      const id = await enqueue({ ...deal('cancel-poll', s.cfg.GEMINI_MODEL_FAST), options: { delayMs: 600_000 } });
      const polled = view(id, 25_000);
      await until('the poll to be registered', () => s.runtime.deps.jobs.waiters.size().waiters === 1);
      expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).statusCode).toBe(200);
      expect((await polled).state).toBe('cancelled');
    });
  });

  describe('SSE of a job cancelled before it ran', () => {
    async function readAll(res: Response): Promise<SseMessage[]> {
      const parser = createSseParser();
      const reader = res.body!.getReader();
      const messages: SseMessage[] = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return messages;
        messages.push(...parser.feed(new TextDecoder().decode(value)));
      }
    }

    for (const stream of [true, false]) {
      it(`ends with the cancelled event and [DONE] after the DELETE (${stream ? 'streaming' : 'plain'} job)`, async () => {
        const id = await enqueue({ ...deal(`sse-cancel-${stream}`, s.cfg.GEMINI_MODEL_FAST), options: { delayMs: 600_000, ...(stream ? { stream: true } : {}) } });
        const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: s.auth });
        expect(res.status).toBe(200);
        const all = readAll(res);
        expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth })).statusCode).toBe(200);
        const messages = await all;
        expect(messages.at(-1)?.data).toBe('[DONE]');
        expect(JSON.parse(messages.at(-2)!.data)).toMatchObject({ state: 'cancelled' });
      });
    }
  });

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
