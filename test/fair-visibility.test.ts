import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { streamingFeature } from '../src/app/features/streaming.js';
import { createSseParser, type SseMessage } from '../src/producers/client/sse-parser.js';
import { startStack, type Stack } from './helpers/stack.js';

const risk = (name: string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name, industry: 'robotics' } } });

describe('why a job waits: the job view and SSE progress', () => {
  let s: Stack;
  let base: string;
  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: '4' }, { worker: true, features: [streamingFeature({ heartbeatMs: 100 })] });
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(async () => {
    s.emulator.clearFaults();
    await s?.close();
  });

  it('names the org concurrency cap while the org is at it, then runs the job when the slot frees', async () => {
    const auth = { authorization: `Bearer ${await s.newKey()}` };
    const holdFirst = 'visibility-hold';
    s.emulator.script({ latencyMs: 4000, match: { promptIncludes: holdFirst }, times: 1 });
    const first = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk(holdFirst) })).json();
    const firstJob = await s.runtime.queue.getJob(first.id);
    await s.runtime.deps.cells[0].scheduler.setPlan(firstJob!.data.orgId, { concurrency: 1 });
    await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(first.id)).toBe('active'), { timeout: 20_000, interval: 20 });

    const second = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk('visibility-second') })).json();
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${second.id}`, headers: auth })).json();
    expect(view.state).toBe('waiting');
    expect(view.waitingFor).toMatchObject({ reason: 'org_concurrency', limit: 'concurrency', position: 0 });

    const res = await fetch(`${base}/v1/jobs/${second.id}/stream`, { headers: auth });
    const parser = createSseParser();
    const reader = res.body!.getReader();
    const messages: SseMessage[] = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      messages.push(...parser.feed(new TextDecoder().decode(value)));
      if (messages.some((m) => m.data === '[DONE]')) break;
    }
    const progress = messages.filter((m) => m.event === 'progress').map((m) => JSON.parse(m.data));
    expect(progress[0]).toMatchObject({ stage: 'waiting', jobId: second.id, reason: 'org_concurrency', limit: 'concurrency' });
    // Sent once while it held, not at every heartbeat.
    expect(progress.filter((p) => p.stage === 'waiting')).toHaveLength(1);
    const final = JSON.parse(messages[messages.length - 2].data);
    expect(final.result.success).toBe(true);
    expect((await s.runtime.queue.getJob(first.id))!.finishedOn).toBeLessThanOrEqual((await s.runtime.queue.getJob(second.id))!.processedOn!);
  });
});
