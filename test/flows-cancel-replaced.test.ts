import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { markedJob } from './helpers/fair.js';
import { replaceChild as replaceChildOf } from './helpers/replaced-child.js';
import { countRoundTrips, naming } from './helpers/round-trips.js';
import { startStack, type Stack } from './helpers/stack.js';

const FLASH = 'gemini-2.5-flash';

/**
 * `POST /v1/flows/:id/cancel` cancels the flow's children, not whatever job holds a child's id by then: a child
 * removed (another cancel, a board removal) and a new job made under its id (an idempotency key sent again, a
 * pipeline step's id made again) is no job of the flow. Until 2026-12-07 the flow's cancel cancelled each child by
 * id: that new job was removed, its slot and dispatch charge given back, and the flow's answer named it cancelled.
 */
describe("a flow's cancel and a child's id that holds another job", () => {
  let s: Stack;
  beforeAll(async () => {
    // No worker: dispatched children stay in BullMQ's wait list, and the flow waits for them.
    s = await startStack();
  });
  afterAll(async () => s?.close());

  const cell = () => s.runtime.deps.cells[0];
  const state = (id: string) => cell().queue.getJobState(id);
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const dispatch = () => cell().scheduler.dispatch({ id: 'flows-cancel-replaced-worker', concurrency: 100, ask: 100, ttlMs: 60_000 });
  const leased = () => s.runtime.deps.redis.zrange(cell().scheduler.keys.leases, 0, -1);

  /** A flow of two children of a new org, both dispatched (a slot each), and its children's ids. */
  async function dispatchedFlow(name: string) {
    const org = `org_flowrep_${randomUUID().slice(0, 8)}`;
    await cell().scheduler.setPlan(org, { concurrency: 2, rpm: { flash: 10, pro: 10 }, tpm: 100_000 });
    const key = await s.newKey(org);
    const tasks = [0, 1].map((i) => markedJob(`${name}-${org}-${i}`, FLASH));
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth(key), payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    await dispatch();
    const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: auth(key) })).json().children.map((c: { id: string }) => c.id) as string[];
    expect(await Promise.all(children.map(state))).toEqual(['waiting', 'waiting']);
    return { org, key, flowId, children };
  }

  const replaceChild = (org: string, id: string) => replaceChildOf(s, org, id, dispatch);

  /** The flow's cancel took its other child only: the new job under the replaced child's id is there, with its slot. */
  async function expectReplacementKept(f: { org: string; key: string; children: string[] }, newTs: number) {
    expect(await state(f.children[1])).toBe('unknown');
    expect(await state(f.children[0])).toBe('waiting');
    expect((await cell().queue.getJob(f.children[0]))!.timestamp).toBe(newTs);
    expect(await leased()).toContain(f.children[0]);
    expect(await leased()).not.toContain(f.children[1]);
    expect(await cell().scheduler.orgStats(f.org)).toMatchObject({ inFlight: 1 });
    // Its own cancel still takes it, and its slot.
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${f.children[0]}`, headers: auth(f.key) })).json().state).toBe('cancelled');
    expect(await cell().scheduler.orgStats(f.org)).toMatchObject({ inFlight: 0 });
  }

  it('a child replaced before the cancel: the new job under its id is left, with its slot', async () => {
    const f = await dispatchedFlow('flow-cancel-replaced');
    const newTs = await replaceChild(f.org, f.children[0]);
    const res = await s.app.inject({ method: 'POST', url: `/v1/flows/${f.flowId}/cancel`, headers: auth(f.key) });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ id: f.flowId, state: 'cancelling', cancelled: [f.children[1]], cancelling: [] });
    await expectReplacementKept(f, newTs);
  });

  it('a child replaced just after the cancel read the children: the new job under its id is left, with its slot', async () => {
    const f = await dispatchedFlow('flow-cancel-replaced-read');
    const jobs = cell().jobs;
    const cancel = jobs.cancel.bind(jobs);
    let newTs = 0;
    const asked: string[] = [];
    // The window, held where the flow's cancel reaches the replaced child's cancel: it read the children before.
    const spy = vi.spyOn(jobs, 'cancel').mockImplementation(async (...args: Parameters<typeof jobs.cancel>) => {
      asked.push(args[1]);
      if (args[1] === f.children[0] && newTs === 0) newTs = await replaceChild(f.org, f.children[0]);
      return cancel(...args);
    });
    let res;
    try {
      res = await s.app.inject({ method: 'POST', url: `/v1/flows/${f.flowId}/cancel`, headers: auth(f.key) });
    } finally {
      spy.mockRestore();
    }
    expect(asked).toContain(f.children[0]);
    expect(newTs).toBeGreaterThan(0);
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ id: f.flowId, state: 'cancelling', cancelled: [f.children[1]], cancelling: [] });
    await expectReplacementKept(f, newTs);
  });

  it("reads its children (each one's creation time, and whether a worker runs it) in one round trip, however many there are", async () => {
    const reads: number[] = [];
    for (const n of [1, 6]) {
      const org = `org_flowrt_${randomUUID().slice(0, 8)}`;
      await cell().scheduler.setPlan(org, { concurrency: 2, rpm: { flash: 10, pro: 10 }, tpm: 100_000 });
      const key = await s.newKey(org);
      const tasks = Array.from({ length: n }, (_, i) => markedJob(`flow-cancel-rt-${org}-${i}`, FLASH));
      const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth(key), payload: { tasks } });
      expect(post.statusCode).toBe(202);
      const flowId = post.json().id as string;
      await dispatch();
      const children = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: auth(key) })).json().children.map((c: { id: string }) => c.id) as string[];
      // The round trips that name a child, until the cancel of the first child begins: the read of them all.
      const trips = countRoundTrips(s.runtime.deps.redis, naming(children));
      const jobs = cell().jobs;
      const cancel = jobs.cancel.bind(jobs);
      let before: number | undefined;
      const spy = vi.spyOn(jobs, 'cancel').mockImplementation(async (...args: Parameters<typeof jobs.cancel>) => {
        before ??= trips.count;
        return cancel(...args);
      });
      let res;
      try {
        res = await s.app.inject({ method: 'POST', url: `/v1/flows/${flowId}/cancel`, headers: auth(key) });
      } finally {
        spy.mockRestore();
        trips.stop();
      }
      expect(res.statusCode).toBe(202);
      expect(res.json()).toEqual({ id: flowId, state: 'cancelling', cancelled: children, cancelling: [] });
      reads.push(before!);
    }
    // One each (until 2026-12-07: 1 + a getJobState per child, 2 and 7).
    expect(reads).toEqual([1, 1]);
  });
});
