import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnAgentq, type AgentqProcess } from '../helpers/processes.js';
import { UNTHROTTLED, figure, processEnv, riskJob, runRows, sleep, waitFor } from '../helpers/faults.js';
import { startStack, type Stack } from '../helpers/stack.js';

const LOCK_MS = 2000;
const STALLED_MS = 1000;

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

  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, LOCK_DURATION_MS: String(LOCK_MS), STALLED_INTERVAL_MS: String(STALLED_MS) });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    env = processEnv(s, { LOCK_DURATION_MS: String(LOCK_MS), STALLED_INTERVAL_MS: String(STALLED_MS), SHUTDOWN_GRACE_MS: '10000', WORKER_CONCURRENCY: '4' });
  });
  afterAll(async () => {
    for (const c of children) {
      if (c.child.exitCode === null && c.child.signalCode === null) {
        c.kill('SIGCONT');
        c.kill('SIGKILL');
      }
    }
    await queue?.close();
    await s?.close();
  });

  const start = async () => {
    const p = spawnAgentq('worker', env);
    children.push(p);
    await p.waitForLog((l) => l.msg === 'worker started', 40_000);
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
    s.emulator.script({ latencyMs: 5000, match: { promptIncludes: 'sigkill-' }, times: 4 });
    victim = await start();
    const ids = await Promise.all(['sigkill-a', 'sigkill-b', 'sigkill-c', 'sigkill-d'].map(enqueue));
    await waitFor('4 jobs active in the victim', async () => (await queue.getActiveCount()) === 4 && generateCalls() >= 4);
    rescuer = await start();
    const killedAt = Date.now();
    victim.kill('SIGKILL');
    expect(await victim.exited).toBeNull();
    const done = await waitFor('all 4 jobs completed', async () => ((await Promise.all(ids.map(stateOf))).every((st) => st === 'completed') ? Date.now() : undefined), 30_000);
    figure('SIGKILL: time from kill to the last of 4 jobs completed by the other worker (ms)', done - killedAt);
    const rows = await runRows(s.infra.db.pool, ids);
    for (const id of ids) expect(rows.get(id)).toEqual({ completed: 1, failed: 0 });
    expect(completedBy(rescuer, ids)).toBe(4);
    for (const id of ids) expect((await Job.fromId(queue, id))!.returnvalue.success).toBe(true);
    figure('SIGKILL: LLM calls for 4 jobs (killed calls are repeated)', generateCalls());
  }, 90_000);

  it('SIGSTOP past the lock duration, then SIGCONT: the job completes once; the resumed worker cannot complete it again', async () => {
    s.emulator.resetCalls();
    // The rescuer (idle) becomes the victim: it takes this job, which sits 3 s at the emulator.
    s.emulator.script({ latencyMs: 3000, match: { promptIncludes: 'sigstop-' }, times: 1 });
    const stopped = rescuer;
    const id = await enqueue('sigstop-a');
    await waitFor('the job in flight at the emulator', async () => (await stateOf(id)) === 'active' && generateCalls() === 1);
    const other = await start();
    // Roles for the next test, set before any assertion can fail.
    rescuer = other;
    victim = stopped;
    const stoppedAt = Date.now();
    stopped.kill('SIGSTOP');
    const done = await waitFor('the job completed by the other worker', async () => ((await stateOf(id)) === 'completed' ? Date.now() : undefined), 30_000);
    figure('SIGSTOP: time from stop to completion by the other worker (ms)', done - stoppedAt);
    const result = (await Job.fromId(queue, id))!.returnvalue;
    stopped.kill('SIGCONT');
    // The resumed worker finishes its (3 s) call, then tries to complete a job whose lock it lost.
    await waitFor('the resumed worker to give up the job', () => stopped.lines.some((l) => /Missing lock for job .*moveToFinished/.test(String(l.err ?? ''))), 15_000).catch(() => undefined);
    await sleep(1500);
    const job = (await Job.fromId(queue, id))!;
    expect(await job.getState()).toBe('completed');
    expect(job.returnvalue).toEqual(result);
    expect((await runRows(s.infra.db.pool, [id])).get(id)).toEqual({ completed: 1, failed: 0 });
    expect(completedBy(other, [id])).toBe(1);
    expect(stopped.lines.some((l) => l.msg === 'job moved to the dead-letter queue' && l.jobId === id)).toBe(false);
    const dlq = await s.app.inject({ method: 'GET', url: '/v1/dlq', headers: s.auth });
    expect(dlq.json().entries.map((e: { id: string }) => e.id)).not.toContain(id);
    // BullMQ refuses the late completion: the lock is the rescuer's now.
    const late = stopped.lines.filter((l) => l.jobId === id || String(l.err ?? '').includes(id)).map((l) => `${l.msg} ${l.err ?? ''}`.trim());
    expect(late.some((m) => /Missing lock for job .*moveToFinished/.test(m))).toBe(true);
    figure('SIGSTOP: what the resumed worker logged about the job', late);
    figure('SIGSTOP: LLM calls for the job (the stopped call plus the rescuer)', generateCalls());
  }, 90_000);

  it('SIGTERM under load: in-flight jobs finish, none stalls, the process exits 0', async () => {
    s.emulator.resetCalls();
    s.emulator.script({ latencyMs: 600, match: { promptIncludes: 'sigterm-' }, times: 24 });
    const markers = Array.from({ length: 24 }, (_, i) => `sigterm-${i}`);
    const linesBefore = victim.lines.length;
    const ids: string[] = [];
    for (const m of markers) ids.push(await enqueue(m));
    // Both live workers (4 each) are busy; the one to stop is the rescuer of the previous test.
    await waitFor('8 jobs active', async () => (await queue.getActiveCount()) === 8, 20_000, 20);
    const termAt = Date.now();
    rescuer.kill('SIGTERM');
    const code = await rescuer.exited;
    figure('SIGTERM: time from signal to exit with 4 jobs in flight (ms)', Date.now() - termAt);
    expect(code).toBe(0);
    const drained = completedBy(rescuer, ids);
    expect(drained).toBeGreaterThanOrEqual(4);
    await waitFor('all 24 jobs completed', async () => (await Promise.all(ids.map(stateOf))).every((st) => st === 'completed'), 30_000, 100);
    const rows = await runRows(s.infra.db.pool, ids);
    for (const id of ids) expect(rows.get(id)).toEqual({ completed: 1, failed: 0 });
    for (const id of ids) expect((await Job.fromId(queue, id))!.stalledCounter ?? 0).toBe(0);
    expect(victim.lines.slice(linesBefore).filter((l) => l.msg === 'stalled job moved back to wait')).toEqual([]);
    expect(completedBy(rescuer, ids) + completedBy(victim, ids)).toBe(24);
    expect(generateCalls()).toBe(24);
    figure('SIGTERM: jobs the stopping worker finished after the signal or before', drained);
    victim.kill('SIGTERM');
    expect(await victim.exited).toBe(0);
  }, 90_000);
});
