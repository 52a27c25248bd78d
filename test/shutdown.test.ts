import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createShutdown, SIGNAL_REPEAT_MS, type CloseSteps } from '../src/app/shutdown.js';
import { createLogger } from '../src/shared/core/logger.js';
import { within } from './helpers/wait.js';

/** A shutdown over `close`, its log lines and the exit code it asks for (the test's own `exit`, never the process's). */
function setup(close: (steps: CloseSteps) => Promise<void>, timing = { graceMs: 50, marginMs: 100 }, now?: () => number) {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  const exits: number[] = [];
  let exited!: (code: number) => void;
  const exit = new Promise<number>((resolve) => (exited = resolve));
  const shutdown = createShutdown({
    logger: createLogger({ level: 'info', destination }),
    ...timing,
    ...(now ? { now } : {}),
    close,
    exit: (code) => {
      exits.push(code);
      exited(code);
    },
  });
  const line = (msg: string) => lines.find((l) => l.msg === msg);
  return { shutdown, lines, line, exits, exit: within(exit, 10_000, 'the shutdown to exit') };
}

const never = () => new Promise<void>(() => undefined);

describe('process shutdown (app/shutdown.ts)', () => {
  it('every close done: exits 0, once, after logging the drain and its end', async () => {
    const done: string[] = [];
    const { shutdown, line, exits, exit } = setup(async (steps) => {
      await steps.run('a', () => void done.push('a'));
      await steps.run('b', async () => void done.push('b'));
    });
    shutdown.signal('SIGTERM');
    expect(await exit).toBe(0);
    expect(done).toEqual(['a', 'b']);
    expect(line('shutting down: no new jobs, finishing in-flight ones')).toMatchObject({ signal: 'SIGTERM', graceMs: 50 });
    expect(line('stopped')).toMatchObject({ exitCode: 0 });
    expect(exits).toEqual([0]);
  });

  it('a close that failed: the others still run, and the exit is 1, naming it', async () => {
    const done: string[] = [];
    const { shutdown, line, exit } = setup(async (steps) => {
      await steps.run('broken', () => Promise.reject(new Error('pool end failed')));
      await steps.run('after', () => void done.push('after'));
    });
    shutdown.signal('SIGTERM');
    expect(await exit).toBe(1);
    expect(done).toEqual(['after']);
    expect(line('shutdown: close failed')).toMatchObject({ step: 'broken', err: { message: 'pool end failed' } });
    expect(line('stopped')).toMatchObject({ exitCode: 1, failed: ['broken'] });
  });

  it('a close that never returns (a server that never answers): the deadline, grace plus margin, exits 1 naming what was pending', async () => {
    const { shutdown, line, exits, exit } = setup(async (steps) => {
      await steps.run('quick', () => undefined);
      await Promise.all([steps.run('hung', never), steps.run('also quick', () => undefined)]);
    });
    const at = Date.now();
    shutdown.signal('SIGINT');
    expect(await exit).toBe(1);
    expect(Date.now() - at).toBeGreaterThanOrEqual(150 - 5);
    expect(line('shutdown deadline passed; exiting with closes still pending')).toMatchObject({ deadlineMs: 150, pending: ['hung'] });
    expect(line('stopped')).toBeUndefined();
    expect(exits).toEqual([1]);
  });

  it('a second signal while the drain runs exits at once, 1, naming what was pending; the same one delivered twice does not', async () => {
    let clock = 0;
    const { shutdown, line, exits, exit } = setup(async (steps) => void (await steps.run('agent worker 0', never)), { graceMs: 60_000, marginMs: 5000 }, () => clock);
    shutdown.signal('SIGINT');
    // A terminal's Ctrl-C under npm: the tty's SIGINT and npm's forwarded one, a few ms apart.
    clock = SIGNAL_REPEAT_MS - 1;
    shutdown.signal('SIGINT');
    expect(exits).toEqual([]);
    clock = SIGNAL_REPEAT_MS;
    shutdown.signal('SIGTERM');
    expect(await exit).toBe(1);
    expect(line('second signal: exiting now, without waiting for the shutdown')).toMatchObject({ signal: 'SIGTERM', pending: ['agent worker 0'] });
  });

  it('a signal during the drain of an uncaught error is the first signal: the drain goes on, the next one ends it', async () => {
    let clock = 0;
    const { shutdown, line, exit } = setup(async (steps) => void (await steps.run('agent worker 0', never)), { graceMs: 60_000, marginMs: 5000 }, () => clock);
    shutdown.fatal('uncaughtException', new Error('boom'));
    shutdown.signal('SIGTERM');
    expect(line('second signal: exiting now, without waiting for the shutdown')).toBeUndefined();
    clock = SIGNAL_REPEAT_MS;
    shutdown.signal('SIGTERM');
    expect(await exit).toBe(1);
    expect(line('shutting down: no new jobs, finishing in-flight ones')).toBeUndefined();
  });

  it('an uncaught error is logged (redacted) and drains like a signal, exiting 1; one during the drain is logged and changes the exit only', async () => {
    let release!: () => void;
    const { shutdown, line, lines, exit } = setup(async (steps) => void (await steps.run('drain', () => new Promise<void>((resolve) => (release = resolve)))));
    shutdown.fatal('unhandledRejection', Object.assign(new Error('stray'), { token: 'secret-value' }));
    expect(line('unhandledRejection: shutting down')).toMatchObject({ level: 60, kind: 'unhandledRejection', err: { message: 'stray', token: '[redacted]' } });
    shutdown.fatal('uncaughtException', { password: 'another-secret' });
    expect(line('uncaughtException during shutdown')).toMatchObject({ err: { password: '[redacted]' } });
    release();
    expect(await exit).toBe(1);
    expect(line('stopped')).toMatchObject({ exitCode: 1 });
    expect(JSON.stringify(lines)).not.toMatch(/secret-value|another-secret/);
  });

  it('a close that throws outside its steps still ends in an exit, 1', async () => {
    const { shutdown, line, exit } = setup(() => Promise.reject(new Error('runtime close threw')));
    shutdown.signal('SIGTERM');
    expect(await exit).toBe(1);
    expect(line('error during shutdown')).toMatchObject({ err: { message: 'runtime close threw' } });
  });
});
