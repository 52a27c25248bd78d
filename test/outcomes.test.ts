import { readdirSync, readFileSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import type { Job, Worker } from 'bullmq';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classifyFailedJob, classifyFailure, type Classification } from '../src/shared/core/dlq-classify.js';
import { DatabaseUnavailableError, EDBUNAVAILABLE, PromptBuildError, ValidationError } from '../src/shared/core/errors.js';
import { createLogger } from '../src/shared/core/logger.js';
import {
  BULLMQ_STALLED_REASON,
  classify,
  decodeReason,
  DelayJobError,
  encodeReason,
  NonRetriableError,
  RetryAfterError,
  type Outcome,
} from '../src/shared/core/outcomes.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { LlmError } from '../src/shared/infra/llm/llm-errors.js';
import { EmbeddingError } from '../src/shared/knowledge/embedding.js';
import { OpenCircuitError } from '../src/shared/limits/circuit-breaker.js';
import { createOpsMetrics } from '../src/shared/ops/metrics.js';
import type { DlqEntry, DlqStore } from '../src/shared/ops/dlq-store.js';
import { InvalidOutputError } from '../src/workers/call-agent.js';
import { RouteFailedError, RouteTimeoutError } from '../src/workers/guards/route-guard.js';
import { DelayJobError as DelayJobErrorFromMiddleware } from '../src/workers/middleware.js';
import { createDlqReprocessor } from '../src/workers/ops/dlq-reprocessor.js';
import { attachOpsListeners } from '../src/workers/ops/worker-listeners.js';
import { Cancellation } from '../src/workers/cancellation.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { spawnAgentq, stopProcess, type AgentqProcess } from './helpers/processes.js';
import { processEnv } from './helpers/faults.js';
import { startStack, type Stack } from './helpers/stack.js';
import { marker, riskJob } from './helpers/ops.js';

const silent = createLogger({ level: 'silent' });
const ATTEMPTS = 3;

/**
 * Every error class that decides a job's fate, built around a given message. Classes that write their own
 * message get it overwritten afterwards, as a rewording in their file would.
 */
const reword = <E extends Error>(err: E, message: string): E => Object.assign(err, { message });
const CASES: Array<{ name: string; make: (m: string) => Error; cancel?: boolean; outcome: Outcome; final?: Classification }> = [
  // A provider 429 reschedules without using an attempt (and names its model so the dispatcher pauses it).
  { name: 'LlmError ERATELIMIT', make: (m) => new LlmError('ERATELIMIT', m, { status: 429, retryAfterMs: 1500, model: 'gemini-x' }), outcome: { kind: 'delay', reason: 'provider_rate_limited', delayMs: 1500, model: 'gemini-x' } },
  { name: 'LlmError ERATELIMIT (no RetryInfo)', make: (m) => new LlmError('ERATELIMIT', m, { status: 429 }), outcome: { kind: 'delay', reason: 'provider_rate_limited', delayMs: 10_000 } },
  { name: 'LlmError ETIMEDOUT', make: (m) => new LlmError('ETIMEDOUT', m), outcome: { kind: 'retry', code: 'ETIMEDOUT' }, final: { class: 'retryable', type: 'timeout' } },
  { name: 'LlmError EPROVIDER', make: (m) => new LlmError('EPROVIDER', m, { status: 503 }), outcome: { kind: 'retry', code: 'EPROVIDER' }, final: { class: 'retryable', type: 'provider' } },
  { name: 'LlmError EPROVIDER (not retryable)', make: (m) => new LlmError('EPROVIDER', m, { retryable: false }), outcome: { kind: 'fail', code: 'EPROVIDER' }, final: { class: 'poison', type: 'provider' } },
  { name: 'LlmError ENETWORK', make: (m) => new LlmError('ENETWORK', m), outcome: { kind: 'retry', code: 'ENETWORK' }, final: { class: 'retryable', type: 'network' } },
  { name: 'LlmError EBADREQUEST', make: (m) => new LlmError('EBADREQUEST', m, { status: 400 }), outcome: { kind: 'fail', code: 'EBADREQUEST' }, final: { class: 'poison', type: 'bad_request' } },
  { name: 'LlmError EBADOUTPUT', make: (m) => new LlmError('EBADOUTPUT', m), outcome: { kind: 'retry', code: 'EBADOUTPUT' }, final: { class: 'poison', type: 'bad_output' } },
  // A refusal of the prompt: the same prompt is refused again, so no attempt is spent retrying it.
  { name: 'LlmError EBLOCKED', make: (m) => new LlmError('EBLOCKED', m, { finishReason: 'SAFETY' }), outcome: { kind: 'fail', code: 'EBLOCKED' }, final: { class: 'poison', type: 'blocked' } },
  { name: 'LlmError EABORTED', make: (m) => new LlmError('EABORTED', m), outcome: { kind: 'fail', code: 'EABORTED' }, final: { class: 'poison', type: 'aborted' } },
  { name: 'InvalidOutputError', make: (m) => new InvalidOutputError(m), outcome: { kind: 'retry', code: 'EBADOUTPUT' }, final: { class: 'poison', type: 'bad_output' } },
  { name: 'ValidationError', make: (m) => new ValidationError(m), outcome: { kind: 'fail', code: 'EVALIDATION' }, final: { class: 'poison', type: 'invalid_input' } },
  { name: 'RouteTimeoutError', make: (m) => reword(new RouteTimeoutError('gemini-x', 100), m), outcome: { kind: 'retry', code: 'ETIMEDOUT' }, final: { class: 'retryable', type: 'timeout' } },
  { name: 'RouteFailedError (fallback 503)', make: (m) => new RouteFailedError(m, true, 'EPROVIDER'), outcome: { kind: 'retry', code: 'EPROVIDER' }, final: { class: 'retryable', type: 'provider' } },
  { name: 'RouteFailedError (fallback 400)', make: (m) => new RouteFailedError(m, false, 'EBADREQUEST'), outcome: { kind: 'fail', code: 'EBADREQUEST' }, final: { class: 'poison', type: 'bad_request' } },
  { name: 'RouteFailedError (no code)', make: (m) => new RouteFailedError(m, true), outcome: { kind: 'retry', code: 'EROUTEFAILED' }, final: { class: 'retryable', type: 'other' } },
  { name: 'NonRetriableError', make: (m) => new NonRetriableError('EBADREQUEST', m), outcome: { kind: 'fail', code: 'EBADREQUEST' }, final: { class: 'poison', type: 'bad_request' } },
  { name: 'RetryAfterError', make: (m) => new RetryAfterError('ERATELIMIT', m, 2000), outcome: { kind: 'retry', code: 'ERATELIMIT', retryAfterMs: 2000 }, final: { class: 'retryable', type: 'rate_limit' } },
  { name: 'EmbeddingError', make: (m) => new EmbeddingError(m), outcome: { kind: 'retry', code: 'EEMBEDDING' }, final: { class: 'retryable', type: 'other' } },
  { name: 'an Error without a code', make: (m) => new Error(m), outcome: { kind: 'retry', code: 'EUNKNOWN' }, final: { class: 'retryable', type: 'other' } },
  {
    name: 'cancellation (the call fails with EABORTED)',
    make: (m) => new LlmError('EABORTED', m),
    cancel: true,
    outcome: { kind: 'fail', code: 'EABORTED' },
    final: { class: 'cancelled', type: 'cancelled' },
  },
  { name: 'OpenCircuitError', make: (m) => reword(new OpenCircuitError('gemini:x', 'open', Date.now() + 5000, 5000), m), outcome: { kind: 'delay', reason: 'breaker_open', delayMs: 5000 } },
  { name: 'DelayJobError', make: (m) => reword(new DelayJobError(700, 'quota'), m), outcome: { kind: 'delay', reason: 'quota', delayMs: 700 } },
  // Postgres unavailable on the attempt's path: the job waits the outage out without using an attempt.
  { name: 'DatabaseUnavailableError', make: (m) => reword(new DatabaseUnavailableError(new Error('Query read timeout')), m), outcome: { kind: 'delay', reason: 'database_unavailable', delayMs: 2000 } },
  { name: 'PromptBuildError (its search found Postgres unavailable)', make: (m) => reword(new PromptBuildError(new DatabaseUnavailableError(new Error('x'))), m), outcome: { kind: 'delay', reason: 'database_unavailable', delayMs: 2000 } },
  { name: 'RouteFailedError (the fallback found Postgres unavailable)', make: (m) => new RouteFailedError(m, true, EDBUNAVAILABLE), outcome: { kind: 'delay', reason: 'database_unavailable', delayMs: 2000 } },
];

/** Old message shapes every class used to be recognised by: a rewording that uses them must not matter. */
const WORDINGS = [
  'first wording',
  'entirely different words',
  'invalid job: Gemini API 400 INVALID_ARGUMENT: model output does not match X.y schema; timed out; network error; aborted by the caller',
  'cancelled',
  'job stalled more than allowable limit',
  '[EBADREQUEST] a message that looks coded',
];

/** What decides a job's fate after one attempt threw `err`, read through the real processor, listeners and reprocessor. */
async function fateOf(make: () => Error, cancel = false) {
  const err = make();
  const outcome = classify(err);
  const ac = new Cancellation();
  let delayedTo: number | undefined;
  const job = {
    id: 'job-1',
    data: { orgId: 'org-1', agent: 'RiskAnalyzer', action: 'analyze_risks', input: {}, enqueuedAt: Date.now() } as AgentJobData,
    attemptsMade: 0,
    opts: { attempts: ATTEMPTS },
    moveToDelayed: async (at: number) => void (delayedTo = at),
  } as unknown as Job<AgentJobData, AgentResult>;
  const processor = createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast' } as never }), validateInput: (_a, _b, input) => input },
    chain: async () => {
      if (cancel) ac.cancel();
      throw err;
    },
    runs: { record: async () => undefined },
    models: { fast: 'gemini-fast', pro: 'gemini-pro' },
    logger: silent,
  });
  const thrown = (await processor(job, 'token', ac).then(
    () => expect.unreachable('the attempt must fail'),
    (e: unknown) => e,
  )) as Error & { code?: string; retryAfterMs?: number };
  if (thrown.name === 'DelayedError') return { outcome, delayed: delayedTo !== undefined };

  // This process: the worker's failed listener sees the error object (a job failing for good).
  const unrecoverable = thrown.name === 'UnrecoverableError';
  const attemptsMade = unrecoverable ? 1 : ATTEMPTS;
  const stored: Classification[] = [];
  const registry = new Registry();
  const worker = new EventEmitter() as unknown as Worker<AgentJobData, AgentResult>;
  const store = { recordFailure: async (_j: unknown, c: Classification) => (stored.push(c), 0) } as unknown as DlqStore;
  attachOpsListeners(worker, { store, metrics: createOpsMetrics(registry), logger: silent });
  (worker as unknown as EventEmitter).emit('failed', { ...job, attemptsMade, finishedOn: Date.now() }, thrown);
  await expect.poll(() => stored.length).toBe(1);
  const labels = async (name: string) => (await registry.getSingleMetric(name)!.get()).values.filter((v) => v.value > 0).map((v) => v.labels);

  // Another process: only BullMQ's failed reason is left.
  const lazy = classifyFailedJob({ failedReason: thrown.message, attemptsMade, opts: { attempts: ATTEMPTS } });
  const retriedLater = classifyFailure({ message: thrown.message }, { unrecoverable: false });

  // The scheduled reprocessor's decision for the entry.
  let eligible: ((e: DlqEntry) => boolean) | undefined;
  const reprocessor = createDlqReprocessor({
    store: { scan: async (o: { filter: (e: DlqEntry) => boolean }) => ((eligible = o.filter), { items: [] }) } as unknown as DlqStore,
    service: { retryItem: async () => 'not_failed' as const },
    blocked: async () => false,
    maxRetries: 3,
    batch: 10,
    logger: silent,
  });
  await reprocessor.run();
  const replayed = eligible!({ class: lazy.class, dlqRetries: 0 } as DlqEntry);

  return {
    outcome,
    code: decodeReason(thrown.message).code,
    unrecoverable,
    retryAfterMs: thrown.retryAfterMs,
    listener: stored[0],
    errorLabels: await labels('agentq_job_errors_total'),
    dlqLabels: await labels('agentq_dlq_entries_total'),
    lazy,
    retriedLater,
    replayed,
  };
}

describe('outcomes: one vocabulary, decided by codes', () => {
  it('DelayJobError lives in outcomes.ts and is re-exported for the guards', () => {
    expect(DelayJobErrorFromMiddleware).toBe(DelayJobError);
  });

  it.each(CASES)('$name: the outcome and every classification follow the code', async (c) => {
    const fate = await fateOf(() => c.make('first wording'), c.cancel);
    expect(fate.outcome).toEqual(c.outcome);
    if (c.outcome.kind === 'delay') {
      expect(fate).toEqual({ outcome: c.outcome, delayed: true });
      return;
    }
    const f = fate as Exclude<typeof fate, { delayed: boolean }>;
    expect(f.listener).toEqual(c.final);
    expect(f.lazy).toEqual(c.final);
    expect(f.errorLabels).toEqual([{ agent: 'RiskAnalyzer', type: c.final!.type }]);
    expect(f.dlqLabels).toEqual([{ agent: 'RiskAnalyzer', class: c.final!.class }]);
    expect(f.replayed).toBe(c.final!.class === 'retryable');
    expect(f.unrecoverable).toBe(c.outcome.kind === 'fail' || Boolean(c.cancel));
    expect(f.code).toBe(c.cancel ? 'ECANCELLED' : c.outcome.code);
    if (c.outcome.kind === 'retry') expect(f.retryAfterMs).toBe(c.outcome.retryAfterMs ?? 0);
  });

  it.each(CASES)('$name: rewording its message changes nothing', async (c) => {
    const reference = await fateOf(() => c.make(WORDINGS[0]), c.cancel);
    for (const wording of WORDINGS.slice(1)) {
      expect({ wording, fate: await fateOf(() => c.make(wording), c.cancel) }).toEqual({ wording, fate: reference });
    }
  });

  it('an invalid job fails at once as invalid input, however the validation message reads', async () => {
    const fates = await Promise.all(
      WORDINGS.map(async (wording) => {
        const processor = createAgentProcessor({
          agents: {
            resolve: () => ({ agent: {} as never, action: { model: 'fast' } as never }),
            validateInput: () => {
              throw new ValidationError(wording);
            },
          },
          chain: async () => expect.unreachable('an invalid job must not run'),
          runs: { record: async () => undefined },
          models: { fast: 'f', pro: 'p' },
          logger: silent,
        });
        const job = { id: 'j', data: { orgId: 'o', agent: 'A', action: 'b', input: {} }, attemptsMade: 0, opts: { attempts: ATTEMPTS } } as unknown as Job<AgentJobData, AgentResult>;
        const thrown = (await processor(job).catch((e: unknown) => e)) as Error;
        return { name: thrown.name, lazy: classifyFailedJob({ failedReason: thrown.message, attemptsMade: 1, opts: { attempts: ATTEMPTS } }) };
      }),
    );
    for (const f of fates) expect(f).toEqual({ name: 'UnrecoverableError', lazy: { class: 'poison', type: 'invalid_input' } });
  });

  it('carries the code as a fixed prefix of the failed reason, read back by one function', () => {
    expect(encodeReason('EBADOUTPUT', 'model output does not match')).toBe('[EBADOUTPUT] model output does not match');
    // Never coded twice (a coded error passing through the processor again).
    expect(encodeReason('EPROVIDER', '[EPROVIDER] Gemini API 503')).toBe('[EPROVIDER] Gemini API 503');
    expect(decodeReason('[EBADOUTPUT] model output does not match')).toEqual({ code: 'EBADOUTPUT', message: 'model output does not match' });
    expect(decodeReason('Gemini API 400 INVALID_ARGUMENT: written before codes')).toEqual({ code: 'EUNKNOWN', message: 'Gemini API 400 INVALID_ARGUMENT: written before codes' });
    // The API and streams compare the bare cancelled reason; it stays bare.
    expect(encodeReason('ECANCELLED', 'anything')).toBe('cancelled');
    expect(decodeReason('cancelled').code).toBe('ECANCELLED');
    expect(decodeReason(BULLMQ_STALLED_REASON).code).toBe('ESTALLED');
  });

  it("matches BullMQ's own stalled-job reason exactly", () => {
    const dir = new URL('../node_modules/bullmq/dist/esm/scripts/', import.meta.url);
    const script = readdirSync(dir).find((f) => f.startsWith('moveStalledJobsToWait-') && f.endsWith('.js'));
    expect(script).toBeDefined();
    expect(readFileSync(new URL(script!, dir), 'utf8')).toContain(`"${BULLMQ_STALLED_REASON}"`);
  });

  it('classifies each code for a job failed for good (by the stalled check, with attempts left, or out of attempts)', () => {
    const out = (code: string) => classifyFailedJob({ failedReason: encodeReason(code, 'm'), attemptsMade: ATTEMPTS, opts: { attempts: ATTEMPTS } });
    const refused = (code: string) => classifyFailedJob({ failedReason: encodeReason(code, 'm'), attemptsMade: 1, opts: { attempts: ATTEMPTS } });
    expect(out('ERATELIMIT')).toEqual({ class: 'retryable', type: 'rate_limit' });
    expect(out('ETIMEDOUT')).toEqual({ class: 'retryable', type: 'timeout' });
    expect(out('EPROVIDER')).toEqual({ class: 'retryable', type: 'provider' });
    expect(out('ENETWORK')).toEqual({ class: 'retryable', type: 'network' });
    expect(out('EBADREQUEST')).toEqual({ class: 'poison', type: 'bad_request' });
    expect(out('EBADOUTPUT')).toEqual({ class: 'poison', type: 'bad_output' });
    expect(out('EVALIDATION')).toEqual({ class: 'poison', type: 'invalid_input' });
    expect(out('EABORTED')).toEqual({ class: 'retryable', type: 'aborted' });
    expect(out('ECANCELLED')).toEqual({ class: 'cancelled', type: 'cancelled' });
    expect(out('EWHATEVER')).toEqual({ class: 'retryable', type: 'other' });
    expect(refused('EPROVIDER')).toEqual({ class: 'poison', type: 'provider' });
    expect(refused('EABORTED')).toEqual({ class: 'poison', type: 'aborted' });
    expect(refused('ECANCELLED')).toEqual({ class: 'cancelled', type: 'cancelled' });
    // The stalled check fails a job with attempts left; that is no refusal, and worth a replay.
    expect(classifyFailedJob({ failedReason: BULLMQ_STALLED_REASON, attemptsMade: 1, opts: { attempts: ATTEMPTS } })).toEqual({ class: 'retryable', type: 'stalled' });
  });

  it('classify: delays, explicit retryable flags and fail codes', () => {
    expect(classify(new DelayJobError(250, 'rate_limited'))).toEqual({ kind: 'delay', reason: 'rate_limited', delayMs: 250 });
    const breaker = new OpenCircuitError('k', 'open', Date.now() + 60_000, 1234);
    expect(classify(breaker)).toEqual({ kind: 'delay', reason: 'breaker_open', delayMs: 1234 });
    // The model whose breaker refused is the one that waits (a route's primary, not the job's own model).
    expect(classify(new OpenCircuitError('gemini:pro-x', 'open', Date.now() + 60_000, 1234, 'pro-x'))).toEqual({ kind: 'delay', reason: 'breaker_open', delayMs: 1234, model: 'pro-x' });
    expect(classify(Object.assign(new Error('x'), { code: 'EVALIDATION' }))).toEqual({ kind: 'fail', code: 'EVALIDATION' });
    // The error's own flag wins over the code's default.
    expect(classify(new LlmError('EBADREQUEST', 'x', { retryable: true }))).toEqual({ kind: 'retry', code: 'EBADREQUEST' });
    // A live error is judged by its fields, never by its message, even one that looks like a stored reason.
    expect(classify(Object.assign(new Error('[EBADOUTPUT] x'), { name: 'UnrecoverableError' }))).toEqual({ kind: 'fail', code: 'EUNKNOWN' });
    expect(classify(new Error('[EBADREQUEST] x'))).toEqual({ kind: 'retry', code: 'EUNKNOWN' });
    expect(classify('a string')).toEqual({ kind: 'retry', code: 'EUNKNOWN' });
    expect(classify(undefined)).toEqual({ kind: 'retry', code: 'EUNKNOWN' });
  });
});

/**
 * A job run and failed by a worker in another OS process: the API process, which never saw the error
 * object, classifies it from the code stored in BullMQ's failed reason, whatever the message says.
 */
describe('outcomes across processes', () => {
  let s: Stack;
  let worker: AgentqProcess;

  beforeAll(async () => {
    s = await startStack({ JOB_ATTEMPTS: '3' });
    worker = spawnAgentq('worker', processEnv(s, { JOB_ATTEMPTS: '3', BREAKER_FAILURE_THRESHOLD: '1000' }));
    await worker.waitForLog((l) => l.msg === 'worker started', 180_000);
  }, 60_000);
  afterAll(async () => {
    // Bounded: SIGTERM, then SIGKILL if it does not close in time.
    await stopProcess(worker);
    await s?.close();
  });

  const jobKey = (id: string) => `${s.cfg.QUEUE_PREFIX}:agent-jobs:${id}`;
  /** Runs a job on the other process's worker until it fails for good; then forgets the class that process stored. */
  async function failElsewhere(fault: { status: number; message?: string }) {
    const m = marker();
    s.emulator.script({ ...fault, times: -1, match: { promptIncludes: m } });
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob(m) });
    expect(res.statusCode).toBe(202);
    const id = res.json().id as string;
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=30000`, headers: s.auth })).json();
    expect(view.state).toBe('failed');
    // The other process's listener stored a class; drop it, as if that process had died right after the failure.
    await worker.waitForLog((l) => l.jobId === id && l.msg === 'job dead-lettered');
    expect(await s.runtime.deps.redis.del(`${s.cfg.QUEUE_PREFIX}:agentq:dlq:${id}`)).toBe(1);
    return { id, view };
  }
  const dlqEntry = async (id: string) => {
    const res = await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` } });
    expect(res.statusCode).toBe(200);
    return res.json() as { class: string; type: string; reason: string };
  };
  const eligibleForReplay = async (id: string) => {
    const res = await s.app.inject({ method: 'GET', url: '/v1/dlq?class=retryable', headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` } });
    return (res.json().entries as Array<{ id: string }>).some((e) => e.id === id);
  };
  const restate = (id: string, reason: string) => s.runtime.deps.redis.hset(jobKey(id), 'failedReason', reason);

  it('a 400 refused with attempts left is poison/bad_request by its stored code, reworded or not', async () => {
    const { id, view } = await failElsewhere({ status: 400, message: 'Invalid JSON payload' });
    expect(view.attempts).toBe(1);
    const stored = (await s.runtime.deps.redis.hget(jobKey(id), 'failedReason'))!;
    expect(stored.startsWith('[EBADREQUEST] ')).toBe(true);
    expect(await dlqEntry(id)).toMatchObject({ class: 'poison', type: 'bad_request', reason: stored });
    expect(await eligibleForReplay(id)).toBe(false);

    await restate(id, '[EBADREQUEST] the same failure in words that name no status, no model, nothing');
    expect(await dlqEntry(id)).toMatchObject({ class: 'poison', type: 'bad_request' });
    // The old words without the code classify as nothing in particular: the code is what counted.
    await restate(id, decodeReason(stored).message);
    expect(await dlqEntry(id)).toMatchObject({ class: 'poison', type: 'other' });
  }, 60_000);

  it('a persistent 503 is retryable/provider, and replayable, by its stored code', async () => {
    const { id, view } = await failElsewhere({ status: 503 });
    expect(view.attempts).toBe(3);
    const stored = (await s.runtime.deps.redis.hget(jobKey(id), 'failedReason'))!;
    expect(stored.startsWith('[EPROVIDER] ')).toBe(true);
    expect(await dlqEntry(id)).toMatchObject({ class: 'retryable', type: 'provider' });
    expect(await eligibleForReplay(id)).toBe(true);

    // Same words, another code: the class and the replay decision follow the code.
    await restate(id, encodeReason('EBADOUTPUT', decodeReason(stored).message));
    expect(await dlqEntry(id)).toMatchObject({ class: 'poison', type: 'bad_output' });
    expect(await eligibleForReplay(id)).toBe(false);
  }, 60_000);
});
