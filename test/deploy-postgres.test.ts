import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from '../src/shared/infra/redis/redis-server.js';
import { afterAll, describe, expect, it } from 'vitest';
import { exitGuard, exitWithin } from './helpers/processes.js';
import { waitsTimeout } from './helpers/wait.js';

/** How long a postgres told SIGINT (a fast shutdown) is given to stop; then its postmaster is SIGKILLed. */
const PG_STOP_MS = 30_000;
/** How long a postgres started is given to say it accepts connections. */
const PG_READY_MS = 30_000;
const killQuietly = (pid: number) => {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
};

// No Docker engine here, but the machine's own PostgreSQL (Debian's, contrib included like the pgvector
// image's) can run the compose file's postgres command, so its settings are checked by a real server.
const compose = readFileSync(new URL('../docker-compose.yml', import.meta.url), 'utf8');

/** The postgres service's command, with compose's `${VAR:-default}` replaced by the default. */
function composePostgresCommand(): string[] {
  const service = compose.slice(compose.indexOf('\n  postgres:'));
  const line = /^\s+command: (\[.*\])$/m.exec(service);
  if (!line) throw new Error('docker-compose.yml: the postgres service has no command');
  return (JSON.parse(line[1]) as string[]).map((a) => a.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1'));
}

function postgresBin(): string {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error('no PostgreSQL under /usr/lib/postgresql: this test needs the machine\'s server');
  return join('/usr/lib/postgresql', versions[0], 'bin');
}

describe('docker-compose.yml postgres service, run by a real PostgreSQL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentq-compose-pg-'));
  const data = join(dir, 'data');
  let server: ReturnType<typeof spawn> | undefined;
  afterAll(async () => {
    try {
      await stopServer();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  const stopServer = async () => {
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server!.once('exit', r));
      // The postmaster itself (runuser passes SIGTERM on, not SIGINT): a fast shutdown.
      const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 'SIGINT');
      await exitWithin({ child: server, exited }, PG_STOP_MS, 'the compose postgres to stop on SIGINT', { kill: () => killQuietly(pid) });
    }
  };

  it('starts with its shared_buffers and pg_prewarm\'s autoprewarm, which dumps the cached blocks a restart reloads', async () => {
    const cmd = composePostgresCommand();
    expect(cmd[0]).toBe('postgres');
    const bin = postgresBin();
    // Postgres refuses to run as root: as the machine's postgres user, like the image's entrypoint.
    const asPostgres = process.getuid?.() === 0 ? ['runuser', '-u', 'postgres', '--'] : [];
    chmodSync(dir, 0o777);
    const init = spawnSync(asPostgres[0] ?? join(bin, 'initdb'), [...asPostgres.slice(1), ...(asPostgres.length ? [join(bin, 'initdb')] : []), '-D', data, '-A', 'trust', '-U', 'agentq'], { encoding: 'utf8' });
    expect(init.status, init.stderr).toBe(0);
    // No TCP (listen_addresses empty): the port only names the socket file in the private dir.
    const port = 5432;
    const args = [join(bin, 'postgres'), '-D', data, '-k', dir, '-p', String(port), '-c', "listen_addresses=", ...cmd.slice(1)];
    server = spawn(asPostgres[0] ?? args[0], [...asPostgres.slice(1), ...(asPostgres.length ? args : args.slice(1))], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // Connect once the server says it is ready (an earlier attempt would be refused with a FATAL line).
    await expect.poll(() => stderr, { timeout: PG_READY_MS, interval: 100 }).toMatch(/database system is ready to accept connections/);
    const client = new pg.Client({ host: dir, port, user: 'agentq', database: 'postgres' });
    await client.connect();
    try {
      expect((await client.query('SHOW shared_buffers')).rows[0].shared_buffers).toBe('1GB');
      expect((await client.query('SHOW shared_preload_libraries')).rows[0].shared_preload_libraries).toBe('pg_prewarm');
      expect((await client.query('SHOW pg_prewarm.autoprewarm')).rows[0]['pg_prewarm.autoprewarm']).toBe('on');
      // What a restart reloads: the list of cached blocks, dumped to the data dir (every 300 s by the worker).
      await client.query('CREATE EXTENSION pg_prewarm');
      expect(Number((await client.query('SELECT autoprewarm_dump_now() AS n')).rows[0].n)).toBeGreaterThan(0);
      expect(existsSync(join(data, 'autoprewarm.blocks'))).toBe(true);
    } finally {
      await client.end();
    }
    expect(stderr).not.toMatch(/FATAL|PANIC/);
  });
});

/** The postgres service's healthcheck command (CMD-SHELL), as the container's shell runs it. */
function composePostgresHealthcheck(): string {
  const service = compose.slice(compose.indexOf('\n  postgres:'));
  const line = /^\s+test: (\[.*\])$/m.exec(service);
  if (!line) throw new Error('docker-compose.yml: the postgres service has no healthcheck');
  const [kind, command] = JSON.parse(line[1]) as string[];
  expect(kind).toBe('CMD-SHELL');
  return command;
}

describe('docker-compose.yml postgres healthcheck, run against a real PostgreSQL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentq-compose-pg-health-'));
  const data = join(dir, 'data');
  const asPostgres = process.getuid?.() === 0 ? ['runuser', '-u', 'postgres', '--'] : [];
  let server: ReturnType<typeof spawn> | undefined;
  const stop = async () => {
    if (!server || server.exitCode !== null) return;
    const exited = new Promise((r) => server!.once('exit', r));
    const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(pid, 'SIGINT');
    await exitWithin({ child: server, exited }, PG_STOP_MS, 'the healthcheck postgres to stop on SIGINT', { kill: () => killQuietly(pid) });
  };
  afterAll(async () => {
    try {
      await stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  /** Starts the server listening on `listen` (TCP addresses; '' = the unix socket in `dir` only) and waits until it is ready. */
  const start = async (port: number, listen: string) => {
    const args = [join(postgresBin(), 'postgres'), '-D', data, '-k', dir, '-p', String(port), '-c', `listen_addresses=${listen}`];
    server = spawn(asPostgres[0] ?? args[0], [...asPostgres.slice(1), ...(asPostgres.length ? args : args.slice(1))], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await expect.poll(() => stderr, { timeout: PG_READY_MS, interval: 100 }).toMatch(/database system is ready to accept connections/);
  };
  /** The healthcheck's exit code; PGHOST (the socket dir) stands for the image's default socket, PGPORT for 5432. */
  const check = (command: string, port: number) => spawnSync('sh', ['-c', command], { env: { ...process.env, PGHOST: dir, PGPORT: String(port) }, encoding: 'utf8' }).status;

  it('fails while the server listens on its unix socket only (the image\'s first-boot init) and passes once TCP is open', async () => {
    const healthcheck = composePostgresHealthcheck();
    chmodSync(dir, 0o777);
    const init = spawnSync(asPostgres[0] ?? join(postgresBin(), 'initdb'), [...asPostgres.slice(1), ...(asPostgres.length ? [join(postgresBin(), 'initdb')] : []), '-D', data, '-A', 'trust', '-U', 'agentq'], { encoding: 'utf8' });
    expect(init.status, init.stderr).toBe(0);
    const port = await freePort();
    // The entrypoint's temporary server during initdb's scripts: listen_addresses='' (socket only).
    await start(port, '');
    expect(check('pg_isready -U agentq -d agentq', port), 'the server answers on its socket').toBe(0);
    // Before, the check used that socket: healthy here, so the API started and its migrate got ECONNREFUSED.
    expect(check(healthcheck, port), `"${healthcheck}" while only the socket is open`).not.toBe(0);
    await stop();
    // The server the entrypoint execs once init is done listens on TCP too.
    await start(port, '127.0.0.1');
    expect(check(healthcheck, port), `"${healthcheck}" once TCP is open`).toBe(0);
  }, waitsTimeout(PG_READY_MS, exitGuard(PG_STOP_MS), PG_READY_MS));
});
