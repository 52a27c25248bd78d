import { randomUUID } from 'node:crypto';
import { FlowProducer, Queue, UnrecoverableError, Worker } from 'bullmq';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { RedisClient } from '../src/shared/infra/redis/connection.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { createDlqService } from '../src/shared/ops/dlq-service.js';
import { createDlqStore } from '../src/shared/ops/dlq-store.js';
import { cancelRequestedKey, jobStreamKey } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { NotFoundError } from '../src/shared/core/errors.js';
import { createAgentQueue } from '../src/shared/queue/agent-queue.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { failJobs, failWaiting } from './helpers/ops.js';
import { POLL, waitsTimeout } from './helpers/wait.js';
import { classifyFailedJob } from '../src/shared/core/dlq-classify.js';

const retention = { attempts: 1, keepCompletedCount: 1000, keepCompletedAgeS: 3600, keepFailedCount: 1000, keepFailedAgeS: 3600 };
const OUTAGE = 'Gemini API 503 UNAVAILABLE: the model is overloaded';

const opened: RedisClient[] = [];
const closers: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const close of closers) await close();
  for (const r of opened) r.disconnect();
});
const connect = () => {
  const r = createRedis(redisUrl(), 'worker');
  opened.push(r);
  return r;
};

type Command = { name: string; args: unknown[]; reject(err: Error): void; promise: Promise<unknown> };
type Sender = { sendCommand(cmd: Command, stream?: unknown): unknown };

/**
 * Runs `hook` when the DLQ's retry script (the one call naming the entry's meta key) has answered on `redis`, before
 * its caller sees the answer: where a retry that claimed in one call and moved the job in the next had its window.
 */
function afterRetryScript(redis: RedisClient, metaKey: string, hook: () => Promise<void>) {
  const client = redis as unknown as Sender;
  const send = client.sendCommand.bind(client);
  let armed = true;
  client.sendCommand = (cmd, stream) => {
    const sent = send(cmd, stream) as Promise<unknown>;
    if (!armed || !/^eval(sha)?$/i.test(cmd.name) || !cmd.args.includes(metaKey)) return sent;
    armed = false;
    return sent.then(async (reply) => {
      await hook();
      return reply;
    });
  };
}

/** Makes the next command sent on `redis` fail as a lost connection does, without reaching the server. */
function failNextCommand(redis: RedisClient) {
  const client = redis as unknown as Sender;
  const send = client.sendCommand.bind(client);
  let armed = true;
  client.sendCommand = (cmd, stream) => {
    if (!armed) return send(cmd, stream);
    armed = false;
    cmd.reject(new Error('Connection is closed.'));
    return cmd.promise;
  };
}

/** One failed job (cancel marker and event stream beside it, as a cancelled streaming run leaves them), its store, its service. */
async function failedEntry() {
  const prefix = randomPrefix();
  const redis = connect();
  const queue = createAgentQueue({ connection: redis, prefix, retention });
  closers.push(() => queue.close());
  const store = createDlqStore({ redis, queue, prefix, ttlS: 3600 });
  const service = createDlqService({ store, validateInput: (_a, _b, input) => input });
  const [job] = await failJobs(queue, redis, prefix, [{ data: { orgId: randomOrg() }, reason: OUTAGE }]);
  const id = job.id!;
  const marker = cancelRequestedKey(prefix, id);
  const stream = jobStreamKey(prefix, id);
  await redis.set(marker, '1', 'EX', 600);
  await redis.xadd(stream, '*', 'type', 'failed');
  // Someone else on another connection, as Bull Board or another process.
  const otherRedis = connect();
  const other = createAgentQueue({ connection: otherRedis, prefix, retention });
  closers.push(() => other.close());
  const inspect = connect();
  const state = async () => ({
    state: await other.getJobState(id),
    input: (await other.getJob(id))?.data.input,
    meta: await inspect.hgetall(store.metaKey(id)),
    marker: await inspect.exists(marker),
    stream: await inspect.exists(stream),
  });
  return { prefix, redis, queue, store, service, id, other, state, original: job.data.input };
}

const corrected = { startup: { name: 'Acme (corrected)' } };

describe('a DLQ retry is one step: no move can fail after its claim', () => {
  it('answers the state GET then shows: prioritized for a job with a priority, waiting for one without', async () => {
    const prefix = randomPrefix();
    const redis = connect();
    const queue = createAgentQueue({ connection: redis, prefix, retention });
    closers.push(() => queue.close());
    const service = createDlqService({ store: createDlqStore({ redis, queue, prefix, ttlS: 3600 }), validateInput: (_a, _b, input) => input });
    const [prio, plain] = await failJobs(queue, redis, prefix, [
      { data: { orgId: randomOrg() }, reason: OUTAGE, priority: 2 },
      { data: { orgId: randomOrg() }, reason: OUTAGE },
    ]);
    expect(await service.retry({}, prio.id!)).toEqual({ id: prio.id, state: 'prioritized', dlqRetries: 1 });
    expect(await queue.getJobState(prio.id!)).toBe('prioritized');
    expect(await service.retry({}, plain.id!)).toEqual({ id: plain.id, state: 'waiting', dlqRetries: 1 });
    expect(await queue.getJobState(plain.id!)).toBe('waiting');
  });

  it('a job removed by someone else right after the claim: the retry was whole, never a counted, held entry that was not retried (404)', async () => {
    const e = await failedEntry();
    afterRetryScript(e.redis, e.store.metaKey(e.id), async () => {
      const job = await e.other.getJob(e.id);
      await job?.remove();
    });
    // Claim then move: the move found no job, the caller was told 404 and the entry kept a retry that never ran.
    expect(await e.service.retry({}, e.id, corrected)).toEqual({ id: e.id, state: 'waiting', dlqRetries: 1 });
    const events = await e.redis.xrange(e.queue.keys.events, '-', '+');
    const last = events.slice(-2).map(([, f]) => [f[1], f[5]]);
    // Moved back to wait from the failed set, then removed by the other caller.
    expect(last).toEqual([['waiting', 'failed'], ['removed', 'wait']]);
  });

  it('a job retried another way (Bull Board) right after the claim: the DLQ retry was whole, never a 404 after its input was written', async () => {
    const e = await failedEntry();
    let boardRetry: unknown;
    afterRetryScript(e.redis, e.store.metaKey(e.id), async () => {
      boardRetry = await (await e.other.getJob(e.id))!.retry('failed').then(() => 'retried', (err: unknown) => err);
    });
    // Claim then move: the board's retry ran the input the DLQ caller wrote, and that caller was answered 404.
    expect(await e.service.retry({}, e.id, corrected)).toEqual({ id: e.id, state: 'waiting', dlqRetries: 1 });
    expect(boardRetry).toBeInstanceOf(Error);
    expect(await e.state()).toMatchObject({ state: 'waiting', input: corrected, meta: { retries: '1' } });
  });

  it('the connection lost right after the claim: the retry was whole, never a failed job with its input overwritten, counted and held 30 s', async () => {
    const e = await failedEntry();
    afterRetryScript(e.redis, e.store.metaKey(e.id), async () => failNextCommand(e.redis));
    const res = await e.service.retry({}, e.id, corrected).then((r) => r, (err: unknown) => err);
    // Claim then move: the move's command failed, answered 404 while the job sat in the failed set with the
    // corrected input, one retry counted, its cancel marker and stream gone and a claim hold refusing every
    // retry (409) for 30 s.
    expect(res).toEqual({ id: e.id, state: 'waiting', dlqRetries: 1 });
    const after = await e.state();
    expect(after).toMatchObject({ state: 'waiting', input: corrected, meta: { retries: '1', lastError: OUTAGE }, marker: 0, stream: 0 });
    expect(after.meta.claimOf).toBeUndefined();
    // The command the lost connection fails is the caller's next one, not part of the retry.
    await expect(e.redis.ping()).rejects.toThrow(/Connection is closed/);
  });

  it("the retry's own call failing before it reaches Redis changes nothing and is an error, not a 404; the next retry goes through", async () => {
    const e = await failedEntry();
    const before = await e.state();
    const item = await e.store.get(e.id);
    failNextCommand(e.redis);
    await expect(e.store.retry(item!, { input: corrected })).rejects.toThrow(/Connection is closed/);
    expect(await e.state()).toEqual(before);
    expect(before).toMatchObject({ state: 'failed', input: e.original, meta: {}, marker: 1, stream: 1 });
    expect(await e.service.retry({}, e.id, corrected)).toEqual({ id: e.id, state: 'waiting', dlqRetries: 1 });
  });

  it("its reply lost after it ran: the retry happened whole and the caller gets the error; a second retry is 404, and the job runs the input once written", async () => {
    const e = await failedEntry();
    const client = e.redis as unknown as Sender;
    const send = client.sendCommand.bind(client);
    let lose = true;
    client.sendCommand = (cmd, stream) => {
      const sent = send(cmd, stream) as Promise<unknown>;
      if (!lose || !/^eval(sha)?$/i.test(cmd.name) || !cmd.args.includes(e.store.metaKey(e.id))) return sent;
      lose = false;
      return sent.then(() => Promise.reject(new Error('Connection is closed.')));
    };
    await expect(e.service.retry({}, e.id, corrected)).rejects.toThrow(/Connection is closed/);
    expect(await e.state()).toMatchObject({ state: 'waiting', input: corrected, meta: { retries: '1' }, marker: 0, stream: 0 });
    await expect(e.service.retry({}, e.id, { startup: { name: 'again' } })).rejects.toBeInstanceOf(NotFoundError);
    expect((await e.state()).input).toEqual(corrected);
  });

  it("an entry whose job hash is gone is refused whole: no stub hash written with the input, nothing moved to wait, nothing counted", async () => {
    const e = await failedEntry();
    const item = (await e.store.get(e.id))!;
    await e.redis.del(e.queue.toKey(e.id));
    expect(await e.store.retry(item, { input: corrected })).toBe('not_failed');
    expect(await e.redis.exists(e.queue.toKey(e.id))).toBe(0);
    expect(await e.redis.lrange(e.queue.keys.wait, 0, -1)).toEqual([]);
    expect(await e.redis.hgetall(e.store.metaKey(e.id))).toEqual({});
    expect(await e.redis.exists(cancelRequestedKey(e.prefix, e.id), jobStreamKey(e.prefix, e.id))).toBe(2);
  });
});

describe("the DLQ retry's move", () => {
  /**
   * The same failed jobs in a fresh prefix: plain, prioritized, lifo, and a fan-out child (ignoreDependencyOnFailure,
   * as agentq's flows add them) whose parent still waits for a sibling. Ids are the same in every prefix.
   */
  async function failedSet(ids: Record<'plain' | 'prio' | 'lifo' | 'child' | 'sibling' | 'parent', string>) {
    const prefix = randomPrefix();
    const redis = connect();
    const queue = createAgentQueue({ connection: redis, prefix, retention });
    const flows = new FlowProducer({ connection: redis, prefix });
    const parents = new Queue(QUEUE.flows, { connection: redis, prefix });
    closers.push(() => queue.close(), () => flows.close(), () => parents.close());
    const data = (name: string) => ({ orgId: 'org_parity', agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name } }, enqueuedAt: 1 }) as AgentJobData;
    await queue.add('RiskAnalyzer:analyze_risks', data('plain'), { jobId: ids.plain });
    await queue.add('RiskAnalyzer:analyze_risks', data('prio'), { jobId: ids.prio, priority: 3 });
    await queue.add('RiskAnalyzer:analyze_risks', data('lifo'), { jobId: ids.lifo, lifo: true });
    await flows.add({
      name: 'fan-out',
      queueName: QUEUE.flows,
      opts: { jobId: ids.parent },
      children: [
        { name: 'RiskAnalyzer:analyze_risks', queueName: QUEUE.agent, data: data('child'), opts: { jobId: ids.child, ignoreDependencyOnFailure: true } },
        // Not due for an hour: the parent keeps waiting for it.
        { name: 'RiskAnalyzer:analyze_risks', queueName: QUEUE.agent, data: data('sibling'), opts: { jobId: ids.sibling, delay: 3_600_000, ignoreDependencyOnFailure: true } },
      ],
    });
    const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection: redis, prefix, autorun: false });
    try {
      const token = randomUUID();
      for (let job = await worker.getNextJob(token, { block: false }); job; job = await worker.getNextJob(token, { block: false })) {
        await job.moveToFailed(new UnrecoverableError(OUTAGE), token);
      }
    } finally {
      await worker.close();
    }
    expect(await queue.getFailedCount()).toBe(4);
    expect(await parents.getJobState(ids.parent)).toBe('waiting-children');
    const store = createDlqStore({ redis, queue, prefix, ttlS: 3600 });
    const parentKey = parents.toKey(ids.parent);
    const snapshot = async (from: string) => {
      const unprefixed = (xs: string[]) => xs.map((x) => x.replace(prefix, 'P')).sort();
      const jobs: Record<string, Record<string, string>> = {};
      for (const id of [ids.plain, ids.prio, ids.lifo, ids.child]) {
        const { timestamp: _t, stacktrace: _s, ...fields } = await redis.hgetall(queue.toKey(id));
        jobs[id] = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, v.replaceAll(prefix, 'P')]));
      }
      return {
        wait: await redis.lrange(queue.keys.wait, 0, -1),
        prioritized: await redis.zrange(queue.keys.prioritized, 0, -1, 'WITHSCORES'),
        failed: await redis.zrange(queue.keys.failed, 0, -1),
        // The base marker ('0', score 0: a job is waiting); the delayed sibling's marker is scored by its due time.
        marker: { members: await redis.zrange(queue.keys.marker, 0, -1), base: await redis.zscore(queue.keys.marker, '0') },
        pc: await redis.get(queue.keys.pc),
        maxLenEvents: await redis.hget(queue.keys.meta, 'opts.maxLenEvents'),
        events: (await redis.xrange(queue.keys.events, `(${from}`, '+')).map(([, f]) => f),
        jobs,
        dependencies: unprefixed(await redis.smembers(`${parentKey}:dependencies`)),
        failedChildren: unprefixed(await redis.hkeys(`${parentKey}:failed`)),
        unsuccessful: unprefixed(await redis.zrange(`${parentKey}:unsuccessful`, 0, -1)),
        waitingChildren: await redis.zrange(`${parents.toKey('waiting-children')}`, 0, -1),
      };
    };
    return { redis, queue, store, snapshot };
  }

  it("moves the job back exactly as BullMQ's own retry does: wait list or priority set, lifo, marker, event, fields, the parent's dependencies", async () => {
    for (const paused of [false, true]) {
      const ids = { plain: randomUUID(), prio: randomUUID(), lifo: randomUUID(), child: randomUUID(), sibling: randomUUID(), parent: randomUUID() };
      const order = [ids.plain, ids.prio, ids.lifo, ids.child];
      const states = [];
      for (const byBull of [true, false]) {
        const c = await failedSet(ids);
        if (paused) await c.queue.pause();
        // The meta hash as a fresh queue has it: the retry sets the events' cap when it is missing.
        await c.redis.hdel(c.queue.keys.meta, 'opts.maxLenEvents');
        const [[from]] = await c.redis.xrevrange(c.queue.keys.events, '+', '-', 'COUNT', 1);
        for (const id of order) {
          if (byBull) await (await c.queue.getJob(id))!.retry('failed');
          else expect(await c.store.retry((await c.store.get(id))!, {})).toBe(1);
        }
        states.push(await c.snapshot(from));
      }
      expect(states[0].failed).toEqual([]);
      expect(states[0].wait).toHaveLength(3);
      expect(states[0].dependencies).toHaveLength(2);
      expect(states[0].failedChildren).toEqual([]);
      expect(states[0].maxLenEvents).toBe('10000');
      expect(states[0].marker.base).toBe(paused ? null : '0');
      expect(Object.values(states[0].jobs).every((f) => f.finishedOn === undefined && f.failedReason === undefined && f.atm === '1')).toBe(true);
      expect(states[1]).toEqual(states[0]);
    }
  });
});

describe('a job id used again (an idempotency key sent after its job was removed outside the DLQ)', () => {
  /** The failed entry's job removed as Bull Board removes it (the DLQ meta hash stays), then a job of the same id added and failed. */
  async function sameIdAgain(e: Awaited<ReturnType<typeof failedEntry>>) {
    const old = (await e.other.getJob(e.id))!;
    await old.remove();
    // Another creation time than the removed job's: the clock has moved on.
    await vi.waitFor(() => expect(Date.now()).toBeGreaterThan(old.timestamp), { ...POLL, interval: 1 });
    await e.queue.add('RiskAnalyzer:analyze_risks', { ...old.data, input: { startup: { name: 'Acme (new job)' } } }, { jobId: e.id, attempts: 1 });
    expect(await failWaiting(e.redis, e.prefix, OUTAGE)).toBe(1);
    const job = (await e.queue.getJob(e.id))!;
    expect(job.timestamp).not.toBe(old.timestamp);
    return job;
  }

  it("starts with no DLQ retries used: the removed job's count, last error and retry time are not inherited", async () => {
    const e = await failedEntry();
    const oldJob = (await e.queue.getJob(e.id))!;
    await e.store.recordFailure(oldJob, classifyFailedJob(oldJob), OUTAGE);
    expect(await e.service.retry({}, e.id, corrected)).toEqual({ id: e.id, state: 'waiting', dlqRetries: 1 });
    expect(await failWaiting(e.redis, e.prefix, OUTAGE)).toBe(1);
    const again = (await e.queue.getJob(e.id))!;
    // The same job failing again keeps its count: it is the one retried.
    expect(await e.store.recordFailure(again, classifyFailedJob(again), OUTAGE)).toBe(1);

    const job = await sameIdAgain(e);
    // As the worker's failure listener records it: the new job's count was the removed one's (1), its retries used.
    expect(await e.store.recordFailure(job, classifyFailedJob(job), OUTAGE)).toBe(0);
    const entry = (await e.store.get(e.id))!.entry;
    expect(entry.dlqRetries).toBe(0);
    expect(entry.lastError).toBeUndefined();
    expect(entry.lastRetryAt).toBeUndefined();
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it("a retry read before the id was used again is refused, never writing the removed job's data into the new one", async () => {
    const e = await failedEntry();
    const item = (await e.store.get(e.id))!;
    const job = await sameIdAgain(e);
    // Read from the removed job: its data with the caller's input would have replaced the new job's, and run.
    expect(await e.store.retry(item, { input: corrected })).toBe('claimed_elsewhere');
    expect(await e.queue.getJobState(e.id)).toBe('failed');
    expect((await e.queue.getJob(e.id))!.data).toEqual(job.data);
    expect(await e.redis.hget(e.store.metaKey(e.id), 'retries')).toBeNull();
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});

describe("a job id used again, its failure listener not run yet", () => {
  it("a retry of the new job counts from 0: the removed job's count in the meta hash (another creation time) is not this job's", async () => {
    const e = await failedEntry();
    const oldJob = (await e.queue.getJob(e.id))!;
    await e.store.recordFailure(oldJob, classifyFailedJob(oldJob), OUTAGE);
    // Two DLQ retries of the old job, then removed outside the DLQ (its meta hash stays, retries 2).
    for (let n = 1; n <= 2; n++) {
      expect(await e.service.retry({}, e.id)).toMatchObject({ dlqRetries: n });
      expect(await failWaiting(e.redis, e.prefix, OUTAGE)).toBe(1);
    }
    await (await e.other.getJob(e.id))!.remove();
    await vi.waitFor(() => expect(Date.now()).toBeGreaterThan(oldJob.timestamp), { ...POLL, interval: 1 });
    await e.queue.add('RiskAnalyzer:analyze_risks', oldJob.data, { jobId: e.id, attempts: 1 });
    expect(await failWaiting(e.redis, e.prefix, OUTAGE)).toBe(1);
    // No recordFailure for the new job (its worker died before its listener ran): the entry and a retry with a
    // limit of 2 (the scheduled pass's DLQ_MAX_RETRIES, say) read the old job's 2 as its own.
    const item = (await e.store.get(e.id))!;
    expect(item.entry.dlqRetries).toBe(0);
    expect(await e.store.retry(item, { maxRetries: 2 })).toBe(1);
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});
