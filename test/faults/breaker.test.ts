import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createCircuitBreaker } from '../../src/shared/limits/circuit-breaker.js';
import { createRedis } from '../../src/shared/infra/redis/connection.js';
import { UNTHROTTLED, figure, riskJob, runRows } from '../helpers/faults.js';
import { startStack, type Stack } from '../helpers/stack.js';

const JOBS = 20;
const TIMEOUT_MS = 1500;
/**
 * Calls admitted while the breaker is still closed fail for real and spend an attempt; on a busy machine a
 * job's fast retry can be one of them before five failures have opened it, and then it may be a failing
 * probe too. Five attempts leave room for that; that an open breaker spends none is asserted directly:
 * every failed attempt recorded is one failed model call.
 */
const ATTEMPTS = 5;

/**
 * The model fails every call while 20 jobs run at once. The breaker (shared through Redis) must open,
 * keep the model free of calls while open, let exactly one probe through per half-open period, close
 * after a good probe, and the jobs must then complete without any reaching the dead-letter queue.
 */
describe('circuit breaker under a 100% failing model', () => {
  let s: Stack;
  let queue: Queue;
  const redis = { client: undefined as ReturnType<typeof createRedis> | undefined };

  beforeAll(async () => {
    s = await startStack(
      { ...UNTHROTTLED, WORKER_CONCURRENCY: String(JOBS), JOB_ATTEMPTS: String(ATTEMPTS), BREAKER_FAILURE_THRESHOLD: '5', BREAKER_SUCCESS_THRESHOLD: '1', BREAKER_TIMEOUT_MS: String(TIMEOUT_MS), BACKOFF_BASE_MS: '50', BACKOFF_MAX_MS: '200' },
      { worker: true },
    );
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    redis.client = createRedis(s.cfg.REDIS_URL, 'worker');
  });
  afterAll(async () => {
    redis.client?.disconnect();
    await queue?.close();
    await s?.close();
  });

  it('opens, stays closed to traffic while open, probes once per half-open, recovers, dead-letters nothing', async () => {
    const breaker = createCircuitBreaker({ redis: redis.client!, prefix: `${s.cfg.QUEUE_PREFIX}:agentq` });
    const key = `gemini:${s.cfg.GEMINI_MODEL_PRO}`;
    s.emulator.script({ status: 503, match: { kind: 'generate' }, times: -1 });
    const ids: string[] = [];
    for (let i = 0; i < JOBS; i++) {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob(`breaker-${i}`) });
      ids.push(res.json().id);
    }

    // Every open period, identified by the Redis time at which it admits a probe, sampled every 10 ms
    // from now until the jobs are done.
    const openUntil: number[] = [];
    let closedAt: number | undefined;
    let cleared: number | undefined;
    let sampling = false;
    const sample = async () => {
      if (sampling) return;
      sampling = true;
      try {
        const st = await breaker.state(key);
        if (st.state === 'open' && !openUntil.includes(st.retryAtMs)) openUntil.push(st.retryAtMs);
        // Fault lifted once one probe has failed (the second open period): the next probe succeeds.
        if (openUntil.length === 2 && cleared === undefined) {
          s.emulator.clearFaults();
          cleared = Date.now();
        }
        if (cleared !== undefined && st.state === 'closed' && closedAt === undefined) closedAt = Date.now();
      } finally {
        sampling = false;
      }
    };
    const sampler = setInterval(() => void sample(), 10);
    const states = async () => Promise.all(ids.map(async (id) => (await Job.fromId(queue, id))?.getState()));
    let doneAt: number;
    try {
      await vi.waitFor(async () => expect(await states()).toEqual(ids.map(() => 'completed')), { timeout: 120_000, interval: 100 });
      doneAt = Date.now();
    } finally {
      clearInterval(sampler);
    }
    await vi.waitFor(() => expect(sampling).toBe(false), { timeout: 10_000, interval: 5 });

    const calls = s.emulator.calls().filter((c) => c.kind === 'generate').sort((a, b) => a.at - b.at);
    expect(openUntil.length).toBeGreaterThanOrEqual(2);
    const firstOpenedAt = openUntil[0] - TIMEOUT_MS;
    figure('breaker: LLM calls of the first wave (before it opened)', calls.filter((c) => c.at < firstOpenedAt).length);
    for (const [k, until] of openUntil.entries()) {
      const openedAt = until - TIMEOUT_MS;
      // The first period may still see first-wave requests admitted while closed and sent a moment later (a
      // busy machine can delay a send by a few hundred ms); retries of 20 jobs every 50-200 ms would fill the rest.
      const slack = k === 0 ? 400 : 0;
      const duringOpen = calls.filter((c) => c.at > openedAt + slack && c.at < until);
      expect(duringOpen, `calls while open (period ${k + 1})`).toHaveLength(0);
      // Half-open: the first call after `until` is the probe; nothing else may start before it has answered.
      const probe = calls.find((c) => c.at >= until);
      expect(probe, `a probe after open period ${k + 1}`).toBeDefined();
      const probeEnd = probe!.at + (probe!.durationMs ?? 0);
      const concurrent = calls.filter((c) => c !== probe && c.at >= until && c.at <= probeEnd);
      expect(concurrent, `calls beside the probe in half-open period ${k + 1}`).toHaveLength(0);
      figure(`breaker: half-open period ${k + 1}: probe answered ${probe!.status} in ${probe!.durationMs} ms, other calls meanwhile`, concurrent.length);
    }
    expect(closedAt).toBeDefined();
    figure('breaker: open periods', openUntil.length);
    figure('breaker: from lifting the fault to closed (ms)', closedAt! - cleared!);
    figure('breaker: from lifting the fault to all 20 jobs completed (ms)', doneAt - cleared!);

    expect(await queue.getFailedCount()).toBe(0);
    const dlq = await s.app.inject({ method: 'GET', url: '/v1/dlq', headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` } });
    expect(dlq.statusCode).toBe(200);
    expect(dlq.json().entries).toHaveLength(0);
    const rows = await runRows(s, ids);
    for (const id of ids) expect(rows.get(id)!.completed).toBe(1);
    const failedAttempts = [...rows.values()].reduce((n, r) => n + r.failed, 0);
    figure('breaker: failed attempts recorded (first wave + failed probes)', failedAttempts);
    // Refusals while open are not attempts: each failed attempt is a model call that answered 503.
    expect(failedAttempts).toBe(calls.filter((c) => c.status === 503).length);
  }, 180_000);
});
