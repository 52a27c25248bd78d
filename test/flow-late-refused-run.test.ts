import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createStalledCheck } from './helpers/stalled-check.js';
import { startStack, type Stack } from './helpers/stack.js';
import { ledgerRowsOf } from './helpers/usage.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * A flow child (or pipeline step) run twice under one attempt after BullMQ's stalled check: the re-run (part
 * `stalled:1`) completes first, its result is accepted and the flow settles (the run moves on and ends), and only
 * then does the first run, still calling the model, end: its completion is refused, its row (part '') is written and
 * summed on the parent's hash, after the parent had recorded the child's cost. The flow's `totalCostUsd` and the
 * step's `costUsd` were those of the settle, one paid run short of the ledger; a view now reads the sums again.
 */
describe("a flow child's refused run that ends after its parent settled", () => {
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
  const parts = async (jobId: string) => (await rowsOf(jobId)).map((r) => [r.part, r.state]);

  /**
   * Runs `id`'s attempt twice, the re-run let through first; `settled` waits for the parent to settle on the
   * re-run's result, then the first run is let through. Returns the child's ledger cost (both runs).
   */
  async function reRunFirst(marker: string, id: string, first: ReturnType<NonNullable<Stack['modelGate']>['hold']>, settled: () => Promise<void>): Promise<number> {
    await vi.waitFor(() => expect(first.count()).toBe(1), POLL);
    const second = s.modelGate!.hold(marker, 1);
    await checks.stall(s.runtime.deps.cells[0].queue, id);
    await vi.waitFor(() => expect(second.count()).toBe(1), POLL);
    second.release();
    await settled();
    expect(await parts(id)).toEqual([['stalled:1', 'completed']]);
    first.release();
    await vi.waitFor(async () => expect(await parts(id)).toEqual([['', 'completed'], ['stalled:1', 'completed']]), POLL);
    const rows = await rowsOf(id);
    for (const r of rows) expect(Number(r.cost_usd)).toBeGreaterThan(0);
    return rows.reduce((sum, r) => sum + Number(r.cost_usd), 0);
  }

  it('a fan-out: GET of the flow counts the run that ended after it settled', async () => {
    const marker = 'Late Refused Child LQ';
    const first = s.modelGate!.hold(marker, 1);
    const tasks = [{ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: marker, industry: 'logistics', stage: 'seed', description: 'A child run twice' } } }];
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const flowId = post.json().id as string;
    const flow = async (waitMs = 0) => (await s.app.inject({ method: 'GET', url: `/v1/flows/${flowId}?waitMs=${waitMs}`, headers: s.auth })).json();
    await vi.waitFor(async () => expect((await flow()).children[0]?.id).toBeTruthy(), POLL);
    const childId = (await flow()).children[0].id as string;
    let atSettle = 0;
    const ledger = await reRunFirst(marker, childId, first, async () => {
      const view = await flow(30_000);
      expect(view.state).toBe('completed');
      atSettle = view.result.totalCostUsd;
    });

    const view = await flow();
    expect(view.result.results['RiskAnalyzer:analyze_risks']).toMatchObject({ success: true });
    expect(view.result.totalCostUsd).toBeGreaterThan(atSettle);
    expect(view.result.totalCostUsd).toBeCloseTo(ledger, 8);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, 30_000, POLL.timeout));

  it("a pipeline step: GET of the run counts the run that ended after the step was recorded, in the step and the run's total", async () => {
    const marker = 'Late Refused Step LZ';
    // The wizard's first step (ProfileExtractor) asks about the answers given: the marker is in its prompt.
    const first = s.modelGate!.hold(marker, 1);
    const input = { companyName: marker, answers: [{ question: 'What do you build?', answer: `Picking robots for ${marker}.` }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: s.auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const runId = post.json().id as string;
    const run = async (waitMs = 0) => (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}?waitMs=${waitMs}`, headers: s.auth })).json();
    let atSettle = 0;
    const ledger = await reRunFirst(marker, `${runId}-profile`, first, async () => {
      const view = await run(30_000);
      expect(view.state).toBe('completed');
      atSettle = view.steps[0].costUsd;
    });

    const view = await run();
    expect(view.steps[0]).toMatchObject({ id: 'profile', state: 'completed' });
    expect(view.steps[0].costUsd).toBeGreaterThan(atSettle);
    expect(view.steps[0].costUsd).toBeCloseTo(ledger, 8);
    expect(view.result.totalCostUsd).toBeCloseTo(view.steps.reduce((sum: number, st: { costUsd: number }) => sum + st.costUsd, 0), 8);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, 30_000, POLL.timeout));
});
