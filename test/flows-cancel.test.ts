import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomOrg } from './helpers/env.js';
import { markedJob, postJob } from './helpers/fair.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL } from './helpers/wait.js';

/**
 * Cancels and flows: a flow's child cancelled through `DELETE /v1/jobs/:id` reads `cancelled` in the flow's view, as
 * the job's own view says it.
 */
describe('cancelling flows and their jobs', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: '1' }, { worker: true });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  const cell = () => s.runtime.deps.cells[0];
  const state = (id: string) => cell().queue.getJobState(id);
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const hangs = () => s.emulator.calls().filter((c) => c.fault === 'hang').length;
  const settledFlow = async (id: string, key: string) => (await s.app.inject({ method: 'GET', url: `/v1/flows/${id}?waitMs=20000`, headers: auth(key) })).json();
  const startFlow = async (key: string, tasks: object[]) => {
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth(key), payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const id = post.json().id as string;
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${id}`, headers: auth(key) })).json().children.map((c: { id: string }) => c.id) as string[];
    return { id, children };
  };

  it('shows a child cancelled through the job API as cancelled in the flow', async () => {
    // An org capped at one job, its slot held by a job whose model call hangs: the flow's child waits in its lane.
    const org = randomOrg();
    await cell().scheduler.setPlan(org, { concurrency: 1 });
    const key = await s.newKey(org);
    const marker = `Slot Holder ${randomUUID().slice(0, 8)}`;
    const before = hangs();
    s.emulator.script({ hang: true, match: { promptIncludes: marker } });
    const busy = await postJob(s, key, markedJob(marker));
    await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);
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
  });
});
