import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { classifyFailure } from '../src/shared/core/dlq-classify.js';
import { encodeReason } from '../src/shared/core/outcomes.js';
import { LlmError } from '../src/shared/infra/llm/llm-errors.js';
import { createPricing } from '../src/shared/infra/llm/pricing.js';
import { InvalidOutputError } from '../src/workers/call-agent.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { POLL, waitsTimeout } from './helpers/wait.js';
import { captureLogs, DEAD_LETTERED, marker, riskJob, type CapturedLogs } from './helpers/ops.js';

const ADMIN_TOKEN = 'adm-classification-7c1f0e9b2d4a';

describe('DLQ classification rules', () => {
  it('maps error codes and unrecoverable failures to classes', () => {
    const final = { unrecoverable: false };
    expect(classifyFailure(new LlmError('EPROVIDER', 'Gemini API 500 INTERNAL: boom'), final)).toEqual({ class: 'retryable', type: 'provider' });
    expect(classifyFailure(new LlmError('ERATELIMIT', 'Gemini API 429: slow down'), final)).toEqual({ class: 'retryable', type: 'rate_limit' });
    expect(classifyFailure(new LlmError('ETIMEDOUT', 'Gemini call timed out'), final)).toEqual({ class: 'retryable', type: 'timeout' });
    expect(classifyFailure(new LlmError('ENETWORK', 'network error talking to Gemini'), final)).toEqual({ class: 'retryable', type: 'network' });
    expect(classifyFailure(new InvalidOutputError('model output does not match X.y schema at a: bad'), final)).toEqual({ class: 'poison', type: 'bad_output' });
    // The processor wraps non-retryable errors in UnrecoverableError(message): only the message is left, and
    // it carries the code (encodeReason).
    const unrecoverable = { unrecoverable: true };
    expect(classifyFailure({ name: 'UnrecoverableError', message: encodeReason('EBADREQUEST', 'Gemini API 400 INVALID_ARGUMENT: no') }, unrecoverable)).toEqual({ class: 'poison', type: 'bad_request' });
    expect(classifyFailure({ name: 'UnrecoverableError', message: encodeReason('EVALIDATION', 'invalid job: invalid input for A.b') }, unrecoverable)).toEqual({ class: 'poison', type: 'invalid_input' });
    expect(classifyFailure({ name: 'UnrecoverableError', message: 'cancelled' }, unrecoverable)).toEqual({ class: 'cancelled', type: 'cancelled' });
  });
});

describe('DLQ classification of real failures', () => {
  let s: Stack;
  let logs: CapturedLogs;
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

  beforeAll(async () => {
    logs = captureLogs('info');
    // A breaker that never opens and two attempts keep the persistent-500 case short.
    s = await startStack({ ADMIN_TOKEN, JOB_ATTEMPTS: '2', BREAKER_FAILURE_THRESHOLD: '1000' }, { worker: true, logger: logs.logger });
  });
  afterAll(async () => s?.close());

  const enqueue = async (payload: Record<string, unknown>) => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  const finalState = async (id: string) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=15000`, headers: s.auth })).json();
  const entry = async (id: string) => {
    // The DLQ is an org-admin's.
    const orgAdmin = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    // The class is stored by the worker's failed listener just after the job lands in the failed set.
    return vi.waitFor(
      async () => {
        const res = await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: orgAdmin });
        expect(res.statusCode, `DLQ entry ${id}`).toBe(200);
        expect(await s.runtime.deps.redis.hexists(`${s.cfg.QUEUE_PREFIX}:agentq:dlq:${id}`, 'class'), `class of DLQ entry ${id}`).toBe(1);
        return res.json() as Record<string, any>;
      },
      { timeout: 20_000, interval: 50 },
    );
  };
  const deadLetterLines = (id: string) => logs.lines().filter((l) => l.jobId === id && l.msg === DEAD_LETTERED);
  const dlqMetric = async (cls: string) => {
    const text = (await s.app.inject({ method: 'GET', url: '/metrics', headers: admin })).body;
    const line = text.split('\n').find((l) => l.startsWith('agentq_dlq_entries_total{') && l.includes(`class="${cls}"`) && l.includes('agent="RiskAnalyzer"'));
    return line ? Number(line.split(' ').pop()) : 0;
  };

  it('a 400 from the model is poison, logged once at error with class and reason, and counted', async () => {
    const before = await dlqMetric('poison');
    const m = marker();
    s.emulator.script({ status: 400, message: 'Invalid JSON payload', match: { promptIncludes: m } });
    const id = await enqueue(riskJob(m));
    expect((await finalState(id)).state).toBe('failed');
    const e = await entry(id);
    expect(e).toMatchObject({ id, orgId: s.orgId, agent: 'RiskAnalyzer', class: 'poison', type: 'bad_request', dlqRetries: 0 });
    expect(e.reason).toMatch(/400/);
    const lines = deadLetterLines(id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 50, jobId: id, agent: 'RiskAnalyzer', class: 'poison' });
    expect(lines[0].reason).toMatch(/400/);
    expect(await dlqMetric('poison')).toBe(before + 1);
  });

  it.each([
    ['a candidate stopped for SAFETY', { finishReason: 'SAFETY' }, false, 'HARM_CATEGORY_DANGEROUS_CONTENT'],
    ['a blocked prompt', { blockReason: 'PROHIBITED_CONTENT' }, true, undefined],
    ['a prompt blocked for SAFETY', { blockReason: 'SAFETY', category: 'HARM_CATEGORY_HATE_SPEECH' }, true, 'HARM_CATEGORY_HATE_SPEECH'],
    ['no candidate at all', { noCandidate: true }, false, undefined],
  ] as const)('a refusal from the model (%s) fails at once: EBLOCKED, one attempt, its prompt billed, poison', async (_what, refuse, stream, category) => {
    const m = marker();
    s.emulator.script({ refuse, match: { promptIncludes: m } });
    const id = await enqueue({ ...riskJob(m), ...(stream ? { options: { stream: true } } : {}) });
    const view = await finalState(id);
    expect(view).toMatchObject({ state: 'failed', attempts: 1 });
    expect(view.error).toMatch(/EBLOCKED/);
    const calls = s.emulator.calls().filter((c) => c.fault?.startsWith('refuse:'));
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ kind: stream ? 'stream' : 'generate', status: 200 });
    const e = await entry(id);
    expect(e).toMatchObject({ class: 'poison', type: 'blocked', attempts: 1 });
    // The DLQ entry tells an operator which category blocked (when one did), never what the prompt said.
    if (category) expect(e.reason).toMatch(new RegExp(`blocked categories ${category}\\)$`));
    else expect(e.reason).not.toMatch(/blocked categories/);
    expect(e.reason).not.toContain(m);
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query('SELECT state, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1', [id])).rows;
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ state: 'failed', input_tokens: calls[0].promptTokens, output_tokens: 0 });
    expect(rows[0].input_tokens).toBeGreaterThan(0);
    expect(Number(rows[0].cost_usd)).toBeGreaterThan(0);
    s.emulator.resetCalls();
  });

  it('a plain answer Gemini stopped for SAFETY after some text (its content, then the stop) fails at once as EBLOCKED, billed that text; the text is no result and is never cached', async () => {
    const m = marker();
    s.emulator.script({ refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, afterChunks: 2, match: { kind: 'generate', promptIncludes: m } });
    s.emulator.resetCalls();
    const id = await enqueue(riskJob(m));
    const view = await finalState(id);
    expect(view).toMatchObject({ state: 'failed', attempts: 1 });
    expect(view.error).toMatch(/^\[EBLOCKED\] .*answer stopped \(finishReason SAFETY; blocked categories HARM_CATEGORY_HARASSMENT\)$/);
    expect(view.result).toBeUndefined();
    expect(await entry(id)).toMatchObject({ class: 'poison', type: 'blocked', attempts: 1 });
    const [call] = s.emulator.calls();
    expect(call).toMatchObject({ kind: 'generate', status: 200, fault: 'refuse:SAFETY@2' });
    expect(call.outputTokens).toBeGreaterThan(0);
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query('SELECT state, input_tokens, output_tokens, cost_usd, cache_hit FROM agent_runs WHERE job_id = $1', [id])).rows;
    expect(rows).toMatchObject([{ state: 'failed', input_tokens: call.promptTokens, output_tokens: call.outputTokens, cache_hit: null }]);
    expect(Number(rows[0].cost_usd)).toBeGreaterThan(0);

    // Nothing of it was cached: the same job again calls the model and completes with the whole answer, which is
    // cached (a third is served from the cache), so the cache was there to take the first.
    const again = await finalState(await enqueue(riskJob(m)));
    expect(again).toMatchObject({ state: 'completed', attempts: 1, result: { success: true } });
    expect(again.result.cacheHit).toBeUndefined();
    const third = await finalState(await enqueue(riskJob(m)));
    expect(third.result).toMatchObject({ success: true, cacheHit: expect.stringMatching(/^l[12]$/), data: again.result.data });
    expect(s.emulator.calls().map((c) => [c.kind, c.status, c.fault])).toEqual([
      ['generate', 200, 'refuse:SAFETY@2'],
      ['generate', 200, undefined],
    ]);
    s.emulator.resetCalls();
  }, waitsTimeout(20_000, POLL.timeout));

  it('a persistent 500 is retryable once its attempts are used up', async () => {
    const m = marker();
    s.emulator.script({ status: 500, times: -1, match: { promptIncludes: m } });
    try {
      const id = await enqueue(riskJob(m));
      const view = await finalState(id);
      expect(view.state).toBe('failed');
      expect(view.attempts).toBe(2);
      const e = await entry(id);
      expect(e).toMatchObject({ class: 'retryable', type: 'provider', attempts: 2 });
      expect(deadLetterLines(id)).toHaveLength(1);
      expect(deadLetterLines(id)[0]).toMatchObject({ level: 50, class: 'retryable' });
    } finally {
      s.emulator.clearFaults();
    }
  });

  it('an answer (HTTP 200) without a finishReason is no answer: retried as a provider failure, each attempt billed', async () => {
    const m = marker();
    s.emulator.script({ noFinishReason: true, times: -1, match: { promptIncludes: m } });
    try {
      const id = await enqueue(riskJob(m));
      const view = await finalState(id);
      expect(view).toMatchObject({ state: 'failed', attempts: 2 });
      expect(view.error).toMatch(/EPROVIDER/);
      expect(await entry(id)).toMatchObject({ class: 'retryable', type: 'provider', attempts: 2 });
      const calls = s.emulator.calls().filter((c) => c.fault === 'no-finish-reason');
      expect(calls).toHaveLength(2);
      await usageWritten(s);
      const rows = (await s.infra.db.pool.query('SELECT state, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [id])).rows;
      expect(rows).toMatchObject(calls.map((c) => ({ state: 'failed', input_tokens: c.promptTokens, output_tokens: c.outputTokens })));
      for (const r of rows) expect(Number(r.cost_usd)).toBeGreaterThan(0);
    } finally {
      s.emulator.clearFaults();
      s.emulator.resetCalls();
    }
  }, waitsTimeout(20_000, POLL.timeout));

  it("a stream cut before its last chunk: each attempt's row billed what its last chunk reported (the prompt, and on 2.5 the text so far); a whole stream's row its last chunk's usage, not a sum", async () => {
    const pricing = createPricing();
    const m = marker();
    s.emulator.script({ noFinishReason: true, times: -1, match: { kind: 'stream', promptIncludes: m } });
    try {
      s.emulator.resetCalls();
      const id = await enqueue({ ...riskJob(m), options: { stream: true } });
      const view = await finalState(id);
      expect(view).toMatchObject({ state: 'failed', attempts: 2 });
      expect(view.error).toMatch(/EPROVIDER/);
      const calls = s.emulator.calls().filter((c) => c.fault === 'no-finish-reason');
      // A 2.5 model's chunks count the text so far: the cut stream's last chunk told the client that much output.
      expect(calls.map((c) => c.kind)).toEqual(['stream', 'stream']);
      for (const c of calls) expect(c.outputTokens).toBeGreaterThan(0);
      await usageWritten(s);
      const rows = (await s.infra.db.pool.query('SELECT state, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1 ORDER BY attempt', [id])).rows;
      expect(rows).toMatchObject(calls.map((c) => ({ state: 'failed', input_tokens: c.promptTokens, output_tokens: c.outputTokens })));
      for (const [i, r] of rows.entries()) {
        expect(r.input_tokens).toBeGreaterThan(0);
        expect(Number(r.cost_usd)).toBeCloseTo(pricing.cost(calls[i].model, { input: calls[i].promptTokens!, output: calls[i].outputTokens! }, 'standard').costUsd, 7);
      }
    } finally {
      s.emulator.clearFaults();
    }
    // The same stream whole: every chunk carried the prompt's usage too, and the row is the last chunk's, once.
    s.emulator.resetCalls();
    const whole = await enqueue({ ...riskJob(marker()), options: { stream: true } });
    expect(await finalState(whole)).toMatchObject({ state: 'completed' });
    const [call] = s.emulator.calls();
    expect(call).toMatchObject({ kind: 'stream', status: 200 });
    await usageWritten(s);
    const [row] = (await s.infra.db.pool.query('SELECT state, input_tokens, output_tokens, cost_usd FROM agent_runs WHERE job_id = $1', [whole])).rows;
    expect(row).toMatchObject({ state: 'completed', input_tokens: call.promptTokens, output_tokens: call.outputTokens });
    expect(row.output_tokens).toBeGreaterThan(0);
    expect(Number(row.cost_usd)).toBeCloseTo(pricing.cost(call.model, { input: call.promptTokens!, output: call.outputTokens! }, 'standard').costUsd, 7);
    s.emulator.resetCalls();
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('invalid input is poison; a retry with corrected input is validated, then runs', async () => {
    // Written straight to the queue, as a buggy producer would; the API would have refused it.
    const job = await s.runtime.queue.add('RiskAnalyzer:analyze_risks', { orgId: s.orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 42 } }, enqueuedAt: Date.now() });
    expect((await finalState(job.id!)).state).toBe('failed');
    expect(await entry(job.id!)).toMatchObject({ class: 'poison', type: 'invalid_input' });

    const stillBad = await s.app.inject({ method: 'POST', url: `/v1/dlq/${job.id}/retry`, headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` }, payload: { input: { startup: { name: '' } } } });
    expect(stillBad.statusCode).toBe(400);
    expect(stillBad.json().details.map((d: { path: string }) => d.path)).toContain('input.startup.name');

    const fixed = await s.app.inject({ method: 'POST', url: `/v1/dlq/${job.id}/retry`, headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` }, payload: { input: riskJob(marker()).input } });
    expect(fixed.statusCode).toBe(202);
    expect(fixed.json()).toMatchObject({ id: job.id, dlqRetries: 1 });
    const view = await finalState(job.id!);
    expect(view.state).toBe('completed');
    expect((await s.runtime.queue.getJob(job.id!))!.data.input).toMatchObject({ startup: { industry: 'robotics' } });
  });

  it('a job cancelled while running is classified cancelled and not logged as an error', async () => {
    const m = marker();
    // The model never answers: the abort lands mid-call however slow the machine.
    s.emulator.script({ hang: true, match: { promptIncludes: m } });
    const id = await enqueue(riskJob(m));
    await vi.waitFor(() => expect(s.emulator.calls().filter((c) => c.fault === 'hang'), 'the model call').toHaveLength(1), { timeout: 20_000, interval: 20 });
    expect(await s.runtime.queue.getJobState(id)).toBe('active');
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    expect(del.statusCode).toBe(202);
    const e = await entry(id);
    expect(e).toMatchObject({ class: 'cancelled', type: 'cancelled' });
    const lines = deadLetterLines(id);
    expect(lines).toHaveLength(1);
    expect(lines[0].level).toBe(30);
    s.emulator.clearFaults();
  });
});
