import { describe, expect, it, vi } from 'vitest';
import { createDispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import type { DispatchResult } from '../src/shared/fair/fair-scheduler.js';
import { createFairGate } from '../src/workers/fair-gate.js';
import type { Logger } from '../src/shared/core/logger.js';

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
    await vi.waitFor(() => expect(f.calls).toBe(2));
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
    const loop = createDispatchLoop({ scheduler: f.scheduler, safetyPollMs: 60_000 });
    const t0 = Date.now();
    void loop.kick();
    f.finishOne();
    await vi.waitFor(() => expect(f.calls).toBe(2), { timeout: 2_000, interval: 5 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    f.finishOne();
    await vi.waitFor(() => expect(f.calls).toBe(3), { timeout: 2_000, interval: 5 });
    f.finishOne();
    await loop.close();
    expect(f.calls).toBe(3);
  });

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
    expect(f.registrations).toEqual([reg, undefined, reg, undefined]);
  });
});

describe('fair gate', () => {
  const logger = { warn: () => {}, debug: () => {} } as unknown as Logger;
  const gateWith = (release: () => Promise<{ freed: number; due: boolean }>) => {
    const kicks = { n: 0 };
    const gate = createFairGate({
      scheduler: { release, claim: async () => ({ held: true, cancelled: false }), enqueue: async () => ({ promoted: [], skipped: [], nowMs: 0, more: false }), repark: async () => true, blockModel: async () => {} },
      loop: { kick: async () => void kicks.n++, close: async () => {} },
      entryOf: () => ({ jobId: 'x', orgId: 'o', model: 'm', estTokens: 0 }),
      logger,
    });
    return { gate, kicks };
  };

  it('dispatches after a release only when the release says a dispatch is due (or failed)', async () => {
    const idle = gateWith(async () => ({ freed: 1, due: false }));
    idle.gate.finished('a');
    await idle.gate.close();
    expect(idle.kicks.n).toBe(0);
    const busy = gateWith(async () => ({ freed: 1, due: true }));
    busy.gate.finished('a');
    await busy.gate.close();
    expect(busy.kicks.n).toBe(1);
    const failing = gateWith(async () => {
      throw new Error('redis down');
    });
    failing.gate.finished('a');
    await failing.gate.close();
    expect(failing.kicks.n).toBe(1);
  });
});
