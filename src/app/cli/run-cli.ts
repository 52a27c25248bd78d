import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/**
 * Runs `main(argv)` and exits with its code, but only when `moduleUrl` is the script node was started
 * with, so tests can import a CLI module without running it.
 */
export function runCliIfMain(moduleUrl: string, main: (argv: string[]) => Promise<number>): void {
  const invokedDirectly = process.argv[1] !== undefined && moduleUrl === pathToFileURL(realpathSync(process.argv[1])).href;
  if (!invokedDirectly) return;
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`${(err as Error).message}\n`);
      process.exit(1);
    },
  );
}
