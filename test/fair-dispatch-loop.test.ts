import { describe, expect, it, vi } from 'vitest';
import { createDispatchLoop } from '../src/shared/fair/dispatch-loop.js';
import type { DispatchResult } from '../src/shared/fair/fair-scheduler.js';

/** A scheduler stand-in whose dispatch calls finish only when the test says so. */
function fakeScheduler(result: () => DispatchResult) {
  const pending: Array<() => void> = [];
  let calls = 0;
  return {
    get calls() {
      return calls;
    },
    finishOne() {
      pending.shift()?.();
    },
    scheduler: {
      dispatch: () => {
        calls++;
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
});
