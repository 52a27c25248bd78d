/** Tests start their own Redis Cluster with the same dev tooling the bench uses. */
export { startLocalCluster, type LocalCluster } from '../../dev/redis-cluster/local-cluster.js';
