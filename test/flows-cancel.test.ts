import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createAgentqClient } from '../src/producers/client/client.js';
import { flowCancelledKey } from '../src/shared/core/queue-keys.js';
import { randomOrg } from './helpers/env.js';
import { markedJob, orgWithHeldSlot } from './helpers/fair.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * `POST /v1/flows/:id/cancel` and `POST /v1/pipelines/runs/:id/cancel`: every job of the flow or run that has not
 * finished is cancelled as `DELETE /v1/jobs/:id` cancels it, and the flow or run ends `cancelled`. One job at a time
 * in the worker, so a flow's second dispatched child waits in BullMQ's wait list (charged, not fetched) while the
 * first runs, and an org capped at two keeps its third in its lane. A child cancelled through `DELETE /v1/jobs/:id`
 * alone reads `cancelled` in the flow's view, as the job's own view says it.
 */
describe('cancelling a whole flow or pipeline run', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: '1' }, { worker: true });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  const RPM = 3;
  const cell = () => s.runtime.deps.cells[0];
  const state = (id: string) => cell().queue.getJobState(id);
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const hangs = () => s.emulator.calls().filter((c) => c.fault === 'hang').length;
  const cancelFlow = (id: string, key: string) => s.app.inject({ method: 'POST', url: `/v1/flows/${id}/cancel`, headers: auth(key) });
  const settledFlow = async (id: string, key: string) => (await s.app.inject({ method: 'GET', url: `/v1/flows/${id}?waitMs=20000`, headers: auth(key) })).json();
  const startFlow = async (key: string, tasks: object[]) => {
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth(key), payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${id}`, headers: auth(key) })).json().children.map((c: { id: string }) => c.id) as string[];
    return { id, children };
  };
  /** The org's request bucket for a model: its level and the time of its last write (Redis's clock). */
  const rpmBucket = async (org: string, model: string) => {
    const [tokens, ts] = await s.runtime.deps.redis.hmget(`${cell().scheduler.keys.named.tbRpmOrgPrefix}${org}:${model}`, 'tokens', 'ts');
    return { tokens: Number(tokens), ts: Number(ts) };
  };

  it('cancels a running child and the waiting ones, runs nothing of the flow afterwards, gives each dispatch charge back once, and is 404 for another org', async () => {
    const org = randomOrg();
    await cell().scheduler.setPlan(org, { concurrency: 2, rpm: { pro: RPM, flash: RPM } });
    const key = await s.newKey(org);
    const tag = `Flow Cancel ${randomUUID().slice(0, 8)}`;
    const before = hangs();
    s.emulator.script({ hang: true, match: { promptIncludes: tag }, times: -1 });
    const flow = await startFlow(key, [0, 1, 2].map((i) => markedJob(`${tag} ${i}`)));

    // One child runs (its model call held), one is dispatched into the wait list behind it, one waits in its lane.
    let byState: Record<string, string> = {};
    await vi.waitFor(async () => {
      expect(hangs()).toBe(before + 1);
      byState = Object.fromEntries(await Promise.all(flow.children.map(async (c) => [await state(c), c] as const)));
      expect(Object.keys(byState).sort()).toEqual(['active', 'delayed', 'waiting']);
    }, POLL);
    const { active: running, waiting: dispatched, delayed: laned } = byState;
    const model = await s.runtime.deps.redis.hget(`${cell().scheduler.keys.named.jobPrefix}${dispatched}`, 'm');
    const bucketBefore = await rpmBucket(org, model!);
    /** Requests given back to the org since the cancel, net of what the bucket refilled meanwhile (RPM a minute). */
    const givenBack = async () => {
      const after = await rpmBucket(org, model!);
      return after.tokens - bucketBefore.tokens - ((after.ts - bucketBefore.ts) * RPM) / 60_000;
    };

    // Another org: a 404, and the flow goes on untouched.
    const foreign = await cancelFlow(flow.id, await s.newKey());
    expect(foreign.statusCode).toBe(404);
    expect(foreign.json().error).toContain(flow.id);
    expect(await state(running)).toBe('active');
    expect((await cancelFlow('flow-missing', key)).json()).toEqual({ error: 'flow "flow-missing" not found' });

    const res = await cancelFlow(flow.id, key);
    expect(res.statusCode).toBe(202);
    const order = (ids: string[]) => flow.children.filter((c) => ids.includes(c));
    expect(res.json()).toEqual({ id: flow.id, state: 'cancelling', cancelled: order([dispatched, laned]), cancelling: [running] });

    const view = await settledFlow(flow.id, key);
    expect(view.state).toBe('cancelled');
    expect(view.error).toBe('cancelled');
    expect(view.children.map((c: { state: string }) => c.state)).toEqual(['cancelled', 'cancelled', 'cancelled']);
    // Nothing of it is left to run: the running child failed as cancelled, the others are gone, the org holds nothing.
    expect(await state(running)).toBe('failed');
    expect(await Promise.all([dispatched, laned].map(state))).toEqual(['unknown', 'unknown']);
    await vi.waitFor(async () => expect(await cell().scheduler.orgStats(org)).toMatchObject({ inFlight: 0, waiting: 0 }), POLL);
    expect((await cell().scheduler.dispatch({ id: 'flows-cancel-test', concurrency: 4, ask: 4, ttlMs: 60_000 })).promoted).toEqual([]);
    expect(hangs()).toBe(before + 1);
    // The dispatched child's request back once; the running child's stays spent (it called the model).
    expect(await givenBack()).toBeCloseTo(1, 3);

    // Again: nothing more to cancel, nothing given back twice.
    const again = await cancelFlow(flow.id, key);
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual({ id: flow.id, state: 'cancelled', cancelled: [], cancelling: [] });
    expect(await givenBack()).toBeCloseTo(1, 3);
    expect(hangs()).toBe(before + 1);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('shows a child cancelled through the job API as cancelled in the flow', async () => {
    // An org capped at one job, its slot held by a job whose model call hangs: the flow's child waits in its lane.
    const { key, busy } = await orgWithHeldSlot(s);
    try {
      const flow = await startFlow(key, [markedJob(`Child ${randomUUID().slice(0, 8)}`)]);
      await vi.waitFor(async () => expect(await state(flow.children[0])).toBe('delayed'), POLL);
      const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${flow.children[0]}`, headers: auth(key) });
      expect(del.statusCode).toBe(200);
      const view = await settledFlow(flow.id, key);
      // The flow settled without it (allSettled): it is not a cancel of the flow.
      expect(view.state).toBe('completed');
      expect(view.children).toEqual([{ id: flow.children[0], key: 'RiskAnalyzer:analyze_risks', state: 'cancelled' }]);
    } finally {
      await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${busy}`, headers: auth(key) });
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('a cancel that arrives as the flows worker settles a flow whose children all finished answers the state it ends in', async () => {
    const key = await s.newKey();
    // The flows worker's read of the flow's cancel marker (the last before it settles) found none; the cancel comes
    // in before the worker goes on, and has set the marker when it does. The read is caught from before the flow is
    // made: on a quick host the child ran and the flow settled while startFlow still read the flow's children (the
    // catch, put in after it, then saw no read at all). A read of a marker made before the flow's id is known waits
    // for it; one of another flow's marker goes on untouched.
    const markerOf = (id: string) => flowCancelledKey(cell().prefix, id);
    const markers = markerOf('');
    let flowKnown!: (id: string | undefined) => void;
    const flowId = new Promise<string | undefined>((resolve) => (flowKnown = resolve));
    const proto = Redis.prototype as unknown as { exists: (...args: unknown[]) => Promise<number> };
    const original = proto.exists;
    let cancel: ReturnType<typeof cancelFlow> | undefined;
    proto.exists = async function (this: Redis, ...args: unknown[]) {
      const read = await original.apply(this, args);
      if (!cancel && read === 0 && typeof args[0] === 'string' && args[0].startsWith(markers)) {
        const id = await flowId;
        if (!cancel && id && args[0] === markerOf(id)) {
          cancel = cancelFlow(id, key);
          await vi.waitFor(async () => expect(await original.apply(s.runtime.deps.redis, [markerOf(id)])).toBe(1), POLL);
        }
      }
      return read;
    };
    try {
      const flow = await startFlow(key, [markedJob(`Settling ${randomUUID().slice(0, 8)}`)]);
      flowKnown(flow.id);
      const view = await settledFlow(flow.id, key);
      expect(view.state).toBe('completed');
      expect(cancel).toBeDefined();
      const res = await cancel!;
      // Not `cancelling`: nothing was cancelled, and the flow completed.
      expect(res.json()).toEqual({ id: flow.id, state: 'completed', cancelled: [], cancelling: [] });
      expect(res.statusCode).toBe(200);
    } finally {
      flowKnown(undefined);
      proto.exists = original;
    }
  });

  it('cancels a pipeline run: its running step is cancelled, no later step is made, the run ends cancelled', async () => {
    const key = await s.newKey();
    const company = `Cancelled Run ${randomUUID().slice(0, 8)}`;
    const before = hangs();
    const calls = s.emulator.calls().length;
    s.emulator.script({ hang: true, match: { promptIncludes: company } });
    const input = { companyName: company, answers: [{ question: 'What do you build?', answer: 'Cold-chain sensors for pharmacies.' }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: auth(key), payload: { input } });
    expect(post.statusCode).toBe(202);
    const runId = post.json().id as string;
    await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);

    expect((await s.app.inject({ method: 'POST', url: `/v1/pipelines/runs/${runId}/cancel`, headers: auth(await s.newKey()) })).statusCode).toBe(404);
    // A flow's route does not cancel a run.
    expect((await cancelFlow(runId, key)).statusCode).toBe(404);
    const res = await s.app.inject({ method: 'POST', url: `/v1/pipelines/runs/${runId}/cancel`, headers: auth(key) });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ id: runId, state: 'cancelling', cancelled: [], cancelling: [`${runId}-profile`] });

    const view = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}?waitMs=20000`, headers: auth(key) })).json();
    expect(view.state).toBe('cancelled');
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['failed', 'skipped', 'skipped']);
    expect(view.errors).toEqual({ profile: 'cancelled' });
    // Only the aborted call of the first step was ever made.
    expect(s.emulator.calls().length - calls).toBe(1);
    for (const step of ['risks', 'tasks']) expect(await state(`${runId}-${step}`)).toBe('unknown');
    const again = await s.app.inject({ method: 'POST', url: `/v1/pipelines/runs/${runId}/cancel`, headers: auth(key) });
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual({ id: runId, state: 'cancelled', cancelled: [], cancelling: [] });
  });

  it('a step the runner makes just after the cancel (it read no cancel before) never calls the model', async () => {
    const key = await s.newKey();
    const company = `Late Step ${randomUUID().slice(0, 8)}`;
    const calls = s.emulator.calls().length;
    // The runner's add of the first step waits for the run's cancel: the runner had read the run as not cancelled.
    const producer = s.runtime.deps.producer as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    const original = producer.add;
    let cancel: { statusCode: number; body: unknown } | undefined;
    producer.add = async (...args: unknown[]) => {
      const [p] = args[0] as Array<{ opts: { jobId?: string }; data: { input?: { companyName?: string } } }>;
      const jobId = p?.opts.jobId;
      if (!cancel && jobId?.endsWith('-profile') && p.data.input?.companyName === company) {
        const res = await s.app.inject({ method: 'POST', url: `/v1/pipelines/runs/${jobId.slice(0, -'-profile'.length)}/cancel`, headers: auth(key) });
        cancel = { statusCode: res.statusCode, body: res.json() };
      }
      return original(...args);
    };
    try {
      const input = { companyName: company, answers: [{ question: 'What do you build?', answer: 'Solar kiosks.' }] };
      const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: auth(key), payload: { input } });
      const runId = post.json().id as string;
      const view = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}?waitMs=20000`, headers: auth(key) })).json();
      // Nothing to cancel yet: the step's job did not exist.
      expect(cancel).toEqual({ statusCode: 202, body: { id: runId, state: 'cancelling', cancelled: [], cancelling: [] } });
      expect(view.state).toBe('cancelled');
      expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['failed', 'skipped', 'skipped']);
      // Made, and failed as cancelled by its claim: no model call.
      expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${runId}-profile`, headers: auth(key) })).json()).toMatchObject({ state: 'cancelled' });
      expect(s.emulator.calls().length - calls).toBe(0);
    } finally {
      producer.add = original;
    }
  });
  it('is reachable from the typed client: startFlow / cancelFlow / getFlow and startPipeline / cancelPipelineRun / getPipelineRun', async () => {
    const key = await s.newKey();
    const client = createAgentqClient({ baseUrl: await s.app.listen({ host: '127.0.0.1', port: 0 }), apiKey: key });
    const tag = `Client Cancel ${randomUUID().slice(0, 8)}`;
    const before = hangs();
    s.emulator.script({ hang: true, match: { promptIncludes: tag }, times: -1 });
    const { id } = await client.startFlow([markedJob(`${tag} flow`) as never]);
    await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);
    const [child] = (await client.getFlow(id)).children.map((c) => c.id);
    expect(await client.cancelFlow(id)).toEqual({ id, state: 'cancelling', cancelled: [], cancelling: [child] });
    await vi.waitFor(async () => expect((await client.getFlow(id)).state).toBe('cancelled'), POLL);
    // An unknown id is the server's 404, thrown with its message.
    await expect(client.cancelFlow('flow-missing')).rejects.toMatchObject({ status: 404, message: expect.stringContaining('flow-missing') });

    const input = { companyName: `${tag} run`, answers: [{ question: 'What do you build?', answer: 'Bike couriers.' }] };
    const run = await client.startPipeline('wizard_completion', input);
    await vi.waitFor(() => expect(hangs()).toBe(before + 2), POLL);
    expect(await client.cancelPipelineRun(run.id)).toEqual({ id: run.id, state: 'cancelling', cancelled: [], cancelling: [`${run.id}-profile`] });
    await vi.waitFor(async () => expect((await client.getPipelineRun(run.id)).state).toBe('cancelled'), POLL);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));
});
