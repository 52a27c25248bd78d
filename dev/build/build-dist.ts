import { execFileSync } from 'node:child_process';
import { cpSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CONFIG = join(ROOT, 'tsconfig.build.json');

/** The folders compiled into the artifact: tsconfig.build.json's `include` (src, and dev's emulator, which src/app starts). */
export function buildSources(): string[] {
  return (JSON.parse(readFileSync(CONFIG, 'utf8')) as { include: string[] }).include;
}

/** Read at run time beside the modules (Lua scripts, the dashboard's page and script): copied as they are. */
export const isAsset = (path: string) => !path.endsWith('.ts') && !path.endsWith('.md');

/**
 * `npm run build`: the production artifact, plain JavaScript run by `node` with no TypeScript loader (the
 * Docker image's command). tsc compiles src/ and dev's emulator into `outDir` in the sources' own layout (emit only:
 * type checking is `npm run check`'s), and the files the code reads beside its modules are copied next to
 * them. `outDir/src` and `outDir/dev` then take the place of src/ and dev/ beside package.json and
 * migrations/, so every path the code resolves from `import.meta.url` holds as in the repository.
 */
export function buildDist(outDir = join(ROOT, 'dist')): string {
  const out = resolve(outDir);
  rmSync(out, { recursive: true, force: true });
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', CONFIG, '--outDir', out], { stdio: 'inherit' });
  for (const dir of buildSources()) {
    cpSync(join(ROOT, dir), join(out, dir), { recursive: true, filter: (src) => statSync(src).isDirectory() || isAsset(src) });
  }
  return out;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(`built ${buildDist(process.argv[2])}`);
}
