import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { streamingFeature } from '../src/app/features/streaming.js';
import { createSseParser } from '../src/producers/client/sse-parser.js';
import { randomPrefix } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';
import { cancelRequestedKey } from '../src/shared/core/queue-keys.js';
import { idempotentJobId } from '../src/shared/queue/job-producer.js';
import { usageWritten } from './helpers/usage.js';

/** The first model call the worker's emulator recorded that matches, once there is one. */
const call = (s: Stack, what: string, pred: (c: ReturnType<Stack['emulator']['calls']>[number]) => boolean | undefined) =>
  vi.waitFor(() => {
    const found = s.emulator.calls().find(pred);
    expect(found, what).toBeDefined();
    return found!;
  }, POLL);

/**
 * DELETE of an active job across processes: the API process (no worker) publishes on the cancel channel,
 * the worker process holding the job aborts its model call, and the job ends "cancelled" without a retry.
 */
describe('cancelling an active job across processes', () => {
  let api: Stack;
  let worker: Stack;
  let base: string;

  beforeAll(async () => {
    const shared = { QUEUE_PREFIX: randomPrefix(), JOB_ATTEMPTS: '3' };
    const features = [streamingFeature({ heartbeatMs: 200 })];
    worker = await startStack(shared, { worker: true, features });
    api = await startStack(shared, { worker: false, features });
    await api.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = api.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(async () => {
    await api?.close();
    await worker?.close();
  });

  it('aborts the model call, ends the job cancelled, does not retry it, and tells its stream', async () => {
    const marker = 'Held Forever Inc';
    worker.emulator.script({ hang: true, match: { promptIncludes: marker } });
    const input = { startup: { name: marker, industry: 'robotics', stage: 'seed', description: 'A job the model never answers' } };
    const post = await api.app.inject({ method: 'POST', url: '/v1/jobs', headers: api.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream: true } } });
    expect(post.statusCode).toBe(202);
    const { id } = post.json();

    const sse = fetch(`${base}/v1/jobs/${id}/stream`, { headers: api.auth }).then((r) => r.text());
    await call(worker, 'the model call', (c) => c.kind === 'stream');
    expect((await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: api.auth })).json().state).toBe('active');

    const del = await api.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: api.auth });
    expect(del.statusCode).toBe(202);
    expect(del.json().state).toBe('cancelling');

    const view = (await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=10000`, headers: api.auth })).json();
    expect(view).toMatchObject({ id, state: 'cancelled', error: 'cancelled', attempts: 1 });

    // The emulator saw its one request aborted by the client.
    const aborted = await call(worker, 'the aborted call', (c) => c.aborted);
    expect(aborted.status).toBe(499);

    // Not retried: the job is in BullMQ's failed set (final, no retry scheduled) after one call, one attempt,
    // one recorded run.
    expect(await api.runtime.queue.getJobState(id)).toBe('failed');
    expect(worker.emulator.calls().filter((c) => c.kind === 'stream' || c.kind === 'generate')).toHaveLength(1);
    expect((await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: api.auth })).json()).toMatchObject({ state: 'cancelled', attempts: 1 });
    await usageWritten(api);
    const { rows } = await api.infra.db.pool.query('SELECT state, error FROM agent_runs WHERE job_id = $1', [id]);
    expect(rows).toEqual([{ state: 'failed', error: 'cancelled' }]);

    // A second DELETE is a conflict, not a second cancel.
    expect((await api.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: api.auth })).statusCode).toBe(409);

    const messages = createSseParser().feed(await sse);
    expect(messages.map((m) => m.data).slice(-2)).toEqual([JSON.stringify({ error: 'cancelled', state: 'cancelled' }), '[DONE]']);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('a cancel the worker could not hear (it had fetched the job but not started it) still wins: the job never calls the model', async () => {
    // The API leaves a marker beside its pub/sub message; a worker that fetched the job before the message
    // could reach it reads the marker when the job starts. Written here for a job id known in advance (an
    // idempotency key), which is exactly the state such a race leaves.
    const marker = 'Cancelled In Flight GmbH';
    const key = `race-${Date.now()}`;
    const id = idempotentJobId(api.orgId, key);
    await api.runtime.deps.redis.set(cancelRequestedKey(api.cfg.QUEUE_PREFIX, id), '1', 'EX', 60);
    const input = { startup: { name: marker, industry: 'robotics', stage: 'seed', description: 'Cancelled before it started' } };
    const callsBefore = worker.emulator.calls().length;
    const post = await api.app.inject({ method: 'POST', url: '/v1/jobs', headers: api.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { idempotencyKey: key } } });
    expect(post.statusCode).toBe(202);
    expect(post.json().id).toBe(id);
    const view = (await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=10000`, headers: api.auth })).json();
    expect(view).toMatchObject({ id, state: 'cancelled', error: 'cancelled', attempts: 1 });
    expect(worker.emulator.calls()).toHaveLength(callsBefore);
    // Its slot went back: the org has nothing in flight once the outcome is recorded.
    await vi.waitFor(async () => expect((await api.runtime.deps.cells[0].scheduler.orgStats(api.orgId)).inFlight).toBe(0), POLL);
  });

  it('a marker left for an earlier job of the same id (a cancel as it finished) does not cancel a new one, and goes', async () => {
    const key = `stale-${Date.now()}`;
    const id = idempotentJobId(api.orgId, key);
    const markerKey = cancelRequestedKey(api.cfg.QUEUE_PREFIX, id);
    // What a cancel that came as the earlier job finished leaves: the marker names that job's timestamp.
    await api.runtime.deps.redis.set(markerKey, String(Date.now() - 60_000), 'EX', 60);
    const input = { startup: { name: 'Second Incarnation Ltd', industry: 'robotics', stage: 'seed', description: 'Its id was cancelled before' } };
    const post = await api.app.inject({ method: 'POST', url: '/v1/jobs', headers: api.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { idempotencyKey: key } } });
    expect(post.json().id).toBe(id);
    const view = (await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=10000`, headers: api.auth })).json();
    expect(view).toMatchObject({ id, state: 'completed' });
    expect(await api.runtime.deps.redis.exists(markerKey)).toBe(0);
  });

  it('is a 404 for another org, and leaves the job running', async () => {
    const marker = 'Not Yours Ltd';
    worker.emulator.script({ latencyMs: 800, match: { promptIncludes: marker } });
    const input = { startup: { name: marker, industry: 'fintech', stage: 'seed', description: 'Someone else tries to cancel this' } };
    const stranger = { authorization: `Bearer ${await api.newKey()}` };
    const { id } = (await api.app.inject({ method: 'POST', url: '/v1/jobs', headers: api.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } })).json();
    await call(worker, 'the model call', (c) => c.fault?.startsWith('latency'));
    const del = await api.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: stranger });
    expect(del.statusCode).toBe(404);
    expect((await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: api.auth })).json().state).toBe('active');
    const view = (await api.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=10000`, headers: api.auth })).json();
    expect(view.state).toBe('completed');
  });
});
