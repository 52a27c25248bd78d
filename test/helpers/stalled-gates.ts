import { Worker, type WorkerOptions } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll } from 'vitest';
import { defaultRegistry } from '../../src/shared/agents/registry.js';
import { QUEUE } from '../../src/shared/core/queue-names.js';
import type { Logger } from '../../src/shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../../src/shared/core/types.js';
import type { DispatchLoop } from '../../src/shared/fair/dispatch-loop.js';
import { fairEntryOf } from '../../src/shared/queue/fair-entry.js';
import { createFairGate } from '../../src/workers/fair-gate.js';
import { createStalledCheck } from './stalled-check.js';
import { startStack, type Stack } from './stack.js';

const quiet = { warn: () => {}, debug: () => {} } as unknown as Logger;
const noLoop = { kick: async () => {}, absorb: () => {}, takeRegistration: () => undefined, registrationLost: () => {}, askMoved: () => {}, swept: () => {}, sweepDue: () => true, close: async () => {} } as unknown as DispatchLoop;

/**
 * For tests of jobs whose lock lapses (stalled-job accounting): a stack without a worker of its own, a BullMQ worker
 * that fetches but never runs a processor (the test does by hand what the processor does, so every order happens
 * every time; `settings` are its BullMQ worker settings, e.g. a backoff strategy), BullMQ's stalled check on demand, and real fair gates without a dispatch loop. Registers the suite's
 * beforeAll / afterAll; read the fields inside tests.
 */
export function useStalledGates(settings: WorkerOptions['settings'] = {}) {
  const h = {} as {
    s: Stack;
    checks: ReturnType<typeof createStalledCheck>;
    connection: Redis;
    worker: Worker<AgentJobData, AgentResult>;
  };
  beforeAll(async () => {
    h.s = await startStack({}, { worker: false });
    h.checks = createStalledCheck(h.s.cfg.REDIS_URL!, h.s.cfg.QUEUE_PREFIX);
    h.connection = new Redis(h.s.cfg.REDIS_URL!, { maxRetriesPerRequest: null });
    h.worker = new Worker(QUEUE.agent, null, { connection: h.connection, prefix: h.s.cfg.QUEUE_PREFIX, autorun: false, settings });
  });
  afterAll(async () => {
    await h.worker?.close(true);
    h.connection?.disconnect();
    await h.checks?.close();
    await h.s?.close();
  });
  const agents = defaultRegistry();
  const cell = () => h.s.runtime.deps.cells[0];
  return {
    get s() {
      return h.s;
    },
    get worker() {
      return h.worker;
    },
    cell,
    /** A worker's fair gate, as the worker service builds it (no loop: nothing here dispatches on its own). */
    gate: (over: Partial<Parameters<typeof createFairGate>[0]> = {}) =>
      createFairGate({ scheduler: cell().scheduler, loop: noLoop, logger: quiet, entryOf: (job) => fairEntryOf(job, agents, { fast: h.s.cfg.GEMINI_MODEL_FAST, pro: h.s.cfg.GEMINI_MODEL_PRO }), ...over }),
    /** BullMQ's stalled check moves the job, fetched and its lock gone, back to the wait list. */
    stall: (id: string) => h.checks.stall(cell().queue, id),
  };
}
