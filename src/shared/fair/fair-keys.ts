import { agentqPrefix, cancelledKey, cancelRequestedKey, guardKeys, idempotencyRecordKey, orgJobsKey } from '../core/queue-keys.js';
/**
 * Every Redis key the fair dispatcher uses, built here and nowhere else in TypeScript. The fair Lua scripts take
 * four prefixes (`script`) as KEYS and build the same names from them (fair-core-N.lua, whose op `keys` returns
 * them in FAIR_KEY_NAMES order: test/fair-keys.test.ts compares them with these), appending ids to the `*Prefix`
 * entries:
 *   <keyPrefix>:job:<jobId>            HASH  o org, m model, p priority, e est tokens, s seq, st lane|timer|lease, r reason
 *                                          pk: the attempt (BullMQ's ats) whose park a lease sweep has seen once
 *                                          c: 1 once a worker's claim took the dispatch's charge (0 at dispatch)
 *   <keyPrefix>:lane:<org>|<model>     ZSET  ready line: jobId -> priority * 2^31 + seq
 *   <keyPrefix>:lanes                  ZSET  active lanes -> their org's virtual time
 *   <keyPrefix>:olanes:<org>           SET   the org's non-empty lanes (any state)
 *   <keyPrefix>:capblk:<org>           SET   the org's lanes waiting for an in-flight slot
 *   <keyPrefix>:sleep                  ZSET  lanes waiting for a rate limit / model block -> wake time ms
 *   <keyPrefix>:sleepwhy               HASH  lane -> limit name (bucket name, or model:<model>)
 *   <keyPrefix>:timers                 ZSET  reparked jobs -> not-before ms
 *   <keyPrefix>:otimers                HASH  org -> number of its jobs in timers
 *   <keyPrefix>:leases                 ZSET  dispatched jobs -> lease deadline ms
 *   <keyPrefix>:inflight               HASH  org -> slots held (always = the org's members of leases)
 *   <keyPrefix>:vt                     HASH  org -> virtual time
 *   <keyPrefix>:gvt, :seq              STRING global virtual time (start tag of the last dispatch), FIFO counter
 *   <keyPrefix>:mblock / :mblockwhy    HASH  model -> blocked until ms / reason
 *   <keyPrefix>:mlimits                HASH  rpm:<model> / tpm:<model> -> global limit per minute
 *   <keyPrefix>:plan:<org>             HASH  weight, concurrency, rpmPro, rpmFlash, tpm
 *   <bucketPrefix>:tb:rpm:org:<org>:<model>, :tb:tpm:org:<org>:<model>, :tb:rpm:model:<model>,
 *   :tb:tpm:model:<model>              token buckets in the format of guards/token-bucket.ts
 *   <keyPrefix>:workers / :workerconc  ZSET worker -> registration expiry ms / HASH worker -> its ask (buffer-ask.ts)
 *   <keyPrefix>:throttled / :sleepstart HASH org -> seconds its lanes slept on limits / lane -> sleep start ms
 *   <keyPrefix>:wake                   STRING the wake time a caller armed
 *   BullMQ's wait, prioritized, delayed, job hashes, meta, active, pc, events and marker: a dispatch moves the
 *   jobs it hands out from delayed to wait / prioritized as BullMQ's own promote script does (fair-core-N.lua)
 *   <keyPrefix>:leasereq / :leasewait:<model> HASH model -> ms a lease request stands until / SET lanes asleep for it
 *   (with QUEUE_SHARDS > 1 the :tb:*:model: keys are the shard's reservoirs of the global buckets: model-leases.ts)
 *   <queuePrefix>:agentq:cancel:<jobId>    the API's cancel marker (queue-keys.ts): read by claim
 *   <queuePrefix>:agentq:org-jobs:<org>    the org's job index (queue-keys.ts): enqueue adds to it (ZADD NX)
 *   <queuePrefix>:agentq:idem:<jobId>      an idempotency key's record (queue-keys.ts): add reads and writes it
 *   <queuePrefix>:agentq:cancelled:<jobId> the API's cancel tombstone (queue-keys.ts): add deletes an earlier job's
 */

/** The parts of a BullMQ Queue the keys need. */
export interface QueueKeySource {
  toKey(type: string): string;
  /** BullMQ's queue options: `prefix` (default 'bull') is the prefix of agentq's own keys too (queue-keys.ts). */
  opts: { prefix?: string };
}

export const FAIR_KEY_NAMES = [
  'lanes',
  'sleep',
  'sleepWhy',
  'timers',
  'orgTimers',
  'leases',
  'inflight',
  'vt',
  'gvt',
  'seq',
  'modelBlock',
  'modelBlockWhy',
  'modelLimits',
  'jobPrefix',
  'lanePrefix',
  'orgLanesPrefix',
  'capBlockedPrefix',
  'planPrefix',
  'tbRpmOrgPrefix',
  'tbTpmOrgPrefix',
  'tbRpmModelPrefix',
  'tbTpmModelPrefix',
  'queueWait',
  'queuePrioritized',
  'queueDelayed',
  'queueJobPrefix',
  'workers',
  'workerConc',
  'throttled',
  'sleepStart',
  'wake',
  'cancelPrefix',
  'orgJobsPrefix',
  'queueMeta',
  'queueActive',
  'queuePriorityCounter',
  'queueEvents',
  'queueMarker',
  'leaseReq',
  'leaseWaitPrefix',
  'idemPrefix',
  'cancelledPrefix',
] as const;

export type FairKeyName = (typeof FAIR_KEY_NAMES)[number];

export interface FairKeys {
  named: Record<FairKeyName, string>;
  /**
   * KEYS of every fair Lua script: the dispatcher's prefix, the token buckets', BullMQ's queue key prefix and
   * agentq's own (cancel markers, org job indexes). Four keys instead of the ~40 built from them: each key passed
   * cost Redis about as much as building it twice in the script.
   */
  script: string[];
  plan(org: string): string;
  leases: string;
  inflight: string;
  /** The bucket name (under bucketPrefix, as token-bucket.ts takes it) of each dispatch limit. */
  bucketName: {
    rpmOrg(org: string, model: string): string;
    tpmOrg(org: string, model: string): string;
    rpmModel(model: string): string;
    tpmModel(model: string): string;
  };
}

const hashTag = (key: string): string | undefined => {
  const open = key.indexOf('{');
  if (open < 0) return undefined;
  const close = key.indexOf('}', open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : undefined;
};

/** Prefix of the per-job meta hashes (org, model, state): read by the job listing too. */
export const fairJobPrefix = (keyPrefix: string) => `${keyPrefix}:job:`;

export function fairKeys(opts: { keyPrefix: string; bucketPrefix: string; queue: QueueKeySource }): FairKeys {
  const p = opts.keyPrefix;
  const b = opts.bucketPrefix;
  const q = opts.queue;
  // Scripts touch all of these in one call: on Redis Cluster they must hash to one slot.
  const qp = q.opts.prefix ?? 'bull';
  const tags = [p, b, q.toKey('wait'), cancelRequestedKey(qp, ''), orgJobsKey(qp, ''), idempotencyRecordKey(qp, ''), cancelledKey(qp, '')].map(hashTag);
  if (tags.some((t) => t !== tags[0])) {
    throw new Error(`keyPrefix, bucketPrefix and the queue prefix must share one hash tag: ${p}, ${b}, ${q.toKey('wait')}`);
  }
  const named: Record<FairKeyName, string> = {
    lanes: `${p}:lanes`,
    sleep: `${p}:sleep`,
    sleepWhy: `${p}:sleepwhy`,
    timers: `${p}:timers`,
    orgTimers: `${p}:otimers`,
    leases: `${p}:leases`,
    inflight: `${p}:inflight`,
    vt: `${p}:vt`,
    gvt: `${p}:gvt`,
    seq: `${p}:seq`,
    modelBlock: `${p}:mblock`,
    modelBlockWhy: `${p}:mblockwhy`,
    modelLimits: `${p}:mlimits`,
    jobPrefix: fairJobPrefix(p),
    lanePrefix: `${p}:lane:`,
    orgLanesPrefix: `${p}:olanes:`,
    capBlockedPrefix: `${p}:capblk:`,
    planPrefix: `${p}:plan:`,
    tbRpmOrgPrefix: guardKeys.tokenBucket(b, 'rpm:org:'),
    tbTpmOrgPrefix: guardKeys.tokenBucket(b, 'tpm:org:'),
    tbRpmModelPrefix: guardKeys.tokenBucket(b, 'rpm:model:'),
    tbTpmModelPrefix: guardKeys.tokenBucket(b, 'tpm:model:'),
    queueWait: q.toKey('wait'),
    queuePrioritized: q.toKey('prioritized'),
    queueDelayed: q.toKey('delayed'),
    queueJobPrefix: q.toKey(''),
    workers: `${p}:workers`,
    workerConc: `${p}:workerconc`,
    throttled: `${p}:throttled`,
    sleepStart: `${p}:sleepstart`,
    wake: `${p}:wake`,
    cancelPrefix: cancelRequestedKey(qp, ''),
    orgJobsPrefix: orgJobsKey(qp, ''),
    queueMeta: q.toKey('meta'),
    queueActive: q.toKey('active'),
    queuePriorityCounter: q.toKey('pc'),
    queueEvents: q.toKey('events'),
    queueMarker: q.toKey('marker'),
    leaseReq: `${p}:leasereq`,
    leaseWaitPrefix: `${p}:leasewait:`,
    idemPrefix: idempotencyRecordKey(qp, ''),
    cancelledPrefix: cancelledKey(qp, ''),
  };
  return {
    named,
    script: [`${p}:`, guardKeys.tokenBucket(b, ''), q.toKey(''), `${agentqPrefix(qp)}:`],
    plan: (org) => named.planPrefix + org,
    leases: named.leases,
    inflight: named.inflight,
    bucketName: {
      rpmOrg: (org, model) => `rpm:org:${org}:${model}`,
      tpmOrg: (org, model) => `tpm:org:${org}:${model}`,
      rpmModel: (model) => `rpm:model:${model}`,
      tpmModel: (model) => `tpm:model:${model}`,
    },
  };
}
