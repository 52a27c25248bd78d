import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SHUTDOWN_MARGIN_MS, SIGNAL_REPEAT_MS } from '../../src/app/shutdown.js';
import { freePort, startRedisServer, type RedisServerHandle } from '../../src/shared/infra/redis/redis-server.js';
import { figure, processEnv, riskJob } from '../helpers/faults.js';
import { startModelGate, type ModelGate } from '../helpers/model-gate.js';
import { spawnAgentq, stopProcess, type AgentqProcess } from '../helpers/processes.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { within } from '../helpers/wait.js';

const GRACE_MS = 3000;
const STRAY_REJECTION = fileURLToPath(new URL('../fixtures/stray-rejection.ts', import.meta.url));
const STRAY_SECRET = 'stray-fixture-secret-token';

/**
 * The process's way out is bounded whatever Redis does: `src/main.ts worker` as a real process, a Redis of its
 * own that the test stops, real signals. Each wait is on the child's exit, bounded by what the shutdown promises
 * (SHUTDOWN_GRACE_MS + SHUTDOWN_MARGIN_MS), never a sleep.
 */
describe('shutdown bounds', () => {
  let s: Stack;
  let gate: ModelGate;
  let redis: RedisServerHandle | undefined;
  const children: AgentqProcess[] = [];

  beforeAll(async () => {
    s = await startStack();
    gate = await startModelGate(s.emulator.url);
  });
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c, 5000)));
    await gate?.close();
    await redis?.stop();
    await s?.close();
  });

  const start = async (extra: Record<string, string>, opts: { preload?: string } = {}) => {
    const p = spawnAgentq('worker', processEnv(s, { SHUTDOWN_GRACE_MS: String(GRACE_MS), ...extra }), undefined, opts);
    children.push(p);
    await p.waitForLog((l) => l.msg === 'worker started', 180_000);
    return p;
  };
  const msgs = (p: AgentqProcess) => p.lines.map((l) => l.msg);

  it('Redis gone at SIGTERM: the worker exits within its grace plus the margin, every close done (none left waiting on Redis)', async () => {
    redis = await startRedisServer();
    const worker = await start({ REDIS_URL: redis.url, REDIS_AUTOSTART: 'false' });
    await redis.stop();
    // The process has seen Redis go: its connections are reconnecting, holding what they were sent, the BullMQ
    // workers' of the flows and maintenance queues included (each reports its connections' errors).
    await worker.waitForLog((l) => l.msg === 'flows worker error', 30_000);
    await worker.waitForLog((l) => l.msg === 'maintenance worker error', 30_000);
    const termAt = Date.now();
    worker.kill('SIGTERM');
    const code = await within(worker.exited, GRACE_MS + SHUTDOWN_MARGIN_MS, 'the worker to exit after SIGTERM with Redis down');
    figure('Redis down: time from SIGTERM to exit (ms)', Date.now() - termAt);
    // Its own end, not the deadline's: every close returned, none failed.
    expect(msgs(worker)).not.toContain('shutdown deadline passed; exiting with closes still pending');
    expect(worker.lines.find((l) => l.msg === 'stopped')).toMatchObject({ exitCode: 0 });
    expect(code).toBe(0);
  }, 240_000);

  it('API and worker in one process, its long polls\' event streams open: Redis gone at SIGTERM, the same bounded exit', async () => {
    redis = await startRedisServer();
    const p = spawnAgentq('all', processEnv(s, { REDIS_URL: redis.url, REDIS_AUTOSTART: 'false', SHUTDOWN_GRACE_MS: String(GRACE_MS), PORT: String(await freePort()) }));
    children.push(p);
    const address = String((await p.waitForLog((l) => l.msg === 'API listening', 180_000)).address);
    const call = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${address}${path}`, { method, headers: { ...s.auth, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
      return { status: res.status, json: (await res.json()) as Record<string, unknown> };
    };
    // A job's and a flow's long polls: each opens its queue's event stream (a blocking connection BullMQ owns).
    const job = await call('POST', '/v1/jobs', riskJob('all-role-a'));
    expect((await call('GET', `/v1/jobs/${String(job.json.id)}?waitMs=30000`)).json.state).toBe('completed');
    const flow = await call('POST', '/v1/flows/parallel', { tasks: [riskJob('all-role-b')] });
    expect((await call('GET', `/v1/flows/${String(flow.json.id)}?waitMs=30000`)).json.state).toBe('completed');
    await redis.stop();
    await p.waitForLog((l) => l.msg === 'flows worker error', 30_000);
    await p.waitForLog((l) => l.msg === 'maintenance worker error', 30_000);
    const termAt = Date.now();
    p.kill('SIGTERM');
    const code = await within(p.exited, GRACE_MS + SHUTDOWN_MARGIN_MS, 'the process to exit after SIGTERM with Redis down');
    figure('Redis down, role all: time from SIGTERM to exit (ms)', Date.now() - termAt);
    expect(msgs(p)).not.toContain('shutdown deadline passed; exiting with closes still pending');
    expect(p.lines.find((l) => l.msg === 'stopped')).toMatchObject({ exitCode: 0 });
    expect(code).toBe(0);
  }, 240_000);

  it('a second SIGTERM while the drain waits for a job exits at once, non-zero, naming what was still pending', async () => {
    // The job's model call is held open: the drain would wait its whole (long) grace period for it.
    const held = gate.hold('second-signal-', 1);
    const worker = await start({ GOOGLE_GEMINI_BASE_URL: gate.url, LLM_TIMEOUT_MS: '600000', SHUTDOWN_GRACE_MS: '120000' });
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob('second-signal-a') });
    expect(res.statusCode).toBe(202);
    await within(held.arrived, 60_000, 'the job mid-call in the worker');
    worker.kill('SIGTERM');
    const first = await worker.waitForLog((l) => l.msg === 'shutting down: no new jobs, finishing in-flight ones', 30_000);
    // The second signal comes later than a repeat of the first would (the scenario's length, not a wait for some state).
    const firstAt = Date.parse(String(first.time));
    await vi.waitFor(() => expect(Date.now() - firstAt).toBeGreaterThan(SIGNAL_REPEAT_MS), { timeout: SIGNAL_REPEAT_MS + 10_000, interval: 20 });
    const secondAt = Date.now();
    worker.kill('SIGTERM');
    const code = await within(worker.exited, SHUTDOWN_MARGIN_MS, 'the worker to exit on the second SIGTERM');
    figure('second SIGTERM: time to exit (ms)', Date.now() - secondAt);
    expect(code).toBe(1);
    const forced = worker.lines.find((l) => l.msg === 'second signal: exiting now, without waiting for the shutdown');
    expect(forced).toMatchObject({ signal: 'SIGTERM' });
    expect(forced!.pending).toContain('agent worker 0');
    expect(msgs(worker)).not.toContain('stopped');
    held.release();
  }, 240_000);

  it('an unhandled rejection is logged as JSON with its secrets redacted, then drains through the shutdown and exits 1', async () => {
    const worker = await start({ STRAY_REJECTION_SECRET: STRAY_SECRET }, { preload: STRAY_REJECTION });
    worker.kill('SIGUSR2');
    const code = await within(worker.exited, GRACE_MS + SHUTDOWN_MARGIN_MS, 'the worker to exit after the stray rejection');
    expect(code).toBe(1);
    const fatal = worker.lines.find((l) => l.msg === 'unhandledRejection: shutting down');
    expect(fatal).toMatchObject({ level: 60, kind: 'unhandledRejection', err: { message: 'stray rejection from the test fixture', token: '[redacted]' } });
    // Drained as a signal would: every close ran, and the exit says something went wrong.
    expect(worker.lines.find((l) => l.msg === 'stopped')).toMatchObject({ exitCode: 1 });
    expect(JSON.stringify(worker.lines) + worker.stderr()).not.toContain(STRAY_SECRET);
  }, 240_000);
});
