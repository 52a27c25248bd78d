/**
 * Redis keys outside BullMQ's own, built here and nowhere else. All sit under the queue prefix, so they share
 * its `{hash tag}` with the BullMQ keys and Lua scripts may touch both on a Redis Cluster. The pub/sub channels
 * too: they are sharded (SPUBLISH / SSUBSCRIBE), so a cluster sends their messages to the shard that owns the
 * tag's slot only, and a script may SPUBLISH one (Redis 7.0 does not check a shard channel against the script's
 * slot: one outside it would be published on the wrong shard, unheard).
 */

import { QUEUE } from './queue-names.js';

/** The hash BullMQ keeps one agent job in (`<prefix>:agent-jobs:<id>`): workers write its stage to `progress`. */
export const agentJobKey = (prefix: string, jobId: string) => `${prefix}:${QUEUE.agent}:${jobId}`;

/** The hash BullMQ keeps a job of any queue in, from the queue's qualified name (`<prefix>:<queue>`, a child's `parent.queueKey`). */
export const jobHashKey = (queueKey: string, jobId: string) => `${queueKey}:${jobId}`;

/**
 * A field agentq adds to a flow child's (or pipeline step's) BullMQ hash: the USD of its rows that its result does
 * not carry (failed attempts billed for an answer, a delayed run's paid calls), summed by the script that appends
 * each such row to the usage stream (usage-bill-3.lua), so it equals those rows' sum in `agent_runs`. The parent
 * adds it to the child's cost: a failed child's result has no cost of its own.
 */
export const JOB_BILLED_FIELD = 'agentqBilledUsd';

/**
 * The same sum kept on the parent's hash (the fan-out flow's or pipeline run's), one field per child, by the same
 * script call: it outlives the child's hash, which retention removes (a failed one past KEEP_FAILED_COUNT).
 */
export const childBilledField = (childId: string) => `${JOB_BILLED_FIELD}:${childId}`;

/**
 * The parent's sum of one child's completed rows' cost, by the same script call: the result BullMQ accepted carries
 * one of them, and a run whose completion BullMQ refused (its lock lapsed: the stalled check ran the attempt again)
 * paid for its calls all the same. The parent reads the larger of this and the result's cost.
 */
export const childRunsField = (childId: string) => `agentqRunsUsd:${childId}`;

/**
 * The parent's sums of one child's embedding calls, from every row of the child (completed, failed or delayed; their
 * tokens estimated: Gemini reports none), by the script that appends each row (includes/usage-bill.lua): `costUsd`
 * leaves them out, as `agent_runs.cost_usd` does, so the flow and the run report them beside it.
 */
export const childEmbeddingTokensField = (childId: string) => `agentqEmbeddingTokens:${childId}`;
export const childEmbeddingUsdField = (childId: string) => `agentqEmbeddingUsd:${childId}`;

/**
 * A field of a flow child's own BullMQ hash, one per billed row (the row's attempt and part: with the hash's
 * incarnation, the key `agent_runs` keeps it under), set by the script that sums the row (includes/usage-bill.lua)
 * in the same call: ioredis sends a script again when its connection dropped before the reply, though Redis may
 * have run it, and the row's second run then finds it and sums nothing (the ledger keeps one row either way). It
 * lives as long as the hash the script checks before summing anything: a call that finds neither adds nothing.
 */
export const billedRowField = (attempt: number, part: string) => `agentqBilledRow:${attempt}:${part}`;

/** BullMQ's set of a queue's parents waiting for their children, from a job's `parent.queueKey` (`<prefix>:<queue>`). */
export const waitingChildrenKey = (queueKey: string) => `${queueKey}:waiting-children`;

/**
 * BullMQ's sets of one parent's children, from the parent's key (a child's `parentKey`, `<prefix>:<queue>:<id>`):
 * children failed with failParentOnFailure (ZSET), failed with ignoreDependencyOnFailure (HASH child key ->
 * reason), and still pending (SET). BullMQ's retry of a failed child moves it from either of the first two back
 * to the third.
 */
export const parentChildrenKeys = (parentKey: string) => ({
  unsuccessful: `${parentKey}:unsuccessful`,
  failed: `${parentKey}:failed`,
  dependencies: `${parentKey}:dependencies`,
});

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
export const fairPrefixes = (prefix: string) => ({ keyPrefix: `${prefix}:fq`, bucketPrefix: agentqPrefix(prefix) });

/** Pub/sub channel on which producers that do not dispatch themselves ask workers to dispatch. */
export const fairKickChannel = (prefix: string) => `${prefix}:fq:kick`;

/** Prefix of agentq's own keys beside BullMQ's (guards, caches, DLQ meta, metrics, streams). */
export const agentqPrefix = (prefix: string) => `${prefix}:agentq`;

/**
 * A key /readyz reads (it need not exist): in the data's hash tag, so on a cluster readiness means the
 * primary that owns the queue's slot answers, not just any node.
 */
export const readinessKey = (prefix: string) => `${agentqPrefix(prefix)}:ready`;

/** The queue shard count in force (QUEUE_SHARDS), under QUEUE_PREFIX itself: see shared/queue/shard-layout.ts. */
export const shardLayoutKey = (prefix: string) => `${agentqPrefix(prefix)}:shards`;

/** Pub/sub channel on which the API asks whichever worker holds a job to abort it. */
export const cancelChannel = (prefix: string) => `${agentqPrefix(prefix)}:cancel`;

/**
 * Marker of a cancel asked for a job that is (or is about to be) active. The pub/sub message alone can miss:
 * a worker that fetched the job but has not started it yet cannot abort it, so the processor reads this first.
 */
export const cancelRequestedKey = (prefix: string, id: string) => `${agentqPrefix(prefix)}:cancel:${id}`;

/**
 * HASH `{id, fp}`: an idempotency key's record (the job id it names and the request's fingerprint), kept
 * IDEMPOTENCY_TTL_S from the job's first add, however soon retention removes the job. Keyed by that job id
 * (`idempotentJobId(org, key)`), beside the job's hash under the queue's hash tag: the dispatcher's add script
 * reads and writes both in one call.
 */
export const idempotencyRecordKey = (prefix: string, jobId: string) => `${agentqPrefix(prefix)}:idem:${jobId}`;

/**
 * Marker of a cancel asked for a whole fan-out flow or pipeline run (by its id in the flows queue): the flows
 * worker reads it where it would settle the flow or make a run's next step, and ends it "cancelled" instead.
 */
export const flowCancelledKey = (prefix: string, id: string) => `${agentqPrefix(prefix)}:flow-cancel:${id}`;

/** Tombstone of a job removed before it ran, so GET still answers "cancelled" for a while; the add of a later job of its id deletes it. */
export const cancelledKey = (prefix: string, id: string) => `${agentqPrefix(prefix)}:cancelled:${id}`;

/** Per-entry DLQ metadata (class, retries, last error and retry time). */
export const dlqMetaKey = (prefix: string, id: string) => `${agentqPrefix(prefix)}:dlq:${id}`;

/** HASH where every process publishes its Prometheus registry for the API to merge. */
export const metricsExchangeKey = (prefix: string) => `${agentqPrefix(prefix)}:metrics`;

/** HASH of the counters and histograms of processes that left the exchange (fields `totals`, `version`). */
export const metricsRetiredKey = (prefix: string) => `${agentqPrefix(prefix)}:metrics:retired`;

/**
 * Redis Stream of finished attempts' usage rows on their way to `agent_runs` (written behind by the run sink
 * of every worker process, consumer group `usageSinkGroup`). Under the queue's hash tag like every other key.
 */
export const usageStreamKey = (prefix: string) => guardKeys.usageStream(agentqPrefix(prefix));
export const usageSinkGroup = 'agent-runs';

/** Keys under a guard prefix (`agentqPrefix(queuePrefix)` in production; tests pass their own). */
export const guardKeys = {
  tokenBucket: (guardPrefix: string, bucket: string) => `${guardPrefix}:tb:${bucket}`,
  breaker: (guardPrefix: string, key: string) => `${guardPrefix}:cb:${key}`,
  breakerHead: (guardPrefix: string) => `${guardPrefix}:cb:`,
  /**
   * A breaker key's quota mark (e.g. `gemini:<model>` after a per-day 429): the model is not called until it
   * expires. Beside the breaker hash, under the same hash tag, so the breaker's acquire script reads both.
   */
  quotaMark: (guardPrefix: string, key: string) => `${guardPrefix}:qx:${key}`,
  /**
   * Pub/sub channel on which a breaker key is announced when it stops being closed-clean (a failure counted, a
   * quota mark set): processes serving that key's clean answer from memory drop it. Outside `cb:` so it never
   * reads as a breaker key.
   */
  breakerInvalidations: (guardPrefix: string) => `${guardPrefix}:cbx:inval`,
  admission: (guardPrefix: string, plan: string) => `${guardPrefix}:adm:${plan}`,
  /**
   * STRING: the new jobs admission reserved for one org on one UTC day (`day` YYYY-MM-DD), against its daily job
   * limit (daily-jobs-1.lua); expires after the day. In the org's queue shard, beside its admission window.
   */
  dailyJobs: (guardPrefix: string, org: string, day: string) => `${guardPrefix}:dj:${org}:${day}`,
  resultOrgVersion: (guardPrefix: string, org: string) => `${guardPrefix}:rc:v:${org}`,
  resultAgentVersion: (guardPrefix: string, org: string, agent: string) => `${guardPrefix}:rc:v:${org}:${agent}`,
  /** The agent's version in every org: bumped when shared knowledge it reads changes. */
  resultSharedVersion: (guardPrefix: string, agent: string) => `${guardPrefix}:rc:sv:${agent}`,
  resultEntry: (guardPrefix: string, hash: string) => `${guardPrefix}:rc:e:${hash}`,
  resultLock: (guardPrefix: string, hash: string) => `${guardPrefix}:rc:lock:${hash}`,
  /** The usage stream (see `usageStreamKey`): the result cache's store script appends to it too. */
  usageStream: (guardPrefix: string) => `${guardPrefix}:usage`,
  /** Sharded pub/sub channel of result-cache invalidations (SPUBLISH: in the shard of the counters it invalidates). */
  resultInvalidations: (guardPrefix: string) => `${guardPrefix}:rc:inval`,
};

/**
 * Batch tier (Gemini Batch Mode), under `agentqPrefix(queuePrefix)`:
 *   job:<id>       HASH  one batch-tier job: model, state (pending | submitted | done | failed | fallback |
 *                        cancelled), ts (the job's creation time: which job of that id), req (its inline
 *                        request JSON), deadlineAt, intent, result / error, readBy (the attempt served)
 *   queue:<model>  ZSET  pending job ids of a model -> ms they were added (the collector's size / age test)
 *   models         SET   models with pending requests
 *   intent:<id>    HASH  one batch: model, displayName, jobs (JSON ids), minDeadline, name and state once created
 *   open           SET   intents not finished (to create, adopt or poll)
 *   lock           STRING the collector run in progress (one at a time across processes)
 */
export const batchKeys = (prefix: string) => {
  const p = `${agentqPrefix(prefix)}:batch`;
  return {
    job: (id: string) => `${p}:job:${id}`,
    queue: (model: string) => `${p}:queue:${model}`,
    models: `${p}:models`,
    intent: (id: string) => `${p}:intent:${id}`,
    open: `${p}:open`,
    /** ZSET: job id -> ms its answer was stored (with its bill), read by the collector's sweep of unread answers. */
    stored: `${p}:stored`,
    lock: `${p}:lock`,
  };
};
