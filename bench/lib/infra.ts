import { Redis } from 'ioredis';
import type pg from 'pg';
import { parseConfig, type Config } from '../../src/shared/core/config.js';
import { migrate } from '../../src/shared/infra/db/migrate.js';
import { createPool } from '../../src/shared/infra/db/pool.js';
import { createEmulatorControl, type EmulatorControl } from '../../dev/gemini-emulator/emulator.js';
import type { Infra } from '../../src/shared/infra/infra.js';
import { startRedisServer, type RedisServerHandle } from '../../src/shared/infra/redis/redis-server.js';
import { startChild, type BenchChild } from './child.js';

export interface BenchInfra {
  redis: RedisServerHandle;
  redisVersion: string;
  /** A plain connection for the bench's own bookkeeping (INFO, FLUSHALL). */
  control: Redis;
  databaseUrl: string;
  pool: pg.Pool;
  pg: BenchChild<{ url: string }>;
  emulatorUrl: string;
  emulator: EmulatorControl;
  /** The `Infra` agentq's composition root takes. */
  infra: Infra;
  /** Config as `npm start` would parse it, pointed at the bench's infrastructure. */
  config(env?: Record<string, string>): Config;
  close(): Promise<void>;
}

/** Limits high enough that the limiter never throttles the throughput cases, with every guard still on. */
export const UNTHROTTLED_MODEL_LIMITS = JSON.stringify(
  Object.fromEntries(['gemini-2.5-pro', 'gemini-2.5-flash'].map((m) => [m, { rpm: 1e9, tpm: 1e12, orgRpm: 1e9 }])),
);

export const BENCH_ENV: Record<string, string> = {
  NODE_ENV: 'production',
  LOG_LEVEL: 'silent',
  MODEL_LIMITS: UNTHROTTLED_MODEL_LIMITS,
  RATE_LIMIT_PLANS: JSON.stringify({ general: { points: 1e9, durationS: 1 } }),
  // Long enough that no stalled check or lock renewal lands inside a short measurement window by accident.
  LOCK_DURATION_MS: '30000',
  STALLED_INTERVAL_MS: '30000',
};

/**
 * Everything the bench measures against, private to this run: a redis-server on a free port (no
 * persistence), PGlite in a temp dir served from its own process, and the Gemini emulator in its own process.
 */
export async function startBenchInfra(log: (msg: string) => void): Promise<BenchInfra> {
  const pgChild = startChild<{ url: string }>('pglite');
  const emuChild = startChild<{ url: string }>('emulator');
  const redis = await startRedisServer();
  const control = new Redis(redis.url, { maxRetriesPerRequest: null });
  const redisVersion = /redis_version:(\S+)/.exec(await control.info('server'))?.[1] ?? 'unknown';
  log(`redis-server ${redisVersion} on ${redis.url}`);
  const [{ url: databaseUrl }, { url: emulatorUrl }] = await Promise.all([pgChild.ready, emuChild.ready]);
  log(`PGlite on ${new URL(databaseUrl).host}, emulator on ${emulatorUrl}`);
  const pool = createPool(databaseUrl, { max: 8 });
  await migrate(pool);
  const infra: Infra = { redisTarget: redis.url, db: { pool, longPool: pool, url: databaseUrl, embedded: false, close: async () => {} }, close: async () => {} };
  return {
    redis,
    redisVersion,
    control,
    databaseUrl,
    pool,
    pg: pgChild,
    emulatorUrl,
    emulator: createEmulatorControl(emulatorUrl),
    infra,
    config: (env = {}) =>
      parseConfig({
        ...BENCH_ENV,
        REDIS_URL: redis.url,
        DATABASE_URL: databaseUrl,
        GEMINI_API_KEY: 'bench-not-a-real-key',
        QUEUE_PREFIX: `{b${Math.random().toString(36).slice(2, 8)}}`,
        ...env,
      }),
    async close() {
      control.disconnect();
      await pool.end().catch(() => {});
      await Promise.all([pgChild.stop(), emuChild.stop(), redis.stop()]);
    },
  };
}

/**
 * `INFO commandstats` minus the INFO calls themselves (the bench's bookkeeping): calls per command and in
 * total, and `usec`, the server time commands took. A command run inside a Lua script counts in its own
 * line and inside the script's EVALSHA time too, so `usec` over-counts scripted work (an upper bound, for
 * BullMQ's scripts and agentq's alike). `cpuUs` is the server's CPU (INFO cpu, user + sys), I/O included.
 */
export async function commandCalls(control: Redis): Promise<{ total: number; byCommand: Record<string, number>; usecByCommand: Record<string, number>; usec: number; cpuUs: number }> {
  const info = await control.info('commandstats');
  const byCommand: Record<string, number> = {};
  const usecByCommand: Record<string, number> = {};
  let total = 0;
  let usec = 0;
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    if (m[1] === 'info') continue;
    byCommand[m[1]] = Number(m[2]);
    usecByCommand[m[1]] = Number(m[3]);
    total += Number(m[2]);
    usec += Number(m[3]);
  }
  const cpu = await control.info('cpu');
  const sec = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(cpu)?.[1] ?? 0);
  return { total, byCommand, usecByCommand, usec, cpuUs: Math.round((sec('used_cpu_user') + sec('used_cpu_sys')) * 1e6) };
}

export function diffCalls(a: { byCommand: Record<string, number> }, b: { byCommand: Record<string, number> }): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(b.byCommand)) {
    const d = v - (a.byCommand[k] ?? 0);
    if (d) out[k] = d;
  }
  return out;
}
