/**
 * One agentq worker process for the fairness case: the same `startRuntime` as `npm start` (through
 * bench/lib/agentq.ts), against the bench's redis-server, PGlite and emulator. Argument: JSON
 * `{ redisUrl, databaseUrl, emulatorUrl }`. Requests:
 * - `{ op: 'start', env }` starts a runtime with one agent worker (env holds QUEUE_PREFIX, WORKER_CONCURRENCY...);
 *   with `bare: true`, instead, the hand-written baseline (b): a plain BullMQ worker making the same SDK call
 *   (bench/lib/bare.ts) on the queue under env's QUEUE_PREFIX, at its WORKER_CONCURRENCY, with agentq's worker timings;
 * - `{ op: 'stop' }` closes it;
 * - `{ op: 'cpu' }` answers `process.cpuUsage()` (user + system µs) of this whole process, and the event loop's
 *   active and idle ms so far (`performance.eventLoopUtilization()`: the main thread's share);
 * - `{ op: 'gc', since }` answers this process's major (mark-compact) garbage collections since wall-clock ms `since`:
 *   `[[start, pauseMs], ...]`, start in wall-clock ms (perf_hooks `gc` entries: the pause the collector stopped the thread for).
 * Every completed job is reported, batched every 100 ms, as `{ done: [[jobId, orgId, processedOn, finishedOn, seenAt], ...] }`
 * (the worker's own timestamps: processedOn when BullMQ moved the job to active, finishedOn when it recorded the outcome,
 * seenAt when its `completed` event fired, wall-clock ms with sub-ms precision).
 */
import { constants, performance, PerformanceObserver } from 'node:perf_hooks';
import type { Job } from 'bullmq';
import { Redis } from 'ioredis';
import type { AgentJobData } from '../../src/shared/core/types.js';
import { bareLlm, bareWorker } from '../lib/bare.js';
import { parseConfig } from '../../src/shared/core/config.js';
import { createPool } from '../../src/shared/infra/db/pool.js';
import type { Infra } from '../../src/shared/infra/infra.js';
import { startAgentq, type AgentqUnderTest } from '../lib/agentq.js';
import { serveParent, toParent } from '../lib/child.js';
import { BENCH_ENV } from '../lib/infra.js';
import { wallMs } from '../lib/stats.js';

const o = JSON.parse(process.argv[2]) as { redisUrl: string; databaseUrl: string; emulatorUrl: string };
const pool = createPool(o.databaseUrl, { max: 4 });
const infra: Infra = { redisTarget: o.redisUrl, db: { pool, longPool: pool, url: o.databaseUrl, embedded: false, close: async () => {} }, close: async () => {} };
const config = (env: Record<string, string> = {}) =>
  parseConfig({ ...BENCH_ENV, REDIS_URL: o.redisUrl, DATABASE_URL: o.databaseUrl, GEMINI_API_KEY: 'bench-not-a-real-key', ...env });

let q: { close(): Promise<void> } | undefined;
/** Major GCs of this process, [wall-clock start ms, pause ms]: the latency case attributes its tail with them. */
const majorGcs: Array<[number, number]> = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if ((e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majorGcs.push([performance.timeOrigin + e.startTime, e.duration]);
  }
}).observe({ entryTypes: ['gc'] });
let done: Array<[string, string, number, number, number]> = [];
const flush = () => {
  if (done.length === 0) return;
  toParent({ done });
  done = [];
};
setInterval(flush, 100).unref();

const onCompleted = (job: Job<AgentJobData>) => done.push([job.id!, job.data.orgId, job.processedOn ?? 0, job.finishedOn ?? Date.now(), wallMs()]);

/** The baseline (b) as a worker process: BullMQ's Worker with agentq's worker timings, the bare SDK call. */
async function startBare(env: Record<string, string>): Promise<{ close(): Promise<void> }> {
  const cfg = config(env);
  const connection = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  const worker = bareWorker(connection, cfg, bareLlm(o.emulatorUrl), cfg.WORKER_CONCURRENCY);
  worker.on('completed', onCompleted);
  await worker.waitUntilReady();
  return {
    async close() {
      await worker.close();
      connection.disconnect();
    },
  };
}

serveParent(async (msg: { op: string; env?: Record<string, string>; bare?: boolean; since?: number }) => {
  if (msg.op === 'start') {
    if (q) throw new Error('already started');
    if (msg.bare) {
      q = await startBare(msg.env ?? {});
      return {};
    }
    const agentq: AgentqUnderTest = await startAgentq({ config, infra, emulatorUrl: o.emulatorUrl }, { env: msg.env, onCompleted });
    q = agentq;
    await agentq.startWorker();
    return {};
  }
  if (msg.op === 'stop') {
    await q?.close();
    q = undefined;
    flush();
    return {};
  }
  if (msg.op === 'gc') {
    const since = msg.since ?? 0;
    return majorGcs.filter(([at]) => at >= since);
  }
  if (msg.op === 'cpu') {
    const u = process.cpuUsage();
    // The main thread's busy time too: the process's CPU also counts V8's compiler and GC helper threads.
    const elu = performance.eventLoopUtilization();
    return { us: u.user + u.system, activeMs: elu.active, idleMs: elu.idle };
  }
  throw new Error(`unknown op ${msg.op}`);
});
toParent({ ready: {} });
