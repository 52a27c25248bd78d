import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createStalledCheck } from './helpers/stalled-check.js';
import { startStack, type Stack } from './helpers/stack.js';
import { ledgerRowsOf } from './helpers/usage.js';
import { POLL } from './helpers/wait.js';

/**
 * A flow child (or pipeline step) whose lock lapsed while its run was calling the model: BullMQ's stalled check hands
 * it to another fetch, which runs the same attempt and calls the model again. Both calls are paid and both runs write
 * their row (part '' and `stalled:1`), but BullMQ refuses the first run's completion (its lock is the re-run's now):
 * the parent summed the child's cost from the accepted result (the re-run's) and its failed / delayed rows, so the
 * first run's completed row was in the ledger and not in the flow's `totalCostUsd` or the step's `costUsd`. Each
 * completed row of a flow child is now summed on the parent's hash by the call that appends it.
 */
describe("a flow child's stalled re-run: the refused run's cost is in its parent's totals", () => {
  let s: Stack;
  let checks: ReturnType<typeof createStalledCheck>;
  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: '2' }, { worker: true, modelGate: true });
    checks = createStalledCheck(s.cfg.REDIS_URL!, s.cfg.QUEUE_PREFIX);
  });
  afterAll(async () => {
    await checks?.close();
    await s?.close();
  });

  const rowsOf = (jobId: string) => ledgerRowsOf(s, jobId);

  /**
   * Runs `childId`'s attempt twice: the first run's call is held, the job stalled and fetched again, the first run
   * let through (its completion refused, its row written) before the re-run's call is: the re-run's result is the
   * one BullMQ accepts, and the parent settles after the first run's row is in. Returns the child's ledger cost.
   */
  async function runTwice(marker: string, childId: () => Promise<string>): Promise<number> {
    const id = await childId();
    await vi.waitFor(() => expect(first.count()).toBe(1), POLL);
    const second = s.modelGate!.hold(marker, 1);
    await checks.stall(s.runtime.deps.cells[0].queue, id);
    await vi.waitFor(() => expect(second.count()).toBe(1), POLL);
    first.release();
    await vi.waitFor(async () => expect((await rowsOf(id)).map((r) => [r.part, r.state])).toEqual([['', 'completed']]), POLL);
    second.release();
    await vi.waitFor(async () => expect((await rowsOf(id)).map((r) => [r.part, r.state])).toEqual([['', 'completed'], ['stalled:1', 'completed']]), POLL);
    const rows = await rowsOf(id);
    for (const r of rows) expect(Number(r.cost_usd)).toBeGreaterThan(0);
    return rows.reduce((sum, r) => sum + Number(r.cost_usd), 0);
  }
  let first!: ReturnType<NonNullable<Stack['modelGate']>['hold']>;

  it('a fan-out: the flow’s totalCostUsd counts both runs of the child', async () => {
    const marker = 'Stalled Flow Child QX';
    first = s.modelGate!.hold(marker, 1);
    const tasks = [{ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: marker, industry: 'logistics', stage: 'seed', description: 'A child run twice' } } }];
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    const flow = () => s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}`, headers: s.auth });
    const ledger = await runTwice(marker, async () => (await flow()).json().children[0].id);

    const view = (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}?waitMs=30000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.result.results['RiskAnalyzer:analyze_risks']).toMatchObject({ success: true });
    expect(view.result.totalCostUsd).toBeCloseTo(ledger, 8);
    // The child's own costUsd counts both runs too (until 2026-12-07: the accepted run's alone, below the total).
    expect(view.result.results['RiskAnalyzer:analyze_risks'].costUsd).toBeCloseTo(ledger, 8);
  });

  it("a pipeline step: the step's costUsd and the run's totalCostUsd count both runs", async () => {
    const marker = 'Stalled Step Run ZK';
    // The wizard's first step (ProfileExtractor) asks about the answers given: the marker is in its prompt.
    first = s.modelGate!.hold(marker, 1);
    const input = { companyName: marker, answers: [{ question: 'What do you build?', answer: `Picking robots for ${marker}.` }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: s.auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const runId = post.json().id as string;
    const ledger = await runTwice(marker, async () => `${runId}-profile`);

    const view = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}?waitMs=30000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.steps[0]).toMatchObject({ id: 'profile', state: 'completed' });
    expect(view.steps[0].costUsd).toBeCloseTo(ledger, 8);
    expect(view.result.totalCostUsd).toBeCloseTo(view.steps.reduce((sum: number, st: { costUsd: number }) => sum + st.costUsd, 0), 8);
  });
});
