import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { streamingFeature } from '../src/app/features/streaming.js';
import { opsFeature } from '../src/app/features/ops.js';
import type { SseMessage } from '../src/producers/client/sse-parser.js';
import { readSseBody } from './helpers/sse.js';
import { jobTitle } from '../src/producers/bull-board.js';
import { agentJobKey } from '../src/shared/core/queue-keys.js';
import { deriveStage, jobStageSchema, stageOfEvent } from '../src/shared/core/job-stage.js';
import { LUA_DIR } from '../src/shared/infra/lua.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

const ADMIN_TOKEN = 'stages-admin-token-0123456789';
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
const risk = (name: string, stream = false) => ({
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  input: { startup: { name, industry: 'robotics', description: 'Warehouse picking robots' } },
  ...(stream ? { options: { stream: true } } : {}),
});

/** Reads an SSE response to its end ([DONE] or the server closing it); `messages` fills as it reads. */
async function readSse(res: Response, messages: SseMessage[] = []): Promise<SseMessage[]> {
  await readSseBody(res, messages, (m) => m.some((x) => x.data === '[DONE]'));
  return messages;
}

const progressOf = (ms: SseMessage[]) => ms.filter((m) => m.event === 'progress').map((m) => JSON.parse(m.data));

/**
 * Counts the job-stage script calls (EVALSHA of job-stage-1.lua) sent for each job hash, by every client of
 * this process: the stage writes the worker adds beside the commands a job costs anyway.
 */
function countStageWrites() {
  const lua = readFileSync(new URL('job-stage-1.lua', LUA_DIR), 'utf8');
  const sha = createHash('sha1').update(lua).digest('hex');
  const byKey = new Map<string, number>();
  const proto = Redis.prototype as unknown as { sendCommand(cmd: { name: string; args: unknown[] }, ...rest: unknown[]): unknown };
  const original = proto.sendCommand;
  proto.sendCommand = function (this: unknown, cmd, ...rest) {
    const name = cmd.name.toLowerCase();
    // EVALSHA, or EVAL with the source when the script was not loaded yet (NOSCRIPT).
    const script = String(cmd.args[0]);
    if ((name === 'evalsha' && script === sha) || (name === 'eval' && script === lua)) {
      const key = String(cmd.args[2]);
      byKey.set(key, (byKey.get(key) ?? 0) + 1);
    }
    return original.call(this, cmd, ...rest);
  };
  return { count: (key: string) => byKey.get(key) ?? 0, restore: () => void (proto.sendCommand = original) };
}

describe('job stages: the job view, SSE progress and Bull Board', () => {
  let s: Stack;
  let base: string;
  let writes: ReturnType<typeof countStageWrites>;
  beforeAll(async () => {
    writes = countStageWrites();
    s = await startStack({ ADMIN_TOKEN, WORKER_CONCURRENCY: '4' }, { worker: true, features: [opsFeature, streamingFeature({ heartbeatMs: 100 })] });
    base = await s.app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterEach(() => {
    s.emulator.clearFaults();
    s.emulator.setStreamChunkDelay(0);
  });
  afterAll(async () => {
    writes?.restore();
    await s?.close();
  });

  const view = async (id: string, headers: Record<string, string>) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers })).json();
  const boardJob = async (status: string, id: string) => {
    const res = await s.app.inject({ method: 'GET', url: `/admin/queues/api/queues?activeQueue=agent-jobs&status=${status}&page=1&jobsPerPage=50`, headers: admin });
    expect(res.statusCode).toBe(200);
    return res.json().queues.find((q: { name: string }) => q.name === 'agent-jobs').jobs.find((j: { id: string }) => j.id === id);
  };

  it('calling_model while the model holds the job, waiting with the reason while the org is at its cap, then done', async () => {
    const key = await s.newKey();
    const auth = { authorization: `Bearer ${key}` };
    const held = 'stages-held-by-model';
    s.emulator.script({ hang: true, match: { promptIncludes: held }, times: 1 });
    const first = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk(held) })).json();
    const orgId = (await s.runtime.queue.getJob(first.id))!.data.orgId;
    await s.runtime.deps.cells[0].scheduler.setPlan(orgId, { concurrency: 1 });
    const model = s.cfg[s.runtime.deps.registry.resolve('RiskAnalyzer', 'analyze_risks').action.model === 'pro' ? 'GEMINI_MODEL_PRO' : 'GEMINI_MODEL_FAST'];

    // The model never answers: the job stays in calling_model, as the claim script stored it.
    await vi.waitFor(async () => expect((await view(first.id, auth)).state).toBe('active'), POLL);
    const running = await view(first.id, auth);
    expect(running.stage).toMatchObject({ name: 'calling_model', attempt: 1, model });
    expect(Date.parse(running.stage.since)).toBeGreaterThan(0);
    expect(running.progress).toMatchObject({ name: 'calling_model', attempt: 1, model });
    expect(jobStageSchema.safeParse(running.stage).success).toBe(true);
    // Written by the fair claim script it already ran: no stage command of its own.
    expect(writes.count(agentJobKey(s.cfg.QUEUE_PREFIX, first.id))).toBe(0);

    const shown = await boardJob('active', first.id);
    expect(shown.name).toBe(`[calling_model · attempt 1] RiskAnalyzer:analyze_risks · org ${orgId} · ${model}`);
    expect(shown.progress).toMatchObject({ name: 'calling_model', attempt: 1, model });

    // The org is at its cap of one: the next job waits, and says why.
    const second = (await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: risk('stages-second') })).json();
    const waiting = await view(second.id, auth);
    expect(waiting.state).toBe('waiting');
    expect(waiting.stage).toEqual({ name: 'waiting', ...waiting.waitingFor });
    expect(waiting.stage).toMatchObject({ name: 'waiting', reason: 'org_concurrency', limit: 'concurrency', position: 0 });
    expect((await boardJob('delayed', second.id)).name).toMatch(/^\[waiting for dispatch\] /);

    // Its SSE says the same, while it holds.
    const live: SseMessage[] = [];
    const sse = fetch(`${base}/v1/jobs/${second.id}/stream`, { headers: auth }).then((r) => readSse(r, live));
    await vi.waitFor(() => expect(progressOf(live)[0]).toMatchObject({ stage: 'waiting', jobStage: 'waiting', reason: 'org_concurrency', limit: 'concurrency' }), POLL);
    expect((await view(second.id, auth)).stage.name).toBe('waiting');

    // ...and the cancel of the first frees the slot: the first is done (cancelled), the second runs to done.
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${first.id}`, headers: auth })).statusCode).toBe(202);
    const cancelled = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${first.id}?waitMs=15000`, headers: auth })).json();
    expect(cancelled).toMatchObject({ state: 'cancelled', stage: { name: 'done', outcome: 'cancelled' } });
    const messages = await sse;
    expect(JSON.parse(messages[messages.length - 2].data).result.success).toBe(true);
    const done = await view(second.id, auth);
    expect(done).toMatchObject({ state: 'completed', stage: { name: 'done', outcome: 'completed' } });
    // A finished job's board title has no stage, though its stored progress still names the last one.
    expect((await boardJob('completed', second.id)).name).toMatch(/^RiskAnalyzer:analyze_risks · /);
    expect(writes.count(agentJobKey(s.cfg.QUEUE_PREFIX, second.id))).toBe(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a streaming job goes queued, calling_model, streaming, validating, done, in its SSE and its view', async () => {
    s.emulator.setStreamChunkDelay(400);
    const auth = { ...s.auth, 'content-type': 'application/json' };
    const res = await fetch(`${base}/v1/stream`, { method: 'POST', headers: auth, body: JSON.stringify(risk('stages-streamed')) });
    expect(res.status).toBe(200);
    const id = res.headers.get('x-job-id')!;
    const sse = readSse(res);

    // Chunks arrive 400 ms apart: the view and the board see the job streaming.
    await vi.waitFor(async () => expect((await view(id, s.auth)).stage).toMatchObject({ name: 'streaming', attempt: 1 }), POLL);
    await vi.waitFor(async () => expect((await boardJob('active', id))?.name).toMatch(/^\[streaming · attempt 1\] RiskAnalyzer:analyze_risks · /), POLL);

    const messages = await sse;
    const progress = progressOf(messages);
    expect(progress.map((p) => `${p.stage}>${p.jobStage}`)).toEqual(['queued>queued', 'started>calling_model', 'streaming>streaming', 'validating>validating']);
    // streaming comes just before the first chunk, validating after the last one and before the result.
    const kinds = messages.map((m) => (m.event === 'progress' ? JSON.parse(m.data).stage : m.data === '[DONE]' ? 'done' : Object.keys(JSON.parse(m.data))[0]));
    const collapsed = kinds.filter((k, i) => k !== 'text' || kinds[i - 1] !== 'text');
    expect(collapsed).toEqual(['queued', 'started', 'streaming', 'text', 'validating', 'result', 'done']);
    expect((await view(id, s.auth)).stage).toEqual({ name: 'done', outcome: 'completed' });
    // Its stage writes: streaming and validating, one script call each.
    expect(writes.count(agentJobKey(s.cfg.QUEUE_PREFIX, id))).toBe(2);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('derives the stages it does not store, and ignores a stored stage its attempt outlived', () => {
    expect(deriveStage({ state: 'waiting', attemptsMade: 0, progress: 0 })).toEqual({ name: 'queued' });
    expect(deriveStage({ state: 'delayed', attemptsMade: 0, progress: 0 })).toEqual({ name: 'waiting', reason: 'delayed' });
    const stale = { name: 'streaming', attempt: 1, since: 1 };
    // Attempt 1 failed: the job waits for its retry, and its next attempt has not stored anything yet.
    expect(deriveStage({ state: 'delayed', attemptsMade: 1, progress: stale })).toEqual({ name: 'waiting', reason: 'retry_backoff' });
    expect(deriveStage({ state: 'active', attemptsMade: 1, progress: stale })).toEqual({ name: 'calling_model', attempt: 2 });
    expect(deriveStage({ state: 'active', attemptsMade: 0, progress: stale })).toEqual({ name: 'streaming', attempt: 1, since: new Date(1).toISOString() });
    expect(deriveStage({ state: 'failed', attemptsMade: 2, progress: stale })).toEqual({ name: 'done', outcome: 'failed' });
    expect(['queued', 'waiting', 'started', 'retrying', 'restarted', 'delayed', 'streaming', 'validating'].map(stageOfEvent)).toEqual([
      'queued',
      'waiting',
      'calling_model',
      'waiting',
      'calling_model',
      'waiting',
      'streaming',
      'validating',
    ]);
    expect(jobTitle({ name: 'a:b', data: { orgId: 'o' }, attemptsMade: 1, progress: stale })).toBe('a:b · org o');
    expect(jobTitle({ name: 'a:b', data: { orgId: 'o' }, attemptsMade: 0, progress: { ...stale, model: 'm' } })).toBe('[streaming · attempt 1] a:b · org o · m');
    expect(jobTitle({ name: 'a:b', data: { orgId: 'o' }, attemptsMade: 0, finishedOn: 5, progress: stale })).toBe('a:b · org o');
  });
});
