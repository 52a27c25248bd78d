import type { z } from 'zod';

/** Whatever the earlier steps produced, by `outputKey` (a step that failed or was skipped leaves its key unset). */
export type StepOutputs = Record<string, unknown>;

export interface PipelineStep<I = unknown> {
  /** Unique in the pipeline; part of the step's job id (`<runId>-<id>`), so letters, digits and `_` only. */
  id: string;
  agent: string;
  action: string;
  /**
   * Builds the step's agent input. Runs in the flows worker, possibly again after a crash before the step's
   * job was created, so it must be a pure function of its arguments. Throwing records the step as failed.
   */
  inputMapper(previous: StepOutputs, input: I): unknown;
  /** Where the step's `result.data` goes in `outputs`. */
  outputKey: string;
  /** When the step fails for good, go on to the next step instead of stopping the pipeline. */
  continueOnError?: boolean;
}

export interface PipelineDefinition<S extends z.ZodType = z.ZodType> {
  name: string;
  description?: string;
  input: S;
  steps: Array<PipelineStep<z.output<S>>>;
}

const STEP_ID = /^[A-Za-z0-9_]{1,64}$/;
const PIPELINE_NAME = /^[A-Za-z0-9_-]{1,100}$/;

export class PipelineDefinitionError extends Error {
  readonly code = 'EPIPELINEDEF';
}

/**
 * Declares a sequential pipeline. Pipelines live in code, not in Redis: their input mappers are functions,
 * so a run job only carries the pipeline's name and the workers look the definition up here.
 */
export function definePipeline<S extends z.ZodType>(def: PipelineDefinition<S>): PipelineDefinition<S> {
  if (!PIPELINE_NAME.test(def.name)) throw new PipelineDefinitionError(`pipeline name "${def.name}" must match ${PIPELINE_NAME}`);
  if (def.steps.length === 0) throw new PipelineDefinitionError(`pipeline "${def.name}" has no steps`);
  const ids = new Set<string>();
  const keys = new Set<string>();
  for (const step of def.steps) {
    // Step ids end up in BullMQ job ids, which must not contain ':'; `-` is kept out so `<runId>-<stepId>` splits one way.
    if (!STEP_ID.test(step.id)) throw new PipelineDefinitionError(`step id "${step.id}" of "${def.name}" must match ${STEP_ID}`);
    if (ids.has(step.id)) throw new PipelineDefinitionError(`step id "${step.id}" is used twice in "${def.name}"`);
    if (keys.has(step.outputKey)) throw new PipelineDefinitionError(`outputKey "${step.outputKey}" is used twice in "${def.name}"`);
    ids.add(step.id);
    keys.add(step.outputKey);
  }
  return def;
}

export interface PipelineRegistry {
  get(name: string): PipelineDefinition | undefined;
  list(): PipelineDefinition[];
}

/** Checks at start-up that every step names a real agent action, so a typo fails the boot, not a run. */
export function createPipelineRegistry(defs: PipelineDefinition[], agents?: { resolve(agent: string, action: string): unknown }): PipelineRegistry {
  const byName = new Map<string, PipelineDefinition>();
  for (const def of defs) {
    if (byName.has(def.name)) throw new PipelineDefinitionError(`pipeline "${def.name}" is defined twice`);
    if (agents) for (const step of def.steps) agents.resolve(step.agent, step.action);
    byName.set(def.name, def);
  }
  return {
    get: (name) => byName.get(name),
    list: () => [...byName.values()],
  };
}
