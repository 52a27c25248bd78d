/**
 * One agentq worker process for the fairness case: the same `startRuntime` as `npm start` (through
 * bench/lib/agentq.ts), against the bench's redis-server, PGlite and emulator. Argument: JSON
 * `{ redisUrl, databaseUrl, emulatorUrl }`. Requests:
 * - `{ op: 'start', env }` starts a runtime with one agent worker (env holds QUEUE_PREFIX, WORKER_CONCURRENCY...);
 * - `{ op: 'stop' }` closes it;
 * - `{ op: 'cpu' }` answers `process.cpuUsage()` (user + system µs) of this whole process;
 * - `{ op: 'gc', since }` answers this process's major (mark-compact) garbage collections since wall-clock ms `since`:
 *   `[[start, pauseMs], ...]`, start in wall-clock ms (perf_hooks `gc` entries: the pause the collector stopped the thread for).
 * Every completed job is reported, batched every 100 ms, as `{ done: [[jobId, orgId, processedOn, finishedOn, seenAt], ...] }`
 * (the worker's own timestamps: processedOn when BullMQ moved the job to active, finishedOn when it recorded the outcome,
 * seenAt when its `completed` event fired, wall-clock ms with sub-ms precision).
 */
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { parseConfig } from '../../src/shared/core/config.js';
import { createPool } from '../../src/shared/infra/db/pool.js';
import type { Infra } from '../../src/shared/infra/infra.js';
import { startAgentq, type AgentqUnderTest } from '../lib/agentq.js';
import { serveParent, toParent } from '../lib/child.js';
import { BENCH_ENV } from '../lib/infra.js';
import { wallMs } from '../lib/stats.js';

const o = JSON.parse(process.argv[2]) as { redisUrl: string; databaseUrl: string; emulatorUrl: string };
const pool = createPool(o.databaseUrl, { max: 4 });
const infra: Infra = { redisTarget: o.redisUrl, db: { pool, url: o.databaseUrl, embedded: false, close: async () => {} }, close: async () => {} };
const config = (env: Record<string, string> = {}) =>
  parseConfig({ ...BENCH_ENV, REDIS_URL: o.redisUrl, DATABASE_URL: o.databaseUrl, GEMINI_API_KEY: 'bench-not-a-real-key', ...env });

let q: AgentqUnderTest | undefined;
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

serveParent(async (msg: { op: string; env?: Record<string, string>; since?: number }) => {
  if (msg.op === 'start') {
    if (q) throw new Error('already started');
    q = await startAgentq({ config, infra, emulatorUrl: o.emulatorUrl }, {
      env: msg.env,
      onCompleted: (job) => done.push([job.id!, job.data.orgId, job.processedOn ?? 0, job.finishedOn ?? Date.now(), wallMs()]),
    });
    await q.startWorker();
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
    return { us: u.user + u.system };
  }
  throw new Error(`unknown op ${msg.op}`);
});
toParent({ ready: {} });
