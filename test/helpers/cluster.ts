import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { startRedisServer, type RedisServerHandle } from '../../src/shared/infra/redis/redis-server.js';
import { until } from './wait.js';

const run = promisify(execFile);

export interface LocalCluster {
  nodes: RedisServerHandle[];
  /** `host:port,host:port,...`, the value of REDIS_CLUSTER_NODES. */
  seeds: string;
  /** Per node: the commands it executed (INFO commandstats calls summed). */
  commandsPerNode(): Promise<Array<{ port: number; role: string; calls: number }>>;
  stop(): Promise<void>;
}

/**
 * A real Redis Cluster from the machine's redis-server: `primaries` primaries (and `replicas` per
 * primary), on free loopback ports, nothing on disk but each node's nodes.conf in a temp dir.
 */
export async function startLocalCluster(opts: { primaries?: number; replicas?: number } = {}): Promise<LocalCluster> {
  const primaries = opts.primaries ?? 3;
  const replicas = opts.replicas ?? 0;
  const dir = mkdtempSync(join(tmpdir(), 'agentq-cluster-'));
  const nodes = await Promise.all(
    Array.from({ length: primaries * (1 + replicas) }, (_, i) =>
      startRedisServer({ args: ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${i}.conf`), '--cluster-node-timeout', '2000', '--dir', dir] }),
    ),
  );
  const seeds = nodes.map((n) => `127.0.0.1:${n.port}`);
  await run('redis-cli', ['--cluster', 'create', ...seeds, '--cluster-replicas', String(replicas), '--cluster-yes']);
  // Created is not settled: every node must agree the cluster is ok (all slots served) before use.
  await until(
    'every cluster node reports cluster_state:ok',
    async () => {
      const states = await Promise.all(nodes.map((n) => info(n.port, 'cluster', ['CLUSTER', 'INFO'])));
      return states.every((s) => s.includes('cluster_state:ok'));
    },
    30_000,
  );
  return {
    nodes,
    seeds: seeds.join(','),
    async commandsPerNode() {
      return Promise.all(
        nodes.map(async (n) => {
          const stats = await info(n.port, 'commandstats');
          const role = /role:(\w+)/.exec(await info(n.port, 'replication'))?.[1] ?? '?';
          const calls = [...stats.matchAll(/calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
          return { port: n.port, role, calls };
        }),
      );
    },
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function info(port: number, section: string, command?: string[]): Promise<string> {
  const r = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 });
  r.on('error', () => {});
  try {
    await r.connect();
    return String(command ? await r.call(command[0], ...command.slice(1)) : await r.info(section));
  } finally {
    r.disconnect();
  }
}
