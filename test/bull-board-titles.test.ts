import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobTitle } from '../src/producers/bull-board.js';
import { PARK_AT_MS } from '../src/shared/fair/park.js';
import { startStack, type Stack } from './helpers/stack.js';

const ADMIN_TOKEN = 'titles-admin-token-0123456789';

describe('Bull Board job titles', () => {
  let s: Stack;
  beforeAll(async () => {
    // No worker: nothing registers a dispatch buffer, so enqueued jobs stay parked for the dispatcher.
    s = await startStack({ ADMIN_TOKEN });
  });
  afterAll(async () => s?.close());

  it('shows a parked job as waiting for dispatch, with its org, instead of a far-future delay', async () => {
    const payload = { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Title Co' } }, options: { model: 'gemini-2.5-flash' } };
    const { id } = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload })).json();
    const job = await s.runtime.queue.getJob(id);
    const res = await s.app.inject({
      method: 'GET',
      url: '/admin/queues/api/queues?activeQueue=agent-jobs&status=delayed&page=1&jobsPerPage=10',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.statusCode).toBe(200);
    const queue = res.json().queues.find((q: { name: string }) => q.name === 'agent-jobs');
    const shown = queue.jobs.find((j: { id: string }) => j.id === id);
    expect(shown.name).toBe(`[waiting for dispatch] RiskAnalyzer:analyze_risks · org ${job!.data.orgId} · gemini-2.5-flash`);
  });

  it('titles other jobs with org and agent:action only', () => {
    const now = Date.now();
    expect(jobTitle({ name: 'DealScorer:pipeline_summary', timestamp: now, delay: 5000, data: { orgId: 'acme' } })).toBe('DealScorer:pipeline_summary · org acme');
    expect(jobTitle({ name: 'x', timestamp: now, delay: PARK_AT_MS - now, data: {} })).toBe('[waiting for dispatch] x');
  });
});
