import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { streamingFeature } from '../src/app/features/streaming.js';
import { orchestrationFeature } from '../src/app/features/orchestration.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

/**
 * An enqueue that outlives ENQUEUE_DEADLINE_MS answers 503, but the add already sent may still land: the answer
 * says the outcome is unknown and names the job ids, so a caller checks them instead of adding the work twice.
 */
describe('enqueue deadline', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ ENQUEUE_DEADLINE_MS: '200' }, { worker: false, features: [streamingFeature({ heartbeatMs: 200 }), orchestrationFeature] });
  });
  afterAll(async () => s?.close());

  /** Holds the dispatcher's enqueue call (the add) until `land()`; it then lands, after the deadline. */
  function holdAdds() {
    const raw = s.runtime.deps.cells[0].scheduler!.raw;
    const orig = raw.enqueue.bind(raw);
    let land!: () => void;
    const gate = new Promise<void>((resolve) => (land = resolve));
    let landed = 0;
    raw.enqueue = async (...a: Parameters<typeof orig>) => {
      await gate;
      try {
        return await orig(...a);
      } finally {
        landed++;
      }
    };
    return { land, landed: () => landed, restore: () => (raw.enqueue = orig) };
  }

  const deal = (startupId: string) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId } });

  for (const [route, payload] of [
    ['/v1/jobs', deal('late-single')],
    ['/v1/jobs/bulk', { jobs: [deal('late-bulk-1'), deal('late-bulk-2')] }],
    ['/v1/stream', deal('late-stream')],
  ] as const) {
    it(`${route}: a 503 past the deadline says the outcome is unknown and names the ids, which the late add then holds`, async () => {
      const held = holdAdds();
      try {
        const res = await s.app.inject({ method: 'POST', url: route, headers: s.auth, payload });
        expect(res.statusCode).toBe(503);
        expect(res.headers['retry-after']).toBe('1');
        const body = res.json();
        expect(body).toMatchObject({ outcome: 'unknown', error: expect.stringMatching(/may still be added/) });
        expect(body.jobIds).toHaveLength(route === '/v1/jobs/bulk' ? 2 : 1);
        held.land();
        await until('the late add to land', () => held.landed() === 1);
        for (const id of body.jobIds as string[]) {
          const view = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth });
          expect(view.statusCode).toBe(200);
        }
      } finally {
        held.restore();
      }
    });
  }

  /** Holds the producer's `method` (a run's admission, a flow's add) until `land()`; the start then lands, late. */
  function holdProducer(method: 'admit' | 'enqueueFlow') {
    const producer = s.runtime.deps.cells[0].producer as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    const orig = producer[method];
    let land!: () => void;
    const gate = new Promise<void>((resolve) => (land = resolve));
    let landed = 0;
    producer[method] = async (...a: unknown[]) => {
      await gate;
      try {
        return await orig(...a);
      } finally {
        landed++;
      }
    };
    return { land, landed: () => landed, restore: () => (producer[method] = orig) };
  }

  const wizard = { input: { companyName: 'Late Run Inc', answers: [{ question: 'What?', answer: 'Robots.' }] } };
  for (const [route, payload, held, idKey, read] of [
    ['/v1/pipelines/wizard_completion', wizard, 'admit', 'runId', '/v1/pipelines/runs/'],
    ['/v1/flows/parallel', { tasks: [deal('late-flow')] }, 'enqueueFlow', 'flowId', '/v1/flows/'],
    ['/v1/flows/dashboard', { startupId: 'late-preset' }, 'enqueueFlow', 'flowId', '/v1/flows/'],
  ] as const) {
    // A retry told only "unavailable" starts the whole run or flow again: its steps or children run and bill twice.
    it(`${route}: a 503 past the deadline says the outcome is unknown and names the ${idKey}, which the late start then holds`, async () => {
      const h = holdProducer(held);
      try {
        const res = await s.app.inject({ method: 'POST', url: route, headers: s.auth, payload });
        expect(res.statusCode).toBe(503);
        expect(res.headers['retry-after']).toBe('1');
        const body = res.json();
        expect(body).toMatchObject({ outcome: 'unknown', error: expect.stringMatching(/may still be started/) });
        expect(body[idKey]).toEqual(expect.any(String));
        h.land();
        await until('the late start to land', () => h.landed() === 1);
        await until('the late start to be stored', async () => (await s.app.inject({ method: 'GET', url: `${read}${body[idKey]}`, headers: s.auth })).statusCode === 200);
      } finally {
        h.restore();
      }
    }, waitsTimeout(POLL.timeout, POLL.timeout));
  }
});
