import { realpathSync } from 'node:fs';
import { pino } from 'pino';
import { pathToFileURL } from 'node:url';
import { isGiven, type Config } from '../../shared/core/config.js';
import { createLogger, type Logger } from '../../shared/core/logger.js';

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

/**
 * The shard count this CLI's environment gives, or undefined when it leaves QUEUE_SHARDS unset: then the CLI takes
 * the layout the deployment recorded (shard-layout.ts `followShardLayout`), not the variable's default of 1.
 */
export function shardsGiven(cfg: Pick<Config, 'QUEUE_SHARDS'>, env: NodeJS.ProcessEnv = process.env): number | undefined {
  // Blank is unset, as parseConfig reads it.
  return isGiven(env.QUEUE_SHARDS) ? cfg.QUEUE_SHARDS : undefined;
}

/**
 * A CLI's log level: LOG_LEVEL's, as the config validated it, when its environment gives one; else `warn`, so
 * stderr carries only what needs a look. Blank is unset, as parseConfig reads it (pino refuses a level of '').
 */
export function cliLogLevel(cfg: Pick<Config, 'LOG_LEVEL'>, env: NodeJS.ProcessEnv = process.env): string {
  return isGiven(env.LOG_LEVEL) ? cfg.LOG_LEVEL : 'warn';
}

/** A CLI's logger: JSON lines on stderr (stdout is the command's output) at `cliLogLevel`. The one way a CLI builds its logger. */
export function createCliLogger(cfg: Pick<Config, 'LOG_LEVEL'>, env: NodeJS.ProcessEnv = process.env): Logger {
  return createLogger({ level: cliLogLevel(cfg, env), destination: pino.destination(2) });
}
