import { z } from 'zod';
import { jobRequestSchema } from '../../shared/queue/job-request.js';
import { unknownFields } from '../../shared/agents/unknown-fields.js';

export const MAX_FLOW_TASKS = 50;

/** Defaults a flow applies to every task; a task's own `options` win. */
export const flowTaskDefaults = jobRequestSchema.shape.options.unwrap().pick({ priority: true, model: true }).strict();

/** Each task is a job request; its input is then checked against its agent (paths `tasks.N.input...`). */
export const parallelBody = z.object({ tasks: z.array(jobRequestSchema).min(1).max(MAX_FLOW_TASKS), options: flowTaskDefaults.optional() }).strict();

/**
 * A pipeline's body wraps its own input schema, so input errors are named `input.answers`. Unknown input fields, at
 * any depth, are refused as an agent's input's are (unknown-fields.ts): zod objects drop them without a word, so a
 * typo in an optional field (`companyNme`) ran the pipeline without it. Documented as the input schema itself (a
 * preprocess is published as the schema it feeds).
 */
export const pipelineBody = (input: z.ZodType) =>
  z.preprocess(
    (raw, ctx) => {
      const given = raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? (raw as Record<string, unknown>).input : undefined;
      const parsed = input.safeParse(given);
      // A body that fails its schema gets the schema's own errors, below.
      if (!parsed.success) return raw;
      for (const path of unknownFields(given, parsed.data)) {
        const at = path.split('.');
        ctx.addIssue({ code: 'custom', path: ['input', ...at], message: `unknown field "${at[at.length - 1]}"`, input: given });
      }
      return raw;
    },
    z.object({ input }).strict(),
  );

export const flowStarted = z.looseObject({ id: z.string() });

const flowResult = z.looseObject({}).describe('FlowJobResult: `results` keyed by `Agent:action`, plus the preset’s own fields');

export const flowView = z.looseObject({
  id: z.string(),
  kind: z.string().describe('"parallel", or the preset’s name'),
  state: z.string(),
  result: flowResult.optional(),
  error: z.string().optional(),
  children: z.array(z.looseObject({ id: z.string(), key: z.string(), state: z.string() })),
  createdAt: z.string(),
  finishedAt: z.string().optional(),
});

export const flowCancelled = z.object({
  id: z.string(),
  state: z.string().describe('`cancelling` while its jobs end (the flow then ends `cancelled`); a flow that had already finished: its state'),
  cancelled: z.array(z.string()).describe('Child or step jobs removed before they ran'),
  cancelling: z.array(z.string()).describe('Child or step jobs that were running: their workers abort them'),
});

export const runView = z.looseObject({
  id: z.string(),
  pipeline: z.string(),
  state: z.string(),
  steps: z.array(
    z.looseObject({
      id: z.string(),
      agent: z.string(),
      action: z.string(),
      state: z.string(),
      jobId: z.string().optional(),
      jobState: z.string().optional(),
      output: z.unknown().optional(),
      error: z.string().optional(),
      costUsd: z.number().optional(),
      embedding: z
        .object({ tokens: z.number(), costUsd: z.number(), estimated: z.literal(true) })
        .optional()
        .describe('The step job’s embedding calls (semantic cache, knowledge search), when it made any: tokens ESTIMATED, at the embedding model’s price; not in costUsd'),
      durationMs: z.number().optional(),
    }),
  ),
  outputs: z.record(z.string(), z.unknown()),
  errors: z.record(z.string(), z.string()),
  result: flowResult.optional(),
  error: z.string().optional(),
  createdAt: z.string(),
  finishedAt: z.string().optional(),
});

export const pipelineList = z.object({
  pipelines: z.array(
    z.looseObject({
      name: z.string(),
      description: z.string(),
      steps: z.array(z.looseObject({ id: z.string(), agent: z.string(), action: z.string() })),
      inputSchema: z.unknown().describe('JSON Schema of the pipeline’s input'),
    }),
  ),
});
