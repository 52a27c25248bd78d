import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createOrchestrationFeature } from '../src/app/features/orchestration.js';
import { definePipeline } from '../src/shared/orchestration/pipeline.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

/** Two questions to the knowledge assistant, one after the other: each step embeds its question twice. */
const askTwice = definePipeline({
  name: 'ask_twice',
  description: 'Two knowledge questions in a row (test)',
  input: z.object({ first: z.string(), second: z.string() }),
  steps: [
    { id: 'first', agent: 'KnowledgeAssistant', action: 'answer', inputMapper: (_p, input: { first: string }) => ({ question: input.first }), outputKey: 'first', continueOnError: true },
    { id: 'second', agent: 'KnowledgeAssistant', action: 'answer', inputMapper: (_p, input: { second: string }) => ({ question: input.second }), outputKey: 'second' },
  ],
});

/**
 * A flow child's (or pipeline step's) embedding calls (its semantic cache lookup, its prompt's knowledge search) are
 * on its ledger rows as `embedding_tokens` / `embedding_cost_usd`, apart from `cost_usd`. The parent summed a child's
 * cost from its result and its billed failed / delayed rows, neither of which carries them: the flow's and the run's
 * totals left them out. The script that appends each row now sums them on the parent's hash too, and the flow's
 * result, each child's entry, the run's steps and its result report them as `embedding {tokens, costUsd, estimated}`.
 */
describe("a flow's and a run's embedding calls", () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({}, { worker: true, features: [createOrchestrationFeature({ pipelines: [askTwice] })] });
  });
  afterEach(() => s.emulator.clearFaults());
  afterAll(async () => s?.close());

  /** A job's rows in agent_runs, once the sinks wrote them: their embedding tokens and cost, and their model cost. */
  async function ledgerOf(jobId: string) {
    await usageWritten(s);
    const rows = (await s.infra.db.pool.query<{ state: string; cost_usd: string; embedding_tokens: number; embedding_cost_usd: string }>(
      'SELECT state, cost_usd, embedding_tokens, embedding_cost_usd FROM agent_runs WHERE job_id = $1',
      [jobId],
    )).rows;
    expect(rows.length).toBeGreaterThan(0);
    return {
      rows,
      tokens: rows.reduce((n, r) => n + r.embedding_tokens, 0),
      embeddingUsd: rows.reduce((n, r) => n + Number(r.embedding_cost_usd), 0),
      costUsd: rows.reduce((n, r) => n + Number(r.cost_usd), 0),
    };
  }

  it('a fan-out: each child (completed, and failed after billed attempts) and the flow report their embedding calls', async () => {
    const tag = randomUUID().slice(0, 8);
    const good = `How should a seed startup ${tag} price its first pilot?`;
    const bad = `Which churn metric should startup ${tag} report to its board?`;
    // Malformed JSON for the second: every attempt answered (billed), embedded its question twice, and failed.
    s.emulator.script({ malformed: true, match: { promptIncludes: bad }, times: -1 });
    const tasks = [
      { agent: 'KnowledgeAssistant', action: 'answer', input: { question: good } },
      { agent: 'KnowledgeAssistant', action: 'answer', input: { question: bad } },
    ];
    const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: s.auth, payload: { tasks } });
    expect(post.statusCode).toBe(202);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/flows/${post.json().id}?waitMs=25000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.children.map((c: { state: string }) => c.state)).toEqual(['completed', 'failed']);
    const [done, failed] = [await ledgerOf(view.children[0].id), await ledgerOf(view.children[1].id)];
    expect(failed.rows.length).toBe(s.cfg.JOB_ATTEMPTS);
    // Two embeddings of the question per attempt (the lookup's, reused by the store, and the knowledge search's).
    expect(done.tokens).toBe(2 * Math.ceil(good.length / 4));
    expect(failed.tokens).toBe(s.cfg.JOB_ATTEMPTS * 2 * Math.ceil(bad.length / 4));

    const { results, embedding, totalCostUsd } = view.result;
    expect(results['KnowledgeAssistant:answer'].embedding).toEqual({ tokens: done.tokens, costUsd: expect.closeTo(done.embeddingUsd, 10), estimated: true });
    expect(results['KnowledgeAssistant:answer#2']).toMatchObject({ success: false, embedding: { tokens: failed.tokens, costUsd: expect.closeTo(failed.embeddingUsd, 10), estimated: true } });
    expect(embedding).toEqual({ tokens: done.tokens + failed.tokens, costUsd: expect.closeTo(done.embeddingUsd + failed.embeddingUsd, 10), estimated: true });
    // The model calls' cost stays apart, what Gemini billed: the ledger's cost_usd.
    expect(totalCostUsd).toBeCloseTo(done.costUsd + failed.costUsd, 8);
  });

  it('a pipeline run: each step and the run report their embedding calls', async () => {
    const tag = randomUUID().slice(0, 8);
    const input = { first: `What runway does startup ${tag} need before a seed round?`, second: `How should startup ${tag} hire its first engineer?` };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/ask_twice', headers: s.auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const { id } = post.json();
    const view = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}?waitMs=25000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    const [first, second] = [await ledgerOf(`${id}-first`), await ledgerOf(`${id}-second`)];
    expect(first.tokens).toBe(2 * Math.ceil(input.first.length / 4));
    expect(view.steps[0].embedding).toEqual({ tokens: first.tokens, costUsd: expect.closeTo(first.embeddingUsd, 10), estimated: true });
    expect(view.steps[1].embedding).toEqual({ tokens: second.tokens, costUsd: expect.closeTo(second.embeddingUsd, 10), estimated: true });
    expect(view.result.embedding).toEqual({ tokens: first.tokens + second.tokens, costUsd: expect.closeTo(first.embeddingUsd + second.embeddingUsd, 10), estimated: true });
    expect(view.result.totalCostUsd).toBeCloseTo(first.costUsd + second.costUsd, 8);
  });
});
