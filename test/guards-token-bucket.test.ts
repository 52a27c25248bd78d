import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRateLimitGuard } from '../src/workers/guards/rate-limit-guard.js';
import { OpenCircuitError } from '../src/shared/limits/circuit-breaker.js';
import { createTokenBuckets, type TokenBuckets } from '../src/shared/limits/token-bucket.js';
import { DelayJobError } from '../src/workers/middleware.js';
import { guardContext, okResult } from './helpers/guard-context.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { nodeArgsFor } from './helpers/transpiled.js';
import { exitGuard, exitWithin, lineWithin } from './helpers/processes.js';
import { waitsTimeout } from './helpers/wait.js';

/** How long a bucket process is given to start and connect (four at once, on a busy machine) and say `ready`. */
const READY_MS = 120_000;
/** How long a bucket process is given, once told to go, for its 2 s of takes, its tally and its exit. */
const TALLY_MS = 60_000;

const root = fileURLToPath(new URL('..', import.meta.url));

interface Tally {
  admitted: number;
  refused: number;
  firstMs: number;
  lastMs: number;
  lastAdmittedMs: number;
}

/** Every bucket process started, for afterAll: one whose siblings failed to start still waits for its `go`. */
const started: ChildProcess[] = [];

/** Starts a bucket worker process and resolves once it is connected and waiting for `go`. */
async function startWorker(env: Record<string, string>, name: string): Promise<{ child: ChildProcess; result: Promise<Tally> }> {
  const child = spawn(process.execPath, nodeArgsFor('test/fixtures/guard-bucket-worker.ts'), {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  started.push(child);
  // 'close': the process has ended and its whole output has been read.
  const closed = once(child, 'close');
  const lines = createInterface({ input: child.stdout! });
  const it = lines[Symbol.asyncIterator]();
  // Bounded: a process stuck before its line (Redis not answering, a start that hangs) is killed and named.
  const first = await lineWithin({ child, exited: closed }, it, READY_MS, `${name}'s ready line`);
  if (first !== 'ready') throw new Error(`${name} did not start: ${first}`);
  const result = (async () => {
    const next = await it.next();
    await closed;
    return JSON.parse(String(next.value)) as Tally;
  })();
  return { child, result };
}

describe('token buckets', () => {
  let redis: Redis;
  let buckets: TokenBuckets;

  beforeAll(() => {
    redis = new Redis(redisUrl());
    buckets = createTokenBuckets({ redis, prefix: randomPrefix() });
  });
  afterAll(async () => {
    for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await redis.quit();
  });

  it('admits at most C + r*T over four processes, and nearly that much while saturated', { timeout: waitsTimeout(exitGuard(READY_MS), exitGuard(TALLY_MS)) }, async () => {
    const capacity = 20;
    const refillPerSec = 40;
    const env = { REDIS_URL: redisUrl(), PREFIX: randomPrefix(), BUCKET: 'shared', CAPACITY: String(capacity), REFILL_PER_SEC: String(refillPerSec), DURATION_MS: '2000' };
    const workers = await Promise.all(Array.from({ length: 4 }, (_, i) => startWorker(env, `bucket process ${i + 1}`)));
    for (const w of workers) w.child.stdin!.end('go\n');
    // Each one's tally once its 2 s are up, and its exit: bounded, a process that hangs is killed and named.
    const tallies = await Promise.all(workers.map((w, i) => exitWithin({ child: w.child, exited: w.result }, TALLY_MS, `bucket process ${i + 1}'s tally and exit`)));

    const admitted = tallies.reduce((n, t) => n + t.admitted, 0);
    const first = Math.min(...tallies.map((t) => t.firstMs));
    const lastAdmitted = Math.max(...tallies.map((t) => t.lastAdmittedMs));
    const last = Math.max(...tallies.map((t) => t.lastMs));
    // Decision times are Redis TIME floored to the ms: one ms of slack on each end.
    const upper = capacity + (refillPerSec * (lastAdmitted - first + 2)) / 1000;
    const saturated = capacity + (refillPerSec * (last - first)) / 1000;
    console.log(`bucket: ${admitted} admitted by 4 processes in ${last - first} ms (bound ${upper.toFixed(1)})`);
    // Every process met a refusal: the bucket was saturated throughout.
    expect(tallies.every((t) => t.refused > 0)).toBe(true);
    expect(admitted).toBeLessThanOrEqual(upper);
    expect(admitted).toBeGreaterThanOrEqual(0.9 * saturated);
  });

  it('takes from every bucket or from none', async () => {
    const a = { key: 'a', capacity: 5, refillPerSec: 0.001, cost: 1 };
    const b = { key: 'b', capacity: 2, refillPerSec: 0.001, cost: 1 };
    expect((await buckets.take([a, b])).allowed).toBe(true);
    expect((await buckets.take([a, b])).allowed).toBe(true);
    const refused = await buckets.take([a, b]);
    expect(refused).toMatchObject({ allowed: false, limitedBy: 'b' });
    // 1 token at 0.001/s: ~1000 s.
    expect(refused.msBeforeNext).toBeGreaterThan(900_000);
    // The refused call left `a` untouched: 3 of its 5 tokens remain.
    expect((await buckets.take([{ ...a, cost: 3 }])).allowed).toBe(true);
    expect((await buckets.take([a])).allowed).toBe(false);
  });

  it('reports the longest wait among the buckets that lack room', async () => {
    const slow = { key: 'slow', capacity: 1, refillPerSec: 0.01, cost: 1 };
    const fast = { key: 'fast', capacity: 1, refillPerSec: 1, cost: 1 };
    await buckets.take([slow, fast]);
    const r = await buckets.take([slow, fast]);
    expect(r.limitedBy).toBe('slow');
    expect(r.msBeforeNext).toBeGreaterThan(90_000);
  });

  it('adjust charges and refunds, clamped to [-capacity, capacity]', async () => {
    const bucket = { key: 'adj', capacity: 10, refillPerSec: 1, cost: 10 };
    expect((await buckets.take([bucket])).allowed).toBe(true);
    expect((await buckets.take([{ ...bucket, cost: 5 }])).allowed).toBe(false);
    expect(await buckets.adjust('adj', 10, 1, -5)).toBeGreaterThanOrEqual(5);
    expect((await buckets.take([{ ...bucket, cost: 5 }])).allowed).toBe(true);
    // Overcharge: the level goes into debt but not below -capacity.
    expect(await buckets.adjust('adj', 10, 1, 1000)).toBe(-10);
    const r = await buckets.take([{ ...bucket, cost: 1 }]);
    expect(r.allowed).toBe(false);
    expect(r.msBeforeNext).toBeGreaterThan(10_000);
    expect(r.msBeforeNext).toBeLessThanOrEqual(11_000);
    // Refund past capacity: full, which is a missing key.
    expect(await buckets.adjust('adj', 10, 1, -1000)).toBe(10);
    expect((await buckets.take([bucket])).allowed).toBe(true);
  });

  it('admits a cost above capacity on a full bucket and makes the next take wait for the debt', async () => {
    const big = { key: 'big', capacity: 10, refillPerSec: 1, cost: 15 };
    expect((await buckets.take([big])).allowed).toBe(true);
    const r = await buckets.take([{ ...big, cost: 1 }]);
    expect(r.allowed).toBe(false);
    expect(r.msBeforeNext).toBeGreaterThan(5_000);
  });

  it('sets a TTL so a bucket disappears once it would be full again', async () => {
    const prefix = randomPrefix();
    const own = createTokenBuckets({ redis, prefix });
    await own.take([{ key: 'ttl', capacity: 100, refillPerSec: 10, cost: 50 }]);
    const ttl = await redis.pttl(`${prefix}:tb:ttl`);
    // 50 tokens at 10/s refill in 5 s; the key lives about that long.
    expect(ttl).toBeGreaterThan(4_000);
    expect(ttl).toBeLessThanOrEqual(6_000);
  });

  it('stores a level exactly: a whole one as an integer, a fractional one to full precision', async () => {
    // The take writes a whole level with `%d` and any other with `%.17g`; every reader parses the same digits.
    const prefix = randomPrefix();
    const own = createTokenBuckets({ redis, prefix });
    const bucket = { capacity: 10, refillPerSec: 1 };
    await own.take([{ ...bucket, key: 'whole', cost: 1 }, { ...bucket, key: 'half', cost: 0.5 }, { ...bucket, key: 'third', cost: 1 / 3 }]);
    const read = (key: string) => redis.hmget(`${prefix}:tb:${key}`, 'tokens', 'ts');
    const [whole, half, third] = await Promise.all([read('whole'), read('half'), read('third')]);
    expect(whole[0]).toBe('9');
    expect(half[0]).toBe('9.5');
    // 14 digits (tostring) would read back as 9.6666666666667, not this double.
    expect(Number(third[0])).toBe(10 - 1 / 3);
    // One write time for the three, in ms to the microsecond.
    expect(whole[1]).toMatch(/^\d+\.\d{3}$/);
    expect(new Set([whole[1], half[1], third[1]]).size).toBe(1);
  });

  it('adjust stores a whole level as an integer and its expiry in whole ms, as the take does', async () => {
    // The adjust parses by arithmetic and formats a whole level with `%d`: the digits `%.17g` gave it before.
    const prefix = randomPrefix();
    const own = createTokenBuckets({ redis, prefix });
    // A charge on a missing (full) bucket: 10 - 3, whole.
    expect(await own.adjust('whole', 10, 1, 3)).toBe(7);
    const [tokens, ts] = await redis.hmget(`${prefix}:tb:whole`, 'tokens', 'ts');
    expect(tokens).toBe('7');
    expect(ts).toMatch(/^\d+\.\d{3}$/);
    // 3 tokens at 1/s refill in 3 s, plus the 1 s margin.
    const ttl = await redis.pttl(`${prefix}:tb:whole`);
    expect(ttl).toBeGreaterThan(3_000);
    expect(ttl).toBeLessThanOrEqual(4_000);
    // A second charge reads that level back (its refill since is fractional): to full precision, never rounded.
    expect(await own.adjust('whole', 10, 1, 1 / 3)).toBe(6);
    const level = Number(await redis.hget(`${prefix}:tb:whole`, 'tokens'));
    expect(level).toBeGreaterThan(6.66);
    expect(level).toBeLessThan(6.8);
    expect(level % 1).not.toBe(0);
  });

  it("take and adjust store an empty bucket, a debt and levels past 1e15 in the digits `%.17g` gives them", async () => {
    // Both write a level with fmt (includes/number-format.lua): `%d` only where it writes what `%.17g` does. Each
    // bucket is missing (full), so its level is its capacity less the cost or delta, to the bit.
    const prefix = randomPrefix();
    const own = createTokenBuckets({ redis, prefix });
    const read = async (key: string) => (await redis.hget(`${prefix}:tb:${key}`, 'tokens')) as string;
    const fast = 1e12; // a refill that keeps the TTL of the largest debt below 1e15 ms
    const takes: [key: string, capacity: number, cost: number, stored: string][] = [
      ['empty', 10, 10, '0'],
      ['debt', 10, 15, '-5'],
      ['debtFraction', 10, 15.5, '-5.5'],
      ['below1e15', 999_999_999_999_999, 0, '999999999999999'],
      ['at1e15', 1e15, 0, '1000000000000000'],
      ['past2p53', 2 ** 55, 1, '36028797018963968'], // 2^55 - 1 rounds to 2^55
      ['bigDebt', 1, 2e15, '-1999999999999999'],
    ];
    await own.take(takes.map(([key, capacity, cost]) => ({ key, capacity, refillPerSec: fast, cost })));
    for (const [key, , , stored] of takes) expect([key, await read(key)]).toEqual([key, stored]);
    const adjusts: [key: string, capacity: number, delta: number, stored: string][] = [
      ['aEmpty', 10, 10, '0'],
      ['aDebt', 10, 15, '-5'],
      ['aFloor', 10, 25, '-10'],
      ['aDebtFraction', 10, 12.5, '-2.5'],
      ['aThird', 10, 1 / 3, '9.6666666666666661'],
      ['aAt1e15', 2e15, 1e15, '1000000000000000'],
      ['aAtMinus1e15', 2e15, 3e15, '-1000000000000000'],
      ['aPast2p53', 2 ** 55, 8, '36028797018963960'],
    ];
    for (const [key, capacity, delta] of adjusts) await own.adjust(key, capacity, fast, delta);
    for (const [key, , , stored] of adjusts) expect([key, await read(key)]).toEqual([key, stored]);
  });

  it('rejects malformed requests before touching Redis', async () => {
    await expect(buckets.take([])).rejects.toThrow(RangeError);
    await expect(buckets.take([{ key: 'x', capacity: 0, refillPerSec: 1, cost: 1 }])).rejects.toThrow(RangeError);
    await expect(buckets.take([{ key: 'x', capacity: 1, refillPerSec: 1, cost: -1 }])).rejects.toThrow(RangeError);
  });
});

describe('rate limit guard', () => {
  let redis: Redis;
  let buckets: TokenBuckets;
  let prefix: string;

  beforeAll(() => {
    redis = new Redis(redisUrl());
    prefix = randomPrefix();
    buckets = createTokenBuckets({ redis, prefix });
  });
  afterAll(async () => {
    await redis.quit();
  });

  it('limits each org per model separately, and delays the job when a bucket is empty', async () => {
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 2, modelRpm: () => 1000, modelTpm: () => 1_000_000 } });
    const orgA = randomOrg();
    const orgB = randomOrg();
    let calls = 0;
    const next = async () => {
      calls++;
      return okResult('ok');
    };
    await guard(guardContext({ orgId: orgA }), next);
    await guard(guardContext({ orgId: orgA }), next);
    const err = await guard(guardContext({ orgId: orgA }), next).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DelayJobError);
    expect((err as DelayJobError).reason).toBe('rate_limited');
    // 2/min: the next token comes within 30 s; jitter adds at most 250 ms.
    expect((err as DelayJobError).delayMs).toBeGreaterThan(25_000);
    expect((err as DelayJobError).delayMs).toBeLessThanOrEqual(30_250);
    expect(calls).toBe(2);
    // Org B's bucket for the same model is untouched.
    await guard(guardContext({ orgId: orgB }), next);
    expect(calls).toBe(3);
  });

  it('shares the model-wide buckets between orgs', async () => {
    const model = `m-${randomOrg()}`;
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 100, modelRpm: () => 3, modelTpm: () => 1_000_000 } });
    const next = async () => okResult('ok');
    for (let i = 0; i < 3; i++) await guard(guardContext({ orgId: randomOrg(), model }), next);
    await expect(guard(guardContext({ orgId: randomOrg(), model }), next)).rejects.toBeInstanceOf(DelayJobError);
  });

  it('corrects the token bucket with real usage after the call', async () => {
    const model = `m-${randomOrg()}`;
    // 6000 tokens/min = 100 tokens/s of refill.
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 100, modelRpm: () => 100, modelTpm: () => 6000 } });
    const started = Date.now();
    await guard(guardContext({ model, estimatedTokens: 1000 }), async () => okResult('ok', { input: 2500, output: 500 }));
    const tokens = Number(await redis.hget(`${prefix}:tb:tpm:model:${model}`, 'tokens'));
    const refilled = (100 * (Date.now() - started + 50)) / 1000;
    expect(tokens).toBeGreaterThanOrEqual(3000);
    expect(tokens).toBeLessThanOrEqual(3000 + refilled);
  });

  it('sums corrections per bucket and writes them once per flush interval', async () => {
    const model = `m-${randomOrg()}`;
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 100, modelRpm: () => 100, modelTpm: () => 6000 }, correctionFlushMs: 60_000 });
    for (let i = 0; i < 3; i++) await guard(guardContext({ model, estimatedTokens: 100 }), async () => okResult('ok', { input: 900, output: 0 }));
    const key = `${prefix}:tb:tpm:model:${model}`;
    // Charged the estimates (3 x 100) but not yet corrected.
    expect(Number(await redis.hget(key, 'tokens'))).toBeGreaterThan(5000);
    await guard.flush();
    expect(Number(await redis.hget(key, 'tokens'))).toBeLessThanOrEqual(6000 - 2700 + 100);
  });

  it('hands what a call really used to the dispatcher\'s ledger: the difference for a prepaid call, all of it to the org otherwise', async () => {
    const model = `m-${randomOrg()}`;
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 100, modelRpm: () => 100, modelTpm: () => 6000 } });
    const charged: Array<[string, number, number, number]> = [];
    const charge = (m: string, d: { orgTokens: number; modelTokens: number; requests?: number }) => void charged.push([m, d.orgTokens, d.modelTokens, d.requests ?? 0]);
    const used = okResult('ok', { input: 700, output: 300 });
    // Prepaid: the dispatch charged both TPM buckets 400; the guard takes nothing and writes no bucket itself.
    await guard(guardContext({ model, prepaid: { model, charged: 400 }, charge }), async () => used);
    expect(charged).toEqual([[model, 600, 600, 0]]);
    expect(await redis.exists(`${prefix}:tb:tpm:model:${model}`, `${prefix}:tb:rpm:model:${model}`)).toBe(0);
    // Not prepaid (a fallback model): the guard charges and corrects the model's buckets itself; the org's
    // TPM bucket, which it never took from, is charged the whole usage.
    await guard(guardContext({ model, estimatedTokens: 100, charge }), async () => used);
    expect(charged[1]).toEqual([model, 1000, 0, 0]);
    expect(Number(await redis.hget(`${prefix}:tb:tpm:model:${model}`, 'tokens'))).toBeLessThanOrEqual(5000 + 100);
    // No bucket of its own to take (no model limits): the org is still charged.
    const open = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 0, modelRpm: () => 0, modelTpm: () => 0 } });
    await open(guardContext({ model, charge }), async () => used);
    expect(charged[2]).toEqual([model, 1000, 0, 0]);
    // A batch-tier job's dispatch charged nothing online: answered by its batch it charges nothing; answered
    // on the standard tier instead (its batch expired) it is charged the request and all its tokens.
    const batchPaid = { model, charged: 0 };
    await guard(guardContext({ model, tier: 'batch', prepaid: batchPaid, charge }), async () => ({ ...used, tier: 'batch' as const }));
    expect(charged[3]).toEqual([model, 0, 0, 0]);
    await guard(guardContext({ model, tier: 'batch', prepaid: batchPaid, charge }), async () => used);
    expect(charged[4]).toEqual([model, 1000, 1000, 1]);
  });

  it('refunds every bucket when an inner guard refused before any call', async () => {
    const model = `m-${randomOrg()}`;
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 1, modelRpm: () => 1, modelTpm: () => 6000 } });
    const open = new OpenCircuitError(`gemini:${model}`, 'open', Date.now() + 1000, 1000);
    await expect(guard(guardContext({ model }), () => Promise.reject(open))).rejects.toBe(open);
    // With 1 RPM the refund is the only way a second call can pass now.
    await expect(guard(guardContext({ model }), async () => okResult('ok'))).resolves.toMatchObject({ success: true });
  });

  it('hands a prepaid charge back unspent when the call is refused before it is sent, and keeps it spent once sent', async () => {
    const model = `m-${randomOrg()}`;
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 1, modelRpm: () => 1, modelTpm: () => 6000 } });
    const prepaid = { model, charged: 400 };
    const open = new OpenCircuitError(`gemini:${model}`, 'open', Date.now() + 1000, 1000);
    const refused = guardContext({ model, prepaid });
    await expect(guard(refused, () => Promise.reject(open))).rejects.toBe(open);
    // Back on the context: the processor gives the dispatch's charge back when the attempt ends.
    expect(refused.prepaid).toBe(prepaid);
    // A call that was sent and failed spent it.
    const failed = guardContext({ model, prepaid });
    await expect(guard(failed, () => Promise.reject(new Error('503 from the model')))).rejects.toThrow('503');
    expect(failed.prepaid).toBeUndefined();
  });

  it('keeps the estimate charged when the call itself failed', async () => {
    const model = `m-${randomOrg()}`;
    const guard = createRateLimitGuard({ buckets, limits: { perOrgModelRpm: () => 1, modelRpm: () => 100, modelTpm: () => 1_000_000 } });
    await expect(guard(guardContext({ model }), () => Promise.reject(new Error('upstream 500')))).rejects.toThrow('upstream 500');
    await expect(guard(guardContext({ model }), async () => okResult('ok'))).rejects.toBeInstanceOf(DelayJobError);
  });
});
