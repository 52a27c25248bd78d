import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { PromptContext } from '../src/shared/agents/define-agent.js';
import { builtInAgents, createAgentRegistry, defaultRegistry } from '../src/shared/agents/registry.js';
import { ValidationError } from '../src/shared/core/errors.js';

const registry = defaultRegistry();
const ctx: PromptContext = { orgId: 'org_test' };

const acme = {
  name: 'Acme Analytics',
  industry: 'B2B SaaS',
  stage: 'seed',
  description: 'Product analytics for mid-market e-commerce teams.',
  teamSize: 6,
  monthlyRevenueUsd: 18_000,
  monthlyBurnUsd: 95_000,
  runwayMonths: 11,
  competitors: ['Amplitude', 'Mixpanel'],
};

const riskAnalysis = {
  risks: [
    {
      title: 'Short runway',
      category: 'financial',
      severity: 'critical',
      likelihood: 0.7,
      description: 'Burn is five times revenue with 11 months of runway left.',
      mitigation: 'Start the seed extension process now and cut non-core spend by 20%.',
    },
    {
      title: 'Crowded market',
      category: 'competition',
      severity: 'high',
      likelihood: 0.6,
      description: 'Two well-funded incumbents sell to the same buyer.',
      mitigation: 'Own one vertical (Shopify Plus merchants) with templates incumbents lack.',
    },
  ],
  overallRiskScore: 68,
  summary: 'Financially fragile but with a credible wedge.',
};

/** Per action: a realistic input, a bad one and the path it must be reported at, a realistic output, a bad output. */
const cases: Record<string, { input: unknown; bad: unknown; badPath: string; output: unknown; badOutput: unknown }> = {
  'RiskAnalyzer.analyze_risks': {
    input: { startup: acme, focusAreas: ['financial', 'competition'] },
    bad: { startup: { ...acme, name: '' } },
    badPath: 'input.startup.name',
    output: riskAnalysis,
    badOutput: { ...riskAnalysis, risks: [{ ...riskAnalysis.risks[0], likelihood: 1.5 }] },
  },
  'RiskAnalyzer.dashboard_risk_summary': {
    input: {
      startupId: 'st_123',
      startupName: 'Acme Analytics',
      risks: [{ id: 'r1', title: 'Short runway', category: 'financial', severity: 'critical', likelihood: 0.7, status: 'open' }],
      scoreHistory: [
        { at: '2025-01-01', score: 72 },
        { at: '2025-02-01', score: 68 },
      ],
    },
    bad: { startupId: 'st_123', risks: [{ title: 'x', category: 'weather', severity: 'low' }] },
    badPath: 'input.risks.0.category',
    output: {
      startupId: 'st_123',
      topRisks: [{ title: 'Short runway', category: 'financial', severity: 'critical', whyItMatters: '11 months left.', nextStep: 'Open the extension round.' }],
      riskTrend: 'improving',
      summary: 'Risk is easing slowly; runway remains the issue.',
    },
    badOutput: { startupId: 'st_123', topRisks: [], riskTrend: 'better', summary: 'x' },
  },
  'TaskGenerator.suggest_next_actions': {
    input: { startupId: 'st_123', limit: 3, startup: acme, openTasks: [{ title: 'Close design partner #3', status: 'blocked' }] },
    bad: { startupId: 'st_123', limit: 50 },
    badPath: 'input.limit',
    output: {
      actions: [
        { title: 'Unblock design partner #3', description: 'Send the security questionnaire.', priority: 'urgent', estimatedHours: 3, category: 'sales' },
      ],
    },
    badOutput: { actions: [{ title: 'x', description: 'y', priority: 'asap', estimatedHours: 1, category: 'sales' }] },
  },
  'TaskGenerator.wizard_generate_tasks': {
    input: { startup: acme, risks: riskAnalysis, horizonWeeks: 8 },
    bad: { startup: acme, risks: { ...riskAnalysis, overallRiskScore: 120 } },
    badPath: 'input.risks.overallRiskScore',
    output: {
      milestones: [{ title: 'Seed extension closed', description: 'Raise 12 more months.', targetWeek: 8, successCriteria: '$1.5M committed' }],
      tasks: [
        {
          title: 'Build investor list',
          description: '40 seed funds active in analytics.',
          priority: 'high',
          estimatedHours: 6,
          category: 'fundraising',
          dueWeek: 1,
          milestone: 'Seed extension closed',
          addressesRisk: 'Short runway',
        },
      ],
    },
    badOutput: { milestones: [], tasks: [] },
  },
  'DealScorer.pipeline_summary': {
    input: {
      startupId: 'st_123',
      asOf: '2025-03-01',
      deals: [
        { id: 'd1', name: 'Northwind', stage: 'negotiation', valueUsd: 24_000, probability: 0.6, lastActivityAt: '2025-01-20' },
        { id: 'd2', name: 'Contoso', stage: 'proposal', valueUsd: 12_000, lastActivityAt: '2025-02-27' },
      ],
    },
    bad: { startupId: 'st_123', deals: [{ id: 'd1', name: 'N', stage: 'negotiation', valueUsd: -5 }] },
    badPath: 'input.deals.0.valueUsd',
    output: {
      startupId: 'st_123',
      stages: [{ stage: 'negotiation', count: 1, value: 24_000 }],
      healthScore: 55,
      atRiskDeals: [{ dealId: 'd1', name: 'Northwind', reason: 'No contact for 40 days.', suggestedAction: 'Call the champion this week.' }],
      summary: 'Thin but real late-stage pipeline.',
    },
    badOutput: { startupId: 'st_123', stages: [], healthScore: -1, atRiskDeals: [], summary: 'x' },
  },
  'ProfileExtractor.wizard_extract_startup': {
    input: {
      companyName: 'Acme Analytics',
      answers: [
        { question: 'What does your company do?', answer: 'Product analytics for e-commerce teams.' },
        { question: 'How big is the team?', answer: 'Six of us.' },
      ],
    },
    bad: { answers: [] },
    badPath: 'input.answers',
    output: { startup: acme, missingFields: ['fundingRaisedUsd', 'goals'], confidence: 0.8 },
    badOutput: { startup: acme, missingFields: ['favouriteColour'], confidence: 0.8 },
  },
  'KnowledgeAssistant.answer': {
    input: { question: 'How should a seed-stage SaaS price its first plan?', startupId: 'st_123', includeChatFacts: true },
    bad: { question: 'How?', includePlaybooks: 'yes' },
    badPath: 'input.includePlaybooks',
    output: {
      answer: 'Start with value-based tiers [1].',
      citations: [1],
      sources: [{ type: 'playbook', id: 'pb_1', title: 'Pricing', relevance: 0.82 }],
      foundRelevantContext: true,
    },
    badOutput: { answer: 'x', citations: [0], sources: [], foundRelevantContext: true },
  },
};

/** The keywords Gemini's `responseJsonSchema` understands (oneOf/allOf/not/pattern/$ref are avoided). */
const GEMINI_KEYWORDS = new Set([
  'type', 'properties', 'required', 'additionalProperties', 'items', 'enum', 'minimum', 'maximum',
  'minItems', 'maxItems', 'minLength', 'maxLength', 'description', 'anyOf', 'format', 'title',
]);

function keywordsOf(schema: unknown, out = new Set<string>()): Set<string> {
  if (!schema || typeof schema !== 'object') return out;
  const s = schema as Record<string, unknown>;
  for (const key of Object.keys(s)) out.add(key);
  for (const sub of Object.values((s.properties as Record<string, unknown>) ?? {})) keywordsOf(sub, out);
  if (s.items) keywordsOf(s.items, out);
  for (const sub of (s.anyOf as unknown[]) ?? []) keywordsOf(sub, out);
  return out;
}

const allActions = builtInAgents.flatMap((a) => Object.entries(a.actions).map(([name, action]) => ({ agent: a.name, name, action })));

describe('built-in agents', () => {
  it('has one realistic example per action, and every action has a version and a model tier', () => {
    expect(Object.keys(cases).sort()).toEqual(allActions.map((a) => `${a.agent}.${a.name}`).sort());
    for (const { action } of allActions) {
      expect(action.promptVersion).toBeGreaterThanOrEqual(1);
      expect(['fast', 'pro']).toContain(action.model);
    }
    expect(registry.resolve('RiskAnalyzer', 'analyze_risks').action.model).toBe('pro');
    expect(registry.resolve('RiskAnalyzer', 'dashboard_risk_summary').action.model).toBe('fast');
  });

  for (const [key, c] of Object.entries(cases)) {
    const [agent, action] = key.split('.');

    describe(key, () => {
      it('accepts a realistic input and builds a prompt around it', async () => {
        const parsed = registry.validateInput(agent, action, c.input);
        const prompt = await registry.resolve(agent, action).action.prompt(parsed, ctx);
        expect(prompt.system).toMatch(/never follow instructions/);
        expect(prompt.user.length).toBeGreaterThan(20);
      });

      it('rejects a bad input with an input.-prefixed path', () => {
        let err: unknown;
        try {
          registry.validateInput(agent, action, c.bad);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(ValidationError);
        expect((err as ValidationError).details.map((d) => d.path)).toContain(c.badPath);
      });

      it('has an output schema that survives JSON Schema and speaks Gemini\'s subset of it', () => {
        const json = registry.schemas(agent, action).output;
        expect(json.$schema).toBeUndefined();
        expect([...keywordsOf(json)].filter((k) => !GEMINI_KEYWORDS.has(k))).toEqual([]);
        const { action: def } = registry.resolve(agent, action);
        expect(def.output.safeParse(c.output).success).toBe(true);
        expect(def.output.safeParse(c.badOutput).success).toBe(false);
        // What the model is told (the JSON Schema) must accept and refuse the same documents as zod does.
        const roundTripped = z.fromJSONSchema(json as z.core.JSONSchema.JSONSchema);
        expect(roundTripped.safeParse(c.output).success).toBe(true);
        expect(roundTripped.safeParse(c.badOutput).success).toBe(false);
      });
    });
  }
});

describe('agent registry', () => {
  it('names the unknown agent and lists the valid ones', () => {
    expect(() => registry.resolve('RiskAnalyser', 'analyze_risks')).toThrow(
      /unknown agent "RiskAnalyser".*"RiskAnalyzer", "TaskGenerator", "DealScorer", "ProfileExtractor", "KnowledgeAssistant"/,
    );
  });

  it('names the unknown action and lists the agent\'s actions', () => {
    try {
      registry.resolve('RiskAnalyzer', 'toString');
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ValidationError);
      expect((err as ValidationError).message).toMatch(/unknown action "toString".*"analyze_risks", "dashboard_risk_summary"/);
      expect((err as ValidationError).details[0].path).toBe('action');
    }
  });

  it('reports a non-object input at path "input" and applies defaults', () => {
    expect(() => registry.validateInput('KnowledgeAssistant', 'answer', 'what?')).toThrow(ValidationError);
    try {
      registry.validateInput('KnowledgeAssistant', 'answer', 'what?');
    } catch (err) {
      expect((err as ValidationError).details[0].path).toBe('input');
    }
    expect(registry.validateInput('TaskGenerator', 'suggest_next_actions', { startupId: 's' })).toMatchObject({ limit: 5, openTasks: [] });
  });

  it('lists every agent with its actions and JSON Schemas, converted once', () => {
    const list = registry.list();
    expect(list.map((a) => a.name)).toEqual(['RiskAnalyzer', 'TaskGenerator', 'DealScorer', 'ProfileExtractor', 'KnowledgeAssistant']);
    const answer = list.find((a) => a.name === 'KnowledgeAssistant')!.actions[0];
    expect(answer).toMatchObject({ name: 'answer', model: 'fast', inputSchema: { type: 'object', required: ['question'] } });
    expect(Object.keys(answer.outputSchema.properties as object)).toEqual(['answer', 'citations', 'sources', 'foundRelevantContext']);
    expect(registry.list()[0].actions[0].outputSchema).toBe(list[0].actions[0].outputSchema);
    expect(Object.isFrozen(answer.outputSchema)).toBe(true);
  });

  it('refuses a duplicate agent and starts empty without arguments', () => {
    const empty = createAgentRegistry();
    expect(empty.list()).toEqual([]);
    empty.register(builtInAgents[0]);
    expect(() => empty.register(builtInAgents[0])).toThrow(/already registered/);
    expect(empty.get('RiskAnalyzer')).toBe(builtInAgents[0]);
  });
});

describe('wizard pipeline types line up', () => {
  it('feeds the extracted profile to the risk analysis and both to the task plan', () => {
    const extracted = cases['ProfileExtractor.wizard_extract_startup'].output as { startup: unknown };
    // The pipeline hands over the profile alone: the extractor's other fields are unknown to the analysis.
    const riskInput = registry.validateInput('RiskAnalyzer', 'analyze_risks', { startup: extracted.startup }) as { startup: unknown };
    expect(riskInput.startup).toEqual(acme);
    expect(() => registry.validateInput('RiskAnalyzer', 'analyze_risks', extracted)).toThrow(/unknown fields? .*input\.confidence/);
    const risks = cases['RiskAnalyzer.analyze_risks'].output;
    expect(() => registry.validateInput('TaskGenerator', 'wizard_generate_tasks', { startup: extracted.startup, risks })).not.toThrow();
  });
});

describe('finalize', () => {
  // The registry erases output types; the assertions below check the shapes.
  const run = async (agent: string, action: string, input: unknown, output: unknown): Promise<any> => {
    const def = registry.resolve(agent, action).action;
    const prompt = await def.prompt(registry.validateInput(agent, action, input), ctx);
    return def.finalize!(def.output.parse(output), prompt.extras);
  };

  it('dashboard summary reports the requested startup, not the model\'s echo', async () => {
    const c = cases['RiskAnalyzer.dashboard_risk_summary'];
    const out = await run('RiskAnalyzer', 'dashboard_risk_summary', c.input, { ...(c.output as object), startupId: 'st_other' });
    expect(out.startupId).toBe('st_123');
  });

  it('suggestions are trimmed to the caller\'s limit', async () => {
    const one = (cases['TaskGenerator.suggest_next_actions'].output as { actions: unknown[] }).actions[0];
    const out = await run('TaskGenerator', 'suggest_next_actions', { startupId: 's', limit: 2 }, { actions: [one, one, one, one] });
    expect(out.actions).toHaveLength(2);
  });

  it('task plan drops references to milestones and risks that do not exist', async () => {
    const c = cases['TaskGenerator.wizard_generate_tasks'];
    const output = c.output as { milestones: unknown[]; tasks: Array<Record<string, unknown>> };
    const dangling = { ...output.tasks[0], title: 'Dangling', milestone: 'Series A', addressesRisk: 'Alien invasion' };
    const out = await run('TaskGenerator', 'wizard_generate_tasks', c.input, { ...output, tasks: [output.tasks[0], dangling] });
    expect(out.tasks[0]).toMatchObject({ milestone: 'Seed extension closed', addressesRisk: 'Short runway' });
    expect(out.tasks[1]).not.toHaveProperty('milestone');
    expect(out.tasks[1]).not.toHaveProperty('addressesRisk');
  });

  it('pipeline summary computes stage totals itself and drops deals it was not given', async () => {
    const c = cases['DealScorer.pipeline_summary'];
    const output = c.output as { atRiskDeals: Array<Record<string, unknown>> };
    const invented = { dealId: 'd99', name: 'Initech', reason: 'Stale.', suggestedAction: 'Call.' };
    const out = await run('DealScorer', 'pipeline_summary', c.input, { ...output, stages: [], atRiskDeals: [...output.atRiskDeals, invented] });
    expect(out.stages).toHaveLength(6);
    expect(out.stages.find((s: { stage: string }) => s.stage === 'negotiation')).toEqual({ stage: 'negotiation', count: 1, value: 24_000 });
    expect(out.stages.find((s: { stage: string }) => s.stage === 'proposal')).toEqual({ stage: 'proposal', count: 1, value: 12_000 });
    expect(out.atRiskDeals.map((d: { dealId: string }) => d.dealId)).toEqual(['d1']);
  });

  it('pipeline prompt states staleness against the given date', async () => {
    const c = cases['DealScorer.pipeline_summary'];
    const def = registry.resolve('DealScorer', 'pipeline_summary').action;
    const prompt = await def.prompt(registry.validateInput('DealScorer', 'pipeline_summary', c.input), ctx);
    expect(prompt.user).toContain('as of 2025-03-01');
    expect(prompt.user).toContain('"daysSinceActivity": 40');
  });

  it('profile keeps the name the founder typed and forgets fields it actually filled', async () => {
    const c = cases['ProfileExtractor.wizard_extract_startup'];
    const out = await run('ProfileExtractor', 'wizard_extract_startup', c.input, {
      startup: { ...acme, name: 'ACME analytics inc' },
      missingFields: ['name', 'teamSize', 'goals'],
      confidence: 0.7,
    });
    expect(out.startup.name).toBe('Acme Analytics');
    expect(out.missingFields).toEqual(['goals']);
  });
});
