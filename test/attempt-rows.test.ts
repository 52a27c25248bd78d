import { describe, expect, it } from 'vitest';
import { AttemptRows } from '../src/workers/attempt-rows.js';
import type { AgentResult, BilledCall } from '../src/shared/core/types.js';
import { fakeAgentJob } from './helpers/fake-job.js';

const billed: BilledCall = { model: 'gemini-2.5-pro', usage: { input: 100, output: 50, cached: 10 }, costUsd: 0.002, standardCostUsd: 0.002, tier: 'standard' };
const answer = (o: Partial<AgentResult> = {}): AgentResult => ({ success: true, data: {}, model: 'gemini-2.5-flash', tokensUsed: { input: 7, output: 3 }, costUsd: 0.001, durationMs: 1, ...o }) as AgentResult;

describe('AttemptRows: the usage rows of one attempt', () => {
  it("a completed attempt's row: the attempt number, the job's ids, the call's billed columns; a cache hit billed at the job's tier", () => {
    const job = fakeAgentJob({ id: 'j1', attemptsMade: 1, data: { requestId: 'r1' } });
    const ctx = { model: 'gemini-2.5-flash', tier: 'priority' as const };
    const rows = new AttemptRows(job, ctx);
    const miss = rows.completed(answer({ tier: 'flex', standardCostUsd: 0.003 }));
    expect(miss).toMatchObject({ jobId: 'j1', jobTs: job.timestamp, attempt: 2, orgId: 'org-1', agent: 'RiskAnalyzer', action: 'analyze_risks', state: 'completed', model: 'gemini-2.5-flash', inputTokens: 7, outputTokens: 3, costUsd: 0.001, standardCostUsd: 0.003, tier: 'flex', cacheHit: null, error: null, requestId: 'r1', durationMs: 0, cachedTokens: 0, thoughtsTokens: 0 });
    expect(miss).not.toHaveProperty('embeddingTokens');
    const hit = rows.completed(answer({ cacheHit: 'l1', tier: 'flex', costUsd: 0, tokensUsed: { input: 0, output: 0 } }));
    expect(hit).toMatchObject({ cacheHit: 'l1', tier: 'priority', standardCostUsd: 0, costUsd: 0 });
  });

  it('embedding calls are estimated onto the row, priced when a price is given; the model is read when the row is made', () => {
    const ctx = { model: 'a', tier: undefined };
    const rows = new AttemptRows(fakeAgentJob(), ctx, (t) => t * 0.001);
    rows.embedded(['x'.repeat(40), 'y'.repeat(8)]);
    ctx.model = 'b';
    expect(rows.failed(new Error('boom'), 'boom')).toMatchObject({ state: 'failed', error: 'boom', model: 'b', tier: 'standard', costUsd: 0, embeddingTokens: 12, embeddingCostUsd: 0.012, embeddingEstimated: true });
  });

  it('a row with embedding calls names the embedding model they were made with (migration 028); a row with none names none', () => {
    const rows = new AttemptRows(fakeAgentJob(), { model: 'a' }, (t) => t * 0.001, 'gemini-embedding-001');
    expect(rows.completed(answer()).embeddingModel).toBeUndefined();
    rows.embedded(['x'.repeat(40)]);
    expect(rows.completed(answer())).toMatchObject({ model: 'gemini-2.5-flash', embeddingTokens: 10, embeddingModel: 'gemini-embedding-001' });
    expect(rows.delayed(undefined, 'database_unavailable')).toMatchObject({ embeddingModel: 'gemini-embedding-001' });
  });

  it('a failed attempt is billed what its error carries; a delayed run gets a part id of its own each time', () => {
    const rows = new AttemptRows(fakeAgentJob(), { model: 'gemini-2.5-flash' });
    const err = Object.assign(new Error('bad output'), { billed });
    expect(rows.failed(err, 'bad output')).toMatchObject({ state: 'failed', model: 'gemini-2.5-pro', inputTokens: 100, outputTokens: 50, cachedTokens: 10, costUsd: 0.002 });
    const a = rows.delayed(billed, 'provider_rate_limited');
    const b = rows.delayed(billed, 'provider_rate_limited');
    expect(a).toMatchObject({ state: 'delayed', error: 'provider_rate_limited', costUsd: 0.002 });
    expect(a.part).toMatch(/^[0-9a-f-]{36}$/);
    expect(b.part).not.toBe(a.part);
  });

  it("a flow child's billed or embedding row is summed on its hash and its parent's; a read batch answer and the run's calls after it as any row (the answer's row is summed once by its marker)", () => {
    const child = fakeAgentJob({ id: 'c1', extra: { parentKey: 'bull:parent:p1', queueQualifiedName: 'bull:agent' } });
    const ctx: { model: string; batchRead?: boolean; batchBilled?: BilledCall } = { model: 'm' };
    const rows = new AttemptRows(child, ctx);
    const failed = rows.failed(Object.assign(new Error('x'), { billed }), 'x');
    expect(rows.billTo(failed)).toEqual({ key: expect.stringContaining('c1'), jobId: 'c1', parentKey: 'bull:parent:p1' });
    expect(rows.billTo({ ...failed, costUsd: 0 })).toBeUndefined();
    expect(rows.billTo({ ...failed, costUsd: 0, embeddingTokens: 5 })).toMatchObject({ jobId: 'c1' });
    // Its completion may yet be refused (a stalled re-run's result wins) though its calls were paid.
    expect(rows.billTo(rows.completed(answer()))).toEqual({ key: expect.stringContaining('c1'), jobId: 'c1', parentKey: 'bull:parent:p1' });
    ctx.batchRead = true;
    ctx.batchBilled = { ...billed, tier: 'batch', costUsd: 0.0005 };
    const [own, after] = rows.completedRows(answer({ costUsd: 0.0025, tokensUsed: { input: 130, output: 60 } }));
    expect(rows.billTo(own)).toEqual({ key: expect.stringContaining('c1'), jobId: 'c1', parentKey: 'bull:parent:p1' });
    expect(after).toMatchObject({ part: 'standard:0', costUsd: 0.002, inputTokens: 30, outputTokens: 10 });
    expect(rows.billTo(after)).toEqual({ key: expect.stringContaining('c1'), jobId: 'c1', parentKey: 'bull:parent:p1' });
    const orphan = new AttemptRows(fakeAgentJob(), { model: 'm' });
    expect(orphan.billTo(orphan.failed(Object.assign(new Error('x'), { billed }), 'x'))).toBeUndefined();
  });

  it('a run delayed with only embedding calls gets a row of them; a stalled re-run\'s rows carry its own part, unless it read its batch answer', () => {
    const rows = new AttemptRows(fakeAgentJob(), { model: 'm' }, (t) => t * 0.001);
    rows.embedded(['x'.repeat(40)]);
    expect(rows.delayed(undefined, 'database_unavailable')).toMatchObject({ state: 'delayed', costUsd: 0, inputTokens: 0, model: 'm', embeddingTokens: 10, embeddingCostUsd: 0.01 });
    const ctx: { model: string; batchRead?: boolean } = { model: 'm' };
    const rerun = new AttemptRows(fakeAgentJob({ extra: { stalledCounter: 2 } }), ctx);
    expect(rerun.completed(answer()).part).toBe('stalled:2');
    expect(rerun.failed(new Error('x'), 'x').part).toBe('stalled:2');
    expect(rerun.delayed(billed, 'r').part).toMatch(/^[0-9a-f-]{36}$/);
    ctx.batchRead = true;
    expect(rerun.completed(answer())).not.toHaveProperty('part');
    expect(new AttemptRows(fakeAgentJob(), { model: 'm' }).completed(answer())).not.toHaveProperty('part');
  });
});
