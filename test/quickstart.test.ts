import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { assertNoEviction, RedisSetupError } from '../src/shared/infra/redis/connection.js';
import { freePort, startRedisServer } from '../src/shared/infra/redis/redis-server.js';
import { DEFAULT_GRACE_MS, exitGuard, exitWithin, spawnAgentq, termExitMs, type AgentqProcess } from './helpers/processes.js';
import { waitsTimeout } from './helpers/wait.js';

/** How long a process refused at start-up is given to say why and exit (its Redis checks, on a busy machine). */
const REFUSAL_EXIT_MS = 150_000;
/** The quick start's drain on SIGTERM: the default grace, nothing set. */
const TERM_EXIT_MS = termExitMs(DEFAULT_GRACE_MS);

/**
 * `npm start` on embedded defaults, as a new user runs it: nothing given but a data dir and ports. It must
 * start its own redis-server (AOF, noeviction), embedded PGlite, the Gemini emulator, create a dev key, and
 * run a job end to end. A restart applies no migration twice and keeps the key.
 */
describe('quick start on embedded defaults', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'agentq-quickstart-'));
  const procs: AgentqProcess[] = [];
  afterAll(async () => {
    for (const p of procs) if (p.child.exitCode === null) p.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function start(redisPort: number, apiPort: number) {
    // Defaults but for the Redis reply timeout: a machine loaded to several times its cores stretches a
    // start-up reply past the 2 s a request path waits in production.
    const env: Record<string, string> = { DATA_DIR: dataDir, REDIS_URL: `redis://127.0.0.1:${redisPort}`, PORT: String(apiPort), WORKER_CONCURRENCY: '2', REDIS_COMMAND_TIMEOUT_MS: '20000' };
    // NODE_ENV as a user's shell leaves it (unset: development), not the test runner's: the defaults that
    // depend on it (REDIS_AUTOSTART, GEMINI_EMULATOR) are the quick start's.
    const p = spawnAgentq('all', { ...env, NODE_ENV: 'development', DATABASE_URL: '', GEMINI_API_KEY: '', GOOGLE_API_KEY: '', REDIS_AUTOSTART: '', GEMINI_EMULATOR: '' });
    procs.push(p);
    // Starting redis-server, embedded Postgres and its migrations: minutes on a busy machine.
    await p.waitForLog((l) => l.msg === 'API listening', 180_000);
    return p;
  }

  it('starts everything, runs a job with the printed dev key, and restarts cleanly', async () => {
    const redisPort = await freePort();
    const apiPort = await freePort();
    const first = await start(redisPort, apiPort);
    expect(first.lines.some((l) => /starting a local redis-server/.test(String(l.msg)))).toBe(true);
    expect(first.lines.some((l) => /EMULATOR/.test(String(l.msg)) && l.level === 40)).toBe(true);
    const migrations = first.lines.filter((l) => l.msg === 'migration applied').length;
    expect(migrations).toBeGreaterThan(0);

    const redis = new Redis(redisPort);
    const [, aof] = (await redis.config('GET', 'appendonly')) as string[];
    const [, policy] = (await redis.config('GET', 'maxmemory-policy')) as string[];
    expect(aof).toBe('yes');
    expect(policy).toBe('noeviction');
    await redis.quit();

    const keyFile = join(dataDir, 'dev-api-key');
    expect(existsSync(keyFile)).toBe(true);
    const key = readFileSync(keyFile, 'utf8').trim();
    const base = `http://127.0.0.1:${apiPort}`;
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const posted = await fetch(`${base}/v1/jobs`, { method: 'POST', headers, body: JSON.stringify({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'qs-1' } }) });
    expect(posted.status).toBe(202);
    const { id } = (await posted.json()) as { id: string };
    const view = (await (await fetch(`${base}/v1/jobs/${id}?waitMs=60000`, { headers })).json()) as { state: string; result: { success: boolean } };
    expect(view.state).toBe('completed');
    expect(view.result.success).toBe(true);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);

    first.kill('SIGTERM');
    expect(await exitWithin(first, TERM_EXIT_MS, 'the first run to drain and exit on SIGTERM')).toBe(0);
    // Every line the first run wrote has been read by now (its output is closed): none carries the key.
    expect(first.lines.length).toBeGreaterThan(migrations);
    expect(first.lines.filter((l) => JSON.stringify(l).includes(key))).toEqual([]);

    // The child redis-server stopped with us; its AOF keeps the queue, and the restart finds it again.
    const second = await start(redisPort, apiPort);
    expect(second.lines.filter((l) => l.msg === 'migration applied')).toHaveLength(0);
    expect(readFileSync(keyFile, 'utf8').trim()).toBe(key);
    const again = (await (await fetch(`${base}/v1/jobs/${id}`, { headers })).json()) as { state: string };
    expect(again.state).toBe('completed');
    second.kill('SIGTERM');
    expect(await exitWithin(second, TERM_EXIT_MS, 'the restarted run to drain and exit on SIGTERM')).toBe(0);
  }, 480_000);
});

describe('Redis setup checks', () => {
  it('refuses a Redis whose maxmemory-policy is not noeviction, naming the fix', async () => {
    const server = await startRedisServer();
    const redis = new Redis(server.url);
    try {
      await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');
      const err = await assertNoEviction(redis).catch((e: Error) => e);
      expect(err).toBeInstanceOf(RedisSetupError);
      expect((err as Error).message).toMatch(/allkeys-lru.*noeviction/);
      await redis.config('SET', 'maxmemory-policy', 'noeviction');
      await expect(assertNoEviction(redis)).resolves.toBeUndefined();
    } finally {
      await redis.quit();
      await server.stop();
    }
  });

  it('exits with one line saying how to start Redis when none answers and autostart is off', async () => {
    const p = spawnAgentq('worker', { REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_AUTOSTART: 'false', DATABASE_URL: '' });
    expect(await exitWithin(p, REFUSAL_EXIT_MS, 'the worker to exit, no Redis answering')).toBe(1);
    expect(p.stderr().trim()).toMatch(/^agentq failed to start: Nothing answers at REDIS_URL .*Start Redis 7/);
    expect(p.stderr().trim().split('\n')).toHaveLength(1);
  }, waitsTimeout(exitGuard(REFUSAL_EXIT_MS)));
});

/** What a production process (NODE_ENV=production) refuses at start that a developer's `npm start` does. */
describe('production start-up refusals', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'agentq-prod-refusals-'));
  const procs: AgentqProcess[] = [];
  afterAll(async () => {
    for (const p of procs) if (p.child.exitCode === null) p.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('in production, exits naming GEMINI_API_KEY when no key is set, before it touches Redis or the database', async () => {
    // Nothing at REDIS_URL: a check made after Redis would fail there, or start a redis-server, instead.
    const p = spawnAgentq('all', { NODE_ENV: 'production', REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_AUTOSTART: 'true', DATABASE_URL: 'embedded', DATA_DIR: dataDir, GEMINI_API_KEY: '', GOOGLE_API_KEY: '' });
    procs.push(p);
    expect(await exitWithin(p, REFUSAL_EXIT_MS, 'the process to exit, no GEMINI_API_KEY in production')).toBe(1);
    expect(p.stderr().trim()).toMatch(/^Missing environment variable GEMINI_API_KEY: .*Set GEMINI_API_KEY \(or GOOGLE_API_KEY\), or GEMINI_EMULATOR=true/);
    expect(p.stderr().trim().split('\n')).toHaveLength(1);
    expect(p.lines).toEqual([]);
  }, waitsTimeout(exitGuard(REFUSAL_EXIT_MS)));

  it('in production, exits naming DATABASE_URL when none is given, instead of running on a local embedded PGlite', async () => {
    const p = spawnAgentq('all', { NODE_ENV: 'production', GEMINI_EMULATOR: 'true', REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_AUTOSTART: 'true', DATABASE_URL: '', DATA_DIR: dataDir });
    procs.push(p);
    expect(await exitWithin(p, REFUSAL_EXIT_MS, 'the process to exit, no DATABASE_URL in production')).toBe(1);
    expect(p.stderr().trim()).toMatch(/^Missing environment variable DATABASE_URL: .*DATABASE_URL=embedded to run on the embedded PGlite on purpose$/);
    expect(p.lines).toEqual([]);
  }, waitsTimeout(exitGuard(REFUSAL_EXIT_MS)));

  it('in production, a Redis that does not answer at start stops start-up: agentq starts no empty Redis of its own on that port', async () => {
    const redisPort = await freePort();
    const p = spawnAgentq('worker', { NODE_ENV: 'production', GEMINI_EMULATOR: 'true', REDIS_URL: `redis://127.0.0.1:${redisPort}`, DATABASE_URL: 'embedded', DATA_DIR: dataDir });
    procs.push(p);
    // Its exit, or its log of a redis-server of its own, whichever comes first; neither within the bound: killed, named.
    const first = Promise.race([
      p.exited.then((code) => ({ exit: code })),
      // Its exit rejects this wait (the exit above answers then), as does the bound's end (exitWithin's, then).
      p.waitForLog((l) => /starting a local redis-server/.test(String(l.msg)), REFUSAL_EXIT_MS + exitGuard(0)).then(
        () => ({ autostarted: true }),
        () => new Promise<never>(() => {}),
      ),
    ]);
    const outcome = await exitWithin({ child: p.child, exited: first }, REFUSAL_EXIT_MS, 'the worker to exit, or to start a redis-server of its own, no Redis answering');
    if ('autostarted' in outcome) p.kill('SIGTERM');
    expect(outcome).toEqual({ exit: 1 });
    expect(p.stderr().trim()).toMatch(/^agentq failed to start: Nothing answers at REDIS_URL /);
  }, waitsTimeout(exitGuard(REFUSAL_EXIT_MS)));
});
