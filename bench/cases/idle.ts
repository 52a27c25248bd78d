import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BenchContext } from '../lib/context.js';
import { commandCalls, diffCalls } from '../lib/infra.js';
import { round } from '../lib/stats.js';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
/** Long enough to hold whole periods of every idle timer (stalled checks, blocking fetches, dispatch poll). */
const WINDOW_MS = Number(process.env.BENCH_IDLE_WINDOW_S ?? 30) * 1000;
/** Start-up traffic (migrations check, script loads, first dispatch) is left out of the window. */
const SETTLE_MS = 3000;

/** The defaults before the 15 s crash-recovery bound: 30 s lock, 30 s stalled check. */
const OLD_TIMING = { LOCK_DURATION_MS: '30000', STALLED_INTERVAL_MS: '30000' };

/** Redis commands per second over `WINDOW_MS` (INFO commandstats delta, INFO itself left out). */
async function rate(ctx: BenchContext) {
  const a = await commandCalls(ctx.b.control);
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const b = await commandCalls(ctx.b.control);
  const seconds = (performance.now() - t0) / 1000;
  return { perS: round((b.total - a.total) / seconds, 2), byCommand: diffCalls(a, b) };
}

/** `npm run worker` (src/main.ts worker) with `timing`, idle on its own queue prefix, for one window. */
async function idleWorker(ctx: BenchContext, timing: Record<string, string>) {
  const cfg = ctx.b.config();
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'worker'], {
    env: {
      ...process.env,
      NODE_ENV: 'production',
      LOG_LEVEL: 'info',
      LOG_FORMAT: 'json',
      REDIS_URL: cfg.REDIS_URL,
      DATABASE_URL: ctx.b.databaseUrl,
      QUEUE_PREFIX: cfg.QUEUE_PREFIX,
      GEMINI_API_KEY: 'bench-not-a-real-key',
      GOOGLE_GEMINI_BASE_URL: ctx.b.emulatorUrl,
      ...timing,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('close', resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('"msg":"worker started"')) resolve();
      });
      void exited.then(() => reject(new Error(`idle worker exited before it started: ${out.slice(-500)}`)));
    });
    await sleep(SETTLE_MS);
    return await rate(ctx);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
}

/**
 * What one idle worker process costs Redis: commands/s with no agentq process at all, then with one idle
 * `npm run worker` on the default timings, then on the old 30 s / 30 s timings (same window each).
 */
export async function idleCase(ctx: BenchContext): Promise<void> {
  const none = await rate(ctx);
  ctx.log(`  no worker: ${none.perS} cmds/s`);
  const now = await idleWorker(ctx, {});
  ctx.log(`  idle worker, default timings: ${now.perS} cmds/s ${JSON.stringify(now.byCommand)}`);
  const old = await idleWorker(ctx, OLD_TIMING);
  ctx.log(`  idle worker, 30 s lock / 30 s stalled check: ${old.perS} cmds/s ${JSON.stringify(old.byCommand)}`);
  ctx.details.idle = { windowS: WINDOW_MS / 1000, none, defaults: now, old };
  const c = '10 idle worker';
  ctx.add({ case: c, name: 'Redis commands/s with no agentq process', value: none.perS, unit: 'cmds/s' });
  ctx.add({
    case: c,
    name: 'Redis commands/s one idle worker process adds, default timings (8 s lock, 4 s stalled check)',
    value: round(now.perS - none.perS, 2),
    unit: 'cmds/s',
    note: `${WINDOW_MS / 1000} s window, INFO commandstats delta (script-internal commands included)`,
  });
  ctx.add({
    case: c,
    name: 'the same with the old 30 s lock / 30 s stalled check',
    value: round(old.perS - none.perS, 2),
    unit: 'cmds/s',
  });
}
