import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

export interface RedisServerHandle {
  url: string;
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      srv.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * Starts `redis-server` as a child process. With `dir`, data persists there with AOF on; without,
 * nothing is written to disk (tests). Always `noeviction`: BullMQ loses jobs under any other policy.
 */
export async function startRedisServer(
  opts: {
    port?: number;
    dir?: string;
    bin?: string;
    args?: string[];
    /** A command the server runs under (e.g. `valgrind --tool=callgrind ...`: the bench's instruction counts). */
    wrap?: string[];
  } = {},
): Promise<RedisServerHandle> {
  const port = opts.port ?? (await freePort());
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--maxmemory-policy', 'noeviction', '--save', '', ...(opts.args ?? [])];
  if (opts.dir) {
    mkdirSync(opts.dir, { recursive: true });
    args.push('--dir', opts.dir, '--appendonly', 'yes', '--appendfsync', 'everysec');
  } else {
    args.push('--appendonly', 'no');
  }
  // redis-server logs (its reason to exit included) on stdout: the tail is kept for the error, the rest dropped.
  const command = [...(opts.wrap ?? []), opts.bin ?? 'redis-server', ...args];
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d: Buffer) => (output = (output + String(d)).slice(-2000));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const url = `redis://127.0.0.1:${port}`;
  await waitForRedis(url, 10_000, () => (child.exitCode !== null ? `redis-server exited: ${output.trim()}` : undefined));
  return {
    url,
    port,
    process: child,
    stop: () =>
      new Promise<void>((resolve) => {
        // A process ended by a signal (a test's SIGKILL) has a signalCode and no exitCode: both mean gone,
        // and waiting for an 'exit' that already fired would never resolve.
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

export async function pingRedis(url: string, timeoutMs = 500): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => {});
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

async function waitForRedis(url: string, timeoutMs: number, failed: () => string | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const why = failed();
    if (why) throw new Error(why);
    if (await pingRedis(url, 200)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server did not answer at ${url} within ${timeoutMs} ms`);
}
