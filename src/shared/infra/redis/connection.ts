import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../../core/logger.js';
import { pingRedis, startRedisServer, type RedisServerHandle } from './redis-server.js';

export class RedisSetupError extends Error {
  override name = 'RedisSetupError';
}

/**
 * `worker`: BullMQ workers and blocking readers, which must wait out outages (maxRetriesPerRequest null).
 * `api`: request paths, which must fail fast while Redis is down instead of queueing commands.
 */
export function createRedis(url: string, role: 'worker' | 'api', extra: RedisOptions = {}): Redis {
  const base: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 1000, commandTimeout: 2000 };
  const client = new Redis(url, {
    ...base,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
    ...extra,
  });
  // Connection errors surface through command rejections; an unhandled 'error' event would crash the process.
  client.on('error', () => {});
  return client;
}

function hasRedisServerBinary(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes sure something answers at `url`. On a developer machine with nothing running, starts
 * `redis-server` as a child with AOF data under `<dataDir>/redis`.
 */
export async function ensureRedis(opts: { url: string; autostart: boolean; dataDir: string; logger: Logger }): Promise<RedisServerHandle | undefined> {
  if (await pingRedis(opts.url, 1000)) return undefined;
  const parsed = new URL(opts.url);
  const local = ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(parsed.hostname);
  if (!opts.autostart || !local || !hasRedisServerBinary()) {
    throw new RedisSetupError(
      `Nothing answers at REDIS_URL (${parsed.host}). Start Redis 7 (e.g. \`redis-server --appendonly yes --maxmemory-policy noeviction\`, or \`docker compose up redis\`) or set REDIS_URL.`,
    );
  }
  const port = Number(parsed.port || 6379);
  const dir = join(opts.dataDir, 'redis');
  opts.logger.warn({ port, dir }, 'no Redis answered; starting a local redis-server child (AOF on, noeviction)');
  return startRedisServer({ port, dir });
}

/** BullMQ loses jobs when Redis evicts keys, so any policy but noeviction is refused at start. */
export async function assertNoEviction(redis: Redis): Promise<void> {
  let policy: string | undefined;
  try {
    const reply = (await redis.config('GET', 'maxmemory-policy')) as string[];
    policy = reply[1];
  } catch {
    // Managed Redis often disables CONFIG; INFO still reports the policy.
    const info = await redis.info('memory');
    policy = /maxmemory_policy:(\S+)/.exec(info)?.[1];
  }
  if (policy && policy !== 'noeviction') {
    throw new RedisSetupError(
      `Redis maxmemory-policy is "${policy}"; agentq needs "noeviction" (any other policy can silently drop queued jobs). Run: CONFIG SET maxmemory-policy noeviction`,
    );
  }
}

/** Resolves once the client is connected; fail-fast clients refuse commands until then. */
export function whenReady(client: Redis, timeoutMs = 5000): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off('ready', onReady);
      reject(new RedisSetupError(`Redis did not become ready within ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve();
    };
    client.once('ready', onReady);
  });
}

/**
 * Routes a BullMQ Queue/QueueEvents/Worker 'error' event into the JSON log, at most once per `everyMs`:
 * without a listener BullMQ prints raw errors to stderr, and during an outage every reconnect attempt
 * would otherwise log a line.
 */
export function logConnectionErrors(emitter: { on(event: 'error', fn: (err: Error) => void): unknown }, logger: Logger, what: string, everyMs = 10_000): void {
  let last = 0;
  emitter.on('error', (err: Error) => {
    const now = Date.now();
    if (now - last < everyMs) return;
    last = now;
    logger.warn({ err: err.message, component: what }, 'redis connection error');
  });
}
