import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { JOB_BILLED_FIELD, jobHashKey, usageStreamKey } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { createRunAppender } from '../src/shared/infra/db/run-stream.js';
import { childrenBilled } from '../src/shared/orchestration/child-outcomes.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';

const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });

/**
 * A flow child's row is summed on its hash and its parent's by the script that appends it (usage-bill-3.lua). ioredis
 * sends a command again when its connection dropped before the reply (autoResendUnfulfilledCommands), though Redis
 * may have run it: the usage stream then holds the row twice and agent_runs keeps one (ON CONFLICT DO NOTHING), but
 * both runs of the script summed it, so the flow's or run's totals counted the row twice. Each row is now summed once.
 */
describe("a flow child's bill sent again after a lost reply", () => {
  afterAll(() => redis.disconnect());

  it("adds each row to the parent's totals (and the child's own) once", async () => {
    const prefix = randomPrefix();
    const childQueue = `${prefix}:${QUEUE.agent}`;
    const parentKey = jobHashKey(`${prefix}:${QUEUE.flows}`, `flow-${randomUUID().slice(0, 8)}`);
    const jobId = `child-${randomUUID().slice(0, 8)}`;
    const jobKey = jobHashKey(childQueue, jobId);
    const jobTs = Date.now();
    await redis.hset(parentKey, 'timestamp', String(jobTs - 1));
    await redis.hset(jobKey, 'timestamp', String(jobTs));
    const key = usageStreamKey(prefix);
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
    const billTo = { key: jobKey, jobId, parentKey };

    const proxy = await freezableProxy(new URL(redisUrl()));
    const conn = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null });
    try {
      const appender = createRunAppender({ redis: conn, key });
      // A failed attempt (billed beyond the result) and the completed one, each sent again by ioredis: Redis runs
      // the script, its reply is lost, the connection resets, and the reconnected client sends the call again.
      for (const r of [row(1, 'failed', 0.0003), row(2, 'completed', 0.0005)]) {
        await conn.ping();
        const entries = await redis.xlen(key);
        proxy.dropReplies();
        const recorded = appender.record(r, billTo);
        await until('the first call to run', async () => (await redis.xlen(key)) === entries + 1);
        proxy.reset();
        await recorded;
        // Sent again: the row is twice in the stream (the sink writes it once).
        expect(await redis.xlen(key)).toBe(entries + 2);
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
});
