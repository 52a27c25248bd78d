/**
 * `npm run bench`: every case in one run against one private redis-server, PGlite and emulator, so the
 * figures are ratios that hold on a noisy machine. Writes bench/results/latest.{json,md}. A missed target
 * is reported, not an error; only a crash exits non-zero. `BENCH_ONLY=throughput,guards` runs a subset (written to
 * bench/results/only-throughput-guards.{json,md});
 * `BENCH_BUDGET_S` raises the 600 s budget the vector case sizes itself against.
 */
import { loadavg } from 'node:os';
import { accuracyCase } from './cases/accuracy.js';
import { clusterCase } from './cases/cluster.js';
import { commandsCase } from './cases/commands.js';
import { enqueueCase } from './cases/enqueue.js';
import { fairnessCase } from './cases/fairness.js';
import { guardCostsCase } from './cases/guard-costs.js';
import { idleCase } from './cases/idle.js';
import { redisInstructionsCase } from './cases/redis-instructions.js';
import { latencyCase } from './cases/latency.js';
import { streamingCase } from './cases/streaming.js';
import { throughputCase } from './cases/throughput.js';
import { tracingCase } from './cases/tracing.js';
import { tiersCase } from './cases/tiers.js';
import { vectorsCase } from './cases/vectors.js';
import { vectorsLargeCase } from './cases/vectors-large.js';
import { vectorsLargeCacheCase } from './cases/vectors-large-cache.js';
import type { BenchCase, BenchContext } from './lib/context.js';
import { startBenchInfra } from './lib/infra.js';
import { machineInfo, writeReport, type BenchReport, type Figure } from './lib/report.js';

/** The whole run must fit 10 minutes on 2 cores; BENCH_BUDGET_S raises it (e.g. to load 100k vectors). */
const BUDGET_MS = Number(process.env.BENCH_BUDGET_S ?? 600) * 1000;
/** Kept free at the end for the cases after the vector case and for shutdown. */
const RESERVE_MS = 45_000;

const CASES: BenchCase[] = [
  { name: 'guards', run: guardCostsCase },
  { name: 'throughput', run: throughputCase },
  { name: 'commands', run: commandsCase },
  { name: 'enqueue', run: enqueueCase },
  { name: 'latency', run: latencyCase },
  { name: 'streaming', run: streamingCase },
  { name: 'accuracy', run: accuracyCase },
  { name: 'fairness', run: fairnessCase },
  { name: 'cluster', run: clusterCase },
  { name: 'tracing', run: tracingCase },
  { name: 'idle', run: idleCase },
  { name: 'tiers', run: tiersCase },
  { name: 'vectors', run: vectorsCase },
  // Opt in only (BENCH_ONLY=vectors-large): loads 2 x 100k vectors, far beyond the 10-minute budget.
  { name: 'vectors-large', run: vectorsLargeCase, optIn: true },
  // Opt in only (BENCH_ONLY=vectors-large-cache): the semantic cache at 2 x 100k entries.
  { name: 'vectors-large-cache', run: vectorsLargeCacheCase, optIn: true },
  // Opt in only (BENCH_ONLY=redis-instructions): Redis under callgrind, ~2 minutes; needs valgrind.
  { name: 'redis-instructions', run: redisInstructionsCase, optIn: true },
];

async function main(): Promise<number> {
  const startedAt = new Date();
  const t0 = Date.now();
  const loadAtStart = loadavg().map((n) => Math.round(n * 100) / 100);
  const log = (msg: string) => console.log(`[bench ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}`);
  const only = process.env.BENCH_ONLY?.split(',').map((s) => s.trim());
  const figures: Figure[] = [];
  const errors: Array<{ case: string; error: string }> = [];
  log('starting private redis-server, PGlite and the Gemini emulator');
  const b = await startBenchInfra(log);
  // However this process ends, the private redis-server must not outlive it (the other children exit when
  // their IPC channel closes).
  process.on('exit', () => {
    if (b.redis.process.exitCode === null) b.redis.process.kill('SIGKILL');
  });
  // Ctrl-C or a kill must not leave the private redis-server (or the child processes) behind.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      log(`${signal}: stopping`);
      void b.close().finally(() => process.exit(130));
    });
  }
  const ctx: BenchContext = {
    b,
    add: (f) => figures.push(f),
    log,
    deadline: t0 + BUDGET_MS - RESERVE_MS,
    shared: {},
    details: {},
  };
  try {
    for (const c of CASES) {
      if (only ? !only.includes(c.name) : c.optIn) continue;
      const started = Date.now();
      log(`case ${c.name}: start`);
      try {
        await c.run(ctx);
        log(`case ${c.name}: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      } catch (err) {
        // One crashed case must not hide the others' figures; it still fails the run.
        const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
        errors.push({ case: c.name, error: message.split('\n').slice(0, 3).join(' ') });
        log(`case ${c.name}: CRASHED: ${message}`);
      }
    }
  } finally {
    await b.close().catch((err: unknown) => log(`closing the bench infrastructure failed: ${String(err)}`));
  }
  const m = machineInfo(b.redisVersion);
  const report: BenchReport = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    durationS: Math.round((Date.now() - t0) / 1000),
    machine: { cpus: m.cpus, cpuModel: m.cpuModel, loadAvgAtStart: loadAtStart, loadAvgAtEnd: m.loadAvg, node: m.node, redis: m.redis },
    figures,
    errors,
    ...({ details: ctx.details } as object),
  };
  const files = writeReport(report, only);
  const missed = figures.filter((f) => f.met === false).length;
  log(`wrote ${files.md} and ${files.json}: ${figures.length} figures, ${missed} targets missed, ${errors.length} cases crashed`);
  return errors.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error('bench crashed:', err);
    process.exit(1);
  },
);
