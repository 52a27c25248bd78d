import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../src/shared/core/backoff.js';

describe('backoff with jitter', () => {
  it('grows exponentially between half and all of the step, capped', () => {
    const opts = { baseMs: 100, maxMs: 1000 };
    expect(backoffDelay(1, opts, () => 0)).toBe(50);
    expect(backoffDelay(1, opts, () => 1)).toBe(100);
    expect(backoffDelay(3, opts, () => 0)).toBe(200);
    expect(backoffDelay(3, opts, () => 1)).toBe(400);
    expect(backoffDelay(10, opts, () => 1)).toBe(1000);
    expect(backoffDelay(10, opts, () => 0)).toBe(500);
  });

  it('never retries sooner than the provider asked', () => {
    expect(backoffDelay(1, { baseMs: 100, maxMs: 1000, retryAfterMs: 3000 }, () => 0.5)).toBe(3000);
  });

  it('spreads retries of jobs that failed together', () => {
    const delays = new Set(Array.from({ length: 50 }, () => backoffDelay(4, { baseMs: 100, maxMs: 10_000 })));
    expect(delays.size).toBeGreaterThan(10);
  });
});
