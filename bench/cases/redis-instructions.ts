import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { startRedisServer } from '../../src/shared/infra/redis/redis-server.js';
import type { BenchContext } from '../lib/context.js';
import { round } from '../lib/stats.js';
import { measurePath, type Path } from './throughput.js';

/**
 * Case 2b (opt in, `BENCH_ONLY=redis-instructions`; needs valgrind): Redis's work per job counted in instructions
 * (callgrind), nearly the same whatever the host's speed or load (repeats within ~3 %), where the time figures of
 * case 2 move by a third between runs on a shared host. The throughput case's c=1 paths run against a
 * redis-server of their own under callgrind, whose counters are dumped when each measurement window opens and
 * closes. Under callgrind the worker finishes 15-20x fewer jobs per second and would ask for a shorter wait list
 * by time (fair/buffer-ask.ts): DISPATCH_BUFFER_MS is raised 15x, so the dispatcher refills in the batches it
 * uses on a normal run. Jobs that finish while callgrind_control dumps count on one side only (their
 * instructions at the window's start, the jobs at its end), so the two edges mostly cancel; long windows
 * (`WINDOW_MS`) keep what remains small.
 */
const WINDOW_MS = 10_000;
const SLOWDOWN = 15;
const PATHS: Array<[Path, number]> = [
  ['bare-noop', 200],
  ['agentq-hit', 60],
  ['bare-llm', 60],
  ['agentq-miss', 40],
];

function valgrindMissing(): boolean {
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' });
    execFileSync('callgrind_control', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
}

/** The Ir total of the newest dump in `dir` (callgrind numbers them: `cg.<pid>.<n>`). */
function latestDumpIr(dir: string): number {
  const seq = (f: string) => Number(/^cg\.\d+\.(\d+)$/.exec(f)?.[1] ?? -1);
  const newest = readdirSync(dir).sort((a, b) => seq(a) - seq(b)).at(-1);
  if (!newest) throw new Error(`no callgrind dump in ${dir}`);
  const m = /^(?:totals|summary): (\d+)/m.exec(readFileSync(join(dir, newest), 'utf8'));
  if (!m) throw new Error(`no instruction total in ${newest}`);
  return Number(m[1]);
}

export async function redisInstructionsCase(ctx: BenchContext): Promise<void> {
  const c = '2b Redis instructions per job (callgrind, c=1; opt in)';
  if (valgrindMissing()) {
    ctx.add({ case: c, name: 'not run', value: null, unit: '', met: null, note: 'valgrind / callgrind_control not installed' });
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'agentq-callgrind-'));
  const redis = await startRedisServer({ wrap: ['valgrind', '--tool=callgrind', '--dump-instr=no', `--callgrind-out-file=${join(dir, 'cg.%p')}`] });
  const control = new Redis(redis.url, { maxRetriesPerRequest: null });
  try {
    const pid = /process_id:(\d+)/.exec(await control.info('server'))?.[1];
    if (!pid) throw new Error('redis-server did not report its pid');
    let windowIr = 0;
    const dump = () => execFileSync('callgrind_control', ['-d', pid], { stdio: 'ignore' });
    const sub: BenchContext = {
      ...ctx,
      b: {
        ...ctx.b,
        redis,
        control,
        infra: { ...ctx.b.infra, redisTarget: redis.url },
        // The api connection's command timeout (2 s) would fail a call of a slowed Redis on a busy machine.
        config: (env = {}) => ctx.b.config({ DISPATCH_BUFFER_MS: String(40 * SLOWDOWN), REDIS_COMMAND_TIMEOUT_MS: '60000', ...env, REDIS_URL: redis.url }),
      },
      windowEdge: async (edge) => {
        dump();
        if (edge === 'end') windowIr = latestDumpIr(dir);
      },
    };
    const perJob: Partial<Record<Path, number>> = {};
    for (const [path, expected] of PATHS.filter(([p]) => !process.env.BENCH_INSTRUCTIONS_PATHS || process.env.BENCH_INSTRUCTIONS_PATHS.split(',').includes(p))) {
      const r = await measurePath(sub, path, 1, expected, { quiet: true, windowMs: WINDOW_MS });
      perJob[path] = Math.round(windowIr / Math.max(1, r.jobs));
      ctx.log(`  ${path} c=1 under callgrind: ${r.jobs} jobs, ${perJob[path]} Redis instructions/job, ${r.commandsPerJob} commands/job`);
      ctx.add({ case: c, name: `${path}: Redis instructions per job`, value: perJob[path], unit: 'instructions', note: `${r.jobs} jobs in ${r.seconds} s; ${r.commandsPerJob} Redis commands/job` });
    }
    const ratio = (a?: number, b?: number) => (a && b ? round(a / b, 2) : null);
    ctx.add({ case: c, name: 'agentq hit / bare no-op (a)', value: ratio(perJob['agentq-hit'], perJob['bare-noop']), unit: 'x' });
    ctx.add({ case: c, name: 'agentq miss / bare + SDK (b)', value: ratio(perJob['agentq-miss'], perJob['bare-llm']), unit: 'x', note: 'the Redis-time target (<= 1.3x) counted in instructions' });
    ctx.details.redisInstructions = perJob;
  } finally {
    control.disconnect();
    await redis.stop();
    if (process.env.BENCH_INSTRUCTIONS_KEEP) execFileSync('cp', ['-r', dir, process.env.BENCH_INSTRUCTIONS_KEEP]);
    rmSync(dir, { recursive: true, force: true });
  }
}
