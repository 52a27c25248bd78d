import type { RedisClient } from '../src/shared/infra/redis/connection.js';
import { randomUUID } from 'node:crypto';
import { FlowProducer, Job, Queue, Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDlqReprocessor } from '../src/workers/ops/dlq-reprocessor.js';
import { createBreakerCheck } from '../src/workers/ops/dlq-breaker-check.js';
import { createDlqService } from '../src/shared/ops/dlq-service.js';
import { createDlqStore } from '../src/shared/ops/dlq-store.js';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import { createCircuitBreaker } from '../src/shared/limits/circuit-breaker.js';
import { createLogger } from '../src/shared/core/logger.js';
import { encodeReason } from '../src/shared/core/outcomes.js';
import { ConflictError, NotFoundError } from '../src/shared/core/errors.js';
import { createAgentQueue, type AgentQueue } from '../src/shared/queue/agent-queue.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { childOutcomes } from '../src/shared/orchestration/child-outcomes.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { failJobs, failWaiting } from './helpers/ops.js';

const retention = { attempts: 3, keepCompletedCount: 1000, keepCompletedAgeS: 3600, keepFailedCount: 1000, keepFailedAgeS: 3600 };
const silent = createLogger({ level: 'silent' });
const OUTAGE = 'Gemini API 503 UNAVAILABLE: the model is overloaded';

describe('scheduled DLQ reprocessing', () => {
  const opened: RedisClient[] = [];
  const queues: AgentQueue[] = [];
  const connect = () => {
    const r = createRedis(redisUrl(), 'worker');
    opened.push(r);
    return r;
  };

  function parts(prefix: string, opts: { batch: number; maxRetries: number }) {
    const redis = connect();
    const queue = createAgentQueue({ connection: redis, prefix, retention });
    queues.push(queue);
    const store = createDlqStore({ redis, queue, prefix, ttlS: 3600 });
    const service = createDlqService({ store, validateInput: (_a, _b, input) => input });
    const breaker = createCircuitBreaker({ redis, prefix: `${prefix}:agentq`, failureThreshold: 1 });
    const check = createBreakerCheck({
      cfg: { AGENT_ROUTES: {}, GEMINI_MODEL_FAST: 'flash-x', GEMINI_MODEL_PRO: 'pro-x' },
      registry: defaultRegistry(),
      state: (k) => breaker.state(k),
    });
    const reprocessor = createDlqReprocessor({ store, service, blocked: (e) => check.blocked(e), logger: silent, ...opts });
    return { redis, queue, store, breaker, reprocessor };
  }

  afterAll(async () => {
    for (const q of queues) await q.close();
    for (const r of opened) r.disconnect();
  });

  describe('eligibility, counting and limits', () => {
    const prefix = randomPrefix();
    const orgId = randomOrg();
    let p: ReturnType<typeof parts>;
    let ids: Record<string, string>;

    beforeAll(async () => {
      p = parts(prefix, { batch: 2, maxRetries: 2 });
      const jobs = await failJobs(p.queue, p.redis, prefix, [
        { data: { orgId, model: 'gemini-ok' }, reason: OUTAGE },
        { data: { orgId, model: 'gemini-down' }, reason: OUTAGE },
        { data: { orgId, model: 'gemini-ok' }, reason: encodeReason('EBADREQUEST', 'Gemini API 400 INVALID_ARGUMENT: bad schema'), unrecoverable: true },
        { data: { orgId, model: 'gemini-ok' }, reason: encodeReason('ERATELIMIT', 'Gemini API 429 RESOURCE_EXHAUSTED: quota') },
        { data: { orgId, model: 'gemini-ok' }, reason: 'cancelled', unrecoverable: true },
        { data: { orgId, model: 'gemini-ok' }, reason: encodeReason('ENETWORK', 'network error talking to Gemini (ECONNRESET): socket hang up') },
        { data: { orgId, model: 'gemini-ok' }, reason: encodeReason('EBADOUTPUT', 'model output does not match RiskAnalyzer.analyze_risks schema at risks: too small') },
      ]);
      ids = { oldest: jobs[0].id!, behindOpenBreaker: jobs[1].id!, poison: jobs[2].id!, rateLimited: jobs[3].id!, cancelled: jobs[4].id!, network: jobs[5].id!, badOutput: jobs[6].id! };
      await p.breaker.onFailure('gemini:gemini-down', false);
      expect((await p.breaker.state('gemini:gemini-down')).state).toBe('open');
    });

    it('classifies entries it never saw fail from their failed reason', async () => {
      const cls = async (id: string) => (await p.store.get(id))!.entry.class;
      expect(await cls(ids.oldest)).toBe('retryable');
      expect(await cls(ids.rateLimited)).toBe('retryable');
      expect(await cls(ids.network)).toBe('retryable');
      expect(await cls(ids.poison)).toBe('poison');
      expect(await cls(ids.badOutput)).toBe('poison');
      expect(await cls(ids.cancelled)).toBe('cancelled');
    });

    it('retries the oldest eligible entries, at most a batch per run, and records the retry', async () => {
      const before = Date.now();
      const first = await p.reprocessor.run();
      expect(first.retried).toBe(2);
      expect(first.skippedBreakerOpen).toBe(1);
      expect(await p.queue.getJobState(ids.oldest)).toBe('waiting');
      expect(await p.queue.getJobState(ids.rateLimited)).toBe('waiting');
      expect(await p.queue.getJobState(ids.network)).toBe('failed');
      const meta = await p.redis.hgetall(p.store.metaKey(ids.oldest));
      expect(meta.retries).toBe('1');
      expect(meta.lastError).toBe(OUTAGE);
      expect(Number(meta.lastRetryAt)).toBeGreaterThanOrEqual(before);
    });

    it('keeps the count when a retried job fails again, and stops at DLQ_MAX_RETRIES', async () => {
      expect(await failWaiting(p.redis, prefix, OUTAGE)).toBe(2);
      const again = (await p.store.get(ids.oldest))!.entry;
      expect(again).toMatchObject({ class: 'retryable', dlqRetries: 1, lastError: OUTAGE });

      let runs = 1;
      for (;;) {
        const out = await p.reprocessor.run();
        expect(out.retried).toBeLessThanOrEqual(2);
        if (out.retried === 0) break;
        runs++;
        expect(await failWaiting(p.redis, prefix, OUTAGE)).toBe(out.retried);
        expect(runs).toBeLessThan(10);
      }
      // Three retryable entries, two retries each, two per run.
      expect(runs).toBe(3);
      for (const id of [ids.oldest, ids.rateLimited, ids.network]) {
        expect((await p.store.get(id))!.entry.dlqRetries).toBe(2);
      }
      for (const id of [ids.poison, ids.cancelled, ids.badOutput, ids.behindOpenBreaker]) {
        const e = (await p.store.get(id))!.entry;
        expect(e.dlqRetries).toBe(0);
        expect(await p.queue.getJobState(id)).toBe('failed');
      }
    });

    it('retries an entry once its breaker closes', async () => {
      await p.breaker.reset('gemini:gemini-down');
      const out = await p.reprocessor.run();
      expect(out).toMatchObject({ retried: 1, skippedBreakerOpen: 0 });
      expect(await p.queue.getJobState(ids.behindOpenBreaker)).toBe('waiting');
      expect(await p.queue.getJobState(ids.poison)).toBe('failed');
    });
  });

  it('reprocessors running at once (separate connections, as in separate processes) retry each entry exactly once', async () => {
    const prefix = randomPrefix();
    const orgId = randomOrg();
    const [a, b, c] = [1, 2, 3].map(() => parts(prefix, { batch: 50, maxRetries: 3 }));
    const jobs = await failJobs(a.queue, a.redis, prefix, Array.from({ length: 30 }, () => ({ data: { orgId }, reason: OUTAGE })));
    const outs = await Promise.all([a.reprocessor.run(), b.reprocessor.run(), c.reprocessor.run()]);
    expect(outs.reduce((n, o) => n + o.retried, 0)).toBe(30);
    expect(await a.queue.getWaitingCount()).toBe(30);
    expect(await a.queue.getFailedCount()).toBe(0);
    const counts = await Promise.all(jobs.map((j) => a.redis.hget(a.store.metaKey(j.id!), 'retries')));
    expect(counts.every((c) => c === '1')).toBe(true);
  });
});

describe('two retries of one entry at once', () => {
  // A retry claims the entry and moves the job in one script call (dlq-retry-N.lua): the other caller comes either
  // before it or after it, never between.
  for (const failsAgain of [false, true]) {
    it(`the caller that read the entry before another retried it${failsAgain ? ' (and the job failed again)' : ''} is refused, never writes its input, and the retry counts once`, async () => {
      const prefix = randomPrefix();
      const redis = createRedis(redisUrl(), 'worker');
      const queue = createAgentQueue({ connection: redis, prefix, retention });
      try {
        const store = createDlqStore({ redis, queue, prefix, ttlS: 3600 });
        const [job] = await failJobs(queue, redis, prefix, [{ data: { orgId: randomOrg() }, reason: OUTAGE }]);
        const id = job.id!;
        const inputOf = (who: string) => ({ startup: { name: who } });
        // The second retry runs, whole, after the first one read the entry and before it retries it.
        let second: Promise<unknown> | undefined;
        const service = createDlqService({
          validateInput: (_a, _b, input) => input,
          store: {
            ...store,
            retry: async (item, opts) => {
              if (!second) {
                second = service.retry({}, id, inputOf('second'));
                await second;
                if (failsAgain) expect(await failWaiting(redis, prefix, OUTAGE)).toBe(1);
              }
              return store.retry(item, opts);
            },
          },
        });
        const first = await service.retry({}, id, inputOf('first')).then((r) => r, (err: unknown) => err);
        expect(await second).toEqual({ id, state: 'waiting', dlqRetries: 1 });
        // Gone from the failed set: 404; back in it with the count moved on: 409, read it again.
        expect(first).toBeInstanceOf(failsAgain ? ConflictError : NotFoundError);
        expect(await queue.getJobState(id)).toBe(failsAgain ? 'failed' : 'waiting');
        expect((await queue.getJob(id))!.data.input).toEqual(inputOf('second'));
        expect(await redis.hget(store.metaKey(id), 'retries')).toBe('1');
      } finally {
        await queue.close();
        redis.disconnect();
      }
    });
  }
});

describe('a fan-out child retried from the DLQ while its flow waits', () => {
  it("keeps its result when the last sibling finishes between the retry's check of its parent and its move: the flow waits for the retried child", async () => {
    const prefix = randomPrefix();
    const redis = createRedis(redisUrl(), 'worker');
    const queue = createAgentQueue({ connection: redis, prefix, retention });
    const flows = new Queue(QUEUE.flows, { connection: redis, prefix });
    const producer = new FlowProducer({ connection: redis, prefix });
    // Takes and finishes the children by hand, as the agent worker would, so the order below is exact.
    const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection: redis, prefix, autorun: false });
    try {
      const orgId = randomOrg();
      const answer = (text: string) => ({ success: true, data: { text }, tokensUsed: { input: 1, output: 1 }, costUsd: 0, durationMs: 1, model: 'pro-x' }) as AgentResult;
      // A fan-out as the flow service adds it: children in the agent queue, failing without failing the flow.
      const child = (name: string) => ({
        name: 'RiskAnalyzer:analyze_risks',
        queueName: QUEUE.agent,
        data: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name } }, orgId, enqueuedAt: Date.now() },
        opts: { jobId: `${name}-${randomUUID()}`, attempts: 1, ignoreDependencyOnFailure: true },
      });
      const flow = await producer.add({ name: 'parallel', queueName: QUEUE.flows, data: { kind: 'parallel', orgId, children: [] }, opts: { jobId: `flow-${randomUUID()}` }, children: [child('retried'), child('sibling')] });
      const flowId = flow.job.id!;
      const [retriedId, siblingId] = flow.children!.map((c) => c.job.id!);
      const token = randomUUID();
      const active = new Map<string, Job>();
      for (let n = 0; n < 2; n++) {
        const j = (await worker.getNextJob(token, { block: false }))!;
        active.set(j.id!, j);
      }
      await active.get(retriedId)!.moveToFailed(new Error(OUTAGE), token);
      expect(await flows.getJobState(flowId)).toBe('waiting-children');

      // The sibling, the flow's last child still running, completes right after the retry's claim.
      const store = createDlqStore({ redis, queue, prefix, ttlS: 3600 });
      const service = createDlqService({
        validateInput: (_a, _b, input) => input,
        store: {
          ...store,
          retry: async (item, opts) => {
            const res = await store.retry(item, opts);
            await active.get(siblingId)!.moveToCompleted(answer('sibling'), token, false);
            return res;
          },
        },
      });
      expect(await service.retry({ orgId }, retriedId)).toEqual({ id: retriedId, state: 'waiting', dlqRetries: 1 });
      // The flow still waits, for the retried child: released now, it would settle without its result.
      expect(await flows.getJobState(flowId)).toBe('waiting-children');
      expect(await queue.getJobState(retriedId)).toBe('waiting');

      const again = (await worker.getNextJob(token, { block: false }))!;
      expect(again.id).toBe(retriedId);
      await again.moveToCompleted(answer('retried'), token, false);
      expect(await flows.getJobState(flowId)).toBe('waiting');
      const outcomes = await childOutcomes((await Job.fromId(flows, flowId))!, queue.qualifiedName);
      expect(Object.fromEntries(outcomes)).toEqual({
        [retriedId]: { state: 'completed', result: answer('retried') },
        [siblingId]: { state: 'completed', result: answer('sibling') },
      });
    } finally {
      await worker.close();
      await producer.close();
      await flows.close();
      await queue.close();
      redis.disconnect();
    }
  });
});
