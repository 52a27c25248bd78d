import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildSources } from '../dev/build/build-dist.js';
import { assertGeminiConfigured, parseConfig } from '../src/shared/core/config.js';

// No Docker engine here: these check the deploy files against what the code needs, statically.
const root = new URL('..', import.meta.url);
const dockerfile = readFileSync(new URL('Dockerfile', root), 'utf8');
const compose = readFileSync(new URL('docker-compose.yml', root), 'utf8');

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

  it('keep Redis durable and never evicting queue keys', () => {
    expect(compose).toMatch(/"--appendonly", "yes"/);
    expect(compose).toMatch(/"--maxmemory-policy", "noeviction"/);
    expect(compose).toMatch(/image: pgvector\/pgvector:/);
  });
});
