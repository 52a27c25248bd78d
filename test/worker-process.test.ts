import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, TEST_ENV, type Stack } from './helpers/stack.js';
import { exitWithin, KILLED_EXIT_MS, spawnAgentq, stopProcess, termExitMs, type AgentqProcess } from './helpers/processes.js';
import { startModelGate, type ModelGate } from './helpers/model-gate.js';
import { within } from './helpers/wait.js';
import { usageWritten } from './helpers/usage.js';

/** The workers' drain grace (SHUTDOWN_GRACE_MS); told to stop, each exits within it and the shutdown margin. */
const GRACE_MS = 10_000;
const TERM_EXIT_MS = termExitMs(GRACE_MS);

/**
 * Workers as separate OS processes (the real `src/main.ts worker`), sharing the test's Redis, PGlite
 * (through its socket) and Gemini emulator (through GOOGLE_GEMINI_BASE_URL, as a gateway would be).
 */
describe('worker processes', () => {
  let s: Stack;
  let queue: Queue;
  const children: AgentqProcess[] = [];
  let env: Record<string, string>;
  let gate: ModelGate;

  beforeAll(async () => {
    s = await startStack({ LOCK_DURATION_MS: '2000', STALLED_INTERVAL_MS: '1000' });
    gate = await startModelGate(s.emulator.url);
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    env = {
      ...TEST_ENV,
      REDIS_URL: s.cfg.REDIS_URL,
      DATABASE_URL: s.cfg.DATABASE_URL!,
      QUEUE_PREFIX: s.cfg.QUEUE_PREFIX,
      GEMINI_API_KEY: 'test-key-not-real',
      // Through the gate, so a test decides how long a call stays in flight.
      GOOGLE_GEMINI_BASE_URL: gate.url,
      LOCK_DURATION_MS: '2000',
      STALLED_INTERVAL_MS: '1000',
      SHUTDOWN_GRACE_MS: String(GRACE_MS),
      WORKER_CONCURRENCY: '4',
    };
  });
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c)));
    await gate?.close();
    await queue?.close();
    await s?.close();
  });

  const start = async () => {
    const p = spawnAgentq('worker', env);
    children.push(p);
    await p.waitForLog((l) => l.msg === 'worker started', 180_000);
    return p;
  };
  const enqueue = async (marker: string) => {
    const res = await s.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      headers: s.auth,
      payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: `${marker} Co`, industry: 'logistics' } } },
    });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  const waitDone = async (id: string) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=60000`, headers: s.auth })).json();

  it('recovers a job whose worker was SIGKILLed mid-call on another worker, with one successful run row', async () => {
    // The first call never gets an answer; the second worker's call goes through.
    const held = gate.hold('killed-mid-job', 1);
    const first = await start();
    const id = await enqueue('killed-mid-job');
    // Once the call is really in flight, kill without any chance to clean up.
    await within(held.arrived, 60_000, 'the model call of the first worker');
    expect(await queue.getActiveCount()).toBe(1);
    first.kill('SIGKILL');
    expect(await exitWithin(first, KILLED_EXIT_MS, 'the first worker to close once SIGKILLed')).toBeNull();
    const second = await start();
    const view = await waitDone(id);
    expect(view.state).toBe('completed');
    expect(view.result.success).toBe(true);
    await usageWritten(s);
    const { rows } = await s.infra.db.pool.query(`SELECT count(*)::int AS n FROM agent_runs WHERE job_id = $1 AND state = 'completed'`, [id]);
    expect(rows[0].n).toBe(1);
    expect(second.lines.some((l) => l.jobId === id && l.msg === 'job completed')).toBe(true);
    second.kill('SIGTERM');
    expect(await exitWithin(second, TERM_EXIT_MS, 'the second worker to drain and exit on SIGTERM')).toBe(0);
    expect(held.count()).toBe(1);
  }, 120_000);

  it('finishes in-flight jobs on SIGTERM and exits 0', async () => {
    const held = gate.hold('graceful-', 3);
    const worker = await start();
    const ids = await Promise.all(['graceful-a', 'graceful-b', 'graceful-c'].map(enqueue));
    // All three calls are in flight, and stay so until the worker has begun shutting down.
    await within(held.arrived, 60_000, 'three model calls in flight');
    expect(await queue.getActiveCount()).toBe(3);
    worker.kill('SIGTERM');
    await worker.waitForLog((l) => l.msg === 'shutting down: no new jobs, finishing in-flight ones', 30_000);
    for (const id of ids) expect(await (await queue.getJob(id))!.getState()).toBe('active');
    held.release();
    expect(await exitWithin(worker, TERM_EXIT_MS, 'the worker to finish its 3 jobs and exit after SIGTERM')).toBe(0);
    for (const id of ids) {
      const job = await queue.getJob(id);
      expect(await job!.getState()).toBe('completed');
    }
    expect(worker.lines.filter((l) => l.msg === 'job completed' && ids.includes(l.jobId as string))).toHaveLength(3);
  }, 120_000);
});
