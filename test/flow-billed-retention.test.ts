import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createOrchestrationFeature } from '../src/app/features/orchestration.js';
import { definePipeline } from '../src/shared/orchestration/pipeline.js';
import { wizardCompletion } from '../src/shared/orchestration/pipelines/wizard-completion.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

const RISK_PROMPT = 'Analyse the risks of this startup.';

/** The wizard with its risk step allowed to fail: the run completes (a failed run is removed by the same retention). */
const lenientWizard = definePipeline({
  ...wizardCompletion,
  name: 'wizard_lenient',
  steps: wizardCompletion.steps.map((st) => (st.id === 'risks' ? { ...st, continueOnError: true } : st)),
});

/**
 * A failed fan-out child or pipeline step reports what its billed attempts cost. That sum was kept on the child's
 * own BullMQ hash only (usage-bill, `JOB_BILLED_FIELD`), and retention removes a failed job's hash: past
 * KEEP_FAILED_COUNT failed jobs (here 0, the tightest: removed as it fails, before its parent reads it) the flow
 * and the run read the child's cost as 0 though its ledger rows stand. The cost is now also kept on the parent's
 * hash, in the same script call, where the parent reads it whatever became of the child.
 */
describe('a failed child whose hash retention removed', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ KEEP_FAILED_COUNT: '0' }, { worker: true, features: [createOrchestrationFeature({ pipelines: [lenientWizard] })] });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  /** The sum of a job's rows in agent_runs (every one a billed failed attempt), once the sinks wrote them. */
  async function ledgerOf(jobId: string): Promise<number> {
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query<{ state: string; cost_usd: string }>('SELECT state, cost_usd FROM agent_runs WHERE job_id = $1', [jobId])).rows;
    expect(rows.length).toBe(s.cfg.JOB_ATTEMPTS);
    expect(rows.every((r) => r.state === 'failed' && Number(r.cost_usd) > 0)).toBe(true);
    return rows.reduce((sum, r) => sum + Number(r.cost_usd), 0);
  }

  it('a fan-out child: GET of the flow reports its billed attempts', async () => {
    // Malformed JSON: every attempt answered (billed) and failed, the child failed for good.
    s.emulator.script({ malformed: true, match: { promptIncludes: RISK_PROMPT }, times: -1 });
    const tag = randomUUID().slice(0, 8);
    const tasks = [
      { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: `Billed ${tag}`, industry: 'logistics' } } },
      { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: `kept-${tag}` } },
    ];
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/flows/${post.json().id}?waitMs=25000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    const failedId = view.children[0].id as string;
    expect(view.children[0].state).toBe('failed');
    // Removed by retention (KEEP_FAILED_COUNT 0).
    expect(await s.runtime.queue.getJobState(failedId)).toBe('unknown');

    const ledger = await ledgerOf(failedId);
    const { results, totalCostUsd } = view.result;
    expect(results['RiskAnalyzer:analyze_risks']).toMatchObject({ success: false, costUsd: expect.closeTo(ledger, 8) });
    expect(totalCostUsd).toBeCloseTo(ledger + results['DealScorer:pipeline_summary'].costUsd, 8);
  });

  it('a pipeline step: GET of the run reports its billed attempts in the step', async () => {
    s.emulator.script({ malformed: true, match: { promptIncludes: RISK_PROMPT }, times: -1 });
    const input = { companyName: `Acme ${randomUUID().slice(0, 8)}`, answers: [{ question: 'What do you build?', answer: 'Picking robots.' }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_lenient', headers: s.auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const { id } = post.json();
    const view = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}?waitMs=25000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['completed', 'failed', 'completed']);
    expect(await s.runtime.queue.getJobState(`${id}-risks`)).toBe('unknown');

    const ledger = await ledgerOf(`${id}-risks`);
    expect(view.steps[1].costUsd).toBeCloseTo(ledger, 8);
    expect(view.result.totalCostUsd).toBeCloseTo(view.steps[0].costUsd + ledger + view.steps[2].costUsd, 8);
  });
});
