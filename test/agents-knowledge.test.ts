import { describe, expect, it } from 'vitest';
import type { PromptContext } from '../src/shared/agents/define-agent.js';
import { KNOWLEDGE_TABLES, knowledgeAssistant } from '../src/shared/agents/knowledge-assistant.js';
import { builtInAgents } from '../src/shared/agents/registry.js';

const action = knowledgeAssistant.actions.answer;
type Search = NonNullable<PromptContext['search']>;
type Doc = Awaited<ReturnType<Search>>[number];

const docs: Doc[] = [
  {
    table: 'playbooks',
    id: 'pb_pricing',
    content: 'Price on value, not cost. Start with three tiers.',
    similarity: 0.83,
    metadata: { title: 'Pricing your first plan' },
  },
  { table: 'industry_packs', id: 'ip_saas', content: 'SaaS benchmarks\nMedian seed ACV is $12k.', similarity: 0.71 },
  { table: 'chat_facts', id: 'cf_1', content: 'Founder said churn is 4% monthly.', similarity: 0.66, metadata: { startup_id: 'st_1' } },
  { table: 'chat_facts', id: 'cf_2', content: 'Other startup fact.', similarity: 0.65, metadata: { startup_id: 'st_2' } },
];

function searchReturning(found: Doc[]) {
  const calls: Array<{ query: string; opts: Parameters<Search>[1] }> = [];
  const search: Search = async (query, opts) => {
    calls.push({ query, opts });
    return found;
  };
  return { calls, ctx: { orgId: 'org_1', search } satisfies PromptContext };
}

const parse = (input: unknown) => action.input.parse(input);

describe('KnowledgeAssistant.answer', () => {
  it('searches the selected tables with the documented limit and threshold', async () => {
    const { calls, ctx } = searchReturning([]);
    await action.prompt(parse({ question: 'How do I price?', includeIndustryPacks: false, includeChatFacts: true }), ctx);
    expect(calls).toEqual([
      { query: 'How do I price?', opts: { tables: [KNOWLEDGE_TABLES.playbook, KNOWLEDGE_TABLES.chat_fact], limit: 5, threshold: 0.6 } },
    ]);
  });

  it('numbers the retrieved passages and asks for citations by number', async () => {
    const { ctx } = searchReturning(docs);
    const prompt = await action.prompt(parse({ question: 'How should we price?', startupId: 'st_1', includeChatFacts: true }), ctx);
    expect(prompt.user).toContain('[1] (playbook: Pricing your first plan)\nPrice on value');
    expect(prompt.user).toContain('[2] (industry_pack: SaaS benchmarks)');
    expect(prompt.user).toContain('[3] (chat_fact: Founder said churn is 4% monthly.)');
    // The fact recorded for another startup is not this startup's context.
    expect(prompt.user).not.toContain('Other startup fact');
    expect(prompt.user).not.toContain('[4]');
    expect(prompt.system).toMatch(/square brackets/);
    expect(prompt.system).toMatch(/nothing relevant/);
    expect(prompt.extras).toEqual(docs.slice(0, 3));
  });

  it('finalize attaches the retrieved sources and drops citations that point nowhere', async () => {
    const { ctx } = searchReturning(docs.slice(0, 2));
    const prompt = await action.prompt(parse({ question: 'How should we price?' }), ctx);
    const out = action.finalize!(
      {
        answer: 'Price on value [1]; seed ACV is about $12k [2] [7].',
        citations: [2, 7, 1, 2, 0],
        sources: [{ type: 'chat_fact', id: 'made_up', title: 'invented', relevance: 1 }],
        foundRelevantContext: false,
      },
      prompt.extras,
    );
    expect(out.citations).toEqual([1, 2]);
    expect(out.sources).toEqual([
      { type: 'playbook', id: 'pb_pricing', title: 'Pricing your first plan', relevance: 0.83 },
      { type: 'industry_pack', id: 'ip_saas', title: 'SaaS benchmarks', relevance: 0.71 },
    ]);
    // It cited real passages, so something relevant was found whatever the flag said.
    expect(out.foundRelevantContext).toBe(true);
    expect(action.output.safeParse(out).success).toBe(true);
  });

  it('with nothing retrieved, says so in the prompt and reports no context, whatever the model claims', async () => {
    const { ctx } = searchReturning([]);
    const prompt = await action.prompt(parse({ question: 'What is our churn?' }), ctx);
    expect(prompt.user).toContain('(no context was found)');
    const out = action.finalize!({ answer: 'Churn is 4% [1].', citations: [1], sources: [], foundRelevantContext: true }, prompt.extras);
    expect(out).toEqual({ answer: 'Churn is 4% [1].', citations: [], sources: [], foundRelevantContext: false });
  });

  it('skips retrieval when every source is switched off or no search is wired', async () => {
    const { calls, ctx } = searchReturning(docs);
    const off = await action.prompt(parse({ question: 'Anything?', includePlaybooks: false, includeIndustryPacks: false }), ctx);
    expect(calls).toHaveLength(0);
    expect(off.extras).toEqual([]);
    const unwired = await action.prompt(parse({ question: 'Anything?' }), { orgId: 'org_1' });
    expect(unwired.user).toContain('(no context was found)');
  });

  it('opts in to the semantic cache with the question text only', () => {
    expect(action.semanticKey?.(parse({ question: '  How do I price?  ', startupId: 'x' }))).toBe('How do I price?');
    const optedIn = builtInAgents.flatMap((a) => Object.entries(a.actions).filter(([, act]) => act.semanticKey).map(([n]) => `${a.name}.${n}`));
    expect(optedIn).toEqual(['KnowledgeAssistant.answer']);
  });
});
