import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { createWriteStream, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import type { Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { AgentJobData } from '../../src/shared/core/types.js';
import { RISK_REQUEST, startAgentq } from '../lib/agentq.js';
import { BARE_JOB_NAME, bareJobData, bareLlm, bareQueue, bareWorker } from '../lib/bare.js';
import type { BenchContext } from '../lib/context.js';
import { commandCalls, diffCalls } from '../lib/infra.js';
import { startScriptTimes, type ScriptTime } from '../lib/slowlog.js';
import { median, round, sleep } from '../lib/stats.js';

const ORG = 'bench-org';
const WARMUP_MS = 500;
const WINDOW_MS = 4000;
/**
 * At c=1 every path is measured in this many rounds, each round all paths one after the other, and a ratio is
 * the median of the rounds' ratios: this 2-core machine's speed drifts by tens of percent within minutes, which
 * moved single-run c=1 ratios across a target between runs. Shorter windows keep the case's time about the same.
 */
const C1_ROUNDS = 3;
const C1_WINDOW_MS = 2000;
/**
 * The c=50 main paths too: single runs of the same code gave a miss ratio from 0.59x to 0.78x within an hour
 * (2026-12-04). Windows as short as c=1's keep the case's time within the run's budget.
 */
const C50_ROUNDS = 3;
const C50_WINDOW_MS = 2000;
const ROUNDS: Record<number, { n: number; windowMs: number }> = { 1: { n: C1_ROUNDS, windowMs: C1_WINDOW_MS }, 50: { n: C50_ROUNDS, windowMs: C50_WINDOW_MS } };

/**
 * `-nofair`: the runtime without the fair dispatcher (runtime `fairDispatch: false`), the fairness case's baseline.
 * `-fixed`: DISPATCH_BUFFER_MS=0: BullMQ's wait list at DISPATCH_BUFFER_RATIO x the concurrency alone, not also what
 *   the worker finishes in 40 ms (fair/buffer-ask.ts).
 * `-nodehttp`: LLM_HTTP_TRANSPORT=node-http, the opt-in transport (infra/llm/node-http-fetch.ts); (b) keeps the SDK's fetch.
 * `-rt2`: the bare worker plus two awaited PINGs per job, one before its work and one after (where agentq's claim
 * and its cache store / usage row go): what any design adding the 2 round trips the targets allow can reach here.
 * `-rt1`: the bare no-op worker plus one awaited PING before its work: the most the hit path's design (one call, the
 * claim, beside BullMQ's own) can reach here, whatever that call costs Redis and Node.
 */
export type Path =
  | 'bare-noop'
  | 'bare-llm'
  | 'bare-noop-rt1'
  | 'bare-noop-rt2'
  | 'bare-llm-rt2'
  | 'agentq-miss'
  | 'agentq-hit'
  | 'agentq-miss-norows'
  | 'agentq-hit-norows'
  | 'agentq-miss-nofair'
  | 'agentq-hit-nofair'
  | 'agentq-miss-fixed'
  | 'agentq-hit-fixed'
  | 'agentq-miss-nodehttp';
type BarePath = Extract<Path, `bare-${string}`>;

export interface RunResult {
  path: Path;
  concurrency: number;
  jobs: number;
  seconds: number;
  jobsPerS: number;
  /** Redis commands (INFO commandstats calls, script-internal ones included) per completed job. */
  commandsPerJob: number;
  llmCalls: number;
  byCommand: Record<string, number>;
  /** Redis server time (INFO commandstats usec) per completed job, by command: where `redisUsecPerJob` goes. */
  usecByCommand: Record<string, number>;
  /** With MONITOR: commands clients sent (round trips) and commands scripts ran inside Redis, per job. */
  sentPerJob?: number;
  inScriptsPerJob?: number;
  /** Redis server time per completed job: INFO commandstats usec (upper bound, see commandCalls) and INFO cpu. */
  redisUsecPerJob: number;
  redisCpuUsPerJob: number;
  /** BENCH_SLOWLOG only (diagnostic): Redis time by script over the window, from the slow log (bench/lib/slowlog.ts). */
  scriptTimes?: ScriptTime[];
  /** Jobs the worker was running, the mean of samples every ~3 ms over the window (its own events: no Redis command). */
  meanRunning: number;
}

/** A measurement window over a running worker: completions and Redis commands between two instants. */
export function createCounter() {
  let completed = 0;
  let target = Infinity;
  let wake: (() => void) | undefined;
  const running = new Set<string | undefined>();
  return {
    /** Follows the jobs `worker` runs (BullMQ's local events), for `sampleRunning`. */
    track(worker: Worker) {
      worker.on('active', (job) => running.add(job.id));
      const done = (job: Job | undefined) => running.delete(job?.id);
      worker.on('completed', done);
      worker.on('failed', done);
    },
    /** Samples how many jobs are running every ~3 ms until the returned function stops it: their mean. */
    sampleRunning(): () => number {
      let sum = 0;
      let n = 0;
      const timer = setInterval(() => {
        sum += running.size;
        n++;
      }, 3);
      return () => {
        clearInterval(timer);
        return n ? sum / n : 0;
      };
    },
    onCompleted: () => {
      completed++;
      if (completed >= target) wake?.();
    },
    get completed() {
      return completed;
    },
    /** Resolves after `ms`, or as soon as `total` jobs have completed. */
    until(total: number, ms: number): Promise<void> {
      target = total;
      if (completed >= total) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    },
  };
}

/**
 * Watches every command Redis executes (MONITOR) and splits them into those clients sent (round trips)
 * and those Lua scripts ran inside Redis. The bench's own INFO calls are left out.
 */
export async function startMonitor(url: string) {
  // A raw socket rather than ioredis's monitor(): its monitor connection intermittently throws "Command queue
  // state error" on a late reply while closing, which no listener catches.
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  let sent = 0;
  let inScripts = 0;
  let buffer = '';
  let monitoring: (() => void) | undefined;
  // Diagnostic only: BENCH_MONITOR_LOG=<file> keeps the lines, to attribute round trips to callers.
  const log = process.env.BENCH_MONITOR_LOG ? createWriteStream(process.env.BENCH_MONITOR_LOG, { flags: 'a' }) : undefined;
  log?.write(`# monitor started ${new Date().toISOString()}\n`);
  const ready = new Promise<void>((resolve, reject) => {
    monitoring = resolve;
    socket.once('error', reject);
  });
  socket.setEncoding('utf8');
  socket.on('error', () => {});
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf('\r\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 2);
      if (line === '+OK') monitoring?.();
      // +1700000000.123456 [0 127.0.0.1:5555] "evalsha" ...   or   [0 lua] "GET" ...
      const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]*)"/.exec(line);
      if (!m || m[2].toLowerCase() === 'info') continue;
      if (m[1] === 'lua') inScripts++;
      else sent++;
      log?.write(`${line}\n`);
    }
  });
  socket.once('connect', () => socket.write('MONITOR\r\n'));
  await ready;
  return {
    counts: () => ({ sent, inScripts }),
    async stop() {
      socket.destroy();
      log?.end();
    },
  };
}

/**
 * Diagnostic only: BENCH_CPU_PROFILE=<prefix> writes a V8 CPU profile of this process over each measurement
 * window (the queue's fill and the warm-up left out) to `<prefix>-<n>.cpuprofile`.
 */
async function startWindowProfile(): Promise<(() => Promise<void>) | undefined> {
  const prefix = process.env.BENCH_CPU_PROFILE;
  if (!prefix) return undefined;
  // BENCH_HEAP_PROFILE=1: a sampling heap profile of the same window instead, for where its garbage is allocated
  // (objects collected during the window kept: the window's allocations, not what lives on).
  const p =
    process.env.BENCH_HEAP_PROFILE === '1'
      ? { domain: 'HeapProfiler', start: 'startSampling', stop: 'stopSampling', ext: 'heapprofile', params: { samplingInterval: 16384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } }
      : { domain: 'Profiler', start: 'start', stop: 'stop', ext: 'cpuprofile', params: undefined };
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) => new Promise<unknown>((resolve, reject) => session.post(`${p.domain}.${method}`, params, (err, res) => (err ? reject(err) : resolve(res))));
  await post('enable');
  await post(p.start, p.params);
  return async () => {
    const { profile } = (await post(p.stop)) as { profile: unknown };
    writeFileSync(`${prefix}-${++profiles}.${p.ext}`, JSON.stringify(profile));
    session.disconnect();
  };
}
let profiles = 0;

/** Measures a worker that is already running over a queue filled with `total` jobs. */
async function window(ctx: BenchContext, counter: ReturnType<typeof createCounter>, total: number, monitor: boolean, windowMs: number) {
  await counter.until(total, WARMUP_MS);
  const stopProfile = await startWindowProfile();
  const mon = monitor ? await startMonitor(ctx.b.redis.url) : undefined;
  await ctx.windowEdge?.('start');
  const scriptTimes = process.env.BENCH_SLOWLOG === '1' ? await startScriptTimes(ctx.b.control) : undefined;
  const c0 = counter.completed;
  const t0 = performance.now();
  const s0 = await commandCalls(ctx.b.control);
  const m0 = mon?.counts();
  const stopSampling = counter.sampleRunning();
  await counter.until(total, monitor ? windowMs / 2 : windowMs);
  await ctx.windowEdge?.('end');
  const c1 = counter.completed;
  const t1 = performance.now();
  const meanRunning = stopSampling();
  const m1 = mon?.counts();
  const s1 = await commandCalls(ctx.b.control);
  const scripts = await scriptTimes?.(c1 - c0);
  await mon?.stop();
  await stopProfile?.();
  const jobs = c1 - c0;
  const split = m0 && m1 ? { sent: m1.sent - m0.sent, inScripts: m1.inScripts - m0.inScripts } : undefined;
  return { jobs, seconds: (t1 - t0) / 1000, commands: s1.total - s0.total, byCommand: diffCalls(s0, s1), usecByCommand: diffCalls({ byCommand: s0.usecByCommand }, { byCommand: s1.usecByCommand }), split, usec: s1.usec - s0.usec, cpuUs: s1.cpuUs - s0.cpuUs, meanRunning, scripts };
}

async function runBare(ctx: BenchContext, path: BarePath, concurrency: number, total: number, monitor: boolean, windowMs: number) {
  const cfg = ctx.b.config();
  const connection = new Redis(ctx.b.redis.url, { maxRetriesPerRequest: null });
  const queue = bareQueue(connection, cfg);
  for (let i = 0; i < total; i += 1000) {
    const n = Math.min(1000, total - i);
    await queue.addBulk(Array.from({ length: n }, (_, k) => ({ name: BARE_JOB_NAME, data: bareJobData(ORG, i + k), opts: { jobId: randomUUID() } })));
  }
  const counter = createCounter();
  const work = path.startsWith('bare-noop') ? async () => ({ success: true }) : bareLlm(ctx.b.emulatorUrl);
  // Its own connection, as agentq's guards use one beside BullMQ's.
  const extra = /-rt\d$/.test(path) ? new Redis(ctx.b.redis.url, { maxRetriesPerRequest: null }) : undefined;
  const after = path.endsWith('-rt2');
  const processor = extra
    ? async (job: Job<AgentJobData>) => {
        await extra.ping();
        const result = await work(job);
        if (after) await extra.ping();
        return result;
      }
    : work;
  const workerConnection = new Redis(ctx.b.redis.url, { maxRetriesPerRequest: null });
  const worker = bareWorker(workerConnection, cfg, processor, concurrency);
  worker.on('completed', counter.onCompleted);
  counter.track(worker);
  try {
    return await window(ctx, counter, total, monitor, windowMs);
  } finally {
    await worker.close(true);
    await queue.close();
    extra?.disconnect();
    workerConnection.disconnect();
    connection.disconnect();
  }
}

async function runAgentq(ctx: BenchContext, variant: Path, concurrency: number, total: number, monitor: boolean, windowMs: number) {
  const counter = createCounter();
  let warmed: (() => void) | undefined;
  const path = variant.startsWith('agentq-hit') ? 'agentq-hit' : 'agentq-miss';
  const q = await startAgentq(ctx.b, {
    skipRunRows: variant.endsWith('-norows'),
    ...(variant.endsWith('-nofair') ? { fairDispatch: false } : {}),
    env: {
      WORKER_CONCURRENCY: String(concurrency),
      ...(variant.endsWith('-fixed') ? { DISPATCH_BUFFER_MS: '0' } : {}),
      ...(variant.endsWith('-nodehttp') ? { LLM_HTTP_TRANSPORT: 'node-http' } : {}),
    },
    onCompleted: () => (warmed ? warmed() : counter.onCompleted()),
  });
  try {
    const producer = q.runtime.deps.producer;
    if (path === 'agentq-hit') {
      // One warm-up job fills the cache; the worker then pauses (keeping its L1) while the queue fills.
      const done = new Promise<void>((resolve) => (warmed = resolve));
      await producer.enqueue(RISK_REQUEST('hit'), { orgId: ORG });
      const worker = await q.startWorker();
      await done;
      await worker.pause(false);
      warmed = undefined;
    }
    for (let i = 0; i < total; i += 1000) {
      const n = Math.min(1000, total - i);
      await producer.enqueueBulk({ jobs: Array.from({ length: n }, (_, k) => RISK_REQUEST(path === 'agentq-hit' ? 'hit' : i + k)) }, { orgId: ORG });
    }
    if (path === 'agentq-hit') q.workers[0].resume();
    else await q.startWorker();
    counter.track(q.workers[0]);
    return await window(ctx, counter, total, monitor, windowMs);
  } finally {
    await q.close();
  }
}

/** Jobs to pre-fill: enough for warm-up plus the window at the rate expected, never fewer than 500. */
const fillFor = (expectedPerS: number, windowMs: number) => Math.max(500, Math.min(40_000, Math.ceil((expectedPerS * (WARMUP_MS + windowMs + 1500)) / 1000)));

export async function measurePath(ctx: BenchContext, path: Path, concurrency: number, expectedPerS: number, opts: { monitor?: boolean; quiet?: boolean; windowMs?: number } = {}): Promise<RunResult> {
  await ctx.b.control.flushall();
  await ctx.b.emulator.reset();
  const windowMs = opts.windowMs ?? WINDOW_MS;
  const total = fillFor(expectedPerS, windowMs);
  const monitor = opts.monitor ?? false;
  const w = path.startsWith('bare') ? await runBare(ctx, path as BarePath, concurrency, total, monitor, windowMs) : await runAgentq(ctx, path, concurrency, total, monitor, windowMs);
  const llmCalls = (await ctx.b.emulator.calls()).filter((c) => c.kind === 'generate' || c.kind === 'stream').length;
  const result: RunResult = {
    path,
    concurrency,
    jobs: w.jobs,
    seconds: round(w.seconds),
    jobsPerS: round(w.jobs / w.seconds, 1),
    commandsPerJob: round(w.commands / Math.max(1, w.jobs), 2),
    redisUsecPerJob: round(w.usec / Math.max(1, w.jobs), 1),
    redisCpuUsPerJob: round(w.cpuUs / Math.max(1, w.jobs), 1),
    meanRunning: round(w.meanRunning, 1),
    llmCalls,
    byCommand: Object.fromEntries(Object.entries(w.byCommand).map(([k, v]) => [k, round(v / Math.max(1, w.jobs), 2)])),
    usecByCommand: Object.fromEntries(Object.entries(w.usecByCommand).map(([k, v]) => [k, round(v / Math.max(1, w.jobs), 2)])),
    ...(w.scripts ? { scriptTimes: w.scripts } : {}),
    ...(w.split ? { sentPerJob: round(w.split.sent / Math.max(1, w.jobs), 2), inScriptsPerJob: round(w.split.inScripts / Math.max(1, w.jobs), 2) } : {}),
  };
  if (opts.quiet) return result;
  ctx.log(`  ${path} c=${concurrency}: ${result.jobsPerS} jobs/s (${w.jobs} jobs in ${result.seconds} s), ${result.commandsPerJob} Redis commands/job, ${result.redisUsecPerJob} us Redis command time/job, ${result.redisCpuUsPerJob} us Redis CPU/job, ${result.meanRunning} jobs running on average`);
  for (const t of result.scriptTimes ?? []) ctx.log(`    ${t.script}: ${t.callsPerJob} calls/job, ${t.usPerCall} us/call, ${t.usPerJob} us/job (slow log, inflated)`);
  if (w.jobs < 100) ctx.log(`  warning: only ${w.jobs} jobs in the window`);
  return result;
}

/** Case 1 (throughput) and the INFO-commandstats half of case 2 (commands per job), from the same runs. */
export async function throughputCase(ctx: BenchContext): Promise<void> {
  const guess: Record<Path, number> = {
    'bare-noop': 4000,
    'bare-llm': 500,
    'bare-noop-rt1': 3500,
    'bare-noop-rt2': 3000,
    'bare-llm-rt2': 450,
    'agentq-miss': 250,
    'agentq-hit': 800,
    'agentq-miss-norows': 300,
    'agentq-hit-norows': 1500,
    'agentq-miss-nofair': 250,
    'agentq-hit-nofair': 1500,
    'agentq-miss-fixed': 300,
    'agentq-hit-fixed': 1500,
    'agentq-miss-nodehttp': 300,
  };
  const paths: Path[] = ['bare-noop', 'bare-llm', 'agentq-miss', 'agentq-hit'];
  // At c=1 a job's steps are serial, so each added round trip shows whole: measured beside the main paths.
  const floors: Path[] = ['bare-noop-rt1', 'bare-noop-rt2', 'bare-llm-rt2', 'agentq-hit-nofair', 'agentq-miss-nofair'];
  const results: Record<string, RunResult> = {};
  const rounds: Record<number, Array<Partial<Record<Path, RunResult>>>> = { 1: [], 50: [] };
  /** `n` rounds, each every path one after the other; each path's row is its median round (Redis figures too). */
  const measureRounds = async (c: number, list: Path[], expected: (p: Path) => number) => {
    for (let k = 0; k < ROUNDS[c].n; k++) {
      const r: Partial<Record<Path, RunResult>> = {};
      for (const path of list) r[path] = await measurePath(ctx, path, c, expected(path), { windowMs: ROUNDS[c].windowMs });
      rounds[c].push(r);
    }
    for (const path of list) {
      const runs = rounds[c].map((r) => r[path]!).sort((x, y) => x.jobsPerS - y.jobsPerS);
      results[`${path}@${c}`] = runs[Math.floor(runs.length / 2)];
    }
  };
  await measureRounds(1, [...paths, ...floors], (p) => guess[p]);
  // The opt-in transport in the same rounds as the main paths: its ratio to (b) is as comparable as theirs.
  await measureRounds(50, [...paths, 'agentq-miss-nodehttp'], (p) => Math.max(guess[p], (results[`${p}@1`] ?? results['agentq-miss@1']).jobsPerS * 8));
  /** A ratio of two paths: the median of the rounds' ratios (`rounds` lists them). */
  const ratioOf = (c: number, p: Path, ref: Path, by: (r: RunResult) => number = (r) => r.jobsPerS) => {
    const each = rounds[c].map((r) => round(by(r[p]!) / by(r[ref]!), 2));
    return { value: round(median(each), 2), rounds: `median of ${each.length} rounds: ${each.join(', ')}` };
  };
  // Ablation, for the record: the same full path without the per-attempt agent_runs INSERT.
  // And with the wait list at the fixed share alone (half the concurrency), not also sized by the worker's rate.
  for (const path of ['agentq-miss-norows', 'agentq-hit-norows', 'agentq-miss-fixed', 'agentq-hit-fixed'] as Path[]) {
    const base = results[`${path.replace(/-(norows|fixed)$/, '')}@50`].jobsPerS;
    results[`${path}@50`] = await measurePath(ctx, path, 50, path.endsWith('-fixed') ? base : base * 1.5, { windowMs: C50_WINDOW_MS });
  }
  ctx.details.throughput = { ...results, c1Rounds: rounds[1], c50Rounds: rounds[50] };
  ctx.shared.agentqMissMaxPerS = Math.max(results['agentq-miss@1'].jobsPerS, results['agentq-miss@50'].jobsPerS);

  for (const c of [1, 50]) {
    const r = (p: Path) => results[`${p}@${c}`];
    const tc = `1 throughput (c=${c})`;
    const median1 = `the median of ${ROUNDS[c].n} rounds`;
    ctx.add({ case: tc, name: '(a) bare BullMQ, no-op processor', value: r('bare-noop').jobsPerS, unit: 'jobs/s', note: median1 });
    ctx.add({ case: tc, name: '(b) bare BullMQ + same SDK call to emulator', value: r('bare-llm').jobsPerS, unit: 'jobs/s', note: median1 });
    ctx.add({ case: tc, name: 'agentq full path, cache miss', value: r('agentq-miss').jobsPerS, unit: 'jobs/s', note: median1 });
    const missB = ratioOf(c, 'agentq-miss', 'bare-llm');
    ctx.add({ case: tc, name: 'agentq full path / (b)', value: missB.value, unit: 'x', target: '>= 0.8', met: missB.value >= 0.8, note: missB.rounds });
    ctx.add({ case: tc, name: 'agentq cache hit', value: r('agentq-hit').jobsPerS, unit: 'jobs/s', note: `LLM calls during the hit run after warm-up: ${r('agentq-hit').llmCalls - 1}; ${median1}` });
    const hitA = ratioOf(c, 'agentq-hit', 'bare-noop');
    ctx.add({ case: tc, name: 'agentq hit / (a)', value: hitA.value, unit: 'x', target: '>= 0.5', met: hitA.value >= 0.5, note: hitA.rounds });
    const hitB = ratioOf(c, 'agentq-hit', 'bare-llm');
    ctx.add({ case: tc, name: 'agentq hit / (b)', value: hitB.value, unit: 'x', target: '> 1', met: hitB.value > 1, note: hitB.rounds });
    if (c > 1) {
      // Whether the dispatcher keeps BullMQ's worker fed: a wait list that runs dry leaves its slots idle.
      const busy = (p: Path) => rounds[c].map((k) => k[p]!.meanRunning).join(' / ');
      ctx.add({
        case: tc,
        name: `jobs running in the worker (of ${c}), mean over the window: agentq miss, (b), agentq hit, (a)`,
        value: [r('agentq-miss'), r('bare-llm'), r('agentq-hit'), r('bare-noop')].map((x) => x.meanRunning).join(' / '),
        unit: 'jobs',
        note: `median rounds; sampled every ~3 ms from the worker's own active / completed events (no Redis command); per round, miss ${busy('agentq-miss')}, hit ${busy('agentq-hit')}`,
      });
    }
  }

  const tcA = '1 throughput (c=50), ablation';
  const norows = (p: Path) => results[`${p}-norows@50`]?.jobsPerS;
  ctx.add({ case: tcA, name: 'agentq miss, agent_runs INSERT skipped', value: norows('agentq-miss'), unit: 'jobs/s', note: `${round(norows('agentq-miss') / results['bare-llm@50'].jobsPerS, 2)}x (b): what the per-job Postgres write costs` });
  ctx.add({ case: tcA, name: 'agentq hit, agent_runs INSERT skipped', value: norows('agentq-hit'), unit: 'jobs/s', note: `${round(norows('agentq-hit') / results['bare-noop@50'].jobsPerS, 2)}x (a)` });
  const fixed = (p: 'agentq-miss' | 'agentq-hit') => results[`${p}-fixed@50`];
  for (const p of ['agentq-miss', 'agentq-hit'] as const) {
    const base = results[`${p}@50`];
    const refPath: Path = p === 'agentq-miss' ? 'bare-llm' : 'bare-noop';
    const ref = results[`${refPath}@50`].jobsPerS;
    // With the floor: the main row's ratio (the median of the rounds' ratios), not the median rounds' jobs/s divided.
    ctx.add({
      case: tcA,
      name: `${p === 'agentq-miss' ? 'agentq miss' : 'agentq hit'}, DISPATCH_BUFFER_MS=0 (the wait list at DISPATCH_BUFFER_RATIO 0.5 x the concurrency alone)`,
      value: fixed(p).jobsPerS,
      unit: 'jobs/s',
      note: `${round(fixed(p).jobsPerS / ref, 2)}x ${p === 'agentq-miss' ? '(b)' : '(a)'} (its median round) vs ${ratioOf(50, p, refPath).value}x with the 40 ms floor (default); ${fixed(p).commandsPerJob} vs ${base.commandsPerJob} Redis commands/job; ${fixed(p).meanRunning} vs ${base.meanRunning} jobs running. Without the floor the list runs dry between refills when jobs are short, and BullMQ then refills a free slot one fetch at a time`,
    });
  }

  const nodeHttp = ratioOf(50, 'agentq-miss-nodehttp', 'bare-llm');
  ctx.add({
    case: tcA,
    name: 'agentq miss, LLM_HTTP_TRANSPORT=node-http (opt-in) / (b)',
    value: nodeHttp.value,
    unit: 'x',
    note: `${results['agentq-miss-nodehttp@50'].jobsPerS} jobs/s (median round); ${nodeHttp.rounds}; ${ratioOf(50, 'agentq-miss', 'bare-llm').value}x with the SDK's own fetch (default), which (b) uses in both`,
  });

  const tcF = '1 throughput (c=1), floors and attribution';
  const at1 = (p: Path) => results[`${p}@1`].jobsPerS;
  const x = (p: Path, ref: Path) => ratioOf(1, p, ref).value;
  const c1Row = (p: Path, ref: Path) => ({ value: x(p, ref), unit: 'x', note: `${at1(p)} jobs/s (median round); ${ratioOf(1, p, ref).rounds}` });
  ctx.add({ case: tcF, name: '(a) + 2 PINGs per job / (a): the most a hit path adding the 2 round trips allowed can reach here (target 0.5x)', ...c1Row('bare-noop-rt2', 'bare-noop') });
  ctx.add({ case: tcF, name: '(a) + 1 PING per job / (a): the most the hit path as built (one call beside BullMQ\'s own) can reach here', ...c1Row('bare-noop-rt1', 'bare-noop') });
  ctx.add({ case: tcF, name: '(b) + 2 PINGs per job / (b): the same bound for the miss path (target 0.8x)', ...c1Row('bare-llm-rt2', 'bare-llm') });
  ctx.add({ case: tcF, name: 'agentq hit without the fair dispatcher / (a)', ...c1Row('agentq-hit-nofair', 'bare-noop'), note: `${c1Row('agentq-hit-nofair', 'bare-noop').note}; ${x('agentq-hit', 'bare-noop')}x with it; ${results['agentq-hit-nofair@1'].commandsPerJob} vs ${results['agentq-hit@1'].commandsPerJob} Redis commands/job` });
  ctx.add({ case: tcF, name: 'agentq miss without the fair dispatcher / (b)', ...c1Row('agentq-miss-nofair', 'bare-llm'), note: `${c1Row('agentq-miss-nofair', 'bare-llm').note}; ${x('agentq-miss', 'bare-llm')}x with it; ${results['agentq-miss-nofair@1'].commandsPerJob} vs ${results['agentq-miss@1'].commandsPerJob} Redis commands/job` });

  const cmd = (p: Path) => results[`${p}@50`].commandsPerJob;
  const tc = '2 Redis commands/job (INFO commandstats, c=50, worker side)';
  ctx.add({ case: tc, name: 'raw BullMQ (b)', value: cmd('bare-llm'), unit: 'cmds/job', note: 'script-internal commands included' });
  ctx.add({ case: tc, name: 'agentq miss path', value: cmd('agentq-miss'), unit: 'cmds/job' });
  ctx.add({ case: tc, name: 'agentq hit path', value: cmd('agentq-hit'), unit: 'cmds/job' });
  ctx.add({ case: tc, name: 'raw BullMQ (a), for the hit path', value: cmd('bare-noop'), unit: 'cmds/job' });
  ctx.add({
    case: tc,
    name: 'added by agentq on the miss path',
    value: round(cmd('agentq-miss') - cmd('bare-llm'), 2),
    unit: 'cmds/job',
    target: '<= 3',
    met: cmd('agentq-miss') - cmd('bare-llm') <= 3,
  });
  const tcT = '2 Redis server time/job (worker side)';
  const usecOf = (r: RunResult) => r.redisUsecPerJob;
  const missUsecAt1 = ratioOf(1, 'agentq-miss', 'bare-llm', usecOf);
  for (const c of [1, 50]) {
    const us = (p: Path) => results[`${p}@${c}`].redisUsecPerJob;
    const cpu = (p: Path) => results[`${p}@${c}`].redisCpuUsPerJob;
    ctx.add({ case: tcT, name: `c=${c}: commandstats usec/job, raw BullMQ (b) vs agentq miss`, value: `${us('bare-llm')} vs ${us('agentq-miss')}`, unit: 'us/job', note: 'script-internal commands counted in their line and in the script (upper bound, both sides)' });
    const usec = c === 1 ? missUsecAt1 : ratioOf(c, 'agentq-miss', 'bare-llm', usecOf);
    ctx.add({ case: tcT, name: `c=${c}: agentq miss / (b), commandstats usec`, value: usec.value, unit: 'x', target: '<= 1.3', met: usec.value <= 1.3, note: usec.rounds });
    ctx.add({ case: tcT, name: `c=${c}: Redis CPU/job (INFO cpu), (b) vs agentq miss vs agentq hit vs (a)`, value: `${cpu('bare-llm')} vs ${cpu('agentq-miss')} vs ${cpu('agentq-hit')} vs ${cpu('bare-noop')}`, unit: 'us/job' });
  }
  // Attribution: what agentq costs Redis without its dispatcher (cache lookup and store, usage row), same rounds.
  const missNoFair = ratioOf(1, 'agentq-miss-nofair', 'bare-llm', usecOf);
  const hitNoFair = ratioOf(1, 'agentq-hit-nofair', 'bare-noop', usecOf);
  ctx.add({
    case: tcT,
    name: 'c=1: without the fair dispatcher, commandstats usec: agentq miss / (b), agentq hit / (a)',
    value: `${missNoFair.value} / ${hitNoFair.value}`,
    unit: 'x',
    note: `${results['agentq-miss-nofair@1'].redisUsecPerJob} and ${results['agentq-hit-nofair@1'].redisUsecPerJob} us/job (median rounds); miss ${missNoFair.rounds}; hit ${hitNoFair.rounds}; with it ${missUsecAt1.value}x / ${ratioOf(1, 'agentq-hit', 'bare-noop', usecOf).value}x`,
  });
  const hitRun = results['agentq-hit@50'];
  ctx.add({
    case: tc,
    name: 'LLM calls on the hit path (after the one warm-up call)',
    value: hitRun.llmCalls - 1,
    unit: 'calls',
    target: '0',
    met: hitRun.llmCalls - 1 === 0,
  });
}

// The fill helpers are reused by the latency case.
export { ORG, sleep };
