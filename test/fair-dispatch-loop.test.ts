import { describe, expect, it, vi } from 'vitest';
import { ASK_MOVE_GRACE_MS, createDispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import type { DispatchResult } from '../src/shared/fair/fair-scheduler.js';
import type { ChargeCorrection, DispatchingWorker } from '../src/shared/fair/index.js';
import { createFairGate } from '../src/workers/fair-gate.js';
import type { Logger } from '../src/shared/core/logger.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/** A scheduler stand-in whose dispatch calls finish only when the test says so. */
function fakeScheduler(result: () => DispatchResult) {
  const pending: Array<() => void> = [];
  const registrations: unknown[] = [];
  let calls = 0;
  return {
    get calls() {
      return calls;
    },
    registrations,
    finishOne() {
      pending.shift()?.();
    },
    scheduler: {
      dispatch: (worker?: unknown) => {
        calls++;
        registrations.push(worker);
        return new Promise<DispatchResult>((resolve) => pending.push(() => resolve(result())));
      },
    },
  };
}

describe('fair dispatch loop', () => {
  it('coalesces kicks into one call in flight plus one pending', async () => {
    const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
    const loop = createDispatchLoop({ scheduler: f.scheduler, safetyPollMs: 60_000 });
    const kicks = Array.from({ length: 5 }, () => loop.kick());
    expect(f.calls).toBe(1);
    f.finishOne();
    await vi.waitFor(() => expect(f.calls).toBe(2), POLL);
    f.finishOne();
    await Promise.all(kicks);
    expect(f.calls).toBe(2);
    await loop.close();
  });

  it('arms one timer for the next wake-up and re-runs when asked for more', async () => {
    let n = 0;
    const f = fakeScheduler(() => {
      n++;
      const now = Date.now();
      // 1st: wake in 50 ms; 2nd: more work now; 3rd: nothing left.
      return n === 1 ? { promoted: [], nowMs: now, nextWakeMs: now + 50, more: false } : { promoted: [], nowMs: now, more: n === 2 };
    });
    // A safety poll far past the waits' hang guard: only the timer (then the re-run) can make the next calls.
    const loop = createDispatchLoop({ scheduler: f.scheduler, safetyPollMs: 600_000 });
    const t0 = Date.now();
    void loop.kick();
    f.finishOne();
    await vi.waitFor(() => expect(f.calls).toBe(2), { ...POLL, interval: 5 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    f.finishOne();
    await vi.waitFor(() => expect(f.calls).toBe(3), { ...POLL, interval: 5 });
    f.finishOne();
    await loop.close();
    expect(f.calls).toBe(3);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('absorb: a dispatch made elsewhere arms its wake-up here, and one that stopped with work left is continued', async () => {
    const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
    const seen: DispatchResult[] = [];
    // As above: only the absorbed wake-up (then the continuation) can make the calls within the waits.
    const loop = createDispatchLoop({ scheduler: f.scheduler, safetyPollMs: 600_000, onDispatch: (r) => seen.push(r) });
    const now = Date.now();
    const woken = { promoted: ['a'], nowMs: now, nextWakeMs: now + 50, more: false };
    loop.absorb(woken);
    expect(f.calls).toBe(0);
    await vi.waitFor(() => expect(f.calls).toBe(1), { ...POLL, interval: 5 });
    expect(Date.now() - now).toBeGreaterThanOrEqual(45);
    f.finishOne();
    loop.absorb({ promoted: [], nowMs: Date.now(), more: true });
    await vi.waitFor(() => expect(f.calls).toBe(2), { ...POLL, interval: 5 });
    f.finishOne();
    await loop.close();
    expect(seen[0]).toEqual(woken);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('renews the worker registration every half safety poll, not on every call', async () => {
    const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
    let clock = 1_000_000;
    const loop = createDispatchLoop({ scheduler: f.scheduler, worker: { id: 'w1', concurrency: 10 }, safetyPollMs: 60_000, now: () => clock });
    const reg = { id: 'w1', concurrency: 10, ttlMs: 180_000 };
    const call = async () => {
      const k = loop.kick();
      f.finishOne();
      await k;
    };
    await call();
    clock += 29_999;
    await call();
    clock += 1;
    await call();
    await call();
    await loop.close();
    // The second registration renews the first one's ask (the script then writes only its expiry).
    expect(f.registrations).toEqual([reg, undefined, { ...reg, renewal: true }, undefined]);
  });

  it("skips a safety poll a release of this process made redundant (it swept within the interval), unless the registration would age past two", async () => {
    vi.useFakeTimers();
    try {
      const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
      const loop = createDispatchLoop({ scheduler: f.scheduler, worker: { id: 'w1', concurrency: 10, ask: () => 5 }, safetyPollMs: 10_000 });
      const reg = { id: 'w1', concurrency: 10, ttlMs: 30_000, ask: 5 };
      // Each poll that runs dispatches; the fake answers at once.
      const tick = async (ms: number) => {
        await vi.advanceTimersByTimeAsync(ms);
        f.finishOne();
        await vi.advanceTimersByTimeAsync(0);
      };
      // t=10 s: the first poll registers the worker.
      await tick(10_000);
      expect(f.calls).toBe(1);
      // t=16 s: a throttled org's job finished here; its claim renewed the registration, its release swept. The poll
      // at t=20 s is skipped: it would find nothing that release did not, and the registration is 4 s old.
      await vi.advanceTimersByTimeAsync(6_000);
      const renewal = { ...reg, renewal: true };
      expect(loop.takeRegistration()).toEqual(renewal);
      loop.swept();
      await tick(4_000);
      expect(f.calls).toBe(1);
      // t=25 s: another release sweeps; the poll at t=30 s still runs: the registration (t=16 s) would be 24 s old
      // at the poll after it, near its 30 s ttl.
      await vi.advanceTimersByTimeAsync(5_000);
      loop.swept();
      await tick(5_000);
      expect(f.calls).toBe(2);
      // No release since: the poll at t=40 s runs (its own last dispatch, at t=30 s, is a whole interval ago).
      await tick(10_000);
      expect(f.calls).toBe(3);
      expect(f.registrations).toEqual([reg, renewal, renewal]);
      await loop.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it("wants a release to sweep only once this process's last sweep is half a safety poll old", async () => {
    const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
    let clock = 1_000_000;
    const loop = createDispatchLoop({ scheduler: f.scheduler, safetyPollMs: 10_000, now: () => clock });
    // Nothing swept yet.
    expect(loop.sweepDue()).toBe(true);
    // A release swept: the releases of the same wake-up's other jobs, milliseconds later, do not.
    loop.swept();
    clock += 20;
    expect(loop.sweepDue()).toBe(false);
    clock += 4_979;
    expect(loop.sweepDue()).toBe(false);
    // Half a poll on: the next one sweeps, so a poll still finds a sweep within its interval and a lost wake-up waits
    // no longer than before.
    clock += 1;
    expect(loop.sweepDue()).toBe(true);
    // The loop's own dispatch sweeps too.
    const k = loop.kick();
    f.finishOne();
    await k;
    expect(loop.sweepDue()).toBe(false);
    await loop.close();
  });

  it('registers again as soon as the ask moved, and not while it stands', async () => {
    const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
    let ask = 5;
    const loop = createDispatchLoop({ scheduler: f.scheduler, worker: { id: 'w1', concurrency: 10, ask: () => ask }, safetyPollMs: 60_000, now: () => 1_000_000 });
    const call = async () => {
      const k = loop.kick();
      f.finishOne();
      await k;
    };
    await call();
    await call();
    ask = 9;
    await call();
    await call();
    await loop.close();
    const reg = (a: number) => ({ id: 'w1', concurrency: 10, ttlMs: 180_000, ask: a });
    expect(f.registrations).toEqual([reg(5), undefined, reg(9), undefined]);
  });
});

describe('fair dispatch loop: registrations carried by claims', () => {
  const reg = (a: number) => ({ id: 'w1', concurrency: 10, ttlMs: 180_000, ask: a });
  const setup = () => {
    const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
    const state = { ask: 5, clock: 1_000_000 };
    const loop = createDispatchLoop({ scheduler: f.scheduler, worker: { id: 'w1', concurrency: 10, ask: () => state.ask }, safetyPollMs: 60_000, now: () => state.clock });
    return { f, state, loop };
  };

  it('hands a due registration to one claim, then none until the ask moves or the renewal is due', async () => {
    const { f, state, loop } = setup();
    expect(loop.takeRegistration()).toEqual(reg(5));
    expect(loop.takeRegistration()).toBeUndefined();
    state.ask = 9;
    expect(loop.takeRegistration()).toEqual(reg(9));
    expect(loop.takeRegistration()).toBeUndefined();
    // The renewal of the same ask says so (the script then writes only its expiry).
    state.clock += 30_000;
    expect(loop.takeRegistration()).toEqual({ ...reg(9), renewal: true });
    // A claim that failed gives it back: the next call carries it again, whole (whether it ran is unknown).
    loop.registrationLost();
    expect(loop.takeRegistration()).toEqual(reg(9));
    await loop.close();
    expect(f.calls).toBe(0);
  });

  it('a moved ask a claim carried costs no dispatch call; one no claim carried is registered by a dispatch after the grace', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    try {
      const { f, state, loop } = setup();
      expect(loop.takeRegistration()).toEqual(reg(5));
      state.ask = 9;
      loop.askMoved();
      expect(loop.takeRegistration()).toEqual(reg(9));
      await vi.advanceTimersByTimeAsync(ASK_MOVE_GRACE_MS * 2);
      expect(f.calls).toBe(0);
      state.ask = 14;
      loop.askMoved();
      await vi.advanceTimersByTimeAsync(ASK_MOVE_GRACE_MS - 1);
      expect(f.calls).toBe(0);
      await vi.advanceTimersByTimeAsync(1);
      expect(f.calls).toBe(1);
      expect(f.registrations).toEqual([reg(14)]);
      f.finishOne();
      await loop.close();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('fair dispatch loop: wake-ups and lost registrations', () => {
  it('a later wake-up handed over while the timer waits for an earlier one is kept, and dispatches at its time', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
    try {
      const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
      const loop = createDispatchLoop({ scheduler: f.scheduler, safetyPollMs: 60_000 });
      const now = Date.now();
      // Redis hands each wake time to one caller: both came here (a claim's reply, then a release's).
      loop.absorb({ promoted: [], nowMs: now, nextWakeMs: now + 100, more: false });
      loop.absorb({ promoted: [], nowMs: now, nextWakeMs: now + 300, more: false });
      await vi.advanceTimersByTimeAsync(110);
      expect(f.calls).toBe(1);
      f.finishOne();
      await vi.advanceTimersByTimeAsync(100);
      expect(f.calls).toBe(1);
      await vi.advanceTimersByTimeAsync(100);
      expect(f.calls).toBe(2);
      f.finishOne();
      // An earlier one arriving after: the timer's own time is kept behind it.
      const t = Date.now();
      loop.absorb({ promoted: [], nowMs: t, nextWakeMs: t + 200, more: false });
      loop.absorb({ promoted: [], nowMs: t, nextWakeMs: t + 50, more: false });
      await vi.advanceTimersByTimeAsync(60);
      expect(f.calls).toBe(3);
      f.finishOne();
      await vi.advanceTimersByTimeAsync(150);
      expect(f.calls).toBe(4);
      f.finishOne();
      await loop.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it('a moved ask whose claim failed is registered by a dispatch after the grace, unless a claim carries it first', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    try {
      const f = fakeScheduler(() => ({ promoted: [], nowMs: Date.now(), more: false }));
      const state = { ask: 5 };
      const loop = createDispatchLoop({ scheduler: f.scheduler, worker: { id: 'w1', concurrency: 10, ask: () => state.ask }, safetyPollMs: 60_000, now: () => 1_000_000 });
      const reg = (a: number) => ({ id: 'w1', concurrency: 10, ttlMs: 180_000, ask: a });
      expect(loop.takeRegistration()).toEqual(reg(5));
      state.ask = 9;
      loop.askMoved();
      // A claim takes it, and fails: given back.
      expect(loop.takeRegistration()).toEqual(reg(9));
      loop.registrationLost();
      await vi.advanceTimersByTimeAsync(ASK_MOVE_GRACE_MS + 1);
      expect(f.calls).toBe(1);
      expect(f.registrations).toEqual([reg(9)]);
      f.finishOne();
      // Lost again, then carried by the next claim within the grace: no dispatch of its own.
      expect(loop.takeRegistration()).toBeUndefined();
      loop.registrationLost();
      expect(loop.takeRegistration()).toEqual(reg(9));
      await vi.advanceTimersByTimeAsync(ASK_MOVE_GRACE_MS * 2);
      expect(f.calls).toBe(1);
      await loop.close();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('fair gate', () => {
  /** An attempt of job `id` as BullMQ's completed / failed events hand it over (a Job object of its own per fetch). */
  const attemptOf = (id: string, attemptsStarted: number) => ({ id, attemptsStarted });
  const logger = { warn: () => {}, debug: () => {} } as unknown as Logger;
  const dispatched: DispatchResult = { promoted: ['next'], nowMs: 5, more: false, nextWakeMs: 90 };
  type Release = (ids: string[], opts?: { dispatch?: boolean; correct?: ChargeCorrection[] }) => Promise<{ freed: number; due: boolean; dispatched?: DispatchResult }>;
  type Claim = (id: string, progress?: string, opts?: { refill?: boolean; release?: string[]; correct?: ChargeCorrection[] }) => Promise<{ held: boolean; cancelled: boolean; dispatched?: DispatchResult }>;
  type EntryOf = Parameters<typeof createFairGate>[0]['entryOf'];
  const gateWith = (release: Release, claim: Claim = async () => ({ held: true, cancelled: false }), correctionBatchMs = 0, entryOf: EntryOf = () => ({ jobId: 'x', orgId: 'o', model: 'm', estTokens: 0 })) => {
    const kicks = { n: 0 };
    const swept = { n: 0 };
    // Whether the loop wants this process's next release to sweep (its last sweep half a poll old).
    const sweepDue = { value: true };
    const absorbed: DispatchResult[] = [];
    // The loop's registration due (taken once) and the registrations given back.
    const registration: { due?: DispatchingWorker; lost: number } = { lost: 0 };
    const calls: { reparked: string[]; reparkAttempts: Array<number | undefined>; release: Array<{ dispatch?: boolean; correct?: ChargeCorrection[] } | undefined>; released: string[][]; claim: Array<{ refill?: boolean; release?: string[]; correct?: ChargeCorrection[]; register?: DispatchingWorker } | undefined> } = { reparked: [], reparkAttempts: [], release: [], released: [], claim: [] };
    const gate = createFairGate({
      scheduler: {
        release: (ids, opts) => (calls.release.push(opts), calls.released.push(ids), release(ids, opts)),
        claim: (id, progress, opts) => (calls.claim.push(opts), claim(id, progress, opts)),
        enqueue: async () => ({ promoted: [], skipped: [], stored: 0, nowMs: 0, more: false }),
        repark: async (id, _at, _reason, attempt) => (calls.reparked.push(id), calls.reparkAttempts.push(attempt), true),
        blockModel: async () => {},
        takeRequest: async () => ({ allowed: true, msBeforeNext: 0, redisTimeMs: 0 }),
        giveBackRequest: async () => {},
      },
      loop: { kick: async () => void kicks.n++, absorb: (r) => void absorbed.push(r), takeRegistration: () => { const r = registration.due; registration.due = undefined; return r; }, registrationLost: () => void registration.lost++, askMoved: () => {}, swept: () => void swept.n++, sweepDue: () => sweepDue.value, close: async () => {} },
      entryOf,
      logger,
      correctionBatchMs,
    });
    return { gate, kicks, swept, sweepDue, absorbed, calls, registration };
  };

  it('a release dispatches in its own call when due: the loop takes in its result (wake-up), no extra dispatch', async () => {
    const idle = gateWith(async () => ({ freed: 1, due: false }));
    idle.gate.finished(attemptOf('a', 1));
    await idle.gate.close();
    expect(idle.calls.release).toEqual([{ dispatch: true }]);
    expect({ kicks: idle.kicks.n, absorbed: idle.absorbed }).toEqual({ kicks: 0, absorbed: [] });
    // It swept what was due, as the loop's safety poll would: the loop is told (a failed one tells nothing, below).
    expect(idle.swept.n).toBe(1);
    const busy = gateWith(async () => ({ freed: 1, due: true, dispatched }));
    busy.gate.finished(attemptOf('a', 1));
    await busy.gate.close();
    expect({ kicks: busy.kicks.n, absorbed: busy.absorbed }).toEqual({ kicks: 0, absorbed: [dispatched] });
    const failing = gateWith(async () => {
      throw new Error('redis down');
    });
    failing.gate.finished(attemptOf('a', 1));
    await failing.gate.close();
    expect(failing.kicks.n).toBe(1);
    expect(failing.swept.n).toBe(0);
  });

  it("a release within half a poll of this process's last sweep looks only for an active lane, and does not count as a sweep", async () => {
    const g = gateWith(async () => ({ freed: 1, due: false }));
    g.sweepDue.value = false;
    g.gate.finished(attemptOf('a', 1));
    await g.gate.close();
    expect(g.calls.release).toEqual([{ dispatch: true, sweep: false }]);
    // The loop's poll is not skipped on its account.
    expect(g.swept.n).toBe(0);
  });

  it("a retry waits out its backoff parked; one noted for an attempt whose failure BullMQ never recorded does not turn the next attempt's completion into a retry", async () => {
    const g = gateWith(async () => ({ freed: 1, due: false }));
    // The backoff strategy and the 'failed' event get the same Job object, the attempt's.
    const r = attemptOf('r', 3);
    g.gate.retryDelay(r, 1000);
    // The attempt that ended (its attemptsStarted) goes with the repark: only that attempt's parked job is moved.
    g.gate.finished(r);
    // The backoff strategy ran for 's', then BullMQ could not record the failure (no 'failed' event); the lease
    // sweep laned it again and its next attempt (a Job object of its own) runs here.
    g.gate.retryDelay(attemptOf('s', 1), 1000);
    const s2 = attemptOf('s', 2);
    expect(await g.gate.admit(s2 as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0], 'token')).toBe('run');
    g.gate.finished(s2);
    await g.gate.close();
    await vi.waitFor(() => expect(g.kicks.n).toBe(1), POLL);
    expect({ reparked: g.calls.reparked, attempts: g.calls.reparkAttempts, released: g.calls.released }).toEqual({ reparked: ['r'], attempts: [3], released: [['s']] });
  });

  it('a claim asks for a refill; what it dispatched (already promoted) reaches the loop', async () => {
    const job = { id: 'j1' } as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const ok = gateWith(async () => ({ freed: 0, due: false }), async () => ({ held: true, cancelled: false, dispatched }));
    expect(await ok.gate.admit(job, 'token')).toBe('run');
    expect(ok.calls.claim).toEqual([{ refill: true }]);
    expect(ok.absorbed).toEqual([dispatched]);
    expect(ok.kicks.n).toBe(0);
    const quiet = gateWith(async () => ({ freed: 0, due: false }));
    expect(await quiet.gate.admit(job, 'token')).toBe('run');
    expect({ absorbed: quiet.absorbed, kicks: quiet.kicks.n }).toEqual({ absorbed: [], kicks: 0 });
  });

  it('a claim that comes before the release batch is sent carries it; a failed claim leaves it to a release of its own', async () => {
    const job = { id: 'j1' } as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const carried = gateWith(async () => ({ freed: 0, due: false }));
    carried.gate.finished(attemptOf('a', 1));
    carried.gate.finished(attemptOf('b', 1));
    expect(await carried.gate.admit(job, 'token')).toBe('run');
    await carried.gate.close();
    expect(carried.calls.claim).toEqual([{ refill: true, release: ['a', 'b'] }]);
    expect(carried.calls.released).toEqual([]);
    const failing = gateWith(async () => ({ freed: 2, due: false }), async () => {
      throw new Error('redis down');
    });
    failing.gate.finished(attemptOf('a', 1));
    await expect(failing.gate.admit(job, 'token')).rejects.toThrow('redis down');
    await failing.gate.close();
    expect(failing.calls.released).toEqual([['a']]);
  });

  it("a claim carries the loop's due registration; a failed claim gives it back", async () => {
    const job = { id: 'j1' } as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const w = { id: 'w1', concurrency: 10, ttlMs: 30_000, ask: 12 };
    const ok = gateWith(async () => ({ freed: 0, due: false }));
    ok.registration.due = w;
    expect(await ok.gate.admit(job, 'token')).toBe('run');
    expect(await ok.gate.admit(job, 'token')).toBe('run');
    expect(ok.calls.claim).toEqual([{ refill: true, register: w }, { refill: true }]);
    expect(ok.registration.lost).toBe(0);
    const failing = gateWith(async () => ({ freed: 0, due: false }), async () => {
      throw new Error('redis down');
    });
    failing.registration.due = w;
    await expect(failing.gate.admit(job, 'token')).rejects.toThrow('redis down');
    expect(failing.registration.lost).toBe(1);
  });

  it('charge corrections, summed per org and model for a while, ride on the next claim, else on a release, else go alone', async () => {
    const job = { id: 'j1' } as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const onClaim = gateWith(async () => ({ freed: 0, due: false }));
    onClaim.gate.correct('o1', 'm', { orgTokens: -100, modelTokens: -100 });
    onClaim.gate.correct('o1', 'm', { orgTokens: 30, modelTokens: 30 });
    onClaim.gate.correct('o2', 'm', { orgTokens: 500, modelTokens: 0 });
    onClaim.gate.correct('o3', 'm', { orgTokens: 0, modelTokens: 0 });
    expect(await onClaim.gate.admit(job, 'token')).toBe('run');
    await onClaim.gate.close();
    expect(onClaim.calls.claim).toEqual([{ refill: true, correct: [{ org: 'o1', model: 'm', orgDelta: -70, modelDelta: -70, requests: 0 }, { org: 'o2', model: 'm', orgDelta: 500, modelDelta: 0, requests: 0 }] }]);
    expect(onClaim.calls.release).toEqual([]);
    // No claim comes: the job's own release carries them.
    const onRelease = gateWith(async () => ({ freed: 1, due: false }));
    onRelease.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
    onRelease.gate.finished(attemptOf('a', 1));
    await onRelease.gate.close();
    expect(onRelease.calls.release).toEqual([{ dispatch: true, correct: [{ org: 'o1', model: 'm', orgDelta: 10, modelDelta: 10, requests: 0 }] }]);
    expect(onRelease.calls.released).toEqual([['a']]);
    // Summed for a while first: a claim right after the charge does not carry it yet.
    const fresh = gateWith(async () => ({ freed: 0, due: false }), undefined, 60_000);
    fresh.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
    expect(await fresh.gate.admit(job, 'token')).toBe('run');
    expect(fresh.calls.claim).toEqual([{ refill: true }]);
    // Neither a claim nor a release comes (the job lost its lock): sent on their own once the longest wait is over.
    await vi.waitFor(() => expect(fresh.calls.release).toEqual([{ dispatch: true, correct: [{ org: 'o1', model: 'm', orgDelta: 10, modelDelta: 10, requests: 0 }] }]), POLL);
    expect(fresh.calls.released).toEqual([[]]);
    const alone = gateWith(async () => ({ freed: 0, due: false }));
    alone.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
    await vi.waitFor(() => expect(alone.calls.release).toEqual([{ dispatch: true, correct: [{ org: 'o1', model: 'm', orgDelta: 10, modelDelta: 10, requests: 0 }] }]), POLL);
    expect(alone.calls.released).toEqual([[]]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));
  it('a flush whose finished job a claim already carried sends no corrections on their own: the next claim takes them', async () => {
    vi.useFakeTimers();
    try {
      const jobOf = (id: string) => ({ id }) as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
      const g = gateWith(async () => ({ freed: 1, due: false }), undefined, 100);
      expect(await g.gate.admit(jobOf('a'), 'token')).toBe('run');
      g.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
      await vi.advanceTimersByTimeAsync(99);
      // 'a' finishes and the next job's claim takes its release: its corrections are 99 ms old, not due yet.
      g.gate.finished(attemptOf('a', 1));
      expect(await g.gate.admit(jobOf('b'), 'token')).toBe('run');
      expect(g.calls.claim.at(-1)).toEqual({ refill: true, release: ['a'] });
      // The flush queued by the finish runs a moment later, when they are due: nothing left to release, so no
      // call of its own (the clock moves first, then the queued turn runs; the 250 ms timer is not due).
      vi.setSystemTime(Date.now() + 2);
      await vi.advanceTimersByTimeAsync(1);
      expect(g.calls.release).toEqual([]);
      expect(await g.gate.admit(jobOf('c'), 'token')).toBe('run');
      expect(g.calls.claim.at(-1)).toEqual({ refill: true, correct: [{ org: 'o1', model: 'm', orgDelta: 10, modelDelta: 10, requests: 0 }] });
      await vi.advanceTimersByTimeAsync(1000);
      expect(g.calls.release).toEqual([]);
      await g.gate.close();
    } finally {
      vi.useRealTimers();
    }
  });
  it('the release of the last job running here carries corrections at once: no claim would carry them within the window', async () => {
    const jobOf = (id: string) => ({ id }) as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const c10 = [{ org: 'o1', model: 'm', orgDelta: 10, modelDelta: 10, requests: 0 }];
    // A 60 s window: only "nothing else runs here" can send them with the release.
    const g = gateWith(async () => ({ freed: 1, due: false }), undefined, 60_000);
    const [a, b] = [jobOf('a'), jobOf('b')];
    expect(await g.gate.admit(a, 'token')).toBe('run');
    expect(await g.gate.admit(b, 'token')).toBe('run');
    g.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
    // 'b' still runs: its own finish (or the next claim) is coming, so the corrections keep summing. Each attempt's
    // processor ends (`ended`) before BullMQ records its outcome (`finished`).
    g.gate.ended(a);
    g.gate.finished(attemptOf('a', 1));
    await vi.waitFor(() => expect(g.calls.released).toEqual([['a']]), POLL);
    expect(g.calls.release).toEqual([{ dispatch: true }]);
    g.gate.ended(b);
    g.gate.finished(attemptOf('b', 1));
    await vi.waitFor(() => expect(g.calls.released).toEqual([['a'], ['b']]), POLL);
    expect(g.calls.release).toEqual([{ dispatch: true }, { dispatch: true, correct: c10 }]);
    // A job deferred (parked) is no longer running either.
    const d = gateWith(async () => ({ freed: 1, due: false }), undefined, 60_000);
    const parked = { id: 'p', attemptsStarted: 2, moveToDelayed: async () => {} } as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const q = jobOf('q');
    expect(await d.gate.admit(parked, 'token')).toBe('run');
    expect(await d.gate.admit(q, 'token')).toBe('run');
    await d.gate.defer(parked, 'token', 1000, 'quota');
    // Its repark names the attempt that parked it.
    expect({ reparked: d.calls.reparked, attempts: d.calls.reparkAttempts }).toEqual({ reparked: ['p'], attempts: [2] });
    d.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
    d.gate.ended(q);
    d.gate.finished(attemptOf('q', 1));
    await vi.waitFor(() => expect(d.calls.release).toEqual([{ dispatch: true, correct: c10 }]), POLL);
    await Promise.all([g.gate.close(), d.gate.close()]);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));
  it("an attempt is forgotten when its processor ends, whatever BullMQ records: a second attempt of the same id (fetched again after a stall) still counts as running", async () => {
    const jobOf = (id: string) => ({ id }) as unknown as Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const c10 = [{ org: 'o1', model: 'm', orgDelta: 10, modelDelta: 10, requests: 0 }];
    const g = gateWith(async () => ({ freed: 1, due: false }), undefined, 60_000);
    // Two fetches of 'x' run here at once (the first lost its lock), beside 'y'.
    const [stalled, again, y] = [jobOf('x'), jobOf('x'), jobOf('y')];
    for (const j of [stalled, again, y]) expect(await g.gate.admit(j, 'token')).toBe('run');
    expect(g.gate.runningAttempts()).toBe(3);
    // The stalled attempt ends; BullMQ refuses its outcome (no finished): it runs no more all the same.
    g.gate.ended(stalled);
    expect(g.gate.runningAttempts()).toBe(2);
    g.gate.correct('o1', 'm', { orgTokens: 10, modelTokens: 10 });
    g.gate.ended(y);
    g.gate.finished(attemptOf('y', 1));
    // 'x' still runs here (its second attempt): its claim or its release is coming, the corrections keep summing.
    await vi.waitFor(() => expect(g.calls.released).toEqual([['y']]), POLL);
    expect(g.calls.release).toEqual([{ dispatch: true }]);
    g.gate.ended(again);
    g.gate.finished(attemptOf('x', 2));
    await vi.waitFor(() => expect(g.calls.released).toEqual([['y'], ['x']]), POLL);
    expect(g.calls.release).toEqual([{ dispatch: true }, { dispatch: true, correct: c10 }]);
    expect(g.gate.runningAttempts()).toBe(0);
    await g.gate.close();
  }, waitsTimeout(POLL.timeout, POLL.timeout));
  it('gives a dispatch\'s charge back once for a job that held a slot and called no model; nothing for one that held none, or a batch lane', async () => {
    type AgentJob = Parameters<ReturnType<typeof createFairGate>['admit']>[0];
    const jobOf = (id: string) => ({ id }) as unknown as AgentJob;
    const g = gateWith(
      async () => ({ freed: 0, due: false }),
      async (id) => ({ held: id !== 'unheld', cancelled: id === 'cancelled' }),
      0,
      (job) => ({ jobId: job.id!, orgId: 'o', model: job.id === 'batch' ? 'm@batch' : 'm', estTokens: 300 }),
    );
    const hit = jobOf('hit');
    expect(await g.gate.admit(hit, 'token')).toBe('run');
    g.gate.refundUnspent(hit);
    g.gate.refundUnspent(hit);
    // Cancelled with its slot held: it never calls the model, the admission itself gives the charge back.
    expect(await g.gate.admit(jobOf('cancelled'), 'token')).toBe('cancelled');
    // No slot (no lock token: run as is): its dispatch charged nothing.
    const unheld = jobOf('unheld');
    expect(await g.gate.admit(unheld, undefined)).toBe('run');
    g.gate.refundUnspent(unheld);
    const batch = jobOf('batch');
    expect(await g.gate.admit(batch, 'token')).toBe('run');
    g.gate.refundUnspent(batch);
    await g.gate.close();
    const sent = [...g.calls.claim, ...g.calls.release].flatMap((c) => c?.correct ?? []);
    const total = sent.reduce((a, c) => ({ orgDelta: a.orgDelta + c.orgDelta, modelDelta: a.modelDelta + c.modelDelta, requests: a.requests + c.requests }), { orgDelta: 0, modelDelta: 0, requests: 0 });
    expect(sent.every((c) => c.org === 'o' && c.model === 'm')).toBe(true);
    expect(total).toEqual({ orgDelta: -600, modelDelta: -600, requests: -2 });
  });
});
