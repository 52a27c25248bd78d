import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createStalledCheck } from './helpers/stalled-check.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * DELETE of a job whose attempt still runs after BullMQ's stalled check took the job back (its lock lapsed while
 * its worker's event loop was blocked): the attempt must hear the cancel whatever BullMQ's state reads, its slot
 * goes back once, and the job ends cancelled.
 */
function stalledStack(concurrency: number) {
  let s!: Stack;
  let checks: ReturnType<typeof createStalledCheck> | undefined;
  const hangs = () => s.emulator.calls().filter((c) => c.fault === 'hang');

  /** What another worker's stalled check does once the job's lock lapsed: the job goes back to BullMQ's wait list. */
  const stall = (id: string) => checks!.stall(s.runtime.deps.cells[0].queue, id);

  const post = async (name: string) => {
    const input = { startup: { name, industry: 'robotics', stage: 'seed', description: 'A job the test cancels' } };
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  const view = async (id: string, waitMs = 0) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=${waitMs}`, headers: s.auth })).json();
  const runs = async (id: string) => {
    await usageWritten(s);
    return (await s.infra.db.pool.query('SELECT state, error FROM agent_runs WHERE job_id = $1', [id])).rows;
  };

  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: String(concurrency) }, { worker: true });
    checks = createStalledCheck(s.cfg.REDIS_URL!, s.cfg.QUEUE_PREFIX);
  });
  afterAll(async () => {
    await checks?.close();
    await s?.close();
  });
  return { stack: () => s, hangs, stall, post, view, runs };
}

describe('cancelling a job whose attempt stalled but still runs', () => {
  // One job at a time: the worker holding the stalled attempt cannot fetch the job again, so it stays waiting.
  const { stack, hangs, stall, post, view, runs } = stalledStack(1);

  it('a job back in the wait list: the running attempt is cancelled, the slot goes back once, and the job ends cancelled', async () => {
    const s = stack();
    const { scheduler, queue } = s.runtime.deps.cells[0];
    await scheduler.setPlan(s.orgId, { concurrency: 1 });
    s.emulator.script({ hang: true, match: { promptIncludes: 'Stalled Attempt Inc' } });
    const id = await post('Stalled Attempt Inc');
    await vi.waitFor(() => expect(hangs()).toHaveLength(1), POLL);
    const next = await post('Next In Line Ltd');
    await vi.waitFor(async () => expect(await scheduler.why(next)).toMatchObject({ reason: 'org_concurrency' }), POLL);

    await stall(id);
    expect(await queue.getJobState(id)).toBe('waiting');
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    // The message goes out before the job is removed, so the aborted attempt frees its worker, which may fetch the
    // job back from the wait list before the API's removal comes (seen in CI): the API then answers 202 cancelling,
    // and the new attempt's claim reads the marker and fails the job as cancelled. Either way it ends cancelled.
    expect([200, 202]).toContain(del.statusCode);
    expect(del.json()).toMatchObject({ state: del.statusCode === 200 ? 'cancelled' : 'cancelling' });

    // The attempt that still ran heard the cancel: its model call was aborted, and its run is recorded cancelled.
    await vi.waitFor(() => expect(hangs()[0]).toMatchObject({ aborted: true, status: 499 }), POLL);
    expect(await view(id, 20_000)).toMatchObject({ id, state: 'cancelled' });
    expect(await runs(id)).toEqual([{ state: 'failed', error: 'cancelled' }]);
    // The org's next job got the slot, and ran once the cancelled attempt had ended (this worker runs one at a time).
    await vi.waitFor(async () => expect((await view(next)).state).toBe('completed'), POLL);
    // No slot left held: the cancelled job's went back at the cancel (its attempt's refused outcome releases
    // nothing more), the next job's when it ended.
    await vi.waitFor(async () => expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(0), POLL);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));
});

describe('cancelling a job its own worker fetched again while the stalled attempt still runs', () => {
  // Room for a second job: the worker that holds the stalled attempt fetches the job again from the wait list.
  const { stack, hangs, stall, post, view, runs } = stalledStack(2);

  it('both attempts are cancelled, the job ends cancelled, and its slot goes back once', async () => {
    const s = stack();
    const { scheduler } = s.runtime.deps.cells[0];
    s.emulator.script({ hang: true, times: 2, match: { promptIncludes: 'Twice Fetched GmbH' } });
    const id = await post('Twice Fetched GmbH');
    await vi.waitFor(() => expect(hangs()).toHaveLength(1), POLL);
    await stall(id);
    // Fetched again by the same worker: a second attempt calls the model beside the first.
    await vi.waitFor(() => expect(hangs()).toHaveLength(2), POLL);
    expect((await view(id)).state).toBe('active');

    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    expect(del.statusCode).toBe(202);
    expect(del.json()).toMatchObject({ state: 'cancelling' });
    await vi.waitFor(() => expect(hangs().map((c) => c.aborted)).toEqual([true, true]), POLL);
    expect(await view(id, 20_000)).toMatchObject({ id, state: 'cancelled' });
    // Each attempt's run is recorded cancelled (none completed).
    expect([...new Set((await runs(id)).map((r: { state: string; error: string }) => `${r.state}: ${r.error}`))]).toEqual(['failed: cancelled']);
    await vi.waitFor(async () => expect((await scheduler.orgStats(s.orgId)).inFlight).toBe(0), POLL);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));
});
