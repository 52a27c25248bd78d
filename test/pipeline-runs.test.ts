import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createOrchestrationFeature } from '../src/app/features/orchestration.js';
import { definePipeline } from '../src/shared/orchestration/pipeline.js';
import { wizardCompletion } from '../src/shared/orchestration/pipelines/wizard-completion.js';
import { orgJobsKey } from '../src/shared/core/queue-keys.js';
import { createAgentqClient } from '../src/producers/client/client.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

const RISK_PROMPT = 'Analyse the risks of this startup.';

/** The wizard with its risk step allowed to fail: the plan is then built without a risk analysis. */
const lenientWizard = definePipeline({
  ...wizardCompletion,
  name: 'wizard_lenient',
  steps: wizardCompletion.steps.map((s) => (s.id === 'risks' ? { ...s, continueOnError: true } : s)),
});

const brokenMapper = definePipeline({
  ...wizardCompletion,
  name: 'wizard_broken_mapper',
  steps: [
    wizardCompletion.steps[0],
    {
      id: 'risks',
      agent: 'RiskAnalyzer',
      action: 'analyze_risks',
      inputMapper: () => {
        throw new Error('boom in mapper');
      },
      outputKey: 'risks',
    },
    wizardCompletion.steps[2],
  ],
});

const wizardInput = () => ({
  companyName: `Acme ${randomUUID().slice(0, 8)}`,
  answers: [
    { question: 'What do you build?', answer: 'Warehouse picking robots for mid-size retailers.' },
    { question: 'Who are your customers?', answer: 'Regional grocery chains in the Midwest.' },
  ],
});

describe('sequential pipelines', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: true, features: [createOrchestrationFeature({ pipelines: [wizardCompletion, lenientWizard, brokenMapper] })] });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  async function run(name: string, input: unknown) {
    const post = await s.app.inject({ method: 'POST', url: `/v1/pipelines/${name}`, headers: s.auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const { id } = post.json();
    const res = await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}?waitMs=25000`, headers: s.auth });
    expect(res.statusCode).toBe(200);
    return res.json();
  }
  const stepJob = (id: string) => s.runtime.queue.getJob(id);

  it('runs wizard_completion, each step an agent job fed by the previous outputs', async () => {
    const input = wizardInput();
    const view = await run('wizard_completion', input);
    expect(view.state).toBe('completed');
    expect(view.result).toMatchObject({ success: true, errors: {} });
    expect(Object.keys(view.result.outputs).sort()).toEqual(['profile', 'risks', 'tasks']);
    expect(view.result.totalCostUsd).toBeGreaterThan(0);
    expect(view.result.totalDurationMs).toBeGreaterThan(0);
    expect(view.steps.map((st: { id: string; state: string }) => [st.id, st.state])).toEqual([
      ['profile', 'completed'],
      ['risks', 'completed'],
      ['tasks', 'completed'],
    ]);
    // Pipeline steps are agent jobs of the org: in its job index (what GET /v1/jobs lists) like any other.
    const step = await stepJob(`${view.id}-risks`);
    expect(await s.runtime.deps.redis.zscore(orgJobsKey(s.cfg.QUEUE_PREFIX, step!.data.orgId), step!.id!)).not.toBeNull();
    const { outputs } = view.result;
    expect(outputs.profile.startup.name).toBe(input.companyName);
    expect(view.steps[1].output).toEqual(outputs.risks);

    // Deterministic step job ids; each step's input is built from the earlier outputs.
    const [p, r, t] = await Promise.all(['profile', 'risks', 'tasks'].map((st) => stepJob(`${view.id}-${st}`)));
    expect(p!.data.input).toMatchObject({ companyName: input.companyName, answers: input.answers });
    expect(r!.data.input).toEqual({ startup: outputs.profile.startup });
    expect(t!.data.input).toMatchObject({ startup: outputs.profile.startup, risks: outputs.risks });
    expect([p, r, t].every((j) => j!.data.orgId === s.orgId && j!.parent?.id === view.id)).toBe(true);
    expect(t!.returnvalue.data).toEqual(outputs.tasks);
  });

  it('stops at a step that fails for good without continueOnError', async () => {
    s.emulator.script({ status: 400, message: 'scripted risk failure', match: { promptIncludes: RISK_PROMPT }, times: -1 });
    const view = await run('wizard_completion', wizardInput());
    // Failed, not "completed" with success: false: a poller reading the state sees the failure.
    expect(view.state).toBe('failed');
    expect(view.error).toMatch(/step "risks" failed: .*scripted risk failure/);
    expect(view.result).toBeUndefined();
    expect(Object.keys(view.outputs)).toEqual(['profile']);
    expect(view.errors).toEqual({ risks: expect.stringContaining('scripted risk failure') });
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['completed', 'failed', 'skipped']);
    expect(view.steps[1].error).toContain('scripted risk failure');
    expect(await stepJob(`${view.id}-tasks`)).toBeUndefined();
    expect(await s.runtime.queue.getJobState(`${view.id}-risks`)).toBe('failed');
  });

  it('goes on past a failed step with continueOnError, leaving its output unset', async () => {
    s.emulator.script({ status: 400, message: 'scripted risk failure', match: { promptIncludes: RISK_PROMPT }, times: -1 });
    const view = await run('wizard_lenient', wizardInput());
    expect(view.state).toBe('completed');
    expect(view.result.success).toBe(false);
    expect(Object.keys(view.result.outputs).sort()).toEqual(['profile', 'tasks']);
    expect(Object.keys(view.result.errors)).toEqual(['risks']);
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['completed', 'failed', 'completed']);
    const tasksJob = await stepJob(`${view.id}-tasks`);
    expect(tasksJob!.data.input).toMatchObject({ startup: view.result.outputs.profile.startup });
    expect(tasksJob!.data.input).not.toHaveProperty('risks');
  });

  it('a failed step billed for its answers reports that cost, the sum of its ledger rows, in the step and the run\'s total', async () => {
    // Malformed JSON on every attempt: each answer billed, the step failed for good, the run goes on past it.
    s.emulator.script({ malformed: true, match: { promptIncludes: RISK_PROMPT }, times: -1 });
    const view = await run('wizard_lenient', wizardInput());
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['completed', 'failed', 'completed']);
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query<{ cost_usd: string }>('SELECT cost_usd FROM agent_runs WHERE job_id = $1', [`${view.id}-risks`])).rows;
    expect(rows.length).toBe(s.cfg.JOB_ATTEMPTS);
    const ledger = rows.reduce((sum, r) => sum + Number(r.cost_usd), 0);
    expect(ledger).toBeGreaterThan(0);
    // Before, a failed step had no cost at all and the run's total left it out.
    expect(view.steps[1].costUsd).toBeCloseTo(ledger, 8);
    expect(view.result.totalCostUsd).toBeCloseTo(view.steps[0].costUsd + ledger + view.steps[2].costUsd, 8);
  });

  it('records a throwing input mapper as that step\'s error, without creating its job', async () => {
    const view = await run('wizard_broken_mapper', wizardInput());
    expect(view.state).toBe('failed');
    expect(view.errors).toEqual({ risks: 'input mapping failed: boom in mapper' });
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['completed', 'failed', 'skipped']);
    expect(await stepJob(`${view.id}-risks`)).toBeUndefined();
  });

  it('validates input, refuses unknown pipelines and hides runs from other orgs', async () => {
    const bad = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: s.auth, payload: { input: { answers: [] } } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().details.map((d: { path: string }) => d.path)).toContain('input.answers');
    // Unknown input fields, at any depth, are refused as an agent's input's are: zod objects would drop them, and a
    // typo (`companyNme`) would run the pipeline without the field. Nothing is started.
    const runsBefore = await s.runtime.deps.redis.keys(`${s.cfg.QUEUE_PREFIX}:flows:run-*`);
    const typo = await s.app.inject({
      method: 'POST',
      url: '/v1/pipelines/wizard_completion',
      headers: s.auth,
      payload: { input: { companyNme: 'Typo Inc', answers: [{ question: 'What?', answer: 'Robots.', extra: 1 }] } },
    });
    expect(typo.statusCode).toBe(400);
    expect(typo.json().details.map((d: { path: string }) => d.path).sort()).toEqual(['input.answers.0.extra', 'input.companyNme']);
    expect(await s.runtime.deps.redis.keys(`${s.cfg.QUEUE_PREFIX}:flows:run-*`)).toEqual(runsBefore);
    const unknown = await s.app.inject({ method: 'POST', url: '/v1/pipelines/nope', headers: s.auth, payload: { input: {} } });
    expect(unknown.statusCode).toBe(404);

    const list = (await s.app.inject({ method: 'GET', url: '/v1/pipelines', headers: s.auth })).json();
    expect(list.pipelines.map((p: { name: string }) => p.name)).toContain('wizard_completion');
    // The published input schema says so too, as GET /v1/agents's does.
    const wizard = list.pipelines.find((p: { name: string }) => p.name === 'wizard_completion');
    expect(wizard.inputSchema.additionalProperties).toBe(false);
    expect(wizard.inputSchema.properties.answers.items.additionalProperties).toBe(false);

    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: s.auth, payload: { input: wizardInput() } });
    const { id } = post.json();
    const other = { authorization: `Bearer ${await s.newKey()}` };
    const res = await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}`, headers: other });
    expect(res.statusCode).toBe(404);
    expect((await s.app.inject({ method: 'GET', url: `/v1/flows/${id}`, headers: s.auth })).statusCode).toBe(404);
    const mine = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}?waitMs=25000`, headers: s.auth })).json();
    expect(mine.state).toBe('completed');
  });

  it('is reachable from the typed client: runPipeline waits for the outcome', async () => {
    const baseUrl = await s.app.listen({ host: '127.0.0.1', port: 0 });
    const client = createAgentqClient({ baseUrl, apiKey: s.apiKey });
    const view = await client.runPipeline('wizard_completion', wizardInput(), { timeoutMs: 25_000 });
    expect(view.state).toBe('completed');
    expect(view.result).toMatchObject({ success: true, errors: {} });
    expect(view.steps.map((st) => st.state)).toEqual(['completed', 'completed', 'completed']);
  });
});
