import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// No Docker engine here: these check the deploy files against what the code needs, statically.
const root = new URL('..', import.meta.url);
const dockerfile = readFileSync(new URL('Dockerfile', root), 'utf8');
const compose = readFileSync(new URL('docker-compose.yml', root), 'utf8');

describe('Dockerfile and docker-compose.yml', () => {
  it('build on Node 24 LTS and copy every folder the running code imports', () => {
    expect(dockerfile).toMatch(/^FROM node:24-/m);
    const copied = [...dockerfile.matchAll(/^COPY (\S+) /gm)].map((m) => m[1]);
    // src imports dev/ (the emulator, started by src/app) and reads migrations/ at start.
    for (const dir of ['src', 'dev', 'migrations']) {
      expect(existsSync(new URL(dir, root))).toBe(true);
      expect(copied).toContain(dir);
    }
    // Every top-level folder that a file under src/ imports from must be in the image.
    const rootPath = fileURLToPath(root);
    const outside = new Set<string>();
    const walk = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        if (e.isDirectory()) walk(path);
        else if (e.name.endsWith('.ts')) {
          for (const m of readFileSync(path, 'utf8').matchAll(/from '(\.{1,2}\/[^']+)'/g)) {
            outside.add(relative(rootPath, resolve(dirname(path), m[1])).split(sep)[0]);
          }
        }
      }
    };
    walk(join(rootPath, 'src'));
    expect(outside.has('dev')).toBe(true);
    for (const top of outside) expect(copied).toContain(top);
  });

  it('run node directly in exec form, so SIGTERM reaches agentq and it drains', () => {
    expect(dockerfile).toMatch(/^CMD \["node", "--import", "tsx", "src\/main\.ts", "all"\]$/m);
    expect(dockerfile).not.toMatch(/^CMD \["npm"/m);
    const commands = [...compose.matchAll(/^\s+command: (\[.*\])$/gm)].map((m) => JSON.parse(m[1]) as string[]);
    const agentq = commands.filter((c) => c.includes('src/main.ts'));
    expect(agentq.map((c) => c.at(-1)).sort()).toEqual(['api', 'worker']);
    for (const c of agentq) expect(c.slice(0, 3)).toEqual(['node', '--import', 'tsx']);
  });

  it('keep Redis durable and never evicting queue keys', () => {
    expect(compose).toMatch(/"--appendonly", "yes"/);
    expect(compose).toMatch(/"--maxmemory-policy", "noeviction"/);
    expect(compose).toMatch(/image: pgvector\/pgvector:/);
  });
});
