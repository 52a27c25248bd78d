import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

describe('retries, backoff and the failed set', () => {
  let s: Stack;
  let queue: Queue;
  beforeAll(async () => {
    s = await startStack({ JOB_ATTEMPTS: '3', BACKOFF_BASE_MS: '20', BACKOFF_MAX_MS: '100' }, { worker: true });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    await queue?.close();
    await s?.close();
  });

  /** Runs one job whose prompt contains `marker`, so emulator faults can target it. */
  async function run(marker: string) {
    const input = { startup: { name: `${marker} Inc`, industry: 'fintech', description: 'Payments for small shops' } };
    const post = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: s.auth })).json();
    await usageWritten(s);
    const runs = (await s.infra.db.pool.query('SELECT attempt, state, error FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [id])).rows;
    return { id, view, runs };
  }

  it('retries a 500 and then succeeds', async () => {
    s.emulator.script({ status: 500, match: { promptIncludes: 'retry-then-ok' }, times: 1 });
    const { view, runs } = await run('retry-then-ok');
    expect(view.state).toBe('completed');
    expect(view.attempts).toBe(2);
    expect(runs.map((r) => r.state)).toEqual(['failed', 'completed']);
    expect(runs[0].error).toMatch(/500|internal/i);
  });

  it('honours a 429: runs again after its retryDelay without using an attempt', async () => {
    s.emulator.script({ status: 429, retryAfterS: 0.2, match: { promptIncludes: 'throttled-once' }, times: 1 });
    const { view, runs } = await run('throttled-once');
    expect(view.state).toBe('completed');
    expect(view.attempts).toBe(1);
    expect(runs.map((r) => r.state)).toEqual(['completed']);
  });

  it('keeps a job that exhausts its attempts in the failed set with reason and stack', async () => {
    s.emulator.script({ status: 503, match: { promptIncludes: 'always-down' }, times: -1 });
    const { id, view, runs } = await run('always-down');
    s.emulator.clearFaults();
    expect(view.state).toBe('failed');
    expect(view.attempts).toBe(3);
    expect(view.error).toMatch(/503|unavailable/i);
    expect(runs.map((r) => r.state)).toEqual(['failed', 'failed', 'failed']);
    const job = await queue.getJob(id);
    expect(await job!.getState()).toBe('failed');
    expect(job!.stacktrace?.length).toBeGreaterThan(0);
    expect((await queue.getFailed()).map((j) => j.id)).toContain(id);
  });

  it('fails a non-retryable 4xx at once', async () => {
    s.emulator.script({ status: 400, match: { promptIncludes: 'bad-request' }, times: -1 });
    const { view, runs } = await run('bad-request');
    s.emulator.clearFaults();
    expect(view.state).toBe('failed');
    expect(view.attempts).toBe(1);
    expect(runs).toHaveLength(1);
  });

  it('retries a schema-invalid model answer', async () => {
    s.emulator.script({ malformed: true, match: { promptIncludes: 'garbled-once' }, times: 1 });
    const { view, runs } = await run('garbled-once');
    expect(view.state).toBe('completed');
    expect(runs.map((r) => r.state)).toEqual(['failed', 'completed']);
  });

  it('fails a hand-written job with invalid input as unrecoverable', async () => {
    const job = await queue.add('DealScorer:pipeline_summary', { orgId: s.orgId, agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 7 }, enqueuedAt: Date.now() }, { attempts: 3 });
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${job.id}?waitMs=10000`, headers: s.auth })).json();
    expect(view.state).toBe('failed');
    expect(view.error).toMatch(/invalid job/);
    // Failed for good on the first attempt: never retried although 3 attempts were allowed.
    const again = await queue.getJob(job.id!);
    expect(again!.attemptsStarted ?? again!.attemptsMade).toBeLessThanOrEqual(1);
    expect(again!.attemptsMade).toBeLessThanOrEqual(1);
  });
});
