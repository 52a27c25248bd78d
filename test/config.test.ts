import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { assertGeminiConfigured, ConfigError, configSchema, configuredModels, parseConfig } from '../src/shared/core/config.js';
import { geminiOptionsFromConfig } from '../src/app/gemini.js';
import { createLogger } from '../src/shared/core/logger.js';

const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8');
const listed = Object.fromEntries(
  example
    .split('\n')
    .filter((l) => /^[A-Z0-9_]+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
);

/** A production environment that names its Redis and database, as production must (the tests below vary the rest). */
const PROD = { NODE_ENV: 'production', REDIS_URL: 'redis://redis:6379', DATABASE_URL: 'postgres://agentq:agentq@postgres:5432/agentq' };

describe('configuration', () => {
  it('.env.example lists every variable, with the real defaults', () => {
    expect(Object.keys(listed).sort()).toEqual(Object.keys(configSchema.shape).sort());
    const defaults = parseConfig({});
    // The example's empty lines (`KEY=`) included: empty is unset.
    expect(parseConfig(listed)).toEqual(defaults);
  });

  it('fails with one readable line naming the variable', () => {
    expect(() => parseConfig({ PORT: 'eighty' })).toThrow(ConfigError);
    expect(() => parseConfig({ PORT: 'eighty' })).toThrow(/^Invalid environment variable PORT="eighty": /);
    expect(() => parseConfig({ AGENT_ROUTES: '{oops' })).toThrow(/AGENT_ROUTES.*not valid JSON/);
    expect(() => parseConfig({ MODEL_LIMITS: '{"m":{"rpm":-1}}' })).toThrow(/MODEL_LIMITS \(at m\.rpm\)/);
    expect(() => parseConfig({ PGLITE_SHARED_BUFFERS: 'lots' })).toThrow(/^Invalid environment variable PGLITE_SHARED_BUFFERS="lots": .*512MB/);
    expect(parseConfig({ PGLITE_SHARED_BUFFERS: '1GB' }).PGLITE_SHARED_BUFFERS).toBe('1GB');
    try {
      parseConfig({ REDIS_URL: 'not a url with secret' });
    } catch (err) {
      expect((err as Error).message).not.toContain('secret');
      expect((err as Error).message.split('\n')).toHaveLength(1);
    }
  });

  it("refuses the SDK's Vertex AI switches at start, naming them (agentq calls the Gemini API)", () => {
    for (const name of ['GOOGLE_GENAI_USE_VERTEXAI', 'GOOGLE_GENAI_USE_ENTERPRISE']) {
      expect(() => parseConfig({ [name]: 'True' })).toThrow(new RegExp(`^Invalid environment variable ${name}="True": Vertex AI is not supported`));
      expect(() => parseConfig({ [name]: 'false' })).not.toThrow();
    }
  });

  it('takes REDIS_AUTO_PIPELINING auto (the default), on or off (test/auto-pipelining.test.ts: what each does)', () => {
    expect(parseConfig({}).REDIS_AUTO_PIPELINING).toBe('auto');
    expect(parseConfig({ REDIS_AUTO_PIPELINING: 'on' }).REDIS_AUTO_PIPELINING).toBe('on');
    expect(parseConfig({ REDIS_AUTO_PIPELINING: 'off' }).REDIS_AUTO_PIPELINING).toBe('off');
    expect(() => parseConfig({ REDIS_AUTO_PIPELINING: 'yes' })).toThrow(/^Invalid environment variable REDIS_AUTO_PIPELINING="yes": /);
  });

  it("reads an empty or blank numeric or boolean variable as unset (its default), never as 0 (compose's ${VAR:-}, Helm, .env KEY=)", () => {
    const defaults = parseConfig({});
    // The ones where 0 meant something else: a random port, no drain, no DLQ, no org limit, no backlog bound, no long poll.
    for (const name of ['PORT', 'SHUTDOWN_GRACE_MS', 'KEEP_FAILED_COUNT', 'ORG_RPM_PRO', 'USAGE_BACKLOG_MAX_ROWS', 'LONG_POLL_MAX_MS', 'SEMANTIC_CACHE_THRESHOLD'] as const) {
      expect(defaults[name]).toBeGreaterThan(0);
      for (const blank of ['', ' ']) expect(parseConfig({ [name]: blank })[name], `${name}=${JSON.stringify(blank)}`).toBe(defaults[name]);
    }
    // Every variable whose default is a number or a boolean: blank is its default too.
    const scalars = Object.keys(configSchema.shape).filter((k) => ['number', 'boolean'].includes(typeof defaults[k as keyof typeof defaults]));
    expect(scalars.length).toBeGreaterThan(50);
    for (const name of scalars) {
      for (const blank of ['', '  ']) expect(parseConfig({ [name]: blank }), `${name}=${JSON.stringify(blank)}`).toEqual(defaults);
    }
    // A value that is there but not a number still stops start-up.
    expect(() => parseConfig({ SHUTDOWN_GRACE_MS: '30s' })).toThrow(/^Invalid environment variable SHUTDOWN_GRACE_MS="30s": /);
  });

  it("reads every blank variable as unset (its default, or none), never as '' (a model, a prefix, a directory, a URL, a key)", () => {
    const defaults = parseConfig({});
    const every = Object.keys(configSchema.shape);
    for (const name of every) {
      for (const blank of ['', ' ', '\t', ' \n ']) expect(parseConfig({ [name]: blank }), `${name}=${JSON.stringify(blank)}`).toEqual(defaults);
    }
    // All at once, as a template that leaves every value empty renders them.
    expect(parseConfig(Object.fromEntries(every.map((name) => [name, ' '])))).toEqual(defaults);
    const blank = parseConfig({ GEMINI_MODEL_FAST: ' ', GEMINI_MODEL_PRO: '', GEMINI_EMBEDDING_MODEL: ' ', QUEUE_PREFIX: ' ', DATA_DIR: '', OTEL_SERVICE_NAME: ' ', LOG_LEVEL: '', NODE_ENV: ' ' });
    expect(blank).toMatchObject({ GEMINI_MODEL_FAST: 'gemini-2.5-flash', GEMINI_MODEL_PRO: 'gemini-2.5-pro', GEMINI_EMBEDDING_MODEL: 'gemini-embedding-001', QUEUE_PREFIX: '{agentq}', DATA_DIR: '.data', OTEL_SERVICE_NAME: 'agentq', LOG_LEVEL: 'info', NODE_ENV: 'development' });
    expect(configuredModels(blank)).not.toContain(' ');
    // A blank prefix takes the default's {hash tag}, which sharding and Cluster mode need.
    expect(parseConfig({ QUEUE_SHARDS: '4', QUEUE_PREFIX: ' ' }).QUEUE_PREFIX).toBe('{agentq}');
    // Optional ones are absent, not ''.
    for (const name of ['ADMIN_TOKEN', 'REDIS_PASSWORD', 'GEMINI_API_KEY', 'GOOGLE_API_KEY', 'DATABASE_URL', 'REDIS_CLUSTER_NODES', 'PGLITE_SHARED_BUFFERS', 'OTEL_EXPORTER_OTLP_ENDPOINT'] as const) {
      expect(parseConfig({ [name]: ' ' })[name], name).toBeUndefined();
    }
  });

  it('trims the blanks around a value (.env `KEY= value`, a pasted key with its newline): the value, never the padding', () => {
    const padded = parseConfig({
      QUEUE_PREFIX: ' {tenant} ',
      GEMINI_API_KEY: 'k-123\n',
      GEMINI_MODEL_FAST: '\tgemini-2.5-flash-lite ',
      REDIS_URL: ' redis://10.0.0.5:6379 ',
      LOG_LEVEL: ' debug',
      DATA_DIR: '/var/lib/agentq ',
    });
    expect(padded).toMatchObject({ QUEUE_PREFIX: '{tenant}', GEMINI_API_KEY: 'k-123', GEMINI_MODEL_FAST: 'gemini-2.5-flash-lite', REDIS_URL: 'redis://10.0.0.5:6379', LOG_LEVEL: 'debug', DATA_DIR: '/var/lib/agentq' });
    // The same prefix as the unpadded value: a producer and a worker whose templates differ only in padding share one queue.
    expect(padded.QUEUE_PREFIX).toBe(parseConfig({ QUEUE_PREFIX: '{tenant}' }).QUEUE_PREFIX);
    expect(geminiOptionsFromConfig(padded, createLogger({ level: 'silent' })).apiKey).toBe('k-123');
  });

  it('reads a blank key as no key: production refuses to start, naming GEMINI_API_KEY; the other key is the one sent', () => {
    const refused = /^Missing environment variable GEMINI_API_KEY: /;
    for (const blank of ['', ' ']) {
      const cfg = parseConfig({ ...PROD, GEMINI_API_KEY: blank, GOOGLE_API_KEY: blank });
      expect(() => assertGeminiConfigured(cfg), JSON.stringify(blank)).toThrow(refused);
      expect(() => geminiOptionsFromConfig(cfg, createLogger({ level: 'silent' }))).toThrow(refused);
    }
    // The SDK's order (GOOGLE_API_KEY first) skips a blank one instead of sending it.
    expect(geminiOptionsFromConfig(parseConfig({ GOOGLE_API_KEY: ' ', GEMINI_API_KEY: 'k' }), createLogger({ level: 'silent' })).apiKey).toBe('k');
    expect(geminiOptionsFromConfig(parseConfig({ GOOGLE_API_KEY: 'g', GEMINI_API_KEY: ' ' }), createLogger({ level: 'silent' })).apiKey).toBe('g');
  });

  it('takes an integer variable in plain decimal digits only (blanks around trimmed), naming the variable and the problem', () => {
    const defaults = parseConfig({});
    const numeric = Object.keys(configSchema.shape).filter((k) => typeof defaults[k as keyof typeof defaults] === 'number');
    expect(numeric).toContain('PORT');
    // Number() read these as 80, 1000, 10, 15 (and a fraction's notation as the same for the others).
    for (const name of numeric) {
      for (const bad of ['0x50', '1e3', '0b1010', '0o17', '8 0', ' 8 0 ', '+80', '80px', 'Infinity', '1_000']) {
        expect(() => parseConfig({ [name]: bad }), `${name}=${JSON.stringify(bad)}`).toThrow(
          new RegExp(`^Invalid environment variable ${name}=${JSON.stringify(bad).replace(/[+]/g, '\\+')}: expected a (whole )?number in plain decimal digits, e.g. `),
        );
      }
    }
    for (const name of ['PORT', 'QUEUE_SHARDS', 'KEEP_FAILED_COUNT', 'WORKER_CONCURRENCY'] as const) {
      expect(() => parseConfig({ [name]: '80.0' }), name).toThrow(new RegExp(`^Invalid environment variable ${name}="80.0": expected a whole number in plain decimal digits, e.g. ${defaults[name]}$`));
    }
    for (const ok of [' 80 ', '\t80\n', '80', '080']) expect(parseConfig({ PORT: ok }).PORT, JSON.stringify(ok)).toBe(80);
    expect(parseConfig({ QUEUE_SHARDS: ' 4 ' }).QUEUE_SHARDS).toBe(4);
    // The fractional ones take a decimal fraction, written plainly too.
    expect(parseConfig({ SEMANTIC_CACHE_THRESHOLD: ' 0.9 ' }).SEMANTIC_CACHE_THRESHOLD).toBe(0.9);
    expect(parseConfig({ ORG_WEIGHT: '2.5' }).ORG_WEIGHT).toBe(2.5);
    expect(parseConfig({ DISPATCH_BUFFER_RATIO: '.25' }).DISPATCH_BUFFER_RATIO).toBe(0.25);
  });

  it("reads a blank HOST as unset (127.0.0.1), never as '' (the server listened on every interface)", () => {
    for (const blank of ['', ' ']) expect(parseConfig({ HOST: blank }).HOST).toBe('127.0.0.1');
    expect(parseConfig({ HOST: '0.0.0.0' }).HOST).toBe('0.0.0.0');
  });

  it('takes PORT within 1..65535 only', () => {
    for (const bad of ['0', '65536', '99999', '-1']) expect(() => parseConfig({ PORT: bad })).toThrow(new RegExp(`^Invalid environment variable PORT="${bad}": `));
    expect(parseConfig({ PORT: '1' }).PORT).toBe(1);
    expect(parseConfig({ PORT: '65535' }).PORT).toBe(65535);
  });

  it('refuses SEMANTIC_CACHE_THRESHOLD outside (0, 1] at parse time, naming it (0 would match any prompt)', () => {
    for (const bad of ['0', '-0.1', '1.01']) expect(() => parseConfig({ SEMANTIC_CACHE_THRESHOLD: bad })).toThrow(new RegExp(`^Invalid environment variable SEMANTIC_CACHE_THRESHOLD="${bad}": `));
    expect(parseConfig({ SEMANTIC_CACHE_THRESHOLD: '1' }).SEMANTIC_CACHE_THRESHOLD).toBe(1);
    expect(parseConfig({ SEMANTIC_CACHE_THRESHOLD: '0.01' }).SEMANTIC_CACHE_THRESHOLD).toBe(0.01);
  });

  it('takes only http(s) URLs as OTLP endpoints, naming the variable without showing its value (it may carry credentials)', () => {
    for (const name of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] as const) {
      for (const bad of ['collector:4318', 'localhost:4318', 'grpc://collector:4317', 'collector', 'ftp://u:secret@collector/v1/traces']) {
        let message = '';
        try {
          parseConfig({ [name]: bad });
        } catch (err) {
          expect(err).toBeInstanceOf(ConfigError);
          message = (err as Error).message;
        }
        expect(message, bad).toMatch(new RegExp(`^Invalid environment variable ${name}=\\(hidden\\): expected an http:// or https:// URL`));
        expect(message).not.toContain('secret');
      }
      expect(parseConfig({ [name]: 'http://collector:4318' })[name]).toBe('http://collector:4318');
      expect(parseConfig({ [name]: 'https://user:pw@otel.example.com/v1/traces' })[name]).toBe('https://user:pw@otel.example.com/v1/traces');
      expect(parseConfig({ [name]: '' })[name]).toBeUndefined();
    }
  });

  it('refuses to serve without a Gemini key in production unless GEMINI_EMULATOR=true asks for the emulator', () => {
    const refused = /^Missing environment variable GEMINI_API_KEY: .*GEMINI_EMULATOR=true/;
    const prod = PROD;
    expect(() => assertGeminiConfigured(parseConfig(prod))).toThrow(ConfigError);
    expect(() => assertGeminiConfigured(parseConfig(prod))).toThrow(refused);
    // compose's ${GEMINI_API_KEY:-}: empty is no key.
    expect(() => assertGeminiConfigured(parseConfig({ ...prod, GEMINI_API_KEY: '', GOOGLE_API_KEY: '', GEMINI_EMULATOR: '' }))).toThrow(refused);
    // The one place the emulator is started from config refuses too (npm run ingest goes through it).
    expect(() => geminiOptionsFromConfig(parseConfig(prod), createLogger({ level: 'silent' }))).toThrow(refused);
    for (const ok of [{ GEMINI_API_KEY: 'k' }, { GOOGLE_API_KEY: 'k' }, { GEMINI_EMULATOR: 'true' }]) {
      expect(() => assertGeminiConfigured(parseConfig({ ...prod, ...ok }))).not.toThrow();
    }
    // Development and tests keep the emulator by default; GEMINI_EMULATOR=false refuses there too.
    for (const NODE_ENV of ['development', 'test']) expect(() => assertGeminiConfigured(parseConfig({ NODE_ENV }))).not.toThrow();
    expect(() => assertGeminiConfigured(parseConfig({ GEMINI_EMULATOR: 'false' }))).toThrow(refused);
  });

  it('autostarts a local Redis by default except in production, where only REDIS_AUTOSTART=true does', () => {
    expect(parseConfig({}).REDIS_AUTOSTART).toBe(true);
    expect(parseConfig({ NODE_ENV: 'test' }).REDIS_AUTOSTART).toBe(true);
    expect(parseConfig(PROD).REDIS_AUTOSTART).toBe(false);
    expect(parseConfig({ ...PROD, REDIS_AUTOSTART: '' }).REDIS_AUTOSTART).toBe(false);
    expect(parseConfig({ ...PROD, REDIS_AUTOSTART: 'true' }).REDIS_AUTOSTART).toBe(true);
    expect(parseConfig({ REDIS_AUTOSTART: 'false' }).REDIS_AUTOSTART).toBe(false);
  });

  it('in production, refuses to start without DATABASE_URL and REDIS_URL, naming the variable: no silent embedded database or loopback Redis', () => {
    const { DATABASE_URL, REDIS_URL } = PROD;
    const noDatabase = /^Missing environment variable DATABASE_URL: with NODE_ENV=production it must be set.*DATABASE_URL=embedded/;
    const noRedis = /^Missing environment variable REDIS_URL: with NODE_ENV=production it must be set/;
    // Unset, or blank as compose's ${DATABASE_URL:-} passes it: before, both ran on the embedded PGlite.
    for (const blank of [undefined, '', ' ']) {
      expect(() => parseConfig({ NODE_ENV: 'production', REDIS_URL, DATABASE_URL: blank }), JSON.stringify(blank)).toThrow(ConfigError);
      expect(() => parseConfig({ NODE_ENV: 'production', REDIS_URL, DATABASE_URL: blank }), JSON.stringify(blank)).toThrow(noDatabase);
      // Before, redis://127.0.0.1:6379.
      expect(() => parseConfig({ NODE_ENV: 'production', DATABASE_URL, REDIS_URL: blank }), JSON.stringify(blank)).toThrow(noRedis);
    }
    // The embedded database asked for by name (the image run alone); a cluster names its Redis by its nodes.
    const embedded = parseConfig({ NODE_ENV: 'production', REDIS_URL, DATABASE_URL: ' embedded ' });
    expect(embedded.DATABASE_URL).toBeUndefined();
    const cluster = parseConfig({ NODE_ENV: 'production', DATABASE_URL, REDIS_CLUSTER_NODES: '10.0.0.1:7000' });
    expect(cluster.REDIS_CLUSTER_NODES).toHaveLength(1);
    expect(parseConfig(PROD)).toMatchObject({ REDIS_URL, DATABASE_URL });
    // Outside production the defaults stay: loopback Redis, the embedded database (unset or named).
    for (const NODE_ENV of ['development', 'test']) {
      expect(parseConfig({ NODE_ENV })).toMatchObject({ REDIS_URL: 'redis://127.0.0.1:6379', DATABASE_URL: undefined });
      expect(parseConfig({ NODE_ENV, DATABASE_URL: 'embedded' }).DATABASE_URL).toBeUndefined();
    }
    // Any other value that is not a URL is refused, without showing it.
    expect(() => parseConfig({ DATABASE_URL: 'pglite' })).toThrow(/^Invalid environment variable DATABASE_URL=\(hidden\): expected a URL, .* or embedded$/);
  });

  it('parses JSON-valued variables', () => {
    const cfg = parseConfig({ AGENT_ROUTES: '{"RiskAnalyzer":{"primary":"a","fallback":"b","retries":2}}' });
    expect(cfg.AGENT_ROUTES.RiskAnalyzer).toEqual({ primary: 'a', fallback: 'b', retries: 2 });
  });
});
