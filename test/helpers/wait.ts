import { vi } from 'vitest';

/**
 * Waiting in tests: poll with `vi.waitFor` (a callback that throws until the state holds) or await the real
 * event. `within` puts a generous upper bound on an event wait so a failure names what never happened
 * instead of ending in a bare test timeout.
 */
export async function within<T>(event: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms)));
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
 * `vi.waitFor` for a value: polls `check` until it returns something other than undefined / false and
 * returns it; the error names `what` if it never does.
 */
export async function until<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number = POLL.timeout): Promise<T> {
  return vi.waitFor(
    async () => {
      const v = await check();
      if (v === undefined || v === false) throw new Error(`still waiting for ${what}`);
      return v as T;
    },
    { timeout: timeoutMs, interval: POLL.interval },
  );
}
