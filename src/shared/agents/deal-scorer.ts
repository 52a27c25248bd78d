import { z } from 'zod';
import { defineAction, defineAgent } from './define-agent.js';
import { DATA_NOTICE, dataBlock } from './startup-profile.js';

export const DEAL_STAGES = ['lead', 'qualified', 'proposal', 'negotiation', 'closed_won', 'closed_lost'] as const;
const dealStage = z.enum(DEAL_STAGES);

const dealSchema = z.object({
  id: z.string().min(1).max(100),
  name: z.string().min(1).max(200),
  stage: dealStage,
  valueUsd: z.number().min(0).max(1e12),
  probability: z.number().min(0).max(1).optional(),
  lastActivityAt: z.string().max(40).optional().describe('ISO 8601 date of the last contact'),
  expectedCloseAt: z.string().max(40).optional(),
  notes: z.string().max(1000).optional(),
});

type Deal = z.infer<typeof dealSchema>;

const pipelineInput = z.object({
  startupId: z.string().min(1).max(100),
  deals: z.array(dealSchema).max(200).default([]),
  /** Reference date for staleness; defaults to today. Pass it to make the prompt (and cache hits) reproducible. */
  asOf: z.string().max(40).optional(),
});

const stageSummary = z.object({ stage: dealStage, count: z.number().int().min(0).max(1000), value: z.number().min(0) });

const pipelineOutput = z.object({
  startupId: z.string().max(100),
  stages: z.array(stageSummary).max(DEAL_STAGES.length),
  healthScore: z.number().min(0).max(100).describe('0 = pipeline in trouble, 100 = healthy and well-balanced'),
  atRiskDeals: z
    .array(
      z.object({
        dealId: z.string().max(100).describe('The id of the deal, exactly as given'),
        name: z.string().max(200),
        reason: z.string().min(1).max(500),
        suggestedAction: z.string().min(1).max(500),
      }),
    )
    .max(10),
  summary: z.string().min(1).max(1500),
});

type StageSummary = z.infer<typeof stageSummary>;

/** Counting and adding are done here, not by the model: the numbers on a dashboard must be exact. */
export function aggregateStages(deals: Deal[]): StageSummary[] {
  return DEAL_STAGES.map((stage) => {
    const inStage = deals.filter((d) => d.stage === stage);
    return { stage, count: inStage.length, value: inStage.reduce((sum, d) => sum + d.valueUsd, 0) };
  });
}

const DAY_MS = 24 * 3600 * 1000;

function daysSince(date: string | undefined, asOf: number): number | undefined {
  const t = date ? Date.parse(date) : NaN;
  return Number.isNaN(t) ? undefined : Math.max(0, Math.floor((asOf - t) / DAY_MS));
}

interface PipelineExtras {
  startupId: string;
  stages: StageSummary[];
  names: Record<string, string>;
}

export const dealScorer = defineAgent({
  name: 'DealScorer',
  description: 'Scores the health of a startup\'s sales or fundraising pipeline and flags the deals at risk.',
  actions: {
    pipeline_summary: defineAction({
      description: 'Pipeline health: per-stage totals, a health score, the deals at risk and a short summary.',
      input: pipelineInput,
      output: pipelineOutput,
      promptVersion: 1,
      model: 'fast',
      prompt: (input) => {
        const parsedAsOf = input.asOf ? Date.parse(input.asOf) : NaN;
        const asOf = Number.isNaN(parsedAsOf) ? Date.now() : parsedAsOf;
        const stages = aggregateStages(input.deals);
        const open = input.deals
          .filter((d) => d.stage !== 'closed_won' && d.stage !== 'closed_lost')
          .map((d) => ({ ...d, daysSinceActivity: daysSince(d.lastActivityAt, asOf) }));
        return {
          system: [
            'You are a revenue operations analyst reviewing a startup\'s deal pipeline.',
            'The per-stage totals are already computed: copy them into "stages" unchanged.',
            'healthScore weighs coverage of the later stages, stage balance, deal staleness and win/loss history.',
            'A deal is at risk when it is stale (no activity for 21+ days), stuck late with a low probability, or',
            'past its expected close date. Name at most 10, by their exact id. If there are no deals, give a',
            'healthScore of 0 and say the pipeline is empty.',
            DATA_NOTICE,
          ].join('\n'),
          user: [
            `Review the pipeline as of ${new Date(asOf).toISOString().slice(0, 10)}.`,
            dataBlock('stage_totals', stages),
            dataBlock('open_deals', open),
          ].join('\n\n'),
          extras: {
            startupId: input.startupId,
            stages,
            names: Object.fromEntries(input.deals.map((d) => [d.id, d.name])),
          } satisfies PipelineExtras,
        };
      },
      finalize: (output, extras) => {
        const x = extras as PipelineExtras;
        return {
          ...output,
          startupId: x.startupId,
          stages: x.stages,
          // A deal the model made up (or mis-typed) cannot be acted on, so it is dropped.
          atRiskDeals: output.atRiskDeals
            .filter((d) => Object.hasOwn(x.names, d.dealId))
            .map((d) => ({ ...d, name: x.names[d.dealId] })),
        };
      },
    }),
  },
});
