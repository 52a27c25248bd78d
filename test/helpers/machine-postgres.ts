import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, vi } from 'vitest';
import { freePort } from '../../src/shared/infra/redis/redis-server.js';
import { exitWithin } from './processes.js';

/** How long the server told SIGINT (a fast shutdown) is given to stop; then its postmaster is SIGKILLed. */
const PG_STOP_MS = 30_000;

export interface MachinePostgres {
  /** The socket directory (`host` for pg). */
  host: string;
  port: number;
  /** The superuser initdb made (trust authentication). */
  superuser: string;
  stop(): Promise<void>;
}

/**
 * A throwaway server of the machine's own PostgreSQL (Debian's, contrib included), listening on a unix socket in
 * a temp dir only. As root it runs as the machine's postgres user, as the image's entrypoint does.
 */
export async function startMachinePostgres(): Promise<MachinePostgres> {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error("no PostgreSQL under /usr/lib/postgresql: this test needs the machine's server");
  const bin = join('/usr/lib/postgresql', versions[0], 'bin');
  const asPostgres = process.getuid?.() === 0 ? ['runuser', '-u', 'postgres', '--'] : [];
  const run = (args: string[]) => (asPostgres.length ? [asPostgres[0], [...asPostgres.slice(1), ...args]] : [args[0], args.slice(1)]) as [string, string[]];
  const dir = mkdtempSync(join(tmpdir(), 'agentq-machine-pg-'));
  chmodSync(dir, 0o777);
  const data = join(dir, 'data');
  const superuser = 'agentq';
  const init = spawnSync(...run([join(bin, 'initdb'), '-D', data, '-A', 'trust', '-U', superuser]), { encoding: 'utf8' });
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}`);
  const port = await freePort();
  const server: ChildProcess = spawn(...run([join(bin, 'postgres'), '-D', data, '-k', dir, '-p', String(port), '-c', 'listen_addresses=']), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const stop = async () => {
    try {
      await stopServer();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const stopServer = async () => {
    if (server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((r) => server.once('exit', r));
      // The postmaster itself (runuser passes SIGTERM on, not SIGINT): a fast shutdown; SIGKILLed if it hangs.
      const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 'SIGINT');
      await exitWithin({ child: server, exited }, PG_STOP_MS, 'the machine postgres to stop on SIGINT', {
        kill: () => {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone already
          }
        },
      });
    }
  };
  try {
    // Connected to once it says it is ready (an earlier attempt would be refused with a FATAL line).
    await vi.waitFor(() => expect(stderr).toMatch(/database system is ready to accept connections/), { timeout: 30_000, interval: 100 });
  } catch (err) {
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return { host: dir, port, superuser, stop };
}
