import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort, startRedisServer, type RedisServerHandle } from '../../src/shared/infra/redis/redis-server.js';

const run = promisify(execFile);

export interface LocalCluster {
  nodes: RedisServerHandle[];
  /** `host:port,host:port,...`, the value of REDIS_CLUSTER_NODES. */
  seeds: string;
  /** The port of the primary that owns `key`'s slot. */
  ownerOf(key: string): Promise<number>;
  /** Per node: its role and the commands it executed so far (INFO commandstats calls, summed). */
  commandsPerNode(): Promise<Array<{ port: number; role: string; calls: number }>>;
  /**
   * SIGKILL to the node on `port` (no shutdown, no last write to its replicas): a crash, unlike CLUSTER
   * FAILOVER. Resolves once the process is gone; the other nodes find out by gossip after the node timeout.
   */
  kill(port: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * One cluster node on free ports. Its bus port is picked free too: the default (port + 10000) may be taken, or
 * past 65535 for an ephemeral port above 55535. A port taken between the pick and the bind (other suites start
 * servers at the same time) makes redis-server exit: the node is started again on fresh ports.
 */
async function startNode(dir: string, i: number): Promise<RedisServerHandle> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRedisServer({
        args: ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${i}.conf`), '--cluster-node-timeout', '2000', '--dir', dir, '--cluster-port', String(await freePort())],
      });
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test(String(err))) throw err;
    }
  }
}

/**
 * A real Redis Cluster from the machine's redis-server (dev tooling for tests and the bench):
 * `primaries` primaries and `replicas` per primary on free loopback ports, nothing on disk but each node's
 * nodes.conf in a temp dir. Resolves once every node reports `cluster_state:ok` and, with replicas, once every
 * node sees every replica attached to its primary and every replica's link to its primary is up.
 */
export async function startLocalCluster(opts: { primaries?: number; replicas?: number; timeoutMs?: number } = {}): Promise<LocalCluster> {
  const primaries = opts.primaries ?? 3;
  const replicas = opts.replicas ?? 0;
  const dir = mkdtempSync(join(tmpdir(), 'agentq-cluster-'));
  const nodes = await Promise.all(Array.from({ length: primaries * (1 + replicas) }, (_, i) => startNode(dir, i)));
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const seeds = nodes.map((n) => `127.0.0.1:${n.port}`);
    await run('redis-cli', ['--cluster', 'create', ...seeds, '--cluster-replicas', String(replicas), '--cluster-yes']);
    // Created is not settled: every node must agree that all slots are served, and (with replicas) that each
    // replica follows its primary and is in sync with it, before the cluster is used. `cluster_state:ok` comes
    // first; the replicas' places reach the other nodes by gossip later, and a failover needs a synced replica.
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    const settled = async () => {
      const states = await Promise.all(nodes.map((n) => call(n.port, ['CLUSTER', 'INFO'])));
      if (!states.every((s) => String(s).includes('cluster_state:ok'))) return 'cluster_state:ok on every node';
      if (replicas === 0) return undefined;
      const views = await Promise.all(nodes.map((n) => call(n.port, ['CLUSTER', 'NODES'])));
      const attached = (view: unknown) => String(view).split('\n').filter((l) => /[ ,](slave|replica) [0-9a-f]{40} /.test(l)).length;
      if (!views.every((v) => attached(v) === primaries * replicas)) return 'every replica attached to its primary, seen by every node';
      const links = await Promise.all(nodes.map((n) => call(n.port, ['INFO', 'replication'])));
      const replicaLinks = links.map(String).filter((l) => l.includes('role:slave'));
      if (replicaLinks.length !== primaries * replicas || !replicaLinks.every((l) => l.includes('master_link_status:up'))) return 'every replica in sync with its primary';
      return undefined;
    };
    for (;;) {
      const waitingFor = await settled();
      if (!waitingFor) break;
      if (Date.now() > deadline) throw new Error(`the local Redis Cluster did not settle: waiting for ${waitingFor}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return {
      nodes,
      seeds: seeds.join(','),
      async ownerOf(key) {
        const slot = Number(await call(nodes[0].port, ['CLUSTER', 'KEYSLOT', key]));
        const ranges = (await call(nodes[0].port, ['CLUSTER', 'SLOTS'])) as Array<[number, number, [string, number]]>;
        return ranges.find(([from, to]) => slot >= from && slot <= to)![2][1];
      },
      async commandsPerNode() {
        return Promise.all(
          nodes.map(async (n) => {
            const stats = String(await call(n.port, ['INFO', 'commandstats']));
            const role = /role:(\w+)/.exec(String(await call(n.port, ['INFO', 'replication'])))?.[1] ?? '?';
            const calls = [...stats.matchAll(/calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
            return { port: n.port, role, calls };
          }),
        );
      },
      async kill(port) {
        const node = nodes.find((n) => n.port === port);
        if (!node) throw new Error(`no node of this cluster listens on ${port}`);
        const child = node.process;
        if (child.exitCode !== null || child.signalCode !== null) return;
        await new Promise<void>((resolve) => {
          child.once('exit', () => resolve());
          child.kill('SIGKILL');
        });
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function call(port: number, command: string[]): Promise<unknown> {
  const r = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 });
  r.on('error', () => {});
  try {
    await r.connect();
    return await r.call(command[0], ...command.slice(1));
  } finally {
    r.disconnect();
  }
}
