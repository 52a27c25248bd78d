import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { randomOrg } from './helpers/env.js';
import { markedJob, postJob } from './helpers/fair.js';
import { createStalledCheck } from './helpers/stalled-check.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * A cancel that gives capacity back (the slot of an org at its cap, the request and tokens its dispatch charged)
 * lets the org's next job go at once, not at the dispatch loops' safety poll. The worker's loop polls every 10
 * minutes here: only a wake (a dispatch in the cancel's own call, a release's, a kick) explains a dispatch within
 * the tests' bounds. One job at a time in the worker, whose ask (one job) the wait list fills: the cancelled job,
 * still in BullMQ's wait list until the API removes it, must not keep the next one out (a kick to the workers'
 * loops, until 2026-12-06, raced that removal and lost it: the API's cancel of an unfetched job). The stalled and
 * running cases hold the other ways such a slot comes back: the cancel's own call, and the attempt's release.
 */
describe('a cancel that frees an org slot wakes the dispatcher', () => {
  let s: Stack;
  let checks: ReturnType<typeof createStalledCheck> | undefined;
  const ADMIN_TOKEN = 'cancel-wakes-admin-0123456789';

  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: '1', FAIR_SAFETY_POLL_MS: '600000', ADMIN_TOKEN }, { worker: true });
    checks = createStalledCheck(s.cfg.REDIS_URL!, s.cfg.QUEUE_PREFIX);
  });
  afterAll(async () => {
    await checks?.close();
    await s?.close();
  });

  const cell = () => s.runtime.deps.cells[0];
  const state = (id: string) => cell().queue.getJobState(id);
  const view = async (id: string, key = s.apiKey) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: { authorization: `Bearer ${key}` } })).json();
  const cancel = (id: string, key = s.apiKey) => s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: { authorization: `Bearer ${key}` } });
  /** Model calls the emulator holds (never answered until their client gives up). */
  const hangs = () => s.emulator.calls().filter((c) => c.fault === 'hang').length;
  /** Posts a job whose model call hangs; returns its id once that call has started. */
  const postHanging = async (key: string, marker: string) => {
    const before = hangs();
    s.emulator.script({ hang: true, match: { promptIncludes: marker } });
    const id = await postJob(s, key, markedJob(marker));
    await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);
    return id;
  };
  /** A fresh org capped at one job in flight, and its key. */
  const cappedOrg = async () => {
    const org = randomOrg();
    await cell().scheduler.setPlan(org, { concurrency: 1 });
    return { org, key: await s.newKey(org) };
  };

  /** What another worker's stalled check does once the job's lock lapsed: the job goes back to BullMQ's wait list. */
  const stall = (id: string) => checks!.stall(cell().queue, id);

  /**
   * The worker's one slot taken by another org's job that hangs, so what is dispatched stays in the wait list; an
   * org capped at one job with one dispatched there and the next parked behind it. `remove` takes the first away
   * (the API's cancel, Bull Board's remove); the next is then dispatched, without a safety poll, and runs once the
   * worker is free.
   */
  async function cancelUnfetched(marker: string, remove: (id: string, key: string) => Promise<void>) {
    const busyKey = await s.newKey();
    const busy = await postHanging(busyKey, `${marker} Busy Worker`);
    let freed = false;
    // The hanging job is cancelled whatever happens, so a failure here leaves the worker free for the next test.
    const free = async () => {
      if (freed) return;
      freed = true;
      expect((await cancel(busy, busyKey)).statusCode).toBe(202);
    };
    try {
      const { org, key } = await cappedOrg();
      const first = await postJob(s, key, markedJob(`${marker} First`));
      await vi.waitFor(async () => expect(await state(first)).toBe('waiting'), POLL);
      const next = await postJob(s, key, markedJob(`${marker} Next`));
      expect(await state(next)).toBe('delayed');

      await remove(first, key);
      // Dispatched into the wait list, where the busy worker will find it.
      await vi.waitFor(async () => expect(await state(next)).toBe('waiting'), POLL);
      expect((await cell().scheduler.orgStats(org)).inFlight).toBe(1);

      await free();
      await vi.waitFor(async () => expect((await view(next, key)).state).toBe('completed'), POLL);
    } finally {
      await free();
    }
  }

  it("a dispatched job the API cancels before any worker fetched it: the org's next job is dispatched at once", async () => {
    await cancelUnfetched('Api Cancel', async (id, key) => {
      const del = await cancel(id, key);
      expect(del.statusCode).toBe(200);
      expect(del.json()).toMatchObject({ state: 'cancelled' });
    });
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it("a dispatched job Bull Board removes before any worker fetched it: the org's next job is dispatched at once", async () => {
    await cancelUnfetched('Board Remove', async (id) => {
      const res = await s.app.inject({ method: 'PUT', url: `/admin/queues/api/queues/${QUEUE.agent}/${id}/clean`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      expect(res.statusCode).toBe(204);
      expect(await state(id)).toBe('unknown');
    });
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it("a job whose attempt stalled (back in the wait list) cancelled: the org's next job runs without a safety poll", async () => {
    const { org, key } = await cappedOrg();
    const first = await postHanging(key, 'Stalled Then Cancelled');
    const next = await postJob(s, key, markedJob('Next After Stalled'));
    await vi.waitFor(async () => expect(await cell().scheduler.why(next)).toMatchObject({ reason: 'org_concurrency' }), POLL);

    await stall(first);
    expect(await state(first)).toBe('waiting');
    const del = await cancel(first, key);
    // The aborted attempt frees the worker, which may fetch the job back before the API removes it (202): its
    // claim then reads the cancel. Either way the next job gets the slot.
    expect([200, 202]).toContain(del.statusCode);
    await vi.waitFor(async () => expect((await view(next, key)).state).toBe('completed'), POLL);
    expect((await view(first, key)).state).toBe('cancelled');
    await vi.waitFor(async () => expect((await cell().scheduler.orgStats(org)).inFlight).toBe(0), POLL);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it("a running job cancelled: its release lets the org's next job run without a safety poll", async () => {
    const { org, key } = await cappedOrg();
    const first = await postHanging(key, 'Running Then Cancelled');
    const next = await postJob(s, key, markedJob('Next After Running'));
    await vi.waitFor(async () => expect(await cell().scheduler.why(next)).toMatchObject({ reason: 'org_concurrency' }), POLL);

    const del = await cancel(first, key);
    expect(del.statusCode).toBe(202);
    await vi.waitFor(async () => expect((await view(next, key)).state).toBe('completed'), POLL);
    expect((await view(first, key)).state).toBe('cancelled');
    await vi.waitFor(async () => expect((await cell().scheduler.orgStats(org)).inFlight).toBe(0), POLL);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));
});
