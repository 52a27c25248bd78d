import { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { createAgentProcessor } from '../src/workers/processor.js';
import { createAgentCall } from '../src/workers/call-agent.js';
import { createBatchTier } from '../src/workers/batch-tier.js';
import { createRouteGuard } from '../src/workers/guards/route-guard.js';
import { compose } from '../src/workers/middleware.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { BatchStore } from '../src/shared/batch/batch-store.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import type { GenerateResult } from '../src/shared/infra/llm/llm-client.js';
import { fakeAgentJob } from './helpers/fake-job.js';

const MODEL = 'gemini-2.5-pro';
const Out = z.object({ score: z.number() });
const action = { model: 'pro', output: Out, prompt: async () => ({ user: 'q' }) };

/** The batch's stored answer: billed at the batch price, and not the action's output (the route then retries). */
const batchAnswer = (): GenerateResult => ({ text: '{}', json: {}, model: MODEL, usage: { input: 100, output: 20 }, costUsd: 0.0001, standardCostUsd: 0.0002, tier: 'batch' });
/** The retry's call on the standard tier: a usable answer. */
const standardAnswer = (): GenerateResult => ({ text: '{"score":1}', json: { score: 1 }, model: MODEL, usage: { input: 100, output: 30 }, costUsd: 0.0005, standardCostUsd: 0.0005, tier: 'standard' });

/**
 * The processor with the real route guard, agent call and batch tier; a batch store whose record says its answer is
 * stored (every read of it marks it read by the attempt), the model a fake that answers `standardAnswer`.
 */
function harness() {
  const rows: AgentRun[] = [];
  const store = {
    job: async () => ({ state: 'done', model: MODEL, result: '{}', readBy: undefined }),
    move: async () => true,
  } as unknown as BatchStore;
  const batch = createBatchTier({ store, batches: { resultOf: () => batchAnswer() }, deadlineMarginMs: 1000 });
  let standardCalls = 0;
  const llm = { generate: async () => (standardCalls++, standardAnswer()) };
  const proc = createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: action as never }), validateInput: (_a, _b, i) => i },
    chain: compose([createRouteGuard({ routeFor: () => ({ primary: MODEL, retries: 1 }), agents: { get: () => undefined }, backoffBaseMs: 1 })], createAgentCall({ llm, batch })),
    runs: { record: async (r) => void rows.push(r) },
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
});
