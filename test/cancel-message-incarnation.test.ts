import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobService } from '../src/producers/job-service.js';
import { NotFoundError } from '../src/shared/core/errors.js';
import { cancelChannel, idempotencyRecordKey } from '../src/shared/core/queue-keys.js';
import { hookExec } from './helpers/exec-hook.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * The cancel channel's message names the job's creation time, as the cancel's marker, dispatcher call and removal do.
 * The id alone (until 2026-12-07): a cancel whose job was removed and made again under its id (an idempotency key
 * sent again) between the API's read and its message aborted the new job's running attempt.
 */
describe('a cancel message for an earlier job of the id', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: true, modelGate: true });
  });
  afterAll(async () => {
    await s?.close();
  });

  const job = (name: string, options: Record<string, unknown> = {}) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name, industry: 'retail' } }, options });
  const post = async (payload: ReturnType<typeof job>) => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  /** The job's view once it finished (a long poll). */
  const settled = async (id: string) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=10000`, headers: s.auth })).json();

  it("leaves the new job's running attempt alone, while a cancel of the job running aborts it", async () => {
    const gate = s.modelGate!;
    const { redis, cells: [{ queue, scheduler }] } = s.runtime.deps;
    const key = `reused-${Date.now()}`;
    // The job the cancel reads: delayed, so it never runs; the key's new job, which runs, is held at the model.
    const reused = job('Reused Id Co', { idempotencyKey: key });
    const newCall = gate.hold('Reused Id Co');
    const id = await post({ ...reused, options: { ...reused.options, delayMs: 60_000 } });
    // Another job running in the same worker, whose cancel (sent after the first, on the same connection and
    // channel) tells when the worker has read the first message.
    const barrierCall = gate.hold('Barrier Co');
    const barrier = await post(job('Barrier Co'));
    await barrierCall.arrived;

    // The window, between the cancel's read of the job and its message (the marker and the message's transaction):
    // the job read is removed, its key's record lapses, the key is sent again, and the new job's attempt calls the model.
    let replaced = false;
    const hooked = hookExec(redis, async () => {
      if (!replaced) {
        replaced = true;
        await scheduler.cancel(id);
        await (await queue.getJob(id))!.remove();
        await scheduler.removed([id]);
        await redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id));
        expect(await post(reused)).toBe(id);
        await newCall.arrived;
      }
    });
    const jobs = createJobService({
      queue,
      queueEvents: () => {
        throw new Error('not used');
      },
      redis: hooked,
      prefix: s.cfg.QUEUE_PREFIX,
      cancelledTtlS: 60,
      scheduler,
    });
    // The job it read is gone (removed by another hand, no tombstone): 404, as for its removal and dispatcher call.
    await expect(jobs.cancel(s.orgId, id)).rejects.toBeInstanceOf(NotFoundError);
    expect(replaced).toBe(true);
    expect(await queue.getJobState(id)).toBe('active');

    // A cancel of the job running (its own creation time) aborts it; once it has, the worker has read the message before.
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${barrier}`, headers: s.auth });
    expect(del.json()).toMatchObject({ state: 'cancelling' });
    expect(await settled(barrier)).toMatchObject({ state: 'cancelled', error: 'cancelled' });

    // The new job's attempt was not aborted: let its model call through, and it completes.
    newCall.release();
    expect(await settled(id)).toMatchObject({ id, state: 'completed' });
    barrierCall.release();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it("an older API's message (the id alone, a rolling upgrade) still aborts the job's attempt", async () => {
    const held = s.modelGate!.hold('Old Format Co');
    const id = await post(job('Old Format Co'));
    await held.arrived;
    await s.runtime.deps.redis.spublish(cancelChannel(s.cfg.QUEUE_PREFIX), id);
    expect(await settled(id)).toMatchObject({ id, state: 'cancelled', error: 'cancelled' });
    held.release();
  });
});
