import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createBreakerGuard } from '../src/workers/guards/breaker-guard.js';
import { createCircuitBreaker, OpenCircuitError, type BreakerOptions, type CircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { compose, DelayJobError, type JobContext } from '../src/workers/middleware.js';
import { classify } from '../src/shared/core/outcomes.js';
import { z } from 'zod';
import { startGeminiEmulator, type GeminiEmulator } from '../dev/gemini-emulator/emulator.js';
import { createLlmClient } from '../src/shared/infra/llm/llm-client.js';
import { createRouteGuard } from '../src/workers/guards/route-guard.js';
import { createAgentCall } from '../src/workers/call-agent.js';
import { guardContext, okResult } from './helpers/guard-context.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { waitsTimeout } from './helpers/wait.js';

const clients: Redis[] = [];
let n = 0;
const uniqueKey = () => `gemini:model-${++n}`;

/** One breaker per separate ioredis client, all on the same prefix: stand-ins for separate processes. */
function breakers(count: number, opts: Omit<BreakerOptions, 'redis' | 'prefix'>, prefix = randomPrefix()): CircuitBreaker[] {
  return Array.from({ length: count }, () => {
    const redis = new Redis(redisUrl());
    clients.push(redis);
    return createCircuitBreaker({ redis, prefix, ...opts });
  });
}

/**
 * How long past its open timeout a breaker opened a moment ago may still read open: Redis round trips on a busy
 * machine. Its open timeout (100 ms here) is by Redis's clock (TIME), which the test cannot move; the bound is.
 */
const HALF_OPEN_SLACK_MS = 5_000;

/**
 * Waits for the breaker, opened for `openMs`, to pass its open timeout (it reads halfOpen: the acquire's probe is
 * due), without asserting on timing: within `openMs` and HALF_OPEN_SLACK_MS, else it fails naming the key and what
 * it read. A POLL wait (45 s) let a breaker that never left open run a 100 ms test for most of its timeout.
 */
async function waitUntilProbeable(b: CircuitBreaker, key: string, openMs: number) {
  const bound = openMs + HALF_OPEN_SLACK_MS;
  await vi.waitFor(
    async () => {
      const read = await b.state(key);
      // vi.waitFor fails with the last error thrown: this one, naming the breaker and what it read.
      if (read.state === 'open') throw new Error(`breaker ${key}, opened for ${openMs} ms, still reads open after ${bound} ms: ${JSON.stringify(read)}`);
    },
    { timeout: bound, interval: 5 },
  );
}

/** The open timeout of the breakers the half-open tests open (`quick`). */
const QUICK_OPEN_MS = 100;

const badRequest = () => Object.assign(new Error('400 invalid argument'), { retryable: false, status: 400 });

afterAll(async () => {
  await Promise.all(clients.map((c) => c.quit()));
});

describe('circuit breaker', () => {
  let a: CircuitBreaker;
  let b: CircuitBreaker;
  let c: CircuitBreaker;
  /** Same breakers, but one that opens them for QUICK_OPEN_MS only: the way to reach halfOpen quickly. */
  let quick: CircuitBreaker;

  beforeAll(() => {
    const prefix = randomPrefix();
    const opts = { failureThreshold: 4, successThreshold: 2, probeLeaseMs: 60_000 };
    // The open timeout is fixed by whoever records the opening failure; 60 s keeps "open" stable under load.
    [a, b, c] = breakers(3, { ...opts, timeoutMs: 60_000 }, prefix);
    [quick] = breakers(1, { ...opts, timeoutMs: QUICK_OPEN_MS }, prefix);
  });

  async function openBriefly(key: string) {
    for (let i = 0; i < 4; i++) await quick.onFailure(key, false);
    await waitUntilProbeable(quick, key, QUICK_OPEN_MS);
  }

  it('opens after consecutive failures summed across clients, then rejects with retryAtMs', async () => {
    const key = uniqueKey();
    const opened: string[] = [];
    a.on('open', (k: string) => opened.push(`a:${k}`));
    b.on('open', (k: string) => opened.push(`b:${k}`));
    await a.onFailure(key, false);
    await b.onFailure(key, false);
    await a.onFailure(key, false);
    expect((await c.state(key)).consecutiveFailures).toBe(3);
    expect(await c.acquire(key)).toMatchObject({ allowed: true, probe: false });
    await b.onFailure(key, false);
    expect(opened).toEqual([`b:${key}`]);

    const rejected: unknown[] = [];
    c.on('reject', (_k: string, info: unknown) => rejected.push(info));
    const r = await c.acquire(key);
    expect(r.allowed).toBe(false);
    if (r.allowed) return;
    expect(r.state).toBe('open');
    const s = await a.state(key);
    expect(s.state).toBe('open');
    expect(r.retryAtMs).toBe(s.retryAtMs);
    expect(r.msBeforeNext).toBeGreaterThan(0);
    expect(r.msBeforeNext).toBeLessThanOrEqual(60_000);
    expect(rejected).toHaveLength(1);
  });

  it('a success resets the consecutive count', async () => {
    const key = uniqueKey();
    for (let i = 0; i < 3; i++) await a.onFailure(key, false);
    await b.onSuccess(key, false);
    for (let i = 0; i < 3; i++) await c.onFailure(key, false);
    expect((await a.state(key)).state).toBe('closed');
  });

  it('grants exactly one half-open probe under 50 concurrent acquires from three clients', async () => {
    const key = uniqueKey();
    await openBriefly(key);
    const halfOpened: number[] = [];
    for (const x of [a, b, c]) x.on('halfOpen', () => halfOpened.push(1));
    const all = [a, b, c];
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => all[i % 3].acquire(key)));
    const granted = results.filter((r) => r.allowed);
    expect(granted).toEqual([{ allowed: true, probe: true }]);
    expect(halfOpened).toHaveLength(1);
    for (const r of results.filter((x) => !x.allowed)) {
      expect(r).toMatchObject({ allowed: false, state: 'halfOpen' });
    }
    expect((await b.state(key)).probeInFlight).toBe(true);
  });

  it('closes after successThreshold probe successes, each probe one at a time', async () => {
    const key = uniqueKey();
    const closed: string[] = [];
    c.on('close', (k: string) => closed.push(k));
    await openBriefly(key);
    expect(await a.acquire(key)).toEqual({ allowed: true, probe: true });
    expect((await b.acquire(key)).allowed).toBe(false);
    await a.onSuccess(key, true);
    expect((await a.state(key)).state).toBe('halfOpen');
    // The first probe reported; a second may start, from any client.
    expect(await b.acquire(key)).toEqual({ allowed: true, probe: true });
    await c.onSuccess(key, true);
    expect(closed).toEqual([key]);
    expect(await a.state(key)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    expect(await b.acquire(key)).toMatchObject({ allowed: true, probe: false });
  });

  it('a probe failure reopens it for another timeout', async () => {
    const key = uniqueKey();
    await openBriefly(key);
    expect(await b.acquire(key)).toMatchObject({ probe: true });
    await b.onFailure(key, true);
    const s = await a.state(key);
    expect(s.state).toBe('open');
    const r = await c.acquire(key);
    expect(r).toMatchObject({ allowed: false, state: 'open', retryAtMs: s.retryAtMs });
  });

  it('does not count non-retryable errors', async () => {
    const key = uniqueKey();
    for (let i = 0; i < 10; i++) await a.onError(key, false, badRequest());
    expect(await b.state(key)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    for (let i = 0; i < 4; i++) await a.onError(key, false, Object.assign(new Error('503'), { retryable: true, status: 503 }));
    expect((await b.state(key)).state).toBe('open');
  });

  it('reset closes an open breaker', async () => {
    const key = uniqueKey();
    for (let i = 0; i < 4; i++) await a.onFailure(key, false);
    await b.reset(key);
    expect(await c.acquire(key)).toMatchObject({ allowed: true, probe: false });
  });
});

describe('circuit breaker probe lease', () => {
  /** The silent prober's lease: another caller's probe is due once it lapses. */
  const LEASE_MS = 1000;
  it('lets another probe start once a silent prober lease expires', async () => {
    const [a, b] = breakers(2, { failureThreshold: 1, timeoutMs: 50, probeLeaseMs: LEASE_MS, halfOpenRetryMs: 100 });
    const key = uniqueKey();
    await a.onFailure(key, false);
    await waitUntilProbeable(a, key, 50);
    expect(await a.acquire(key)).toEqual({ allowed: true, probe: true });
    // The prober "crashes": it never reports.
    const refused = await b.acquire(key);
    expect(refused).toMatchObject({ allowed: false, state: 'halfOpen' });
    if (refused.allowed) return;
    // Refused callers are told to come back soon, not at lease expiry.
    expect(refused.msBeforeNext).toBeLessThanOrEqual(100);
    // Another caller gets the probe once the silent prober's lease has lapsed (by Redis's clock, as the open timeout).
    const again = await vi.waitFor(
      async () => {
        const r = await b.acquire(key);
        if (!r.allowed) throw new Error(`breaker ${key}: no probe for another caller ${LEASE_MS + HALF_OPEN_SLACK_MS} ms after its silent prober took its ${LEASE_MS} ms lease: ${JSON.stringify(r)}`);
        return r;
      },
      { timeout: LEASE_MS + HALF_OPEN_SLACK_MS, interval: 10 },
    );
    expect(again).toEqual({ allowed: true, probe: true });
  }, waitsTimeout(50 + HALF_OPEN_SLACK_MS, LEASE_MS + HALF_OPEN_SLACK_MS));
});

describe('circuit breaker error rate window', () => {
  it('opens when failures exceed the percentage with enough volume, though never consecutive', async () => {
    const [a, b] = breakers(2, { failureThreshold: 100, errorThresholdPercentage: 50, volumeThreshold: 10, rollingWindowMs: 60_000 });
    const key = uniqueKey();
    // Alternate success/failure from two clients: 4 of 8 failed (not above 50%), below volume anyway.
    for (let i = 0; i < 4; i++) {
      await a.onSuccess(key, false);
      await b.onFailure(key, false);
    }
    expect((await a.state(key)).state).toBe('closed');
    // 10 calls, 6 failed = 60% > 50%.
    await a.onFailure(key, false);
    await b.onSuccess(key, false);
    expect((await a.state(key)).state).toBe('closed');
    await b.onFailure(key, false);
    expect((await a.state(key)).state).toBe('open');
  });
});

describe('breaker guard', () => {
  let breaker: CircuitBreaker;
  beforeAll(() => {
    [breaker] = breakers(1, { failureThreshold: 2, timeoutMs: 60_000 });
  });

  it('records failures, rethrows them, and then refuses with OpenCircuitError', async () => {
    const model = `m-${++n}`;
    const guard = createBreakerGuard({ breaker, keyFor: (ctx) => `gemini:${ctx.model}` });
    const boom = Object.assign(new Error('500'), { retryable: true });
    let calls = 0;
    const failing = async () => {
      calls++;
      throw boom;
    };
    await expect(guard(guardContext({ model }), failing)).rejects.toBe(boom);
    await expect(guard(guardContext({ model }), failing)).rejects.toBe(boom);
    const err = await guard(guardContext({ model }), failing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenCircuitError);
    expect(err).toMatchObject({ code: 'EOPENBREAKER', state: 'open', key: `gemini:${model}` });
    expect((err as OpenCircuitError).retryAtMs).toBe((await breaker.state(`gemini:${model}`)).retryAtMs);
    expect(calls).toBe(2);
  });

  it('does not count 4xx errors, caller aborts, or refusals of inner guards', async () => {
    const model = `m-${++n}`;
    const guard = createBreakerGuard({ breaker });
    const key = `gemini:${model}`;
    await expect(guard(guardContext({ model }), () => Promise.reject(badRequest()))).rejects.toThrow('400');
    await expect(guard(guardContext({ model }), () => Promise.reject(new DelayJobError(10, 'rate_limited')))).rejects.toBeInstanceOf(DelayJobError);
    const ac = new AbortController();
    ac.abort(new Error('cancelled'));
    await expect(guard(guardContext({ model, signal: ac.signal }), () => Promise.reject(new Error('aborted')))).rejects.toThrow('aborted');
    expect(await breaker.state(key)).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    // A timeout abort does count.
    await expect(guard(guardContext({ model, signal: AbortSignal.abort(new DOMException('t', 'TimeoutError')) }), () => Promise.reject(new Error('timed out')))).rejects.toThrow();
    expect((await breaker.state(key)).consecutiveFailures).toBe(1);
    await expect(guard(guardContext({ model }), async () => okResult('fine'))).resolves.toMatchObject({ success: true });
    expect((await breaker.state(key)).consecutiveFailures).toBe(0);
  });
});

describe('breaker guard behind a route timeout (real LLM client and emulator)', () => {
  let emu: GeminiEmulator;
  beforeAll(async () => {
    emu = await startGeminiEmulator();
  });
  afterAll(async () => emu?.close());

  it("a route's timeout counts against its model's breaker: a hung model opens it", async () => {
    emu.script({ hang: true, times: -1 });
    const [breaker] = breakers(1, { failureThreshold: 2, timeoutMs: 60_000 });
    const llm = createLlmClient({ apiKey: 'test-key', baseUrl: emu.url, timeoutMs: 30_000 });
    const model = `hung-${++n}`;
    const chain = compose(
      [createRouteGuard({ routeFor: () => ({ primary: model, timeoutMs: 100 }), agents: { get: () => undefined } }), createBreakerGuard({ breaker })],
      createAgentCall({ llm }),
    );
    const action = { model: 'fast', output: z.object({ score: z.number() }), prompt: async () => ({ user: 'q' }) } as unknown as JobContext['action'];
    const codes: string[] = [];
    for (let i = 0; i < 3; i++) await chain(guardContext({ action, model })).catch((e: { code: string }) => codes.push(e.code));
    expect(codes).toEqual(['ETIMEDOUT', 'ETIMEDOUT', 'EOPENBREAKER']);
    expect(await breaker.state(`gemini:${model}`)).toMatchObject({ state: 'open' });
    // The third job never reached the model (a busy machine may time out a call before the emulator saw it).
    expect(emu.calls().length).toBeLessThanOrEqual(2);
    emu.clearFaults();
  });
});

describe('breaker guard behind a route', () => {
  it("a route's primary refused by its open breaker names that model, not the job's own, as the one to wait for", async () => {
    const [breaker] = breakers(1, { failureThreshold: 1, timeoutMs: 60_000 });
    const primary = `pro-${++n}`;
    const guard = createBreakerGuard({ breaker });
    await guard(guardContext({ model: primary }), () => Promise.reject(Object.assign(new Error('503'), { retryable: true }))).catch(() => undefined);
    const chain = compose([createRouteGuard({ routeFor: () => ({ primary }), agents: { get: () => undefined } }), guard], async () => okResult('never'));
    const ctx = guardContext({ model: 'flash-own' });
    const err = await chain(ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenCircuitError);
    expect(classify(err)).toMatchObject({ kind: 'delay', reason: 'breaker_open', model: primary });
    expect(ctx.model).toBe('flash-own');
  });
});

describe('circuit breaker round trips', () => {
  it('marks a clean closed breaker so a success needs no write, and stops once a failure is counted', async () => {
    const redis = new Redis(redisUrl());
    const breaker = createCircuitBreaker({ redis, prefix: randomPrefix(), failureThreshold: 3 });
    expect(await breaker.acquire('m')).toEqual({ allowed: true, probe: false, clean: true });
    await breaker.onFailure('m', false);
    expect(await breaker.acquire('m')).toEqual({ allowed: true, probe: false });
    await breaker.onSuccess('m', false);
    expect((await breaker.state('m')).consecutiveFailures).toBe(0);
    expect(await breaker.acquire('m')).toEqual({ allowed: true, probe: false, clean: true });
    const windowed = createCircuitBreaker({ redis, prefix: randomPrefix(), errorThresholdPercentage: 50 });
    expect(await windowed.acquire('m')).toEqual({ allowed: true, probe: false });
    await redis.quit();
  });
});

describe('circuit breaker quota mark', () => {
  it('refuses a marked key in the acquire script itself (no probe taken, no state moved) until the mark expires', async () => {
    const redis = new Redis(redisUrl());
    const breaker = createCircuitBreaker({ redis, prefix: randomPrefix(), failureThreshold: 1, timeoutMs: 60_000 });
    await breaker.markExhausted('m', 60_000);
    const refused = await breaker.acquire('m');
    expect(refused).toMatchObject({ allowed: false, state: 'exhausted' });
    expect(refused.allowed === false && refused.msBeforeNext).toBeGreaterThan(55_000);
    expect(await breaker.state('m')).toMatchObject({ state: 'closed', probeInFlight: false });
    // A short mark lapses by itself: the key is called again.
    await breaker.markExhausted('m', 1);
    await vi.waitFor(async () => expect(await breaker.acquire('m'), 'a 1 ms quota mark lapsed').toMatchObject({ allowed: true }), { timeout: 1 + HALF_OPEN_SLACK_MS, interval: 5 });
    await redis.quit();
  });
});
