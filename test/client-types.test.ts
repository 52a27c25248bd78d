import { describe, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { defineAction, defineAgent } from '../src/shared/agents/define-agent.js';
import type { AgentInput, AgentOutput, BuiltInAgents } from '../src/shared/agents/registry.js';
import type { RiskAnalysis } from '../src/shared/agents/risk-analyzer.js';
import { createAgentqClient, type JobHandle, type JobView } from '../src/producers/client/client.js';
import type { AgentResult } from '../src/shared/core/types.js';

/*
 * Compile-time checks: `npx tsc --noEmit` (part of `npm test`) fails if an inference breaks or an
 * `@ts-expect-error` line stops being an error. The client is never called: no server is needed.
 */
const client = createAgentqClient({ baseUrl: 'http://127.0.0.1:1', apiKey: 'k' });

describe('typed client (compile time)', () => {
  it('infers an action input from the agent definitions, defaults optional', () => {
    type In = AgentInput<BuiltInAgents, 'TaskGenerator', 'suggest_next_actions'>;
    expectTypeOf<In>().toHaveProperty('startupId').toEqualTypeOf<string>();
    expectTypeOf<In['limit']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<Parameters<typeof client.enqueue<'RiskAnalyzer', 'analyze_risks'>>[2]>().toEqualTypeOf<
      AgentInput<BuiltInAgents, 'RiskAnalyzer', 'analyze_risks'>
    >();
  });

  it('infers result.data from the action output through the handle', () => {
    const typeOnly = async () => {
      const job = await client.enqueue('RiskAnalyzer', 'analyze_risks', { startup: { name: 'Acme' } });
      expectTypeOf(job).toEqualTypeOf<JobHandle<RiskAnalysis>>();
      const view = await job.wait({ timeoutMs: 1000 });
      expectTypeOf(view).toEqualTypeOf<JobView<RiskAnalysis>>();
      expectTypeOf(view.result).toEqualTypeOf<AgentResult<RiskAnalysis> | undefined>();
      expectTypeOf(view.result!.data!.risks[0].severity).toEqualTypeOf<'low' | 'medium' | 'high' | 'critical'>();

      const answer = await (await client.enqueue('KnowledgeAssistant', 'answer', { question: 'How do I price?' })).wait();
      expectTypeOf(answer.result!.data!.citations).toEqualTypeOf<number[]>();
      expectTypeOf(answer.result!.data!.sources[0].type).toEqualTypeOf<'playbook' | 'industry_pack' | 'chat_fact'>();
    };
    expectTypeOf(typeOnly).returns.resolves.toBeVoid();
  });

  it('rejects unknown agents, unknown actions and wrong inputs', () => {
    const typeOnly = async () => {
      // @ts-expect-error unknown agent
      await client.enqueue('NoSuchAgent', 'analyze_risks', {});
      // @ts-expect-error action of another agent
      await client.enqueue('RiskAnalyzer', 'pipeline_summary', { startupId: 's1' });
      // @ts-expect-error missing required startup.name
      await client.enqueue('RiskAnalyzer', 'analyze_risks', { startup: { industry: 'fintech' } });
      // @ts-expect-error severity is not a focus area
      await client.enqueue('RiskAnalyzer', 'analyze_risks', { startup: { name: 'A' }, focusAreas: ['high'] });
      // @ts-expect-error limit is a number
      await client.enqueue('TaskGenerator', 'suggest_next_actions', { startupId: 's1', limit: '5' });
      // @ts-expect-error unknown option
      await client.enqueue('DealScorer', 'pipeline_summary', { startupId: 's1' }, { priorty: 1 });
    };
    expectTypeOf(typeOnly).toBeFunction();
  });

  it('types each element of a bulk enqueue', () => {
    const typeOnly = async () => {
      const { jobs } = await client.enqueueBulk([
        { agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 's1' } },
        { agent: 'ProfileExtractor', action: 'wizard_extract_startup', input: { answers: [{ question: 'What?', answer: 'CRM' }] } },
      ]);
      const first = await jobs[0].wait();
      expectTypeOf(first.result!.data!.healthScore).toEqualTypeOf<number>();
      const second = await jobs[1].wait();
      expectTypeOf(second.result!.data!.startup.name).toEqualTypeOf<string>();

      await client.enqueueBulk([
        // @ts-expect-error input of another action
        { agent: 'DealScorer', action: 'pipeline_summary', input: { question: 'x' } },
      ]);
    };
    expectTypeOf(typeOnly).toBeFunction();
  });

  it('works for a caller-defined agent map', () => {
    const echo = defineAgent({
      name: 'Echo',
      description: 'echo',
      actions: {
        say: defineAction({
          description: 'say',
          input: z.object({ text: z.string() }),
          output: z.object({ said: z.string() }),
          promptVersion: 1,
          model: 'fast',
          prompt: (i) => ({ user: i.text }),
        }),
      },
    });
    expectTypeOf(echo.actions.say.model).toEqualTypeOf<'fast' | 'pro'>();
    const custom = createAgentqClient<{ Echo: typeof echo }>({ baseUrl: 'http://127.0.0.1:1', apiKey: 'k' });
    expectTypeOf<AgentOutput<{ Echo: typeof echo }, 'Echo', 'say'>>().toEqualTypeOf<{ said: string }>();
    const typeOnly = async () => {
      const view = await (await custom.enqueue('Echo', 'say', { text: 'hi' })).wait();
      expectTypeOf(view.result!.data!.said).toEqualTypeOf<string>();
      // @ts-expect-error built-in agents are not part of this map
      await custom.enqueue('RiskAnalyzer', 'analyze_risks', { startup: { name: 'A' } });
    };
    expectTypeOf(typeOnly).toBeFunction();
  });
});
