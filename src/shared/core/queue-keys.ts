/**
 * Redis keys outside BullMQ's own, built here and nowhere else. All sit under the queue prefix, so they share
 * its `{hash tag}` with the BullMQ keys and Lua scripts may touch both on a Redis Cluster.
 */

/** The Redis Stream of one job's chunks, progress events and final outcome. */
export const jobStreamKey = (prefix: string, jobId: string) => `${prefix}:agentq:stream:${jobId}`;

/** ZSET of one org's open SSE connections, scored by the time (ms) each lease lapses unless refreshed. */
export const openStreamsKey = (prefix: string, orgId: string) => `${prefix}:agentq:sse-open:${orgId}`;

/** ZSET of one org's job ids scored by enqueue time (ms): lists an org's jobs without scanning other tenants'. */
export const orgJobsKey = (prefix: string, orgId: string) => `${prefix}:agentq:org-jobs:${orgId}`;

/**
 * The fair dispatcher's key prefix, and the prefix of the token buckets it shares with the workers' rate
 * limiter (`<bucketPrefix>:tb:<bucket>`): both under the queue's hash tag, as its scripts read BullMQ keys.
 */
export const fairPrefixes = (prefix: string) => ({ keyPrefix: `${prefix}:fq`, bucketPrefix: `${prefix}:agentq` });

/** Pub/sub channel on which producers that do not dispatch themselves ask workers to dispatch. */
export const fairKickChannel = (prefix: string) => `${prefix}:fq:kick`;
