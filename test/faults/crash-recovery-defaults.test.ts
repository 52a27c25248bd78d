import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exitGuard, exitWithin, KILLED_EXIT_MS, spawnAgentq, stopProcess, type AgentqProcess } from '../helpers/processes.js';
import { figure, processEnv, riskJob, runRows } from '../helpers/faults.js';
import { startModelGate, type ModelGate } from '../helpers/model-gate.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { within } from '../helpers/wait.js';
import { configSchema } from '../../src/shared/core/config.js';

/** Every variable that shapes how fast a dead worker's job is found: none may be overridden here. */
const TIMING_VARS = ['LOCK_DURATION_MS', 'STALLED_INTERVAL_MS', 'FAIR_LEASE_MS'];

/**
 * The recovery bound with the settings a user gets: two real worker processes on DEFAULT lock, stalled-check
 * and fair-lease timings; the one holding a job mid-call is SIGKILLed and the other runs it again and
 * completes it. The delay is printed as a figure (the bound is the defaults' arithmetic, see config.ts).
 */
describe('a worker SIGKILLed mid-call, default timings', () => {
  let s: Stack;
  let queue: Queue;
  let gate: ModelGate;
  let env: Record<string, string>;
  const children: AgentqProcess[] = [];

  beforeAll(async () => {
    s = await startStack();
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    gate = await startModelGate(s.emulator.url);
    env = processEnv(s, { GOOGLE_GEMINI_BASE_URL: gate.url, LLM_TIMEOUT_MS: '600000', WORKER_CONCURRENCY: '2' });
    for (const name of TIMING_VARS) delete env[name];
  });
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c, 0)));
    await gate?.close();
    await queue?.close();
    await s?.close();
  });

  const start = async () => {
    const p = spawnAgentq('worker', env);
    children.push(p);
    await p.waitForLog((l) => l.msg === 'worker started', 150_000);
    return p;
  };

  it('the job runs again on the other worker and completes once', async () => {
    // The children inherit this environment: nothing in it may change the defaults under test.
    for (const name of TIMING_VARS) {
      expect(process.env[name]).toBeUndefined();
      expect(env[name]).toBeUndefined();
    }
    const defaults = configSchema.parse({});
    figure('default timings (lock ms, stalled check ms, fair lease ms)', [defaults.LOCK_DURATION_MS, defaults.STALLED_INTERVAL_MS, defaults.FAIR_LEASE_MS]);

    // The victim's call is held open at the gate: it holds the job for as long as the test needs.
    const held = gate.hold('crash-defaults-', 1);
    const victim = await start();
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob('crash-defaults-a') });
    expect(res.statusCode).toBe(202);
    const id = res.json().id as string;
    await within(held.arrived, 60_000, 'the victim\'s model call');
    expect(await (await Job.fromId(queue, id))!.getState()).toBe('active');
    const rescuer = await start();

    const killedAt = Date.now();
    victim.kill('SIGKILL');
    expect(await exitWithin(victim, KILLED_EXIT_MS, 'the victim worker to close once SIGKILLed')).toBeNull();
    await rescuer.waitForLog((l) => l.msg === 'job completed' && l.jobId === id, 90_000);
    const completedAt = Date.now();

    // The rescuer's call is the only one that reached the emulator (the victim's died at the gate).
    const calls = s.emulator.calls().filter((c) => c.kind === 'generate');
    expect(calls).toHaveLength(1);
    figure('SIGKILL with default timings: kill -> the job running again on the other worker (model call received) (ms)', calls[0].at - killedAt);
    figure('SIGKILL with default timings: kill -> job completed by the other worker (ms)', completedAt - killedAt);

    const job = (await Job.fromId(queue, id))!;
    // processedOn: when the other worker took the job (BullMQ sets it on every move to active).
    figure('SIGKILL with default timings: kill -> the job active again on the other worker (ms)', job.processedOn! - killedAt);
    expect(await job.getState()).toBe('completed');
    expect(job.returnvalue.success).toBe(true);
    expect(job.stalledCounter).toBe(1);
    expect((await runRows(s, [id])).get(id)).toEqual({ completed: 1, failed: 0 });
    expect(rescuer.lines.filter((l) => l.msg === 'job completed' && l.jobId === id)).toHaveLength(1);
  }, 420_000 + exitGuard(KILLED_EXIT_MS));
});
