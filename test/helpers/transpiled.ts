import { cpSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSync } from 'esbuild';
import { inject } from 'vitest';
import { isAsset } from '../../dev/build/build-dist.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** What a spawned test process may load: the shipped sources, and the test fixtures run as processes. */
const TREES = ['src', 'dev/gemini-emulator', 'test/fixtures'];
/** Beside the trees, as in the repository: read through `import.meta.url` (package.json's version, migrations/) or resolved from it (packages). */
const LINKED = ['package.json', 'migrations', 'node_modules'];

function filesUnder(dir: string, acc: string[] = []): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) filesUnder(path, acc);
    else acc.push(path);
  }
  return acc;
}

/**
 * The test run's processes (`src/main.ts` roles, the CLIs, fixtures) as plain JavaScript, in the repository's
 * layout, transpiled once by esbuild in the global setup. Started through tsx, each process paid ~1 s more CPU
 * in its loader (1.0-1.5 s against 0.45-0.55 s for the same start transpiled); the suites start dozens, on 2
 * cores where they are CPU-bound (the unit suite's 12 files that start processes: 178 s of CPU through tsx,
 * 144 s transpiled, side by side on 2026-12-06). esbuild is what tsx transpiles with, file by file, so the code
 * run is the same; tsc's build (what the image ships) has its own test, `production-build`, and the npm scripts
 * (`npm start`, run by `quickstart`) keep tsx, as a user runs them.
 */
export function transpileForTests(outDir: string): string {
  const out = resolve(outDir);
  const files = TREES.flatMap((tree) => filesUnder(join(ROOT, tree)));
  buildSync({
    entryPoints: files.filter((f) => f.endsWith('.ts')),
    outdir: out,
    outbase: ROOT,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    logLevel: 'error',
  });
  for (const file of files.filter((f) => !f.endsWith('.ts') && isAsset(f))) {
    const target = join(out, relative(ROOT, file));
    mkdirSync(dirname(target), { recursive: true });
    cpSync(file, target);
  }
  for (const name of LINKED) symlinkSync(join(ROOT, name), join(out, name));
  return out;
}

/**
 * Node's arguments to run a repository TypeScript file (path from the repo root or absolute) as a process:
 * its transpiled twin when the global setup made one, else the file itself through tsx.
 */
export function nodeArgsFor(file: string): string[] {
  const twin = transpiledTwin(file);
  return twin ? [twin] : ['--import', 'tsx', resolve(ROOT, file)];
}

/** The transpiled file of a repository TypeScript file, when the global setup made the tree. */
export function transpiledTwin(file: string): string | undefined {
  const root = transpiledRoot();
  return root && join(root, relative(ROOT, resolve(ROOT, file)).replace(/\.ts$/, '.js'));
}

function transpiledRoot(): string | undefined {
  try {
    return inject('transpiledRoot');
  } catch {
    // Outside a vitest worker (a fixture or script importing this helper): no transpiled tree.
    return undefined;
  }
}
