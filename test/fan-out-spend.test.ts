import { describe, expect, it } from 'vitest';
import { fanOutSpend, spendReadAgain } from '../src/shared/orchestration/fan-out.js';
import type { ChildBilled, ChildOutcome } from '../src/shared/orchestration/child-outcomes.js';
import type { AgentResult } from '../src/shared/core/types.js';
import type { FlowChildRef, ParallelFlowResult } from '../src/shared/orchestration/flow-data.js';

const child = (id: string, key: string) => ({ id, key, model: 'gemini-2.5-flash' }) as FlowChildRef;
const result = (costUsd: number) => ({ success: true, data: {}, model: 'gemini-2.5-flash', tokensUsed: { input: 10, output: 5 }, costUsd, durationMs: 1 }) as AgentResult;
const billed = (usd: number, completedUsd: number): ChildBilled => ({ usd, completedUsd, embedding: { tokens: 0, costUsd: 0 } });

describe("a fan-out's results and total: each child's costUsd is what the total counts for it", () => {
  it("a completed child's costUsd counts a stalled run whose completion BullMQ refused and its earlier attempts, so the results add up to totalCostUsd", () => {
    const children = [child('a', 'RiskAnalyzer:analyze_risks'), child('b', 'DealScorer:pipeline_summary'), child('c', 'TaskGenerator:suggest_next_actions')];
    const outcomes = new Map<string, ChildOutcome>([
      // Run twice under one attempt (its first run's completion refused): two completed rows, 0.002 + 0.003, the
      // accepted result the re-run's 0.003; and an earlier attempt that failed billed 0.001.
      ['a', { state: 'completed', result: result(0.003) }],
      // A plain child: its one row is its result.
      ['b', { state: 'completed', result: result(0.004) }],
      ['c', { state: 'failed', error: 'bad output' }],
    ]);
    const spend = fanOutSpend(children, outcomes, new Map([['a', billed(0.001, 0.005)], ['b', billed(0, 0.004)], ['c', billed(0.0007, 0)]]));
    expect(spend.results['RiskAnalyzer:analyze_risks']).toMatchObject({ success: true, costUsd: 0.006, tokensUsed: { input: 10, output: 5 } });
    expect(spend.results['DealScorer:pipeline_summary'].costUsd).toBe(0.004);
    expect(spend.results['TaskGenerator:suggest_next_actions']).toMatchObject({ success: false, costUsd: 0.0007 });
    expect(spend.totalCostUsd).toBe(0.0107);
    expect(Object.values(spend.results).reduce((n, r) => n + r.costUsd, 0)).toBeCloseTo(spend.totalCostUsd, 12);
    // A row summed on the parent by a worker of the version before (no completed sum): the result's own cost.
    expect(fanOutSpend([children[1]], outcomes, new Map()).results['DealScorer:pipeline_summary'].costUsd).toBe(0.004);
  });
});

describe("a settled flow's costs read again (GET): the total is the children's figures added", () => {
  it('one child reads less than the settle (old rows on its removed hash), another more (a late row): the total counts both', () => {
    const children = [child('a', 'RiskAnalyzer:analyze_risks'), child('b', 'DealScorer:pipeline_summary')];
    const outcomes = new Map<string, ChildOutcome>([
      ['a', { state: 'failed', error: 'bad output' }],
      ['b', { state: 'completed', result: result(0.003) }],
    ]);
    // At the settle: a's failed attempts (0.0007) were summed by a worker of the version before, on its own hash
    // alone (childrenBilled reads it there); b's accepted run 0.003.
    const atSettle = fanOutSpend(children, outcomes, new Map([['a', billed(0.0007, 0)], ['b', billed(0, 0.003)]]));
    const settled: ParallelFlowResult = { ...atSettle, totalDurationMs: 1 };
    // Later: retention removed a's hash (its old rows' sum with it), and b's refused stalled run ended, 0.002.
    const now = fanOutSpend(children, outcomes, new Map([['a', billed(0, 0)], ['b', billed(0, 0.005)]]));
    const view = spendReadAgain(settled, now);
    expect(view.results['RiskAnalyzer:analyze_risks'].costUsd).toBe(0.0007);
    expect(view.results['DealScorer:pipeline_summary'].costUsd).toBe(0.005);
    // The ledger's rows: 0.0007 + 0.003 + 0.002 (the larger of the two totals was 0.005).
    expect(view.totalCostUsd).toBe(0.0057);
    expect(view.totalDurationMs).toBe(1);
  });
});
