import { z } from 'zod';
import { defineAction, defineAgent } from './define-agent.js';
import { riskAnalysisSchema } from './risk-analyzer.js';
import { DATA_NOTICE, dataBlock, startupProfileSchema } from './startup-profile.js';

export const TASK_PRIORITIES = ['low', 'medium', 'high', 'urgent'] as const;
export const TASK_CATEGORIES = [
  'product',
  'engineering',
  'marketing',
  'sales',
  'fundraising',
  'hiring',
  'operations',
  'legal',
  'finance',
] as const;

const taskPriority = z.enum(TASK_PRIORITIES);
const taskCategory = z.enum(TASK_CATEGORIES);

const taskFields = {
  title: z.string().min(1).max(200),
  description: z.string().min(1).max(2000),
  priority: taskPriority,
  estimatedHours: z.number().min(0.25).max(500),
  category: taskCategory,
};

const suggestInput = z.object({
  startupId: z.string().min(1).max(100),
  limit: z.number().int().min(1).max(20).default(5),
  startup: startupProfileSchema.optional(),
  openTasks: z
    .array(
      z.object({
        title: z.string().min(1).max(200),
        status: z.enum(['not_started', 'in_progress', 'blocked', 'done']).optional(),
        priority: taskPriority.optional(),
      }),
    )
    .max(50)
    .default([]),
  recentActivity: z.array(z.string().min(1).max(500)).max(20).default([]),
});

const suggestOutput = z.object({
  actions: z.array(z.object(taskFields)).min(1).max(20),
});

const wizardTasksInput = z.object({
  startup: startupProfileSchema,
  risks: riskAnalysisSchema.optional(),
  horizonWeeks: z.number().int().min(1).max(26).default(12),
});

const wizardTasksOutput = z.object({
  milestones: z
    .array(
      z.object({
        title: z.string().min(1).max(200),
        description: z.string().min(1).max(1000),
        targetWeek: z.number().int().min(1).max(26),
        successCriteria: z.string().min(1).max(500),
      }),
    )
    .min(1)
    .max(8),
  tasks: z
    .array(
      z.object({
        ...taskFields,
        dueWeek: z.number().int().min(1).max(26),
        milestone: z.string().max(200).optional().describe('Title of the milestone this task serves, exactly as given'),
        addressesRisk: z.string().max(200).optional().describe('Title of the risk this task mitigates, if any'),
      }),
    )
    .min(1)
    .max(30),
});

export const taskGenerator = defineAgent({
  name: 'TaskGenerator',
  description: 'Turns a startup\'s situation into concrete, prioritised tasks and milestones.',
  actions: {
    suggest_next_actions: defineAction({
      description: 'The next few things the founders should do, given their profile, open tasks and recent activity.',
      input: suggestInput,
      output: suggestOutput,
      promptVersion: 1,
      model: 'fast',
      prompt: (input) => ({
        system: [
          'You are an operating partner helping a founding team decide what to do next.',
          'Suggest concrete actions that can each be finished within two weeks, with an honest estimate in hours.',
          'Do not repeat open tasks; prefer actions that unblock blocked work or move the company to its next',
          'milestone. Order by priority, most urgent first.',
          DATA_NOTICE,
        ].join('\n'),
        user: [
          `Suggest exactly ${input.limit} next action${input.limit === 1 ? '' : 's'}.`,
          input.startup ? dataBlock('startup', input.startup) : 'No profile is available: keep suggestions general to an early-stage startup.',
          dataBlock('open_tasks', input.openTasks),
          dataBlock('recent_activity', input.recentActivity),
        ].join('\n\n'),
        extras: { limit: input.limit },
      }),
      // The schema cannot carry the caller's limit, so an over-eager model is trimmed here.
      finalize: (output, extras) => ({ actions: output.actions.slice(0, (extras as { limit: number }).limit) }),
    }),

    wizard_generate_tasks: defineAction({
      description: 'Onboarding wizard: a first plan of milestones and tasks, built from the profile and its risk analysis.',
      input: wizardTasksInput,
      output: wizardTasksOutput,
      promptVersion: 1,
      model: 'pro',
      prompt: (input) => ({
        system: [
          'You are a startup coach building the first operating plan for a team that just onboarded.',
          `Plan ${input.horizonWeeks} weeks: 2 to 6 milestones with a target week and a measurable success criterion,`,
          'then 8 to 25 tasks. Every task names the milestone it serves by its exact title. When a risk analysis is',
          'given, the high and critical risks must each be addressed by at least one task (name the risk by its',
          'exact title in addressesRisk). Estimates are honest, in hours of focused work.',
          DATA_NOTICE,
        ].join('\n'),
        user: [
          'Build the plan for this startup.',
          dataBlock('startup', input.startup),
          input.risks ? dataBlock('risk_analysis', input.risks) : 'No risk analysis is available.',
        ].join('\n\n'),
        extras: { riskTitles: input.risks?.risks.map((r) => r.title) ?? [] },
      }),
      // References are by title; one that names nothing we know of is dropped rather than shown dangling.
      finalize: (output, extras) => {
        const milestones = new Set(output.milestones.map((m) => m.title));
        const risks = new Set((extras as { riskTitles: string[] }).riskTitles);
        return {
          milestones: output.milestones,
          tasks: output.tasks.map(({ milestone, addressesRisk, ...task }) => ({
            ...task,
            ...(milestone && milestones.has(milestone) ? { milestone } : {}),
            ...(addressesRisk && risks.has(addressesRisk) ? { addressesRisk } : {}),
          })),
        };
      },
    }),
  },
});
