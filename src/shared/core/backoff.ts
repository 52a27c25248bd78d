/**
 * Exponential backoff with "equal jitter": half the exponential step is fixed, half random, so retries of
 * many jobs that failed together spread out instead of stampeding the provider again at once. A provider's
 * Retry-After (carried on the error as `retryAfterMs`) is a floor, never shortened.
 */
export function backoffDelay(attemptsMade: number, opts: { baseMs: number; maxMs: number; retryAfterMs?: number }, random = Math.random): number {
  const exp = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.max(0, attemptsMade - 1));
  const delay = exp / 2 + random() * (exp / 2);
  return Math.round(Math.max(delay, opts.retryAfterMs ?? 0));
}

export const BACKOFF_TYPE = 'agentq';
