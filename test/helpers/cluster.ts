import { Redis } from 'ioredis';
import type { LocalCluster } from '../../dev/redis-cluster/local-cluster.js';

/** Tests start their own Redis Cluster with the same dev tooling the bench uses. */
export { startLocalCluster, type LocalCluster } from '../../dev/redis-cluster/local-cluster.js';

export interface ClusterNode {
  id: string;
  port: number;
  primary: boolean;
  /** The primary's node id, for a replica ('-' for a primary). */
  master: string;
}

/** The cluster's nodes as one node sees them (`CLUSTER NODES`). */
export async function clusterNodes(port: number): Promise<ClusterNode[]> {
  const r = new Redis(port, '127.0.0.1');
  try {
    return String(await r.call('CLUSTER', 'NODES'))
      .trim()
      .split('\n')
      .map((line) => {
        const [id, addr, flags, master] = line.split(' ');
        return { id, port: Number(addr.split('@')[0].split(':')[1]), primary: flags.includes('master'), master };
      });
  } finally {
    r.disconnect();
  }
}

/** The primary that owns `key`'s slot and its replica (undefined when it has none: the caller asserts). */
export async function ownerAndReplica(cluster: LocalCluster, key: string): Promise<{ owner: ClusterNode; replica: ClusterNode | undefined }> {
  const nodes = await clusterNodes(cluster.nodes[0].port);
  const ownerPort = await cluster.ownerOf(key);
  const owner = nodes.find((n) => n.port === ownerPort)!;
  return { owner, replica: nodes.find((n) => !n.primary && n.master === owner.id) };
}

/** Pub/sub traffic of the whole cluster: cluster-bus messages (CLUSTER INFO) and PUBLISH / SPUBLISH calls, summed over the nodes. */
export async function pubsubCounters(cluster: LocalCluster) {
  const sum = { busPublish: 0, busPublishShard: 0, publishCalls: 0, spublishCalls: 0 };
  // A killed node sends nothing more: its counters are gone with it.
  for (const n of cluster.nodes.filter((node) => node.process.exitCode === null && node.process.signalCode === null)) {
    const r = new Redis(n.port, '127.0.0.1');
    const info = String(await r.call('CLUSTER', 'INFO'));
    const stats = await r.info('commandstats');
    r.disconnect();
    const count = (text: string, re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
    sum.busPublish += count(info, /cluster_stats_messages_publish_sent:(\d+)/);
    sum.busPublishShard += count(info, /cluster_stats_messages_publishshard_sent:(\d+)/);
    sum.publishCalls += count(stats, /cmdstat_publish:calls=(\d+)/);
    sum.spublishCalls += count(stats, /cmdstat_spublish:calls=(\d+)/);
  }
  return sum;
}
