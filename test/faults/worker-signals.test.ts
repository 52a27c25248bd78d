import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { exitGuard, exitWithin, KILLED_EXIT_MS, spawnAgentq, stopProcess, type AgentqProcess } from '../helpers/processes.js';
import { SHUTDOWN_MARGIN_MS } from '../../src/app/shutdown.js';
import { UNTHROTTLED, figure, processEnv, riskJob, runRows } from '../helpers/faults.js';
import { startModelGate, type ModelGate } from '../helpers/model-gate.js';
import { DEAD_LETTERED } from '../helpers/ops.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { within } from '../helpers/wait.js';

const LOCK_MS = 2000;
const STALLED_MS = 1000;
/** The drain's grace (SHUTDOWN_GRACE_MS); a worker told SIGTERM exits by it and the shutdown margin, then closes. */
const GRACE_MS = 30_000;
const DRAIN_EXIT_MS = GRACE_MS + SHUTDOWN_MARGIN_MS + KILLED_EXIT_MS;

/**
 * Workers as real OS processes (`src/main.ts worker`) receiving real signals, with a stack in this
 * process for the API and the emulator. Each scenario has a victim worker and a rescuer worker started
 * only once the victim holds the jobs, so which process ran what is never left to chance.
 */
describe('worker processes under signals', () => {
  let s: Stack;
  let queue: Queue;
  const children: AgentqProcess[] = [];
  let env: Record<string, string>;
  let gate: ModelGate;

  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, LOCK_DURATION_MS: String(LOCK_MS), STALLED_INTERVAL_MS: String(STALLED_MS) });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    gate = await startModelGate(s.emulator.url);
    env = processEnv(s, {
      LOCK_DURATION_MS: String(LOCK_MS),
      STALLED_INTERVAL_MS: String(STALLED_MS),
      // The drain's grace is a deadline on the machine's speed: the default, ample for 4 released calls on a busy machine.
      SHUTDOWN_GRACE_MS: String(GRACE_MS),
      WORKER_CONCURRENCY: '4',
      // Model calls go through the gate, which holds chosen ones open until the test releases them; a held
      // call must not time out in the worker meanwhile, however long a busy machine takes to start another.
      GOOGLE_GEMINI_BASE_URL: gate.url,
      LLM_TIMEOUT_MS: '600000',
    });
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
    await p.waitForLog((l) => l.msg === 'worker started', 180_000);
    return p;
  };
  const enqueue = async (marker: string) => {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob(marker) });
    expect(res.statusCode).toBe(202);
    return res.json().id as string;
  };
  const stateOf = async (id: string) => (await Job.fromId(queue, id))?.getState();
  const generateCalls = () => s.emulator.calls().filter((c) => c.kind === 'generate').length;
  const completedBy = (p: AgentqProcess, ids: string[]) => p.lines.filter((l) => l.msg === 'job completed' && ids.includes(l.jobId as string)).length;

  let victim: AgentqProcess;
  let rescuer: AgentqProcess;

  it('SIGKILL mid-job: another worker completes every job after the stalled interval, exactly one successful run each', async () => {
    // The victim's four calls are held open: it holds all four jobs however long the rescuer takes to start.
    const held = gate.hold('sigkill-', 4);
    victim = await start();
    const ids = await Promise.all(['sigkill-a', 'sigkill-b', 'sigkill-c', 'sigkill-d'].map(enqueue));
    await within(held.arrived, 60_000, '4 model calls from the victim');
    expect(await queue.getActiveCount()).toBe(4);
    rescuer = await start();
    const killedAt = Date.now();
    victim.kill('SIGKILL');
    expect(await exitWithin(victim, KILLED_EXIT_MS, 'the victim worker to close once SIGKILLed')).toBeNull();
    await Promise.all(ids.map((id) => rescuer.waitForLog((l) => l.msg === 'job completed' && l.jobId === id, 60_000)));
    const done = Date.now();
    figure('SIGKILL: time from kill to the last of 4 jobs completed by the other worker (ms)', done - killedAt);
    for (const id of ids) expect(await stateOf(id)).toBe('completed');
    const rows = await runRows(s, ids);
    for (const id of ids) expect(rows.get(id)).toEqual({ completed: 1, failed: 0 });
    expect(completedBy(rescuer, ids)).toBe(4);
    for (const id of ids) expect((await Job.fromId(queue, id))!.returnvalue.success).toBe(true);
    expect(held.count()).toBe(4);
    expect(generateCalls()).toBe(4);
    figure('SIGKILL: LLM calls for 4 jobs (killed calls are repeated)', held.count() + generateCalls());
  }, 180_000 + exitGuard(KILLED_EXIT_MS));

  it('SIGSTOP past the lock duration, then SIGCONT: the job completes once; the resumed worker cannot complete it again', async () => {
    s.emulator.resetCalls();
    // The rescuer (the one live worker) becomes the victim: it takes this job, whose call the gate holds.
    const held = gate.hold('sigstop-', 1);
    const stopped = rescuer;
    const id = await enqueue('sigstop-a');
    await within(held.arrived, 60_000, 'the model call of the worker to stop');
    expect(await stateOf(id)).toBe('active');
    const other = await start();
    // Roles for the next test, set before any assertion can fail.
    rescuer = other;
    victim = stopped;
    const stoppedAt = Date.now();
    stopped.kill('SIGSTOP');
    await other.waitForLog((l) => l.msg === 'job completed' && l.jobId === id, 60_000);
    figure('SIGSTOP: time from stop to completion by the other worker (ms)', Date.now() - stoppedAt);
    const result = (await Job.fromId(queue, id))!.returnvalue;
    // The stopped worker's call gets its answer; resumed, it tries to complete a job whose lock it lost, and
    // then to fail it: BullMQ refuses both. The second refusal is the last thing it does with the job.
    held.release();
    stopped.kill('SIGCONT');
    const refusals = () => stopped.lines.filter((l) => l.msg === 'worker error' && String(l.err).startsWith(`Missing lock for job ${id}.`));
    await vi.waitFor(() => expect(refusals()).toHaveLength(2), { timeout: 60_000, interval: 100 });
    const job = (await Job.fromId(queue, id))!;
    expect(await job.getState()).toBe('completed');
    expect(job.returnvalue).toEqual(result);
    expect((await runRows(s, [id])).get(id)).toEqual({ completed: 1, failed: 0 });
    expect(completedBy(other, [id])).toBe(1);
    // Neither a completion nor a failure of the stopped worker's attempt went through: nothing dead-lettered.
    expect(stopped.lines.filter((l) => l.jobId === id && (l.msg === 'job completed' || String(l.msg).startsWith(DEAD_LETTERED)))).toEqual([]);
    const dlq = await s.app.inject({ method: 'GET', url: '/v1/dlq', headers: { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` } });
    expect(dlq.json().entries.map((e: { id: string }) => e.id)).not.toContain(id);
    // BullMQ refuses the late completion: the lock is the rescuer's now.
    const late = stopped.lines.filter((l) => l.jobId === id || String(l.err ?? '').includes(id)).map((l) => `${l.msg} ${l.err ?? ''}`.trim());
    expect(late.some((m) => /Missing lock for job .*moveToFinished/.test(m))).toBe(true);
    figure('SIGSTOP: what the resumed worker logged about the job', late);
    expect(generateCalls()).toBe(2);
    figure('SIGSTOP: LLM calls for the job (the stopped call plus the rescuer)', generateCalls());
  }, 180_000);

  it('SIGTERM under load: in-flight jobs finish, none stalls, the process exits 0', async () => {
    s.emulator.resetCalls();
    // The first 8 calls are held open: both live workers (4 each) are full, and stay so until the one to stop
    // has begun shutting down, however slow the machine (a fixed call latency let jobs end before all 8 ran).
    const held = gate.hold('sigterm-', 8);
    const markers = Array.from({ length: 24 }, (_, i) => `sigterm-${i}`);
    const linesBefore = victim.lines.length;
    const ids: string[] = [];
    for (const m of markers) ids.push(await enqueue(m));
    await within(held.arrived, 60_000, '8 model calls in flight, 4 from each worker');
    expect(await queue.getActiveCount()).toBe(8);
    // The one to stop is the rescuer of the previous test.
    const termAt = Date.now();
    rescuer.kill('SIGTERM');
    await rescuer.waitForLog((l) => l.msg === 'shutting down: no new jobs, finishing in-flight ones', 60_000);
    expect(completedBy(rescuer, ids)).toBe(0);
    expect(await queue.getActiveCount()).toBe(8);
    held.release();
    const code = await exitWithin(rescuer, DRAIN_EXIT_MS, 'the stopping worker to drain its 4 jobs and exit after SIGTERM');
    figure('SIGTERM: time from signal to exit with 4 jobs in flight (ms)', Date.now() - termAt);
    expect(code).toBe(0);
    const drained = completedBy(rescuer, ids);
    expect(drained).toBe(4);
    await vi.waitFor(async () => expect(await Promise.all(ids.map(stateOf))).toEqual(ids.map(() => 'completed')), { timeout: 60_000, interval: 100 });
    const rows = await runRows(s, ids);
    for (const id of ids) expect(rows.get(id)).toEqual({ completed: 1, failed: 0 });
    for (const id of ids) expect((await Job.fromId(queue, id))!.stalledCounter ?? 0).toBe(0);
    expect(generateCalls()).toBe(24);
    figure('SIGTERM: jobs the stopping worker had in flight at the signal and finished', drained);
    victim.kill('SIGTERM');
    expect(await exitWithin(victim, DRAIN_EXIT_MS, 'the other worker to exit after SIGTERM')).toBe(0);
    // With both processes' output read to the end: every job completed in one of them, and none stalled.
    expect(completedBy(rescuer, ids) + completedBy(victim, ids)).toBe(24);
    for (const p of [victim, rescuer]) expect(p.lines.slice(p === victim ? linesBefore : 0).filter((l) => l.msg === 'stalled job moved back to wait' && ids.includes(l.jobId as string))).toEqual([]);
  }, 180_000 + exitGuard(DRAIN_EXIT_MS) * 2);
});
