import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildSources } from '../dev/build/build-dist.js';
import { assertGeminiConfigured, configSchema, parseConfig } from '../src/shared/core/config.js';

// No Docker engine here: these check the deploy files against what the code needs, statically.
const root = new URL('..', import.meta.url);
const dockerfile = readFileSync(new URL('Dockerfile', root), 'utf8');
const compose = readFileSync(new URL('docker-compose.yml', root), 'utf8');

interface Service {
  image?: string;
  command?: string[];
  restart?: string;
  environment?: Record<string, string | number | boolean | null>;
  volumes?: string[];
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string }>;
  stop_grace_period?: string;
}
// `merge`: the workers take the API's environment through `<<: *env`, as compose reads it.
const services = (parse(compose, { merge: true }) as { services: Record<string, Service> }).services;
/** The services that run agentq itself (`node src/main.js <role>`). */
const agentq = Object.entries(services).filter(([, s]) => s.command?.includes('src/main.js'));
/** compose's `${VAR:-default}` as compose resolves it with VAR unset: the default. */
const unset = (v: string) => v.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1');
/** A service's environment as the process gets it: every value a string, `${VAR:-default}` resolved. */
const envOf = (s: Service) => Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, unset(String(v ?? ''))]));
/** A compose duration (`45s`, `1m30s`, `500ms`) in ms; Docker's stop grace period is 10 s when none is set. */
function durationMs(d: string | undefined, fallbackMs: number): number {
  if (d === undefined) return fallbackMs;
  const parts = [...d.matchAll(/(\d+)(ms|s|m|h)/g)];
  expect(parts.map((p) => p[0]).join(''), `duration ${d}`).toBe(d);
  return parts.reduce((ms, [, n, unit]) => ms + Number(n) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit as 'ms' | 's' | 'm' | 'h'], 0);
}

describe('Dockerfile and docker-compose.yml', () => {
  it('build on Node 24 LTS, compile in a build stage and copy every folder the running code needs', () => {
    const stages = dockerfile.split(/^FROM /m).slice(1);
    expect(stages).toHaveLength(2);
    for (const stage of stages) expect(stage).toMatch(/^node:24-/);
    const [build, run] = stages;
    const copied = (stage: string) => [...stage.matchAll(/^COPY (\S+) /gm)].map((m) => m[1]);
    // The build stage copies src/ and dev/ (src/app starts dev's emulator) and runs `npm run build`.
    expect(copied(build)).toEqual(expect.arrayContaining(['src', 'dev', 'tsconfig.json']));
    expect(build).toMatch(/^RUN npm run build$/m);
    // The run stage: production dependencies only, the compiled output, and migrations/ (read at start).
    expect(run).toMatch(/^RUN npm ci --omit=dev /m);
    expect(run).toMatch(/^COPY --from=build \/app\/dist \.\/$/m);
    expect(copied(run)).toContain('migrations');
    expect(copied(run)).not.toContain('src');
    // Every file a file under src/ imports is compiled into the image (tsconfig.build.json's include), and its
    // top-level folder is copied into the build stage.
    const rootPath = fileURLToPath(root);
    const imported = new Set<string>();
    const walk = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        if (e.isDirectory()) walk(path);
        else if (e.name.endsWith('.ts')) {
          for (const m of readFileSync(path, 'utf8').matchAll(/from '(\.{1,2}\/[^']+)'/g)) {
            imported.add(relative(rootPath, resolve(dirname(path), m[1])).split(sep).join('/'));
          }
        }
      }
    };
    walk(join(rootPath, 'src'));
    const include = buildSources();
    const outside = [...imported].filter((f) => !f.startsWith('src/'));
    expect(outside.some((f) => f.startsWith('dev/gemini-emulator/'))).toBe(true);
    for (const file of imported) expect(include.some((dir) => file.startsWith(`${dir}/`)), file).toBe(true);
    for (const top of new Set([...imported].map((f) => f.split('/')[0]))) {
      expect(existsSync(new URL(top, root))).toBe(true);
      expect(copied(build)).toContain(top);
    }
  });

  it('run the compiled entry point with node directly in exec form, so SIGTERM reaches agentq and it drains', () => {
    expect(dockerfile).toMatch(/^CMD \["node", "src\/main\.js", "all"\]$/m);
    expect(dockerfile).not.toMatch(/^CMD \["npm"/m);
    // No instruction runs tsx (comments may name it).
    expect(dockerfile.split('\n').filter((l) => !l.startsWith('#')).join('\n')).not.toMatch(/tsx/);
    const commands = [...compose.matchAll(/^\s+command: (\[.*\])$/gm)].map((m) => JSON.parse(m[1]) as string[]);
    const agentq = commands.filter((c) => c.includes('src/main.js'));
    expect(agentq.map((c) => c.at(-1)).sort()).toEqual(['api', 'worker']);
    for (const c of agentq) expect(c).toEqual(['node', 'src/main.js', c.at(-1)]);
  });

  it("state the emulator demo on purpose: compose's production environment, no variable given, starts (GEMINI_EMULATOR) and never autostarts Redis", () => {
    // The api's `environment: &env` block (the workers share it), with ${VAR:-default} as compose resolves it
    // when the shell gives nothing.
    const block = /environment: &env\n((?: {6}.*\n)+)/.exec(compose)![1];
    const env = Object.fromEntries(
      block
        .split('\n')
        .filter((l) => /^ {6}[A-Z0-9_]+:/.test(l))
        .map((l) => {
          const [, name, raw] = /^ {6}([A-Z0-9_]+): (.*)$/.exec(l)!;
          const value = raw.replace(/^"(.*)"$/, '$1').replace(/\$\{[A-Z0-9_]+:-([^}]*)\}/g, '$1');
          return [name, value];
        }),
    );
    expect(env.NODE_ENV).toBe('production');
    expect(env.GEMINI_API_KEY).toBe('');
    expect(env.GEMINI_EMULATOR).toBe('true');
    const cfg = parseConfig(env);
    expect(() => assertGeminiConfigured(cfg)).not.toThrow();
    expect(cfg.REDIS_AUTOSTART).toBe(false);
    // The same file with GEMINI_EMULATOR=false in the shell: a missing key stops start-up.
    expect(() => assertGeminiConfigured(parseConfig({ ...env, GEMINI_EMULATOR: 'false' }))).toThrow(/GEMINI_API_KEY/);
  });

  it('keep Redis durable (AOF on a volume) and never evicting queue keys, and Postgres with pgvector', () => {
    const redis = services.redis;
    expect(redis.command?.join(' ')).toMatch(/--appendonly yes\b/);
    expect(redis.command?.join(' ')).toMatch(/--maxmemory-policy noeviction\b/);
    expect(redis.volumes?.some((v) => v.endsWith(':/data'))).toBe(true);
    expect(services.postgres.image).toMatch(/^pgvector\/pgvector:/);
  });

  it('restart agentq (and what it needs) after it exits on a failure, so a deployment never stays half up', () => {
    // Before, no service had a policy: an API whose start-up migrate found Postgres not yet listening exited 1
    // and stayed down, and the workers, waiting for it to be healthy, never started.
    for (const [name, s] of Object.entries(services)) expect(['unless-stopped', 'always', 'on-failure'], name).toContain(s.restart);
  });

  it('check Postgres health over TCP, which opens only once the first-boot init is done', () => {
    // The image's init runs on a temporary server listening on the unix socket only: a check without a TCP
    // host passed then (test/deploy-postgres.test.ts runs this check against a real socket-only server).
    const [kind, command] = services.postgres.healthcheck!.test;
    expect(kind).toBe('CMD-SHELL');
    expect(command).toMatch(/^pg_isready (.* )?-h 127\.0\.0\.1\b/);
    // What waits on it waits for health, not for the container's start.
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        expect(condition, `${name} -> ${dep}`).toBe('service_healthy');
        expect(services[dep].healthcheck, `${dep} has a healthcheck`).toBeDefined();
      }
    }
  });

  it('give agentq only variables it reads, with values its config accepts', () => {
    const known = new Set(Object.keys(configSchema.shape));
    expect(agentq.map(([name]) => name).sort()).toEqual(['api', 'worker']);
    for (const [name, s] of agentq) {
      const env = envOf(s);
      for (const key of Object.keys(env)) expect(known.has(key), `${name}: ${key} is not a variable agentq reads (src/shared/core/config.ts)`).toBe(true);
      const cfg = parseConfig(env);
      expect(cfg.DATABASE_URL, name).toMatch(/@postgres:5432\//);
      expect(cfg.REDIS_URL, name).toBe('redis://redis:6379');
      expect(cfg.REDIS_AUTOSTART, name).toBe(false);
      expect(cfg.HOST, name).toBe('0.0.0.0');
    }
  });

  it('let each agentq process drain for SHUTDOWN_GRACE_MS and close before Docker kills it', () => {
    for (const [name, s] of agentq) {
      const graceMs = parseConfig(envOf(s)).SHUTDOWN_GRACE_MS;
      // After the grace the process still closes its connections and writes its last usage rows.
      expect(durationMs(s.stop_grace_period, 10_000), name).toBeGreaterThanOrEqual(graceMs + 10_000);
    }
  });

  it('let the image\'s user write the data dir its default mode uses (embedded PGlite, dev key)', () => {
    const run = dockerfile.split(/^FROM /m).at(-1)!;
    const user = /^USER (\S+)$/m.exec(run);
    expect(user?.[1]).toBe('node');
    const workdir = [...run.matchAll(/^WORKDIR (\S+)$/gm)].at(-1)![1];
    const env = /^ENV .*\bDATA_DIR=(\S+)/m.exec(run)?.[1];
    const dataDir = posix.resolve(workdir, env ?? configSchema.parse({}).DATA_DIR);
    // Made and given to that user before the image switches to it: /app and what COPY put there are root's.
    const beforeUser = run.slice(0, user!.index);
    const runs = [...beforeUser.matchAll(/^RUN (.*)$/gm)].map((m) => m[1]);
    const esc = dataDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    expect(runs.some((r) => new RegExp(`mkdir -p (\\S+ )*${esc}( |$)`).test(r) && new RegExp(`chown (-R )?node(:node)? (\\S+ )*${esc}( |$)`).test(r)), `a RUN that makes ${dataDir} and chowns it to node`).toBe(true);
  });
});
