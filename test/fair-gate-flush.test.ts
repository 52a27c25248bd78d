import { describe, expect, it, vi } from 'vitest';
import { createFairGate } from '../src/workers/fair-gate.js';

// The gate sends a finished job's release on the next turn of the event loop unless a claim carries it first,
// and only then: these pin what that batching promises around a close and a claim.
function gateWith() {
  const release = vi.fn(async (_ids: string[], _o?: unknown) => ({}));
  const claim = vi.fn(async (_id: string, _stage?: string, _carried?: { release?: string[] }) => ({ held: true, cancelled: false }));
  const scheduler = { claim, release, enqueue: vi.fn(), repark: vi.fn(), blockModel: vi.fn(), takeRequest: vi.fn(), giveBackRequest: vi.fn() };
  const loop = { takeRegistration: () => undefined, sweepDue: () => false, swept: () => {}, absorb: () => {}, kick: async () => {}, registrationLost: () => {} };
  const logger = { warn: () => {}, debug: () => {} };
  const gate = createFairGate({
    scheduler: scheduler as never,
    loop: loop as never,
    logger: logger as never,
    entryOf: (job) => ({ jobId: job.id!, orgId: 'org', model: 'm', estTokens: 10 }),
  });
  return { gate, release, claim };
}
const jobOf = (id: string) => ({ id, attemptsStarted: 1, data: { orgId: 'org' } }) as never;

describe('fair gate: releases of finished jobs', () => {
  it('a close right after a job finished sends its release before it resolves', async () => {
    const { gate, release } = gateWith();
    gate.finished(jobOf('a'));
    await gate.close();
    expect(release).toHaveBeenCalledTimes(1);
    expect(release.mock.calls[0][0]).toEqual(['a']);
  });

  it('a claim made before the next turn carries the release, and no release call of its own follows', async () => {
    const { gate, release, claim } = gateWith();
    gate.finished(jobOf('a'));
    await gate.admit(jobOf('b'), 'token');
    await new Promise<void>((resolve) => setImmediate(resolve));
    await gate.close();
    expect(claim.mock.calls[0][2]?.release).toEqual(['a']);
    expect(release).not.toHaveBeenCalled();
  });

  it('jobs finished while nothing claims go out together on the next turn', async () => {
    const { gate, release } = gateWith();
    gate.finished(jobOf('a'));
    gate.finished(jobOf('b'));
    await vi.waitFor(() => expect(release).toHaveBeenCalledTimes(1));
    expect(release.mock.calls[0][0]).toEqual(['a', 'b']);
    await gate.close();
  });
});
