import { startAgentq, RISK_REQUEST, type AgentqUnderTest } from '../lib/agentq.js';
import { startChild, type BenchChild } from '../lib/child.js';
import type { BenchContext } from '../lib/context.js';
import { percentile, round, sleep } from '../lib/stats.js';
import { measurePath, type RunResult } from './throughput.js';
import type { FairPlan } from '../../src/shared/fair/index.js';
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';

/** 4 worker processes x concurrency 10, as in the issue. */
const WORKERS = 4;
const CONCURRENCY = 10;
const SLOTS = WORKERS * CONCURRENCY;
/** Emulator latency where jobs must take time (every generate call answers after this). */
const LATENCY_MS = 100;
const CHURN_JOBS = 10_000;
const CHURN_RPM = 60;
const IDLE_WINDOW_MS = 5_000;
/** Two of a deep backlog's 10 s wake-ups: a window of one could hold one or two of them, by its phase. */
const CHURN_WINDOW_MS = 20_000;
const UNTHROTTLED_WINDOW_MS = 5_000;
const STARVE_A_JOBS = 10_000;
const STARVE_B_JOBS = 10;
const WEIGHTS: Record<string, number> = { 'w-a': 1, 'w-b': 1, 'w-c': 2 };
const WEIGHT_JOBS = 4_000;
const WEIGHT_WINDOWS = 3;
const WEIGHT_WINDOW_MS = 5_000;
const CAP = 3;
const CAP_JOBS = 45;
const CAP_FILLER_JOBS = 3_000;

/** One completed job as a worker process saw it: its own timestamps (same machine clock for all processes). */
interface Done {
  id: string;
  org: string;
  start: number;
  end: number;
  worker: number;
}

interface Pool {
  children: Array<BenchChild>;
  /** Completions reported since the current scenario started. */
  done: Done[];
}

/** `INFO stats commandstats` in one call: commands clients sent, and all commands run (script-internal included). */
interface Counters {
  processed: number;
  all: number;
  info: number;
  byCommand: Record<string, number>;
}

async function redisCounters(ctx: BenchContext): Promise<Counters> {
  const text = (await ctx.b.control.call('INFO', 'stats', 'commandstats')) as string;
  const processed = Number(/total_commands_processed:(\d+)/.exec(text)?.[1] ?? NaN);
  let all = 0;
  let info = 0;
  const byCommand: Record<string, number> = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
    if (m[1] === 'info') info = Number(m[2]);
    else {
      all += Number(m[2]);
      byCommand[m[1]] = Number(m[2]);
    }
  }
  return { processed, all, info, byCommand };
}

/** Redis commands between two readings, the bench's INFO calls left out. */
const commandsBetween = (a: Counters, b: Counters) => ({
  processed: b.processed - a.processed - (b.info - a.info),
  all: b.all - a.all,
  byCommand: Object.fromEntries(
    Object.entries(b.byCommand)
      .map(([k, v]) => [k, v - (a.byCommand[k] ?? 0)] as const)
      .filter(([, v]) => v > 0)
      .sort((x, y) => y[1] - x[1]),
  ),
});

async function cpuUs(pool: Pool): Promise<number[]> {
  return Promise.all(pool.children.map(async (c) => (await c.request<{ us: number }>({ op: 'cpu' })).us));
}

/** Each process's CPU between two `cpuUs` samples, as % of one core over `seconds`. */
const cpuPctBetween = (before: number[], after: number[], seconds: number) => after.map((u, i) => (100 * (u - before[i])) / 1e6 / seconds);

async function waitFor(cond: () => boolean, timeoutMs: number, pollMs = 20): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) return false;
    await sleep(pollMs);
  }
  return true;
}

async function fill(q: AgentqUnderTest, org: string, n: number): Promise<void> {
  for (let i = 0; i < n; i += 1000) {
    const k = Math.min(1000, n - i);
    await q.runtime.deps.producer.enqueueBulk({ jobs: Array.from({ length: k }, (_, j) => RISK_REQUEST(`${org}-${i + j}`)) }, { orgId: org });
  }
}

/**
 * One scenario on a fresh queue prefix: the producer runs in this process (no worker), the 4 worker
 * processes start their runtimes on the same prefix when the scenario asks. Everything is stopped and
 * Redis flushed afterwards.
 */
async function scenario<T>(
  ctx: BenchContext,
  pool: Pool,
  opts: { latencyMs: number; plans?: Record<string, FairPlan> },
  body: (s: { q: AgentqUnderTest; startWorkers: () => Promise<void> }) => Promise<T>,
): Promise<T> {
  await ctx.b.control.flushall();
  await ctx.b.emulator.reset();
  if (opts.latencyMs > 0) await ctx.b.emulator.script({ latencyMs: opts.latencyMs, times: -1, match: { kind: 'generate' } });
  const env = { QUEUE_PREFIX: `{bf${Math.random().toString(36).slice(2, 8)}}`, WORKER_CONCURRENCY: String(CONCURRENCY) };
  const q = await startAgentq(ctx.b, { env });
  for (const [org, plan] of Object.entries(opts.plans ?? {})) await q.runtime.deps.cells[0].scheduler.setPlan(org, plan);
  pool.done = [];
  let started = false;
  try {
    return await body({
      q,
      startWorkers: async () => {
        started = true;
        await Promise.all(pool.children.map((c) => c.request({ op: 'start', env })));
      },
    });
  } finally {
    if (started) await Promise.all(pool.children.map((c) => c.request({ op: 'stop' }, 30_000)));
    await q.close();
    await ctx.b.emulator.clearFaults();
    await ctx.b.control.flushall();
  }
}

/** The churn's windows MONITOR can record (`BENCH_FAIRNESS_MONITOR_WINDOW`). */
type ChurnWindow = 'idle' | 'throttled' | 'unthrottled';

/**
 * Diagnostic only (`BENCH_FAIRNESS_MONITOR=<file>`): redis-cli MONITOR into a file over one of the churn's windows
 * (`BENCH_FAIRNESS_MONITOR_WINDOW`: throttled, the default, idle or unthrottled), to attribute its commands to
 * callers and scripts. Never on in a measured run (MONITOR costs Redis).
 */
function startMonitor(ctx: BenchContext, window: ChurnWindow): (() => void) | undefined {
  const file = process.env.BENCH_FAIRNESS_MONITOR;
  if (!file || (process.env.BENCH_FAIRNESS_MONITOR_WINDOW ?? 'throttled') !== window) return undefined;
  const child = spawn('redis-cli', ['-u', ctx.b.redis.url, 'monitor'], { stdio: ['ignore', openSync(file, 'w'), 'ignore'] });
  return () => child.kill();
}

/** Dispatch script calls in a command delta: each runs HVALS on the worker registry exactly once. */
const dispatchCalls = (byCommand: Record<string, number>) => byCommand.hvals ?? 0;

/**
 * Churn: a throttled org with a big backlog must cost (almost) nothing while it waits. The same backlog is
 * then released (plan back to no limit) and measured unthrottled, so both windows see the same lane.
 */
async function churn(ctx: BenchContext, pool: Pool) {
  const r = await scenario(ctx, pool, { latencyMs: 20, plans: { 'churn-a': { rpm: { pro: CHURN_RPM } } } }, async ({ q, startWorkers }) => {
    // What the deployment costs Redis with nothing to do (BullMQ's blocking fetches, stalled checks, metrics
    // publishing, dispatch safety polls): the floor under any throttled figure.
    await startWorkers();
    await sleep(1500);
    const i0 = await redisCounters(ctx);
    const icpu0 = await cpuUs(pool);
    const it0 = performance.now();
    const stopIdleMonitor = startMonitor(ctx, 'idle');
    await sleep(IDLE_WINDOW_MS);
    stopIdleMonitor?.();
    const icpu1 = await cpuUs(pool);
    const iseconds = (performance.now() - it0) / 1000;
    const idle = { seconds: iseconds, cmds: commandsBetween(i0, await redisCounters(ctx)), cpuPct: cpuPctBetween(icpu0, icpu1, iseconds) };
    await fill(q, 'churn-a', CHURN_JOBS);
    // The first bucket-full runs at once; then the lane sleeps between tokens (one a second).
    const burst = await waitFor(() => pool.done.length >= CHURN_RPM, 30_000);
    await sleep(1500);
    let c0 = await redisCounters(ctx);
    const cpu0 = await cpuUs(pool);
    let d0 = pool.done.length;
    let t0 = performance.now();
    const stopMonitor = startMonitor(ctx, 'throttled');
    await sleep(CHURN_WINDOW_MS);
    stopMonitor?.();
    let c1 = await redisCounters(ctx);
    const cpu1 = await cpuUs(pool);
    let seconds = (performance.now() - t0) / 1000;
    const stats = await q.runtime.deps.cells[0].scheduler.orgStats('churn-a');
    const throttled = { burst, seconds, jobs: pool.done.length - d0, cmds: commandsBetween(c0, c1), cpuPct: cpuPctBetween(cpu0, cpu1, seconds), waitingAtEnd: stats.waiting };
    // Same backlog, limit lifted (the plan change wakes the lane at once).
    await q.runtime.deps.cells[0].scheduler.setPlan('churn-a', {});
    const d = pool.done.length;
    await waitFor(() => pool.done.length >= d + 200, 30_000);
    c0 = await redisCounters(ctx);
    d0 = pool.done.length;
    t0 = performance.now();
    const stopFreeMonitor = startMonitor(ctx, 'unthrottled');
    await sleep(UNTHROTTLED_WINDOW_MS);
    stopFreeMonitor?.();
    c1 = await redisCounters(ctx);
    seconds = (performance.now() - t0) / 1000;
    const free = { seconds, jobs: pool.done.length - d0, cmds: commandsBetween(c0, c1) };
    return { idle, throttled, free };
  });
  const { idle, throttled, free } = r;
  const idlePerS = idle.cmds.processed / idle.seconds;
  const perS = throttled.cmds.processed / throttled.seconds;
  const cpuTotal = throttled.cpuPct.reduce((a, b) => a + b, 0);
  const perJobThrottled = throttled.cmds.all / Math.max(1, throttled.jobs);
  const perJobFree = free.cmds.all / Math.max(1, free.jobs);
  const dispatchPerS = dispatchCalls(throttled.cmds.byCommand) / throttled.seconds;
  // What the throttled window cost beyond running its jobs at the unthrottled price per job.
  const overheadPerS = (throttled.cmds.all - throttled.jobs * perJobFree) / throttled.seconds;
  ctx.details.fairnessChurn = r;
  ctx.log(`  churn: throttled ${round(perS, 1)} cmds/s (${round(dispatchPerS, 1)} dispatch calls/s), workers ${round(cpuTotal, 2)}% of a core, ${throttled.jobs} jobs in ${round(throttled.seconds, 1)} s`);
  ctx.log(`  churn: commands/job throttled ${round(perJobThrottled, 1)} vs unthrottled ${round(perJobFree, 1)} (${free.jobs} jobs in ${round(free.seconds, 1)} s)`);
  const tc = `9 fairness: churn (org at ${CHURN_RPM} RPM, ${CHURN_JOBS} jobs waiting, ${WORKERS} worker processes)`;
  ctx.add({
    case: tc,
    name: 'Redis commands/s while throttled (total_commands_processed, INFO excluded)',
    value: round(perS, 1),
    unit: 'cmds/s',
    target: '<= 50',
    // A window in which the org ran nothing measured a stall, not the cost of running it at its rate.
    met: throttled.jobs > 0 ? perS <= 50 : null,
    note:
      `${throttled.jobs > 0 ? '' : 'not judged: no job of the org completed in the window, which should hold one a second. '}` +
      `${round(throttled.seconds, 1)} s window after the first bucket-full (${CHURN_RPM} jobs) ran: ${throttled.jobs} jobs completed in it, ${throttled.waitingAtEnd} still waiting. ` +
      `Redis 7 counts commands run inside Lua scripts in total_commands_processed (here equal to the commandstats sum). ` +
      `${round(dispatchPerS, 1)} dispatch script calls/s at one token a second (a lane with a minute of its rate waiting wakes for 10 s of tokens); beyond the window's jobs at the unthrottled price per job: ${round(overheadPerS, 1)} cmds/s. ` +
      `The same ${WORKERS} worker processes idle (no job at all): ${round(idlePerS, 1)} cmds/s`,
  });
  ctx.add({
    case: tc,
    name: 'Redis commands/s while throttled, above the idle deployment',
    value: round(perS - idlePerS, 1),
    unit: 'cmds/s',
    note: `throttled ${round(perS, 1)} minus idle ${round(idlePerS, 1)} (${round(idle.seconds, 1)} s window, workers up, no jobs): the throttled org's one job a second plus its wake-ups`,
  });
  ctx.add({
    case: tc,
    name: `worker CPU while throttled (${WORKERS} processes together, % of one core)`,
    value: round(cpuTotal, 2),
    unit: '%',
    target: '<= 5%',
    met: throttled.jobs > 0 ? cpuTotal <= 5 : null,
    // The floor under it: the same processes with no job at all (timers, blocking fetches, V8's own threads).
    note: `same window, jobs included; per process: ${throttled.cpuPct.map((p) => round(p, 2)).join(', ')}%. The same ${WORKERS} processes idle (no job at all, ${round(idle.seconds, 1)} s window): ${round(idle.cpuPct.reduce((a, b) => a + b, 0), 2)} % (${idle.cpuPct.map((p) => round(p, 2)).join(', ')})`,
  });
  ctx.add({
    case: tc,
    name: 'Redis commands per completed job, throttled / unthrottled',
    value: round(perJobThrottled / perJobFree, 2),
    unit: 'x',
    target: '<= 1.5',
    met: throttled.jobs > 0 ? perJobThrottled / perJobFree <= 1.5 : null,
    note: `${round(perJobThrottled, 1)} vs ${round(perJobFree, 1)} cmds/job (script-internal included; worker side, enqueue done before). Unthrottled: the same backlog with the limit lifted, ${free.jobs} jobs over ${round(free.seconds, 1)} s (${round(free.jobs / free.seconds, 0)} jobs/s); emulator latency 20 ms`,
  });
}

/** Starvation: a newcomer's jobs start within 2 x (slots) completions despite a saturating backlog. */
async function starvation(ctx: BenchContext, pool: Pool) {
  const r = await scenario(ctx, pool, { latencyMs: LATENCY_MS }, async ({ q, startWorkers }) => {
    await fill(q, 'starve-a', STARVE_A_JOBS);
    await startWorkers();
    await waitFor(() => pool.done.length >= 4 * SLOTS, 30_000);
    // BullMQ's wait list, sampled, and the target the dispatcher keeps it at: the sum of the live workers' asks
    // (fair/buffer-ask.ts: DISPATCH_BUFFER_RATIO x 10 each, or what a worker finishes in DISPATCH_BUFFER_MS if more).
    const waitKey = q.runtime.queue.toKey('wait');
    const asksKey = q.runtime.deps.cells[0].scheduler.keys.named.workerConc;
    const waitLen: number[] = [];
    const targets: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const [len, asks] = await Promise.all([ctx.b.control.llen(waitKey), ctx.b.control.hvals(asksKey)]);
        waitLen.push(len);
        targets.push(asks.reduce((a, b) => a + Number(b), 0));
        await sleep(10);
      }
    })();
    const calledAt = Date.now();
    const jobs = await q.runtime.deps.producer.enqueueBulk({ jobs: Array.from({ length: STARVE_B_JOBS }, (_, j) => RISK_REQUEST(`starve-b-${j}`)) }, { orgId: 'starve-b' });
    // Enqueued = laned and acknowledged (the call returned); completions during the call itself are noted apart.
    const enqueuedAt = Date.now();
    const ids = new Set(jobs.map((j) => j.id));
    const all = await waitFor(() => pool.done.filter((d) => ids.has(d.id)).length >= STARVE_B_JOBS, 30_000);
    sampling = false;
    await sampler;
    const done = [...pool.done];
    const ends = done.map((d) => d.end).sort((a, b) => a - b);
    // Completions (any org) after B's enqueue and before each B job started.
    const between = done
      .filter((d) => ids.has(d.id))
      .map((b) => ends.filter((e) => e >= enqueuedAt && e < b.start).length)
      .sort((a, b) => a - b);
    const fromCall = Math.max(...done.filter((d) => ids.has(d.id)).map((b) => ends.filter((e) => e >= calledAt && e < b.start).length));
    const aBefore = done.filter((d) => d.org === 'starve-a' && d.end < enqueuedAt).length;
    const duringCall = ends.filter((e) => e >= calledAt && e < enqueuedAt).length;
    return { all, between, fromCall, aBefore, callMs: enqueuedAt - calledAt, duringCall, waitMax: Math.max(...waitLen), targetMin: Math.min(...targets), targetMax: Math.max(...targets), waitMean: waitLen.reduce((a, b) => a + b, 0) / waitLen.length, startMs: done.filter((d) => ids.has(d.id)).map((d) => d.start - enqueuedAt).sort((a, b) => a - b) };
  });
  ctx.details.fairnessStarvation = r;
  const max = r.between.length ? Math.max(...r.between) : NaN;
  ctx.log(`  starvation: completions before each of B's jobs started: ${r.between.join(', ')} (max ${max}; bound ${2 * SLOTS})`);
  const tc = `9 fairness: starvation (${STARVE_A_JOBS} jobs of A saturating ${WORKERS} x ${CONCURRENCY} slots; B posts ${STARVE_B_JOBS})`;
  ctx.add({
    case: tc,
    name: `completions between B's enqueue and the start of each B job, max`,
    value: r.all ? max : null,
    unit: 'jobs',
    target: `<= ${2 * SLOTS} (2 x ${SLOTS})`,
    met: r.all ? max <= 2 * SLOTS : null,
    note: `all ${STARVE_B_JOBS} (one bulk request): ${r.between.join(', ')}; started ${r.startMs[0]}..${r.startMs[r.startMs.length - 1]} ms after the enqueue returned; the enqueue call (validation, admission, add, lane) took ${r.callMs} ms, ${r.duringCall} completions during it (not counted; counted from the call's start the max is ${r.fromCall}); ${r.aBefore} A jobs had completed before; emulator latency ${LATENCY_MS} ms; BullMQ wait list sampled meanwhile: mean ${round(r.waitMean, 1)}, max ${r.waitMax} (buffer target, the sum of the workers' asks: ${r.targetMin === r.targetMax ? r.targetMin : `${r.targetMin}..${r.targetMax}`})`,
  });
}

const jain = (xs: number[]) => {
  const s = xs.reduce((a, b) => a + b, 0);
  const s2 = xs.reduce((a, b) => a + b * b, 0);
  return s2 > 0 ? (s * s) / (xs.length * s2) : NaN;
};

/** Weights 1:1:2 with saturated backlogs: completed shares per 5 s window. */
async function weights(ctx: BenchContext, pool: Pool) {
  const orgs = Object.keys(WEIGHTS);
  const wsum = orgs.reduce((a, o) => a + WEIGHTS[o], 0);
  const r = await scenario(ctx, pool, { latencyMs: LATENCY_MS, plans: Object.fromEntries(orgs.map((o) => [o, { weight: WEIGHTS[o] }])) }, async ({ q, startWorkers }) => {
    // Interleaved, so no org's backlog is older than another's.
    for (let i = 0; i < WEIGHT_JOBS; i += 1000) {
      for (const o of orgs) {
        const k = Math.min(1000, WEIGHT_JOBS - i);
        await q.runtime.deps.producer.enqueueBulk({ jobs: Array.from({ length: k }, (_, j) => RISK_REQUEST(`${o}-${i + j}`)) }, { orgId: o });
      }
    }
    await startWorkers();
    await waitFor(() => pool.done.length >= 2 * SLOTS, 30_000);
    const t0 = Date.now() + 500;
    await sleep(t0 + WEIGHT_WINDOWS * WEIGHT_WINDOW_MS - Date.now() + 300);
    const done = [...pool.done];
    const windows = Array.from({ length: WEIGHT_WINDOWS }, (_, k) => {
      const from = t0 + k * WEIGHT_WINDOW_MS;
      const inW = done.filter((d) => d.end >= from && d.end < from + WEIGHT_WINDOW_MS);
      const counts = Object.fromEntries(orgs.map((o) => [o, inW.filter((d) => d.org === o).length]));
      return { total: inW.length, counts };
    });
    const completed = Object.fromEntries(orgs.map((o) => [o, done.filter((d) => d.org === o).length]));
    return { windows, completed };
  });
  const rows = r.windows.map((w) => {
    const shares = orgs.map((o) => (100 * w.counts[o]) / Math.max(1, w.total));
    const dev = orgs.map((o, i) => Math.abs(shares[i] - (100 * WEIGHTS[o]) / wsum));
    const relDev = orgs.map((o, i) => dev[i] / ((100 * WEIGHTS[o]) / wsum));
    return { total: w.total, shares, worstPts: Math.max(...dev), worstRel: Math.max(...relDev), jain: jain(orgs.map((o) => w.counts[o] / WEIGHTS[o])), jainEqual: jain([w.counts['w-a'], w.counts['w-b']]) };
  });
  const ranDry = orgs.filter((o) => r.completed[o] >= WEIGHT_JOBS);
  ctx.details.fairnessWeights = { ...r, rows };
  const worst = rows.reduce((a, b) => (b.worstPts > a.worstPts ? b : a), rows[0]);
  const worstJain = Math.min(...rows.map((w) => w.jain));
  const worstJainEqual = Math.min(...rows.map((w) => w.jainEqual));
  ctx.log(`  weights: windows ${rows.map((w) => `${w.shares.map((s) => round(s, 1)).join('/')} of ${w.total}`).join('; ')}; Jain ${rows.map((w) => round(w.jain, 4)).join(', ')}`);
  const tc = `9 fairness: weights 1:1:2 (saturated backlogs of ${WEIGHT_JOBS} each, ${WORKERS} x ${CONCURRENCY} slots)`;
  const valid = rows.length > 0 && rows.every((w) => w.total > 0) && ranDry.length === 0;
  ctx.add({
    case: tc,
    name: `completed shares vs 25/25/50, worst org in the worst ${WEIGHT_WINDOW_MS / 1000} s window`,
    value: valid ? `${worst.shares.map((s) => round(s, 1)).join(' / ')} (off by ${round(worst.worstPts, 2)} pts)` : null,
    unit: '',
    target: 'within ±5 pts',
    met: valid ? worst.worstPts <= 5 : null,
    note: `${WEIGHT_WINDOWS} windows (the issue does not fix a count; ${WEIGHT_WINDOWS * WEIGHT_WINDOW_MS / 1000} s to fit the budget): ${rows.map((w) => `${w.shares.map((s) => round(s, 1)).join('/')} of ${w.total} jobs`).join('; ')}; worst relative deviation ${round(100 * Math.max(...rows.map((w) => w.worstRel)), 1)}% of the org's share${ranDry.length ? `; backlog ran dry: ${ranDry.join(', ')}` : ''}`,
  });
  ctx.add({
    case: tc,
    name: "Jain's index of weight-normalised completions, worst window",
    value: valid ? round(worstJain, 4) : null,
    unit: '',
    target: '>= 0.99',
    met: valid ? worstJain >= 0.99 : null,
    note: `per window: ${rows.map((w) => round(w.jain, 4)).join(', ')}; the two equal-weight orgs alone, worst window: ${round(worstJainEqual, 4)}`,
  });
}

/** Caps: an org with concurrency 3 never has more than 3 jobs running, across 4 worker processes. */
async function caps(ctx: BenchContext, pool: Pool) {
  const r = await scenario(ctx, pool, { latencyMs: LATENCY_MS, plans: { 'cap-c': { concurrency: CAP } } }, async ({ q, startWorkers }) => {
    await fill(q, 'cap-c', CAP_JOBS);
    await fill(q, 'cap-d', CAP_FILLER_JOBS);
    const inflightKey = q.runtime.deps.cells[0].scheduler.keys.inflight;
    let sampledMax = 0;
    let samples = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        sampledMax = Math.max(sampledMax, Number((await ctx.b.control.hget(inflightKey, 'cap-c')) ?? 0));
        samples++;
        await sleep(10);
      }
    })();
    await startWorkers();
    const t0 = Date.now();
    const all = await waitFor(() => pool.done.filter((d) => d.org === 'cap-c').length >= CAP_JOBS, 45_000);
    const seconds = (Date.now() - t0) / 1000;
    sampling = false;
    await sampler;
    const c = pool.done.filter((d) => d.org === 'cap-c');
    // Exact maximum of jobs running at once (BullMQ active -> outcome recorded), from every job's own times.
    const edges = c.flatMap((d) => [[d.start, 1] as const, [d.end, -1] as const]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let running = 0;
    let runningMax = 0;
    for (const [, step] of edges) runningMax = Math.max(runningMax, (running += step));
    const workersUsed = new Set(c.map((d) => d.worker)).size;
    // Jobs/s x mean run time: how many of its slots the org actually used for running (the rest sat in BullMQ's wait).
    const meanRunS = c.reduce((a, d) => a + d.end - d.start, 0) / Math.max(1, c.length) / 1000;
    const span = c.length ? (Math.max(...c.map((d) => d.end)) - Math.min(...c.map((d) => d.start))) / 1000 : NaN;
    const effective = (c.length / span) * meanRunS;
    return { all, seconds, runningMax, sampledMax, samples, workersUsed, jobs: c.length, others: pool.done.length - c.length, meanRunS, effective };
  });
  ctx.details.fairnessCaps = r;
  ctx.log(`  caps: max running ${r.runningMax}, max dispatcher in-flight sampled ${r.sampledMax} (${r.samples} samples), ${r.jobs} jobs in ${round(r.seconds, 1)} s on ${r.workersUsed} processes`);
  const tc = `9 fairness: caps (org with concurrency ${CAP}, ${WORKERS} worker processes)`;
  ctx.add({
    case: tc,
    name: 'jobs of the org running at once, max',
    value: r.all ? r.runningMax : null,
    unit: 'jobs',
    target: `<= ${CAP}`,
    met: r.all ? r.runningMax <= CAP : null,
    note: `exact, from every job's active -> completed times (${r.jobs} jobs on ${r.workersUsed} processes, beside ${r.others} of an uncapped org); dispatcher's in-flight count (BullMQ wait + active) sampled every ~10 ms: max ${r.sampledMax} over ${r.samples} samples`,
  });
  ctx.add({
    case: tc,
    name: 'slots the capped org used for running (jobs/s x mean run time)',
    value: round(r.effective, 2),
    unit: `of ${CAP}`,
    note: `${round(r.jobs / r.seconds, 1)} jobs/s, mean run ${round(r.meanRunS * 1000, 0)} ms: a dispatched job holds its org's slot while it waits in BullMQ's FIFO wait list behind the workers' asks (DISPATCH_BUFFER_RATIO 0.5 x ${CONCURRENCY} each at this job length) of other orgs' jobs`,
  });
}

/** The cost part's counted windows, with (A) and without (B) the dispatcher: the pairs AB, BA, AB. */
const COST_ORDER = ['agentq-miss', 'agentq-miss-nofair', 'agentq-miss-nofair', 'agentq-miss', 'agentq-miss', 'agentq-miss-nofair'] as const;

/** Cost: single-org unthrottled throughput through the dispatcher vs without it, alternated (COST_ORDER). */
async function cost(ctx: BenchContext, _pool: Pool) {
  const expected = ctx.shared.agentqMissMaxPerS ?? 500;
  const runs: RunResult[] = [];
  // A window of each, not counted: in every run the first of the four was the slowest (full runs: 741 vs 1045,
  // 905 vs 1172, 760 vs 972 jobs/s; alone in a process 508-758 vs 955-1188), and the order puts it on one side.
  // Scratch, alone in a process, after one fair window not counted: 722 / 803 vs 1144 / 1024; after one of each:
  // 1072 / 1202 vs 1122 / 1111 (with the dispatcher, first vs last).
  for (const path of ['agentq-miss', 'agentq-miss-nofair'] as const) await measurePath(ctx, path, 50, expected, { quiet: true });
  // Three windows of each, in pairs that change which side goes first: with two of each, one slow window (the
  // host's: 651 vs 828 jobs/s for the same side in one run) moved the ratio by a tenth (0.88x and 1.02x on the
  // same code, 2026-12-05 19:25 and 19:11); the median of three leaves one such window out.
  for (const path of COST_ORDER) runs.push(await measurePath(ctx, path, 50, expected, { quiet: true }));
  const of = (p: string) => runs.filter((r) => r.path === p);
  const mean = (rs: RunResult[], k: 'jobsPerS' | 'commandsPerJob') => rs.reduce((a, r) => a + r[k], 0) / rs.length;
  const median = (rs: RunResult[]) => percentile(rs.map((r) => r.jobsPerS), 50);
  const fair = median(of('agentq-miss'));
  const bare = median(of('agentq-miss-nofair'));
  ctx.details.fairnessCost = runs;
  ctx.log(`  cost: with the dispatcher ${of('agentq-miss').map((r) => r.jobsPerS).join(', ')} jobs/s, without ${of('agentq-miss-nofair').map((r) => r.jobsPerS).join(', ')} jobs/s`);
  const tc = '9 fairness: cost (one org, unthrottled, cache-miss path, c=50, one process)';
  ctx.add({ case: tc, name: 'agentq with the fair dispatcher', value: round(fair, 1), unit: 'jobs/s', note: `median of rounds ${of('agentq-miss').map((r) => r.jobsPerS).join(', ')}; ${round(mean(of('agentq-miss'), 'commandsPerJob'), 1)} cmds/job` });
  ctx.add({ case: tc, name: 'agentq without it (runtime fairDispatch: false, bench baseline)', value: round(bare, 1), unit: 'jobs/s', note: `median of rounds ${of('agentq-miss-nofair').map((r) => r.jobsPerS).join(', ')}; ${round(mean(of('agentq-miss-nofair'), 'commandsPerJob'), 1)} cmds/job` });
  ctx.add({ case: tc, name: 'with / without the dispatcher', value: round(fair / bare, 2), unit: 'x', target: '>= 0.9', met: fair / bare >= 0.9, note: `medians of three rounds each; same window as case 1 (0.5 s warm-up, 4 s), rounds in the order ${COST_ORDER.map((p) => (p === 'agentq-miss' ? 'with' : 'without')).join(' / ')} after one of each not counted` });
}

/**
 * Case 9: fair multi-tenant scheduling, on 4 worker processes (bench children running agentq's runtime)
 * fed by a producer in this process: churn of a throttled org, starvation of a newcomer, weighted
 * shares, concurrency caps, and what the dispatcher costs a single org.
 */
export async function fairnessCase(ctx: BenchContext): Promise<void> {
  // BENCH_FAIRNESS_PARTS=churn,caps runs a subset while developing.
  const only = process.env.BENCH_FAIRNESS_PARTS?.split(',').map((s) => s.trim());
  const parts = ([
    ['churn', churn],
    ['starvation', starvation],
    ['weights', weights],
    ['caps', caps],
    ['cost', cost],
  ] as const).filter(([name]) => !only || only.includes(name));
  const arg = JSON.stringify({ redisUrl: ctx.b.redis.url, databaseUrl: ctx.b.databaseUrl, emulatorUrl: ctx.b.emulatorUrl });
  // The cost part runs in this process; the others need the worker processes.
  const workers = parts.some(([name]) => name !== 'cost') ? WORKERS : 0;
  const pool: Pool = { children: Array.from({ length: workers }, () => startChild('fair-worker', [arg])), done: [] };
  pool.children.forEach((c, worker) =>
    c.child.on('message', (m: { done?: Array<[string, string, number, number]> }) => {
      if (!m?.done) return;
      for (const [id, org, start, end] of m.done) pool.done.push({ id, org, start, end, worker });
    }),
  );
  try {
    const t = Date.now();
    await Promise.all(pool.children.map((c) => c.ready));
    if (workers) ctx.log(`  ${workers} worker processes up in ${round((Date.now() - t) / 1000, 1)} s`);
    for (const [name, part] of parts) {
      const t = Date.now();
      await part(ctx, pool);
      ctx.log(`  fairness ${name}: ${round((Date.now() - t) / 1000, 1)} s`);
    }
  } finally {
    await Promise.all(pool.children.map((c) => c.stop()));
  }
}
