import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { UNTHROTTLED } from './helpers/faults.js';
import { markedJob, postBulk, sampler } from './helpers/fair.js';
import { startStack, type Stack } from './helpers/stack.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

const SHARDS = 4;
const CONCURRENCY = 16;
// DISPATCH_BUFFER_RATIO 0.5 (the default) x 16, and DISPATCH_BUFFER_MS=0 (the ratio alone): the process's ask.
const ASK = 8;

/**
 * With queue shards, one process runs a BullMQ worker per shard under one WORKER_CONCURRENCY, and each shard's
 * dispatcher keeps that shard's wait list at its workers' asks. Each worker asked for the ratio's share of the
 * whole concurrency, so one process could hold QUEUE_SHARDS times ratio x concurrency jobs dispatched and not yet
 * fetched (each holding its org's slot). The asks are now one process's ask split over the shards
 * (fair/buffer-ask.ts createSharedBufferAsk): a shard one job, the rest where the jobs are.
 */
describe('dispatch buffer of a process with queue shards', () => {
  let s: Stack;
  const tag = randomUUID().slice(0, 8);
  beforeAll(async () => {
    s = await startStack(
      // Model calls of the marked jobs never answer (the emulator hangs them): the slots stay taken for the whole test.
      { ...UNTHROTTLED, QUEUE_SHARDS: String(SHARDS), WORKER_CONCURRENCY: String(CONCURRENCY), DISPATCH_BUFFER_MS: '0', LLM_TIMEOUT_MS: '600000', FAIR_SAFETY_POLL_MS: '500', JOB_ATTEMPTS: '1' },
      { worker: true },
    );
    s.emulator.script({ hang: true, match: { promptIncludes: `hold${tag}` }, times: -1 });
  }, 90_000);
  afterAll(async () => {
    await s?.close();
  });

  const redis = () => s.runtime.deps.redis;
  const layout = () => queueShards(s.cfg.QUEUE_PREFIX, SHARDS);
  /** An org whose jobs go to `shard`. */
  const orgOn = (shard: number) => {
    for (;;) {
      const org = `org_sb_${randomUUID().slice(0, 8)}`;
      if (layout().ofOrg(org) === shard) return org;
    }
  };
  /** Jobs dispatched and not yet fetched: BullMQ's wait and prioritized lists of every shard. */
  const buffered = async () => {
    let total = 0;
    for (const p of layout().prefixes) total += (await redis().llen(`${p}:${QUEUE.agent}:wait`)) + (await redis().zcard(`${p}:${QUEUE.agent}:prioritized`));
    return total;
  };
  const askOf = async (shard: number) => (await redis().hvals(s.runtime.deps.cells[shard].scheduler.keys.named.workerConc)).map(Number);
  const modelCallsInFlight = () => s.emulator.calls().filter((c) => c.durationMs === undefined).length;

  it('a busy shard alone runs every slot of the pool and is given most of the buffer; all shards together hold the process\'s ask', async () => {
    const hot = 0;
    const hotKey = await s.newKey(orgOn(hot));
    await postBulk(s, hotKey, Array.from({ length: 60 }, (_, i) => markedJob(`hold${tag}-hot-${i}`)));
    // The whole pool, from one shard.
    await until('every slot runs a model call of the busy shard', () => modelCallsInFlight() === CONCURRENCY);
    // Its jobs in the pool are the demand: one job for each other shard, the rest of the process's ask for it. Each
    // shard's worker registers its own move (with its next claim, or a dispatch of its own). Without the split,
    // every shard's worker stays registered at the whole process's 8.
    const asks = async () => (await Promise.all([0, 1, 2, 3].map(askOf))).map((a) => a[0]);
    const split = [ASK - (SHARDS - 1), 1, 1, 1];
    let registered: number[] = [];
    await until("the busy shard's worker registered most of the buffer, the others one job", async () => (registered = await asks()).join() === split.join()).catch((err: Error) => {
      throw new Error(`${err.message} (registered: ${registered.join(', ')})`);
    });

    // Backlogs on the other shards too: each list is kept at its shard's ask (refilled once it lacks all but one of it, as
    // fair-core's bufferRoom refills), so the lists together hold the process's ask at most. (Each idle shard's
    // worker also fetches one job that waits for a slot: BullMQ takes no concurrency below 1, concurrency-pool.ts.)
    for (let shard = 1; shard < SHARDS; shard++) {
      await postBulk(s, await s.newKey(orgOn(shard)), Array.from({ length: 10 }, (_, i) => markedJob(`hold${tag}-${shard}-${i}`)));
    }
    const sample = sampler(buffered);
    try {
      const waiting = (p: string) => redis().llen(`${p}:${QUEUE.agent}:wait`);
      await until("every other shard's list holds its job", async () => (await Promise.all(layout().prefixes.slice(1).map(waiting))).every((n) => n >= 1));
      // Samples while the safety polls dispatch again, each shard once or more (FAIR_SAFETY_POLL_MS 500).
      const from = sample.samples;
      await until('a few safety polls sampled', () => sample.samples >= from + 100, POLL.timeout);
    } finally {
      await sample.stop();
    }
    // Without the split, each shard's list was kept at 8 (refilled once it lacked 4): up to 32 in all.
    expect(sample.max).toBeLessThanOrEqual(ASK);
    expect(await asks()).toEqual(split);
    expect(modelCallsInFlight()).toBe(CONCURRENCY);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));
});
