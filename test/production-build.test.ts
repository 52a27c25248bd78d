import { builtinModules } from 'node:module';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { buildDist, buildSources, isAsset } from '../dev/build/build-dist.js';
import { freePort } from '../src/shared/infra/redis/redis-server.js';
import { DEFAULT_GRACE_MS, exitWithin, spawnAgentq, stopProcess, termExitMs, type AgentqProcess } from './helpers/processes.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

/** The package a bare import specifier names (`@scope/name/sub` -> `@scope/name`), or undefined for a relative one. */
function packageOf(specifier: string): string | undefined {
  if (specifier.startsWith('.') || specifier.startsWith('/')) return undefined;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/**
 * `npm run build` is what the Docker image runs (its build stage compiles, its run stage holds the output and
 * the production dependencies only). Built into a temporary folder laid out as the image lays it out
 * (package.json and migrations/ beside the compiled src/ and dev/gemini-emulator/), it must start on embedded defaults with
 * plain `node`, run a job and drain on SIGTERM: no TypeScript file and no loader take part.
 */
describe('the production build', () => {
  const app = mkdtempSync(join(tmpdir(), 'agentq-dist-'));
  const dataDir = mkdtempSync(join(tmpdir(), 'agentq-dist-data-'));
  let proc: AgentqProcess | undefined;
  afterAll(async () => {
    await stopProcess(proc);
    rmSync(app, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('compiles to JavaScript that imports only production dependencies, starts with plain node, runs a job and drains', async () => {
    buildDist(app);
    copyFileSync(join(ROOT, 'package.json'), join(app, 'package.json'));
    symlinkSync(join(ROOT, 'migrations'), join(app, 'migrations'));
    symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'));

    const files = filesUnder(join(app, 'src')).concat(filesUnder(join(app, 'dev')));
    expect(files.filter((f) => f.endsWith('.ts'))).toEqual([]);
    // Every file the code reads beside its modules came along (the Lua scripts, the dashboard's page).
    const assets = (dir: string) => filesUnder(join(ROOT, dir)).filter(isAsset).map((f) => relative(ROOT, f));
    const built = new Set(files.map((f) => relative(app, f)));
    const wanted = buildSources().flatMap(assets);
    expect(wanted.some((f) => f.endsWith('fair-core-N.lua'))).toBe(true);
    expect(wanted.filter((f) => !built.has(f))).toEqual([]);

    // The image installs `dependencies` only (npm ci --omit=dev): nothing compiled may need a dev dependency.
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    const builtins = new Set(builtinModules);
    const imported = new Set<string>();
    for (const f of files.filter((x) => x.endsWith('.js') && !x.includes('/dashboard/'))) {
      for (const m of readFileSync(f, 'utf8').matchAll(/(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|^import\s*['"]([^'"]+)['"]/gm)) {
        const name = packageOf(m[1] ?? m[2] ?? m[3]);
        if (name && !name.startsWith('node:') && !builtins.has(name)) imported.add(name);
      }
    }
    expect(imported.has('bullmq')).toBe(true);
    expect([...imported].filter((name) => !(name in pkg.dependencies))).toEqual([]);

    const redisPort = await freePort();
    const apiPort = await freePort();
    const env = { NODE_ENV: 'production', GEMINI_EMULATOR: 'true', DATA_DIR: dataDir, REDIS_URL: `redis://127.0.0.1:${redisPort}`, REDIS_AUTOSTART: 'true', PORT: String(apiPort), DATABASE_URL: 'embedded', GEMINI_API_KEY: '', WORKER_CONCURRENCY: '2', REDIS_COMMAND_TIMEOUT_MS: '20000' };
    // The image's command: node, the compiled entry point, a role; no --import.
    proc = spawnAgentq('all', env, app);
    // Starting redis-server, embedded Postgres and its migrations: minutes on a busy machine.
    await proc.waitForLog((l) => l.msg === 'API listening', 180_000);

    const key = readFileSync(join(dataDir, 'dev-api-key'), 'utf8').trim();
    const base = `http://127.0.0.1:${apiPort}`;
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const posted = await fetch(`${base}/v1/jobs`, { method: 'POST', headers, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Dist Co', industry: 'logistics', stage: 'seed', description: 'Built once, run as JavaScript.' } } }) });
    expect(posted.status).toBe(202);
    const { id } = (await posted.json()) as { id: string };
    const view = (await (await fetch(`${base}/v1/jobs/${id}?waitMs=60000`, { headers })).json()) as { state: string; result: { success: boolean } };
    expect(view.state).toBe('completed');
    expect(view.result.success).toBe(true);

    proc.kill('SIGTERM');
    expect(await exitWithin(proc, termExitMs(DEFAULT_GRACE_MS), 'the built process to drain and exit on SIGTERM')).toBe(0);
  }, 480_000);
});
