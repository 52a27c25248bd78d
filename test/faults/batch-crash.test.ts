import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBatchApi } from '../../src/shared/infra/llm/batch-api.js';
import type { BatchPoint } from '../../src/workers/ops/batch-collector.js';
import { processEnv, riskJob, runRows } from '../helpers/faults.js';
import { recordEvents } from '../helpers/fair.js';
import { exitGuard, exitWithin, stopProcess, watch, type AgentqProcess } from '../helpers/processes.js';

/** How long the victim is given to reach its kill point and kill itself once the jobs are enqueued. */
const SELF_KILL_MS = 60_000;
import { startStack, type Stack } from '../helpers/stack.js';
import { nodeArgsFor } from '../helpers/transpiled.js';

/** Three requests make a batch (the age threshold far away), so which jobs share a batch is deterministic. */
const JOBS = 3;
const BATCH_ENV = {
  BATCH_MAX_REQUESTS: String(JOBS),
  BATCH_MAX_AGE_MS: '600000',
  BATCH_POLL_MS: '50',
  // The killed process's collector lock lapses this soon; no run of this test comes near it.
  BATCH_LOCK_MS: '500',
  LOCK_DURATION_MS: '2000',
  STALLED_INTERVAL_MS: '1000',
};
const POINTS: Array<{ point: BatchPoint; created: number }> = [
  // The intent is recorded, create not called: the next process finds no batch by displayName and creates it.
  { point: 'intent-recorded', created: 0 },
  // create answered, its name not recorded: the next process adopts the batch by displayName.
  { point: 'created', created: 1 },
  // The batch succeeded, no answer handed over: the next process hands over all three.
  { point: 'succeeded', created: 1 },
  // One job's answer stored, that job not woken: the next process wakes it and hands over the others.
  { point: 'answer-stored', created: 1 },
];

interface BatchWorker extends AgentqProcess {
  send(msg: { start?: true; killAt?: BatchPoint }): void;
}

/**
 * Batch creation and hand-over across real worker processes SIGKILLed at each step of a collector run (the
 * fixture's collector kills its process at the named point): the next process submits no request twice
 * (one `batches.create` per set of jobs, counted by the emulator) and loses no job (each completes once,
 * from the batch). Each case's survivor is the next case's victim; the process after it is spawned a case
 * ahead (modules loaded, runtime not started until the kill), so no case waits for a process to load.
 */
describe('batch tier: a worker SIGKILLed at each step of a collector run', () => {
  let s: Stack;
  let env: Record<string, string>;
  const children: BatchWorker[] = [];
  /** Every job id each created batch holds, over the whole file: no request may appear in two. */
  const batchOf = new Map<string, string[]>();

  const spawnWorker = (): BatchWorker => {
    const child: ChildProcess = spawn(process.execPath, nodeArgsFor('test/fixtures/batch-worker-process.ts'), { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const p = { ...watch(child), send: (msg: object) => void child.stdin!.write(`${JSON.stringify(msg)}\n`) };
    children.push(p);
    return p;
  };
  const startWorker = async (p: BatchWorker) => {
    p.send({ start: true });
    await p.waitForLog((l) => l.ready === true, 60_000);
    return p;
  };
  let current: BatchWorker;
  /** Loading its modules while the current case runs: the next case's survivor. */
  let spare: BatchWorker;

  beforeAll(async () => {
    // API only: the agent worker and the batch collector run in the child processes.
    s = await startStack(BATCH_ENV, { worker: false });
    // A fast batch clock: a batch succeeds as soon as it is created.
    s.emulator.setBatchTiming({ pendingMs: 0, runMs: 0, expireMs: 48 * 3600_000 });
    env = processEnv(s, BATCH_ENV);
    const first = spawnWorker();
    spare = spawnWorker();
    current = await startWorker(first);
  }, 90_000);
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c, 5_000)));
    await s?.close();
  });

  it.each(POINTS)('SIGKILL at $point: one batches.create, every job completes once from the batch', async ({ point, created }) => {
    s.emulator.resetCalls();
    const batchCalls = () => s.emulator.calls().filter((c) => c.kind === 'batch');
    const victim = current;
    victim.send({ killAt: point });
    const next = spare;
    spare = spawnWorker();
    const events = await recordEvents(s);
    try {
      const tag = randomUUID().slice(0, 8);
      const ids: string[] = [];
      for (let i = 0; i < JOBS; i++) {
        const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { ...riskJob(`batchkill-${tag}-${i}`), options: { tier: 'batch' } } });
        expect(res.statusCode, res.body).toBe(202);
        ids.push(res.json().id as string);
      }

      expect(await exitWithin(victim, SELF_KILL_MS, `the victim killing itself at ${point}`)).toBeNull();
      expect(victim.child.signalCode).toBe('SIGKILL');
      expect(victim.lines.filter((l) => l.at).at(-1)).toEqual({ at: point });
      expect(batchCalls()).toHaveLength(created);
      expect(events.events.filter((e) => e.event === 'completed' && ids.includes(e.jobId))).toEqual([]);

      current = await startWorker(next);
      for (const id of ids) await events.waitFor((e) => e.jobId === id && e.event === 'completed', { timeoutMs: 30_000 });

      // Exactly one batch for the three jobs, created once, holding each of them once.
      const calls = batchCalls();
      expect(calls.map((c) => [c.status, c.requests])).toEqual([[200, JOBS]]);
      const batch = await createBatchApi({ apiKey: 'k', baseUrl: s.emulator.url }).get(calls[0].batch!);
      expect(batch.state).toBe('JOB_STATE_SUCCEEDED');
      const held = (batch.responses ?? []).map((r) => r.jobId!);
      expect(held.slice().sort()).toEqual(ids.slice().sort());
      for (const id of held) {
        expect(batchOf.get(id), `${id} in two batches`).toBeUndefined();
        batchOf.set(id, [calls[0].batch!]);
      }
      // No job ran on the standard tier; each completed once, billed at the batch tier.
      expect(s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream')).toEqual([]);
      expect(events.events.filter((e) => e.event === 'completed' && ids.includes(e.jobId))).toHaveLength(JOBS);
      const rows = await runRows(s, ids);
      expect([...rows.values()]).toEqual(ids.map(() => ({ completed: 1, failed: 0 })));
      const tiers = (await s.infra.db.pool.query<{ tier: string }>('SELECT tier FROM agent_runs WHERE job_id = ANY($1)', [ids])).rows.map((r) => r.tier);
      expect(tiers).toEqual(ids.map(() => 'batch'));
      for (const id of ids) {
        const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth })).json();
        expect([view.state, view.result?.tier]).toEqual(['completed', 'batch']);
      }
      expect(await s.runtime.deps.cells[0].batchStore.openIntents()).toEqual([]);
    } finally {
      await events.close();
    }
  }, 60_000 + exitGuard(SELF_KILL_MS));
});
