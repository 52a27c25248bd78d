import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startRedisServer, type RedisServerHandle } from '../../src/shared/infra/redis/redis-server.js';
import { UNTHROTTLED, figure, processEnv, riskJob, runRows } from '../helpers/faults.js';
import { duplicateKeys } from '../helpers/log-lines.js';
import { spawnAgentq, stopProcess, type AgentqProcess } from '../helpers/processes.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * Redis goes away and comes back on the same port with its data (a dedicated redis-server with AOF in a
 * temp dir), while an API (this process) and a worker process keep running: nothing is restarted.
 */
describe('Redis outages', () => {
  let dir: string;
  let redis: RedisServerHandle;
  let s: Stack;
  let worker: AgentqProcess;
  let queue: Queue;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentq-redis-outage-'));
    redis = await startRedisServer({ dir });
    s = await startStack({ ...UNTHROTTLED, REDIS_URL: redis.url });
    queue = new Queue('agent-jobs', { connection: { url: redis.url, maxRetriesPerRequest: null }, prefix: s.cfg.QUEUE_PREFIX });
    queue.on('error', () => {});
    worker = spawnAgentq('worker', processEnv(s, { WORKER_CONCURRENCY: '4', LOCK_DURATION_MS: '3000', STALLED_INTERVAL_MS: '1000' }));
    await worker.waitForLog((l) => l.msg === 'worker started', 180_000);
  });
  afterAll(async () => {
    await stopProcess(worker);
    await queue?.close();
    await s?.close();
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const post = (payload: object) => s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: payload as Record<string, unknown> });

  async function outage(label: string, downMs: number) {
    s.emulator.resetCalls();
    s.emulator.script({ latencyMs: 400, match: { promptIncludes: `${label}-` }, times: -1 });
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      // A third are delayed, due during or after the outage.
      const delayMs = i % 3 === 0 ? 500 + i * 250 : undefined;
      const res = await post({ ...riskJob(`${label}-${i}`), ...(delayMs ? { options: { delayMs } } : {}) });
      expect(res.statusCode).toBe(202);
      ids.push(res.json().id);
    }
    await vi.waitFor(async () => expect(await queue.getActiveCount()).toBeGreaterThan(0), { timeout: 30_000, interval: 20 });
    const pid = worker.child.pid;
    const output = { stdout: worker.stdoutLines.length, stderr: worker.stderr().length };
    // The API runs in this process: anything it prints goes through console.error (BullMQ's fallback, ioredis's).
    const printed = vi.spyOn(console, 'error');

    const downAt = Date.now();
    await redis.stop();
    const t503 = performance.now();
    const refused = await post(riskJob(`${label}-refused`));
    const answeredIn = performance.now() - t503;
    expect(refused.statusCode).toBe(503);
    expect(refused.headers['content-type']).toMatch(/application\/json/);
    expect(refused.json().error).toBeTruthy();
    const ready = await s.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(503);
    const read = await s.app.inject({ method: 'GET', url: `/v1/jobs/${ids[0]}`, headers: s.auth });
    expect(read.statusCode).toBe(503);
    figure(`${label}: API answer to POST /v1/jobs while Redis is down (ms, status ${refused.statusCode})`, answeredIn);

    // The outage lasts downMs (the scenario's length, not a wait for some state).
    await vi.waitFor(() => expect(Date.now() - downAt).toBeGreaterThanOrEqual(downMs), { timeout: downMs + 10_000, interval: 20 });
    redis = await startRedisServer({ port: redis.port, dir });
    const upAt = Date.now();
    const accepted = await vi.waitFor(
      async () => {
        const res = await post(riskJob(`${label}-after`));
        expect(res.statusCode, 'the API to accept jobs again').toBe(202);
        return res.json().id as string;
      },
      { timeout: 30_000, interval: 50 },
    );
    figure(`${label}: API accepting jobs again after Redis came back (ms)`, Date.now() - upAt);
    ids.push(accepted);

    const done = await vi.waitFor(
      async () => {
        const jobs = await Promise.all(ids.map((id) => Job.fromId(queue, id)));
        const states = await Promise.all(jobs.map((j) => j?.getState()));
        expect(states, 'every queued and delayed job to complete').toEqual(ids.map(() => 'completed'));
        return Date.now();
      },
      { timeout: 90_000, interval: 200 },
    );
    figure(`${label}: last job completed after Redis came back (ms)`, done - upAt);
    expect(worker.child.exitCode).toBeNull();
    expect(worker.child.pid).toBe(pid);
    const rows = await runRows(s, ids);
    for (const id of ids) expect(rows.get(id)!.completed).toBe(1);
    const calls = s.emulator.calls().filter((c) => c.kind === 'generate').length;
    figure(`${label}: LLM calls for ${ids.length} jobs (repeats are jobs whose completion was lost with the connection)`, calls);
    figure(`${label}: failed attempts recorded`, [...rows.values()].reduce((n, r) => n + r.failed, 0));
    s.emulator.clearFaults();
    printed.mockRestore();
    expectOnlyLogLines(output, Date.now() - downAt, label);
    expect(printed.mock.calls.map((c) => String(c[0])), 'console.error calls in the API process').toEqual([]);
    return { answeredIn };
  }

  /**
   * What the worker wrote since `from` is JSON log lines only (before, BullMQ printed a raw ECONNREFUSED stack
   * trace to stderr for each reconnect attempt of a queue without an error listener), none naming a field twice,
   * and each BullMQ object's error at most once per 10 s (before, "maintenance worker error" came ~10 times a second).
   */
  function expectOnlyLogLines(from: { stdout: number; stderr: number }, elapsedMs: number, label: string) {
    expect(worker.stderr().slice(from.stderr), 'what the worker wrote to stderr').toBe('');
    const written = worker.stdoutLines.slice(from.stdout);
    const perError = new Map<string, number>();
    for (const text of written) {
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        throw new Error(`the worker wrote a line that is not JSON: ${text}`);
      }
      expect(duplicateKeys(text), text).toEqual([]);
      if (line.source) {
        const key = `${String(line.msg)} | ${String(line.source)} | ${String(line.err)}`;
        perError.set(key, (perError.get(key) ?? 0) + 1);
      }
    }
    figure(`${label}: BullMQ error lines the worker logged, by message, object and error`, Object.fromEntries(perError));
    expect(perError.size, 'BullMQ error lines during the outage').toBeGreaterThan(0);
    for (const [key, n] of perError) expect(n, key).toBeLessThanOrEqual(1 + Math.floor(elapsedMs / 10_000));
  }

  it('a short outage (2 s): 503 while down, every job completes after, no process restarted', async () => {
    await outage('short', 2000);
  }, 180_000);

  it('a long outage (10 s, longer than the worker drain delay): the same', async () => {
    await outage('long', 10_000);
  }, 180_000);
});
