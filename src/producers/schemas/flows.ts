import { z } from 'zod';
import { jobRequestSchema } from '../../shared/queue/job-request.js';

export const MAX_FLOW_TASKS = 50;

/** Defaults a flow applies to every task; a task's own `options` win. */
export const flowTaskDefaults = jobRequestSchema.shape.options.unwrap().pick({ priority: true, model: true }).strict();

/** Each task is a job request; its input is then checked against its agent (paths `tasks.N.input...`). */
export const parallelBody = z.object({ tasks: z.array(jobRequestSchema).min(1).max(MAX_FLOW_TASKS), options: flowTaskDefaults.optional() }).strict();

/** A pipeline's body wraps its own input schema, so input errors are named `input.answers`. */
export const pipelineBody = (input: z.ZodType) => z.object({ input }).strict();

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
