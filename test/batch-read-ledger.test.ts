import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { z } from 'zod';
import { afterAll, describe, expect, it } from 'vitest';
import { createAgentProcessor } from '../src/workers/processor.js';
import { createAgentCall } from '../src/workers/call-agent.js';
import { createBatchTier } from '../src/workers/batch-tier.js';
import { createRouteGuard } from '../src/workers/guards/route-guard.js';
import { compose, type Middleware } from '../src/workers/middleware.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { BatchStore } from '../src/shared/batch/batch-store.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { createRunAppender, type RunBillTo } from '../src/shared/infra/db/run-stream.js';
import { jobHashKey, usageStreamKey } from '../src/shared/core/queue-keys.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { childrenBilled, type ChildOutcome } from '../src/shared/orchestration/child-outcomes.js';
import { fanOutSpend } from '../src/shared/orchestration/fan-out.js';
import type { AgentResult } from '../src/shared/core/types.js';
import type { GenerateResult } from '../src/shared/infra/llm/llm-client.js';
import { fakeAgentJob } from './helpers/fake-job.js';
import { randomPrefix, redisUrl } from './helpers/env.js';

const MODEL = 'gemini-2.5-pro';
const Out = z.object({ score: z.number() });
const action = { model: 'pro', output: Out, prompt: async () => ({ user: 'q' }) };

/** The batch's stored answer: billed at the batch price, and not the action's output (the route then retries). */
const batchAnswer = (): GenerateResult => ({ text: '{}', json: {}, model: MODEL, usage: { input: 100, output: 20 }, costUsd: 0.0001, standardCostUsd: 0.0002, tier: 'batch' });
/** The retry's call on the standard tier: a usable answer. */
const standardAnswer = (): GenerateResult => ({ text: '{"score":1}', json: { score: 1 }, model: MODEL, usage: { input: 100, output: 30 }, costUsd: 0.0005, standardCostUsd: 0.0005, tier: 'standard' });

/** What a run's semantic-cache lookup counts before the model call (semantic-cache-guard.ts): 10 estimated tokens. */
const LOOKUP = 'q'.repeat(40);
const embeds: Middleware = (ctx, next) => (ctx.embedded?.([LOOKUP]), next());

/**
 * The processor with the real route guard, agent call and batch tier; a batch store whose record says its answer is
 * stored (every read of it marks it read by the attempt), the model a fake that answers `standardAnswer`.
 * `opts.embeds`: each run makes an embedding call first; `opts.usable`: the batch answer is the action's output.
 */
function harness(bill?: (row: AgentRun, billTo?: RunBillTo) => Promise<unknown>, opts: { embeds?: boolean; usable?: boolean } = {}) {
  const rows: AgentRun[] = [];
  const store = {
    job: async () => ({ state: 'done', model: MODEL, result: '{}', readBy: undefined }),
    move: async () => true,
  } as unknown as BatchStore;
  const stored = () => (opts.usable ? { ...batchAnswer(), text: '{"score":2}', json: { score: 2 } } : batchAnswer());
  const batch = createBatchTier({ store, batches: { resultOf: stored }, deadlineMarginMs: 1000 });
  let standardCalls = 0;
  const llm = { generate: async () => (standardCalls++, standardAnswer()) };
  const proc = createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: action as never }), validateInput: (_a, _b, i) => i },
    chain: compose(
      [...(opts.embeds ? [embeds] : []), createRouteGuard({ routeFor: () => ({ primary: MODEL, retries: 1 }), agents: { get: () => undefined }, backoffBaseMs: 1 })],
      createAgentCall({ llm, batch }),
    ),
    runs: { record: async (r, billTo) => (rows.push(r), await bill?.(r, billTo)) },
    embeddingCost: (tokens) => tokens * 1e-7,
    embeddingModel: 'gemini-embedding-001',
    models: { fast: 'gemini-2.5-flash', pro: MODEL },
    logger: createLogger({ level: 'silent' }),
  });
  return { rows, proc, standardCalls: () => standardCalls };
}

describe("a run served its batch answer that then calls the standard tier: that call's row is the run's own", () => {
  it("the answer is the attempt's row at the batch price, once whichever run reads it; each run's standard call a row of its own (standard:<n>) at its tier and price", async () => {
    const h = harness();
    const data = { tier: 'batch' as const };
    // The first run, then the stalled re-run of the same attempt (attemptsMade unchanged, one stall counted): both
    // are served the stored answer, which fails validation, and each route's retry calls the standard tier.
    const first = await h.proc(fakeAgentJob({ id: 'b1', data }), 't');
    const rerun = await h.proc(fakeAgentJob({ id: 'b1', data, extra: { stalledCounter: 1 } }), 't');
    expect(h.standardCalls()).toBe(2);
    // The result still carries every call of its run.
    expect(first.costUsd).toBeCloseTo(0.0006, 10);
    expect(rerun.costUsd).toBeCloseTo(0.0006, 10);
    const view = (r: AgentRun) => [r.part ?? '', r.state, r.tier, r.inputTokens, r.outputTokens, r.costUsd, r.standardCostUsd];
    expect(h.rows.map(view)).toEqual([
      ['', 'completed', 'batch', 100, 20, 0.0001, 0.0002],
      ['standard:0', 'completed', 'standard', 100, 30, 0.0005, 0.0005],
      ['', 'completed', 'batch', 100, 20, 0.0001, 0.0002],
      ['standard:1', 'completed', 'standard', 100, 30, 0.0005, 0.0005],
    ]);
    // The two '' rows are one row in agent_runs (ON CONFLICT): the answer billed once, each standard call counted.
    const kept = new Map(h.rows.map((r) => [r.part ?? '', r]));
    expect([...kept.values()].reduce((n, r) => n + r.costUsd, 0)).toBeCloseTo(0.0011, 10);
    // The standard row is no attempt of its own: no duration, no cache decision.
    expect(kept.get('standard:0')).toMatchObject({ durationMs: 0, cacheHit: null });
  });

  it("each run's embedding calls are in its own standard:<n> row, not on the answer's '' row a stalled re-run's duplicate of is refused; alone when the run called no model after the answer", async () => {
    const view = (r: AgentRun) => [r.part ?? '', r.tier, r.inputTokens, r.costUsd, r.embeddingTokens ?? 0];
    for (const usable of [false, true]) {
      const h = harness(undefined, { embeds: true, usable });
      const data = { tier: 'batch' as const };
      await h.proc(fakeAgentJob({ id: 'e1', data }), 't');
      await h.proc(fakeAgentJob({ id: 'e1', data, extra: { stalledCounter: 1 } }), 't');
      expect(h.standardCalls()).toBe(usable ? 0 : 2);
      // A usable answer: the standard rows hold the run's embedding calls alone, at the standard tier, no model call.
      const after = usable ? ['standard', 0, 0] : ['standard', 100, 0.0005];
      expect(h.rows.map(view), `usable: ${usable}`).toEqual([
        ['', 'batch', 100, 0.0001, 0],
        ['standard:0', ...after, 10],
        ['', 'batch', 100, 0.0001, 0],
        ['standard:1', ...after, 10],
      ]);
      // In agent_runs (the '' row kept once): both runs' embedding calls, each priced, naming its model.
      const kept = new Map(h.rows.map((r) => [r.part ?? '', r]));
      expect([...kept.values()].reduce((n, r) => n + (r.embeddingTokens ?? 0), 0)).toBe(20);
      expect(kept.get('standard:1')).toMatchObject({ embeddingCostUsd: 10 * 1e-7, embeddingEstimated: true, embeddingModel: 'gemini-embedding-001', durationMs: 0, cacheHit: null });
    }
  });
});

/**
 * A flow child whose batch answer is read by a run and by its stalled re-run, each then calling the standard tier:
 * the ledger holds the answer once (part '') and each run's standard call (standard:0, standard:1). The answer's row
 * was left to the result (a "result-only" bill) so the parent would not count it twice, but the result BullMQ accepts is one
 * run's (the answer and that run's call): the child's and the flow's cost was the larger of that result and the
 * summed standard rows, a run's call or the answer short of the ledger. The row's marker (`billedRowField`) already
 * sums the '' row once, whichever runs append it: it is now summed as any completed row.
 */
describe("a flow child's batch answer read by a stalled re-run: the child's and the flow's cost are its ledger rows'", () => {
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  afterAll(() => redis.disconnect());

  it("counts the answer once and each run's standard call", async () => {
    const prefix = randomPrefix();
    const childQueue = `${prefix}:${QUEUE.agent}`;
    const parentKey = jobHashKey(`${prefix}:${QUEUE.flows}`, `flow-${randomUUID().slice(0, 8)}`);
    const id = `child-${randomUUID().slice(0, 8)}`;
    const timestamp = Date.now();
    await redis.hset(parentKey, 'timestamp', String(timestamp - 1));
    await redis.hset(jobHashKey(childQueue, id), 'timestamp', String(timestamp));
    const appender = createRunAppender({ redis, key: usageStreamKey(prefix) });
    const h = harness((r, billTo) => appender.record(r, billTo), { embeds: true });
    const child = (stalledCounter: number) =>
      fakeAgentJob({ id, data: { tier: 'batch' }, extra: { timestamp, stalledCounter, parentKey, queueQualifiedName: childQueue } });
    await h.proc(child(0), 't');
    // The re-run's result is the one BullMQ accepts (the first run's completion refused: its lock is the re-run's).
    const accepted = await h.proc(child(1), 't');
    expect(h.standardCalls()).toBe(2);
    // The ledger: one row per part (the '' row sent by both runs is kept once, ON CONFLICT).
    const kept = new Map(h.rows.map((r) => [r.part ?? '', r]));
    expect([...kept.keys()]).toEqual(['', 'standard:0', 'standard:1']);
    const ledger = [...kept.values()].reduce((n, r) => n + r.costUsd, 0);
    expect(ledger).toBeCloseTo(0.0011, 10);

    const billed = await childrenBilled(redis, parentKey, childQueue, [id]);
    const outcomes = new Map<string, ChildOutcome>([[id, { state: 'completed', result: accepted as AgentResult }]]);
    const spend = fanOutSpend([{ id, key: 'RiskAnalyzer:analyze_risks', agent: 'RiskAnalyzer', action: 'analyze_risks', model: MODEL }], outcomes, billed);
    expect(spend.results['RiskAnalyzer:analyze_risks'].costUsd).toBeCloseTo(ledger, 10);
    expect(spend.totalCostUsd).toBeCloseTo(ledger, 10);
    // Each run's embedding calls too (its standard:<n> row's), where the '' row carried one run's, summed once.
    expect(spend.embedding).toMatchObject({ tokens: 20, costUsd: expect.closeTo(20 * 1e-7, 12) });
  });
});
