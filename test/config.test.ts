import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { assertGeminiConfigured, ConfigError, configSchema, parseConfig } from '../src/shared/core/config.js';
import { geminiOptionsFromConfig } from '../src/app/gemini.js';
import { createLogger } from '../src/shared/core/logger.js';
import { AUTO_PIPELINING_FROM_CONCURRENCY, workerAutoPipelining } from '../src/shared/infra/redis/connection.js';

const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8');
const listed = Object.fromEntries(
  example
    .split('\n')
    .filter((l) => /^[A-Z0-9_]+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
);

describe('configuration', () => {
  it('.env.example lists every variable, with the real defaults', () => {
    expect(Object.keys(listed).sort()).toEqual(Object.keys(configSchema.shape).sort());
    const defaults = parseConfig({});
    const fromExample = parseConfig(Object.fromEntries(Object.entries(listed).filter(([, v]) => v !== '')));
    expect(fromExample).toEqual(defaults);
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

  it('auto-pipelines a worker from 16 concurrent jobs unless told otherwise', () => {
    const at = (env: Record<string, string>) => workerAutoPipelining(parseConfig(env));
    expect(AUTO_PIPELINING_FROM_CONCURRENCY).toBe(16);
    expect(at({})).toBe(false); // the default concurrency, 10
    expect(at({ WORKER_CONCURRENCY: '15' })).toBe(false);
    expect(at({ WORKER_CONCURRENCY: '16' })).toBe(true);
    expect(at({ WORKER_CONCURRENCY: '2', REDIS_AUTO_PIPELINING: 'on' })).toBe(true);
    expect(at({ WORKER_CONCURRENCY: '100', REDIS_AUTO_PIPELINING: 'off' })).toBe(false);
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
    const prod = { NODE_ENV: 'production' };
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
    expect(parseConfig({ NODE_ENV: 'production' }).REDIS_AUTOSTART).toBe(false);
    expect(parseConfig({ NODE_ENV: 'production', REDIS_AUTOSTART: '' }).REDIS_AUTOSTART).toBe(false);
    expect(parseConfig({ NODE_ENV: 'production', REDIS_AUTOSTART: 'true' }).REDIS_AUTOSTART).toBe(true);
    expect(parseConfig({ REDIS_AUTOSTART: 'false' }).REDIS_AUTOSTART).toBe(false);
  });

  it('parses JSON-valued variables', () => {
    const cfg = parseConfig({ AGENT_ROUTES: '{"RiskAnalyzer":{"primary":"a","fallback":"b","retries":2}}' });
    expect(cfg.AGENT_ROUTES.RiskAnalyzer).toEqual({ primary: 'a', fallback: 'b', retries: 2 });
  });
});
