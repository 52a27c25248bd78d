import { z } from 'zod';
import { defineAction, defineAgent } from './define-agent.js';
import { DATA_NOTICE, dataBlock, startupProfileSchema } from './startup-profile.js';

export const RISK_CATEGORIES = ['market', 'product', 'team', 'financial', 'legal', 'technical', 'competition'] as const;
export const RISK_SEVERITIES = ['low', 'medium', 'high', 'critical'] as const;

export const riskCategorySchema = z.enum(RISK_CATEGORIES);
export const riskSeveritySchema = z.enum(RISK_SEVERITIES);

export const riskSchema = z.object({
  title: z.string().min(1).max(200),
  category: riskCategorySchema,
  severity: riskSeveritySchema,
  likelihood: z.number().min(0).max(1).describe('Probability that the risk materialises in the next 12 months'),
  description: z.string().min(1).max(2000),
  mitigation: z.string().min(1).max(2000).describe('Concrete steps the founders can take'),
});

/** The output of `analyze_risks`; `TaskGenerator.wizard_generate_tasks` takes it as its `risks` input. */
export const riskAnalysisSchema = z.object({
  risks: z.array(riskSchema).min(1).max(15),
  overallRiskScore: z.number().min(0).max(100).describe('0 = negligible risk, 100 = existential risk'),
  summary: z.string().min(1).max(2000),
});

export type RiskAnalysis = z.infer<typeof riskAnalysisSchema>;

const analyzeRisksInput = z.object({
  startup: startupProfileSchema,
  focusAreas: z.array(riskCategorySchema).max(RISK_CATEGORIES.length).optional(),
});

/** A risk as the app stores it: the dashboard passes its current list in, the model only prioritises. */
const trackedRiskSchema = z.object({
  id: z.string().min(1).max(100).optional(),
  title: z.string().min(1).max(200),
  category: riskCategorySchema,
  severity: riskSeveritySchema,
  likelihood: z.number().min(0).max(1).optional(),
  status: z.enum(['open', 'mitigating', 'resolved', 'accepted']).optional(),
  updatedAt: z.string().max(40).optional(),
});

const dashboardInput = z.object({
  startupId: z.string().min(1).max(100),
  startupName: z.string().min(1).max(200).optional(),
  risks: z.array(trackedRiskSchema).max(100).default([]),
  scoreHistory: z
    .array(z.object({ at: z.string().min(1).max(40), score: z.number().min(0).max(100) }))
    .max(52)
    .default([]),
});

const dashboardOutput = z.object({
  startupId: z.string().max(100),
  topRisks: z
    .array(
      z.object({
        title: z.string().min(1).max(200),
        category: riskCategorySchema,
        severity: riskSeveritySchema,
        whyItMatters: z.string().min(1).max(1000),
        nextStep: z.string().min(1).max(500),
      }),
    )
    .max(5),
  riskTrend: z.enum(['improving', 'stable', 'worsening']),
  summary: z.string().min(1).max(1000),
});

export const riskAnalyzer = defineAgent({
  name: 'RiskAnalyzer',
  description: 'Identifies and scores the risks a startup faces, and summarises them for the dashboard.',
  actions: {
    analyze_risks: defineAction({
      description: 'Full risk analysis of a startup profile: categorised risks with severity, likelihood and mitigation.',
      input: analyzeRisksInput,
      output: riskAnalysisSchema,
      promptVersion: 1,
      model: 'pro',
      prompt: (input) => ({
        system: [
          'You are a seasoned startup advisor and former VC partner who assesses early-stage companies.',
          'Identify the risks that could stop this startup from reaching its next milestone.',
          'Be specific to this company: no generic risks that apply to every startup unless the data makes them acute.',
          'Severity is the damage if the risk materialises; likelihood is a probability between 0 and 1.',
          'Every mitigation must be an action the founders can start within a month.',
          'overallRiskScore is 0 (negligible) to 100 (existential). Where the profile lacks information, say so in',
          'the summary rather than inventing facts.',
          DATA_NOTICE,
        ].join('\n'),
        user: [
          'Analyse the risks of this startup.',
          dataBlock('startup', input.startup),
          input.focusAreas?.length
            ? `Give particular attention to these categories: ${input.focusAreas.join(', ')}.`
            : 'Cover every category that applies.',
          'Return between 3 and 10 risks, most severe first.',
        ].join('\n\n'),
      }),
    }),

    dashboard_risk_summary: defineAction({
      description: 'Short dashboard summary of a startup\'s tracked risks: the top few, the trend, one paragraph.',
      input: dashboardInput,
      output: dashboardOutput,
      promptVersion: 1,
      model: 'fast',
      prompt: (input) => ({
        system: [
          'You write the risk panel of a founder dashboard: short, concrete, no filler.',
          'Use only the tracked risks and score history given. Pick at most 5 top risks among the unresolved ones,',
          'ordered by severity then likelihood. riskTrend compares the recent scores (lower score = less risk) and',
          'the risk statuses; with no history, use "stable". If no risks are tracked, return no top risks and say',
          'in the summary that a risk analysis should be run first.',
          DATA_NOTICE,
        ].join('\n'),
        user: [
          `Summarise the risks of ${input.startupName ? `"${input.startupName}"` : 'this startup'}.`,
          dataBlock('tracked_risks', input.risks),
          dataBlock('score_history', input.scoreHistory),
        ].join('\n\n'),
        extras: { startupId: input.startupId },
      }),
      // The id is ours, not the model's to echo back.
      finalize: (output, extras) => ({ ...output, startupId: (extras as { startupId: string }).startupId }),
    }),
  },
});
