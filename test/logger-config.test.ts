import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../src/shared/core/config.js';
import { createLogger, createRootLogger, logFormat } from '../src/shared/core/logger.js';
import { cliLogLevel, createCliLogger } from '../src/app/cli/run-cli.js';
import { databaseUrl, redisUrl } from './helpers/env.js';
import { runCli } from './helpers/run-cli.js';

const logLines = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { level: number; msg: string });

/** Production refuses to start without its Redis and database named (config.ts): named, for the NODE_ENVs below. */
const PLACES = { REDIS_URL: 'redis://redis:6379', DATABASE_URL: 'embedded' };

describe('LOG_LEVEL', () => {
  afterEach(() => vi.unstubAllEnvs());

  it('the root logger takes its level from the parsed config, never from the raw environment', () => {
    vi.stubEnv('LOG_LEVEL', 'trace');
    expect(createRootLogger(parseConfig({ LOG_LEVEL: 'warn' })).level).toBe('warn');
    expect(createRootLogger(parseConfig({})).level).toBe('info');
    expect(createLogger().level).toBe('info');
  });

  it("a CLI logs at LOG_LEVEL's validated value when given, else warn; blank is not given (pino refuses a level of '')", () => {
    const level = (env: Record<string, string>) => cliLogLevel(parseConfig(env), env);
    expect(level({})).toBe('warn');
    for (const blank of ['', ' ']) expect(level({ LOG_LEVEL: blank }), JSON.stringify(blank)).toBe('warn');
    expect(level({ LOG_LEVEL: 'debug' })).toBe('debug');
    // The logger every CLI (keys, ingest, orgs) builds: the orgs CLI logged at warn whatever LOG_LEVEL said.
    expect(createCliLogger(parseConfig({ LOG_LEVEL: 'debug' }), { LOG_LEVEL: 'debug' }).level).toBe('debug');
    expect(createCliLogger(parseConfig({}), {}).level).toBe('warn');
  });

  it('a bad value is the one-line start-up error naming the variable, not a pino stack', async () => {
    const run = await runCli('src/main.ts', ['migrate'], { LOG_LEVEL: 'verbose', REDIS_URL: redisUrl(), DATABASE_URL: databaseUrl(), REDIS_AUTOSTART: 'false' });
    expect(run.code).toBe(1);
    const lines = run.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^Invalid environment variable LOG_LEVEL="verbose": /);
    expect(run.stdout).toBe('');
  }, 60_000);

  it('the service logs at the configured level', async () => {
    const env = { REDIS_URL: redisUrl(), DATABASE_URL: databaseUrl(), REDIS_AUTOSTART: 'false' };
    const [quiet, chatty] = await Promise.all([runCli('src/main.ts', ['migrate'], { ...env, LOG_LEVEL: 'warn' }), runCli('src/main.ts', ['migrate'], { ...env, LOG_LEVEL: 'info' })]);
    expect([quiet.code, chatty.code]).toEqual([0, 0]);
    expect(logLines(chatty.stdout).map((l) => l.msg)).toContain('migrations up to date');
    expect(logLines(quiet.stdout).filter((l) => l.level < 40)).toEqual([]);
  }, 60_000);
});

describe('LOG_FORMAT', () => {
  it('auto: pretty only at a terminal in development; JSON for pipes and files, and always in production and tests', () => {
    const auto = (NODE_ENV: 'development' | 'production' | 'test', tty: boolean) => logFormat(parseConfig({ NODE_ENV, ...PLACES }), tty);
    expect(parseConfig({}).LOG_FORMAT).toBe('auto');
    expect(auto('development', true)).toBe('pretty');
    expect(auto('development', false)).toBe('json');
    expect(auto('production', true)).toBe('json');
    expect(auto('production', false)).toBe('json');
    expect(auto('test', true)).toBe('json');
  });

  it('json / pretty override the terminal check both ways; anything else is the one-line config error', () => {
    for (const NODE_ENV of ['development', 'production'] as const) {
      for (const tty of [true, false]) {
        expect(logFormat(parseConfig({ NODE_ENV, ...PLACES, LOG_FORMAT: 'json' }), tty)).toBe('json');
        expect(logFormat(parseConfig({ NODE_ENV, ...PLACES, LOG_FORMAT: 'pretty' }), tty)).toBe('pretty');
      }
    }
    expect(() => parseConfig({ LOG_FORMAT: 'text' })).toThrow(/^Invalid environment variable LOG_FORMAT="text": /);
  });

  it('a real process with LOG_FORMAT=pretty writes pino-pretty lines, not JSON (the JSON default is the test above)', async () => {
    const pretty = await runCli('src/main.ts', ['migrate'], { REDIS_URL: redisUrl(), DATABASE_URL: databaseUrl(), REDIS_AUTOSTART: 'false', LOG_LEVEL: 'info', LOG_FORMAT: 'pretty' });
    expect(pretty.code).toBe(0);
    const lines = pretty.stdout.split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(() => JSON.parse(l)).toThrow();
    // pino-pretty's shape: [time] LEVEL (pid): message
    expect(lines).toContainEqual(expect.stringMatching(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(\d+\): migrations up to date$/));
  }, 120_000);
});
