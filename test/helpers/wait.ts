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
