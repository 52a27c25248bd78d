import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { orchestrationFeature } from '../src/app/features/orchestration.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until } from './helpers/wait.js';

describe('API shutdown', () => {
  let s: Stack | undefined;
  let base: string;
  beforeAll(async () => {
    s = await startStack({ LONG_POLL_MAX_MS: '120000' }, { worker: true, features: [orchestrationFeature] });
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(async () => s?.close());

  it('answers the long polls in flight with their current view instead of holding the shutdown for their waitMs', async () => {
    const stack = s!;
    const auth = stack.auth;
    const job = await stack.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'shutdown' }, options: { delayMs: 600_000 } } });
    expect(job.statusCode).toBe(202);
    const flow = await stack.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth, payload: { tasks: [{ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'shutdown-flow' }, options: { delayMs: 600_000 } }] } });
    expect(flow.statusCode).toBe(202);
    // Real connections: fastify's close waits for their responses.
    const polls = [`/v1/jobs/${job.json().id}`, `/v1/flows/${flow.json().id}`].map((path) => fetch(`${base}${path}?waitMs=100000`, { headers: auth }));
    await until('the job long poll to be registered', () => stack.runtime.deps.jobs.waiters.size().waiters === 1);
    s = undefined;
    const closing = stack.close();
    const [jobRes, flowRes] = await Promise.all(polls);
    expect(jobRes.status).toBe(200);
    expect((await jobRes.json()).state).toBe('delayed');
    // The flow poll may reach the app only once it is closing (a 503, as for any new request), or be registered
    // after its waits were ended (it then ends at once): either way it answers, and the close does not wait for it.
    expect([200, 503]).toContain(flowRes.status);
    if (flowRes.status === 200) expect((await flowRes.json()).state).not.toMatch(/completed|failed/);
    // A long poll whose wait registers after the close began (still in its first read then) ends at once too.
    const late = stack.runtime.deps.jobs.waiters.register(job.json().id, 100_000);
    expect(await late.ended).toBe('closing');
    await closing;
  });
});
