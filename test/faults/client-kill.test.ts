import { Job, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { UNTHROTTLED, figure, processEnv, riskJob, runRows } from '../helpers/faults.js';
import { redisClientIdsOf } from '../helpers/proc-sockets.js';
import { spawnAgentq, stopProcess, type AgentqProcess } from '../helpers/processes.js';
import { startStack, type Stack } from '../helpers/stack.js';

const JOBS = 40;

/** Redis drops a worker process's connections (`CLIENT KILL`) while it is busy, three times over. */
describe('CLIENT KILL of a worker process under load', () => {
  let s: Stack;
  let worker: AgentqProcess;
  let queue: Queue;
  let control: Redis;

  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, JOB_ATTEMPTS: '3' });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    control = new Redis(s.cfg.REDIS_URL);
    worker = spawnAgentq('worker', processEnv(s, { WORKER_CONCURRENCY: '8', LOCK_DURATION_MS: '3000', STALLED_INTERVAL_MS: '1000', JOB_ATTEMPTS: '3' }));
    await worker.waitForLog((l) => l.msg === 'worker started', 180_000);
  });
  afterAll(async () => {
    await stopProcess(worker);
    control?.disconnect();
    await queue?.close();
    await s?.close();
  });

  it('completed + failed = added, nothing stuck in active, no job completed twice', async () => {
    s.emulator.script({ latencyMs: 250, match: { promptIncludes: 'ckill-' }, times: -1 });
    const ids: string[] = [];
    for (let i = 0; i < JOBS; i++) {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob(`ckill-${i}`) });
      expect(res.statusCode).toBe(202);
      ids.push(res.json().id);
    }
    const states = async () => Promise.all(ids.map(async (id) => (await Job.fromId(queue, id))?.getState()));
    await vi.waitFor(async () => expect((await states()).filter((st) => st === 'completed').length).toBeGreaterThanOrEqual(5), { timeout: 60_000, interval: 50 });

    let killed = 0;
    const firstKill = Date.now();
    const workerClients = async () => redisClientIdsOf((await control.client('LIST')) as string, worker.child.pid!);
    for (let round = 0; round < 3; round++) {
      const clientIds = await workerClients();
      expect(clientIds.length).toBeGreaterThan(0);
      for (const id of clientIds) killed += Number(await control.client('KILL', 'ID', id));
      // The next round once the worker has connected again as many times as it was cut off.
      await vi.waitFor(
        async () => {
          const now = await workerClients();
          expect(now.filter((id) => clientIds.includes(id))).toEqual([]);
          expect(now.length).toBeGreaterThanOrEqual(clientIds.length);
        },
        { timeout: 30_000, interval: 50 },
      );
    }
    figure('CLIENT KILL: worker connections killed over 3 rounds', killed);

    const done = await vi.waitFor(
      async () => {
        const st = await states();
        expect(st.filter((x) => x !== 'completed' && x !== 'failed'), 'jobs not finished').toEqual([]);
        expect(await queue.getActiveCount()).toBe(0);
        return st;
      },
      { timeout: 90_000, interval: 200 },
    );
    figure('CLIENT KILL: time from the first kill until every job finished (ms)', Date.now() - firstKill);
    const completed = done.filter((x) => x === 'completed').length;
    const failed = done.filter((x) => x === 'failed').length;
    figure('CLIENT KILL: completed / failed of added', `${completed} / ${failed} of ${JOBS}`);
    expect(completed + failed).toBe(JOBS);
    expect(await queue.getActiveCount()).toBe(0);
    expect((await queue.getJobCounts('wait', 'delayed', 'active')).active).toBe(0);
    const rows = await runRows(s, ids);
    for (const [i, id] of ids.entries()) expect(rows.get(id)!.completed).toBe(done[i] === 'completed' ? 1 : 0);
    expect(worker.child.exitCode).toBeNull();
    figure('CLIENT KILL: LLM calls for 40 jobs', s.emulator.calls().filter((c) => c.kind === 'generate').length);
    s.emulator.clearFaults();
  }, 240_000);
});
