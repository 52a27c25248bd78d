import { vi } from 'vitest';

/**
 * Waiting in tests: poll with `vi.waitFor` (a callback that throws until the state holds) or await the real
 * event. `within` puts a generous upper bound on an event wait so a failure names what never happened
 * instead of ending in a bare test timeout.
 */
export async function within<T>(event: Promise<T>, guard: number | Deadline, what: string): Promise<T> {
  const ms = guardMs(guard, what);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`not within ${Math.round(ms)} ms: ${what}`)), ms)));
  try {
    return await Promise.race([event, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Options for `vi.waitFor` on a state the test's own actions lead to: generous for a busy machine, within a unit test's 60 s. */
export const POLL = { timeout: 45_000, interval: 20 } as const;

/** What a test does besides its guarded waits (the unit test's 60 s less one POLL wait). */
const TEST_WORK_MS = 15_000;

/**
 * A timeout for a test whose waits run one after another, given their hang guards (`POLL.timeout` for `until`'s
 * default): their sum and TEST_WORK_MS for the rest. Each wait may take nearly all of its guard and pass, so only
 * then does the one that never ends fail with its own message, naming what never happened, before the test's
 * timeout ends it without one. One POLL wait: the unit test's 60 s.
 */
export const waitsTimeout = (...guardsMs: number[]): number => guardsMs.reduce((sum, ms) => sum + ms, TEST_WORK_MS);

/**
 * One hang guard for a run of waits, a loop's: each wait is given what is left of `ms`, so the run as a whole ends
 * within `ms` (one entry in `waitsTimeout`). A POLL guard per wait would add up, over a loop's passes, past the test's
 * timeout: on a busy machine, passes that each passed would end in a bare test timeout. A wait that finds the budget
 * spent fails at once, naming itself and the run.
 */
export interface Deadline {
  readonly ms: number;
  /** What is left for the wait `what`; throws naming it if nothing is. */
  left(what: string): number;
}

export function deadline(ms: number, run: string): Deadline {
  const end = performance.now() + ms;
  return {
    ms,
    left(what) {
      const left = end - performance.now();
      if (left <= 0) throw new Error(`${run}: its ${ms} ms were spent, still waiting for ${what}`);
      return left;
    },
  };
}

const guardMs = (guard: number | Deadline, what: string): number => (typeof guard === 'number' ? guard : guard.left(what));

/**
 * `vi.waitFor` for a value: polls `check` until it returns something other than undefined / false and
 * returns it; the error names `what` if it never does.
 */
export async function until<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, guard: number | Deadline = POLL.timeout): Promise<T> {
  const timeoutMs = guardMs(guard, what);
  return vi
    .waitFor(
      async () => {
        const v = await check();
        if (v === undefined || v === false) throw new Error(`still waiting for ${what}`);
        return v as T;
      },
      { timeout: timeoutMs, interval: POLL.interval },
    )
    .catch((e: unknown) => {
      // vi.waitFor's own message when no check had answered yet (one hung, or a deadline's last few ms): name the wait.
      throw e instanceof Error && e.message === 'Timed out in waitFor!' ? new Error(`still waiting for ${what}: no check answered within ${Math.round(timeoutMs)} ms`) : e;
    });
}
