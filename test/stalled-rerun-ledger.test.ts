import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../src/shared/core/logger.js';
import { usageStreamKey } from '../src/shared/core/queue-keys.js';
import type { AgentResult } from '../src/shared/core/types.js';
import type { JobContext } from '../src/workers/middleware.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { fakeAgentJob } from './helpers/fake-job.js';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { encodeRun, RUN_FIELD } from '../src/shared/infra/db/run-stream.js';
import { createStalledCheck } from './helpers/stalled-check.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';
import { POLL } from './helpers/wait.js';

interface RunRow {
  job_id: string;
  job_ts: string;
  attempt: number;
  part: string;
  org_id: string;
  agent: string;
  action: string;
  model: string;
  state: 'completed' | 'failed' | 'delayed';
  input_tokens: number;
  output_tokens: number;
  cost_usd: string;
  duration_ms: number;
  tier: 'standard';
}

/**
 * A job whose lock lapsed while its run was calling the model: BullMQ's stalled check hands it to another fetch
 * (here the same worker's, which has room for two jobs), and that run of the SAME attempt calls the model again.
 * Both calls are paid: both runs' rows are in the ledger, told apart by their part (the second run's names the
 * stall), and a usage stream entry sent again is still one row. Until 2026-12-07 the second row was refused as a
 * duplicate of the first (same job, incarnation, attempt and part) and its cost was in no total.
 */
function stalledRerun(opts: { fairDispatch: boolean }) {
  let s!: Stack;
  let checks!: ReturnType<typeof createStalledCheck>;
  beforeAll(async () => {
    s = await startStack({ WORKER_CONCURRENCY: '2' }, { worker: true, modelGate: true, fairDispatch: opts.fairDispatch });
    checks = createStalledCheck(s.cfg.REDIS_URL!, s.cfg.QUEUE_PREFIX);
  });
  afterAll(async () => {
    await checks?.close();
    await s?.close();
  });

  const rowsOf = async (id: string) => {
    await usageWritten(s);
    return (await s.infra.db.pool.query<RunRow>('SELECT * FROM agent_runs WHERE job_id = $1 ORDER BY part', [id])).rows;
  };
  const usage = async (url: string, auth: { authorization: string }) => (await s.app.inject({ method: 'GET', url, headers: auth })).json();

  return async (marker: string) => {
    const held = s.modelGate!.hold(marker, 2);
    const input = { startup: { name: marker, industry: 'logistics', stage: 'seed', description: 'A job run twice under one attempt' } };
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } });
    expect(res.statusCode).toBe(202);
    const id = res.json().id as string;

    // The first run's call is in flight; its lock lapses and the stalled check gives the job back to the wait list.
    await vi.waitFor(() => expect(held.count()).toBe(1), POLL);
    await checks.stall(s.runtime.deps.cells[0].queue, id);
    // Fetched again: the second run of the same attempt makes its own call beside the first one.
    await vi.waitFor(() => expect(held.count()).toBe(2), POLL);
    held.release();
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=30000`, headers: s.auth })).json();
    expect(view).toMatchObject({ state: 'completed', attempts: 1 });

    // Two paid calls, two rows of attempt 1: the first run's own row, and the re-run's under the stall it followed.
    await vi.waitFor(async () => expect(await rowsOf(id)).toHaveLength(2), POLL);
    const rows = await rowsOf(id);
    expect(rows.map((r) => [r.attempt, r.part, r.state])).toEqual([
      [1, '', 'completed'],
      [1, 'stalled:1', 'completed'],
    ]);
    for (const r of rows) expect(Number(r.cost_usd)).toBeGreaterThan(0);
    const billed = rows.reduce((sum, r) => sum + Number(r.cost_usd), 0);

    // /v1/usage and the dashboard's data (an org admin's view) count both calls, and one job.
    const adminAuth = { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` };
    for (const body of [await usage('/v1/usage', s.auth), await usage('/admin/usage/api', adminAuth)]) {
      expect(body.total.jobs).toBe(1);
      expect(body.total.costUsd).toBeCloseTo(billed, 10);
      expect(body.total.tokens.output).toBe(rows.reduce((sum, r) => sum + r.output_tokens, 0));
    }

    // Each run's entry sent again (a sink killed before its ack, a redelivery): still one row per run.
    const key = usageStreamKey(s.cfg.QUEUE_PREFIX);
    for (const r of rows) {
      const run: AgentRun = {
        jobId: r.job_id,
        jobTs: Number(r.job_ts),
        attempt: r.attempt,
        ...(r.part ? { part: r.part } : {}),
        orgId: r.org_id,
        agent: r.agent,
        action: r.action,
        model: r.model,
        state: r.state,
        inputTokens: r.input_tokens,
        outputTokens: r.output_tokens,
        costUsd: Number(r.cost_usd),
        durationMs: r.duration_ms,
        tier: r.tier,
      };
      for (let i = 0; i < 2; i++) await s.runtime.deps.redis.xadd(key, '*', RUN_FIELD, encodeRun(run));
    }
    expect((await rowsOf(id)).map((r) => r.part)).toEqual(['', 'stalled:1']);
    expect((await usage('/v1/usage', s.auth)).total.costUsd).toBeCloseTo(billed, 10);
  };
}

describe('a stalled re-run of one attempt is in the ledger beside the first run', () => {
  const run = stalledRerun({ fairDispatch: true });
  it('with the fair dispatcher (the re-run claims the job unpaid): two rows, both costs, a re-sent entry written once', async () => {
    await run('Stalled Twice Paid Oy');
  });
});

describe("a stalled re-run of one attempt without the dispatcher (BullMQ's own re-run)", () => {
  const run = stalledRerun({ fairDispatch: false });
  it('two rows, both costs, a re-sent entry written once', async () => {
    await run('Rerun Without Gate AB');
  });
});

describe('the part of the row each run of an attempt writes', () => {
  const PAID = { success: true, data: {}, tokensUsed: { input: 10, output: 5 }, model: 'gemini-fast', costUsd: 0.002 } as unknown as AgentResult;
  /** The processor (no gate, no Redis) with `chain` as its guard chain; the rows it records. */
  function processorWith(chain: (ctx: JobContext) => Promise<AgentResult>) {
    const rows: Array<{ part?: string; state: string; costUsd: number }> = [];
    const process = createAgentProcessor({
      agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast' } as never }), validateInput: (_a, _b, input) => input },
      chain,
      runs: { record: async (r) => void rows.push(r) },
      models: { fast: 'gemini-fast', pro: 'gemini-pro' },
      logger: createLogger({ level: 'silent' }),
    });
    return { process, rows };
  }

  it("a run fetched after n stalls writes 'stalled:<n>', one fetched before any stall the attempt's '', completed or failed", async () => {
    const { process, rows } = processorWith(async () => PAID);
    await process(fakeAgentJob(), 't1');
    await process(fakeAgentJob({ extra: { stalledCounter: 1 } }), 't2');
    await process(fakeAgentJob({ extra: { stalledCounter: 2 } }), 't3');
    const failing = processorWith(async () => {
      throw Object.assign(new Error('bad output'), { code: 'EBADOUTPUT' });
    });
    await expect(failing.process(fakeAgentJob({ extra: { stalledCounter: 1 } }), 't4')).rejects.toThrow();
    expect([...rows, ...failing.rows].map((r) => [r.part ?? '', r.state])).toEqual([
      ['', 'completed'],
      ['stalled:1', 'completed'],
      ['stalled:2', 'completed'],
      ['stalled:1', 'failed'],
    ]);
  });

  it("a re-run served its batch's stored answer keeps the attempt's row: that answer was billed once, whichever run is served it", async () => {
    const { process, rows } = processorWith(async (ctx) => {
      ctx.batchRead = true;
      // The answer's own bill (batch-tier.ts): the run made no call after it, so it has no `standard:<n>` row.
      ctx.batchBilled = { model: PAID.model, usage: PAID.tokensUsed, costUsd: PAID.costUsd, standardCostUsd: PAID.costUsd, tier: 'batch' };
      return PAID;
    });
    await process(fakeAgentJob({ extra: { stalledCounter: 1 } }), 't5');
    expect(rows.map((r) => r.part ?? '')).toEqual(['']);
  });
});
