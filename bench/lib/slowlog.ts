import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { LUA_DIR, readLua } from '../../src/shared/infra/lua.js';
import { round } from './stats.js';

/** One script's share of Redis time over a window, from the slow log (see `startScriptTimes`). */
export interface ScriptTime {
  script: string;
  callsPerJob: number;
  usPerCall: number;
  usPerJob: number;
}

/** agentq's scripts by the SHA1 Redis knows them by (the same source `defineLua` sends, includes inlined). */
function agentqScripts(): Map<string, string> {
  const names = new Map<string, string>();
  for (const file of readdirSync(LUA_DIR).filter((f) => f.endsWith('.lua'))) {
    names.set(createHash('sha1').update(readLua(file)).digest('hex'), file.replace(/\.lua$/, ''));
  }
  return names;
}

/**
 * Diagnostic only (BENCH_SLOWLOG): which script the Redis time of a window goes to. INFO commandstats sums every
 * EVALSHA into one line; the slow log with a threshold of 0 records each call with its duration and arguments,
 * so calls can be told apart by SHA (a BullMQ script, not in agentq's folder, by its key count and first key).
 * Logging every command, the script-internal ones included, slows Redis: durations are inflated, most for the
 * scripts that run the most commands; use the shares, never the figures.
 */
export async function startScriptTimes(control: Redis): Promise<(jobs: number) => Promise<ScriptTime[]>> {
  const [[, maxLen], [, slower]] = [(await control.config('GET', 'slowlog-max-len')) as string[], (await control.config('GET', 'slowlog-log-slower-than')) as string[]];
  await control.config('SET', 'slowlog-max-len', '1000000');
  await control.config('SET', 'slowlog-log-slower-than', '0');
  await control.call('SLOWLOG', 'RESET');
  return async (jobs) => {
    await control.config('SET', 'slowlog-log-slower-than', slower);
    const entries = (await control.call('SLOWLOG', 'GET', '-1')) as Array<[number, number, number, string[]]>;
    await control.call('SLOWLOG', 'RESET');
    await control.config('SET', 'slowlog-max-len', maxLen);
    const names = agentqScripts();
    const sums = new Map<string, { calls: number; us: number }>();
    for (const [, , us, args] of entries) {
      if (!/^evalsha$/i.test(args[0] ?? '')) continue;
      const sha = args[1] ?? '';
      const script = names.get(sha) ?? `bullmq ${args[2]}-key script (first key ${(args[3] ?? '').replace(/^\{[^}]*\}:/, '')})`;
      const s = sums.get(script) ?? { calls: 0, us: 0 };
      s.calls++;
      s.us += us;
      sums.set(script, s);
    }
    const n = Math.max(1, jobs);
    return [...sums]
      .map(([script, s]) => ({ script, callsPerJob: round(s.calls / n, 2), usPerCall: round(s.us / s.calls, 1), usPerJob: round(s.us / n, 1) }))
      .sort((a, b) => b.usPerJob - a.usPerJob);
  };
}
