import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { agentqPrefix, billedRowField, JOB_BILLED_FIELD, jobHashKey, usageStreamKey } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { createRunAppender, encodeRun, RUN_FIELD, usageBillOf } from '../src/shared/infra/db/run-stream.js';
import { createResultCache } from '../src/shared/cache/result-cache.js';
import type { AgentResult } from '../src/shared/core/types.js';
import { childrenBilled } from '../src/shared/orchestration/child-outcomes.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';

const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });

/**
 * A flow child's row is summed on its hash and its parent's by the script that appends it (usage-bill-3.lua). ioredis
 * sends a command again when its connection dropped before the reply (autoResendUnfulfilledCommands), though Redis
 * may have run it: both runs of the script summed it, so the flow's or run's totals counted the row twice, and
 * both appended it, so the usage stream held it twice (agent_runs keeps one: ON CONFLICT DO NOTHING). Each row is
 * now summed and appended once: the row's marker on the job's hash, set by the first run, decides both.
 */
describe("a flow child's bill sent again after a lost reply", () => {
  afterAll(() => redis.disconnect());

  /** A flow child's hash and its parent's under a fresh prefix, and its rows. */
  async function child() {
    const prefix = randomPrefix();
    const childQueue = `${prefix}:${QUEUE.agent}`;
    const parentKey = jobHashKey(`${prefix}:${QUEUE.flows}`, `flow-${randomUUID().slice(0, 8)}`);
    const jobId = `child-${randomUUID().slice(0, 8)}`;
    const jobKey = jobHashKey(childQueue, jobId);
    const jobTs = Date.now();
    await redis.hset(parentKey, 'timestamp', String(jobTs - 1));
    await redis.hset(jobKey, 'timestamp', String(jobTs));
    const row = (attempt: number, state: AgentRun['state'], costUsd: number): AgentRun => ({
      jobId,
      jobTs,
      attempt,
      orgId: randomOrg(),
      agent: 'RiskAnalyzer',
      action: 'analyze_risks',
      model: 'gemini-2.5-flash',
      state,
      inputTokens: 10,
      outputTokens: 20,
      costUsd,
      durationMs: 5,
      embeddingTokens: 40,
      embeddingCostUsd: 0.000006,
    });
    return { prefix, childQueue, parentKey, jobId, jobKey, key: usageStreamKey(prefix), row, billTo: { key: jobKey, jobId, parentKey } };
  }

  it("adds each row to the parent's totals (and the child's own) and to the usage stream once", async () => {
    const { childQueue, parentKey, jobId, jobKey, key, row, billTo } = await child();

    const proxy = await freezableProxy(new URL(redisUrl()));
    const conn = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null });
    try {
      const appender = createRunAppender({ redis: conn, key });
      // A failed attempt (billed beyond the result) and the completed one, each sent again by ioredis: Redis runs
      // the script, its reply is lost, the connection resets, and the reconnected client sends the call again.
      for (const r of [row(1, 'failed', 0.0003), row(2, 'completed', 0.0005)]) {
        await conn.ping();
        const entries = await redis.xlen(key);
        const marker = billedRowField(r.attempt, '');
        proxy.watch(marker);
        proxy.dropReplies();
        const recorded = appender.record(r, billTo);
        await until('the first call to run', async () => (await redis.xlen(key)) === entries + 1);
        proxy.reset();
        await recorded;
        // Sent again, on the reconnected connection (its reply is the one `record` got): the row is in the stream once.
        expect(proxy.sentOn(marker)).toBe(2);
        expect(await redis.xlen(key)).toBe(entries + 1);
        const [[, fields]] = await redis.xrevrange(key, '+', '-', 'COUNT', 1);
        expect(JSON.parse(fields[1])).toMatchObject({ jobId, attempt: r.attempt, state: r.state });
      }

      const billed = (await childrenBilled(redis, parentKey, childQueue, [jobId])).get(jobId)!;
      expect(billed.usd).toBeCloseTo(0.0003, 10);
      expect(billed.completedUsd).toBeCloseTo(0.0005, 10);
      expect(billed.embedding).toEqual({ tokens: 80, costUsd: expect.closeTo(0.000012, 10) });
      expect(Number(await redis.hget(jobKey, JOB_BILLED_FIELD))).toBeCloseTo(0.0003, 10);
    } finally {
      conn.disconnect();
      proxy.close();
    }
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it("the result cache's store sent again appends the attempt's row once and sums it once", async () => {
    const { prefix, childQueue, parentKey, jobId, key, row, billTo } = await child();
    const r = row(1, 'completed', 0.0005);
    const proxy = await freezableProxy(new URL(redisUrl()));
    const conn = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null });
    try {
      const cache = createResultCache<AgentResult>({ redis: conn, prefix: agentqPrefix(prefix), l1Max: 10, l1TtlMs: 60_000, l2TtlS: 60 });
      const usageEntry = { field: RUN_FIELD, of: () => encodeRun(r), bill: () => usageBillOf(r, billTo) };
      const result: AgentResult = { success: true, data: { ok: true }, model: r.model, tokensUsed: { input: 10, output: 20 }, costUsd: r.costUsd, durationMs: 5 };
      await conn.ping();
      // The store's request (the only one with the row's marker) runs, its reply is held, the connection resets.
      const marker = billedRowField(1, '');
      proxy.watch(marker);
      proxy.holdRepliesAfter(marker);
      const flight = cache.singleFlight({ orgId: r.orgId, agent: r.agent, action: r.action, model: r.model, promptVersion: 1, input: { jobId } }, async () => result, { usageEntry });
      await until('the store to run', async () => proxy.holding() && (await redis.xlen(key)) === 1);
      proxy.reset();
      expect(await flight).toMatchObject({ from: 'call', usageAppended: true });
      expect(proxy.sentOn(marker)).toBe(2);
      expect(await redis.xlen(key)).toBe(1);
      expect((await childrenBilled(redis, parentKey, childQueue, [jobId])).get(jobId)!).toMatchObject({ completedUsd: expect.closeTo(0.0005, 10), embedding: { tokens: 40 } });
    } finally {
      conn.disconnect();
      proxy.close();
    }
  }, waitsTimeout(POLL.timeout));
});
