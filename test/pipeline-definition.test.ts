import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { resultKeys } from '../src/shared/orchestration/fan-out.js';
import { createPipelineRegistry, definePipeline, PipelineDefinitionError } from '../src/shared/orchestration/pipeline.js';
import { wizardCompletion } from '../src/shared/orchestration/pipelines/wizard-completion.js';
import { defaultRegistry } from '../src/shared/agents/registry.js';

const step = (id: string, outputKey = id) => ({ id, agent: 'DealScorer', action: 'pipeline_summary', inputMapper: () => ({ startupId: 's' }), outputKey });

describe('pipeline definitions', () => {
  it('refuses step ids that cannot be part of a job id, and duplicate ids or output keys', () => {
    const base = { name: 'p', input: z.object({}) };
    expect(() => definePipeline({ ...base, steps: [] })).toThrow(PipelineDefinitionError);
    expect(() => definePipeline({ ...base, steps: [step('a:b')] })).toThrow(/step id/);
    expect(() => definePipeline({ ...base, steps: [step('a-b')] })).toThrow(/step id/);
    expect(() => definePipeline({ ...base, steps: [step('a'), step('a', 'other')] })).toThrow(/used twice/);
    expect(() => definePipeline({ ...base, steps: [step('a', 'k'), step('b', 'k')] })).toThrow(/outputKey/);
    expect(definePipeline({ ...base, steps: [step('a'), step('b')] }).steps).toHaveLength(2);
  });

  it('checks at registration that every step names a real agent action', () => {
    const agents = defaultRegistry();
    expect(createPipelineRegistry([wizardCompletion], agents).get('wizard_completion')).toBe(wizardCompletion);
    const typo = definePipeline({ name: 'typo', input: z.object({}), steps: [{ ...step('a'), action: 'pipeline_sumary' }] });
    expect(() => createPipelineRegistry([typo], agents)).toThrow(/unknown action/);
    expect(() => createPipelineRegistry([wizardCompletion, wizardCompletion])).toThrow(/defined twice/);
  });

  it('maps the wizard outputs into the next steps\' inputs, and fails the mapping without a profile', () => {
    const [, risks, tasks] = wizardCompletion.steps;
    const profile = { startup: { name: 'Acme' }, missingFields: [], confidence: 0.5 };
    const riskAnalysis = { risks: [], overallRiskScore: 10, summary: 's' };
    expect(risks.inputMapper({ profile }, {} as never)).toEqual({ startup: { name: 'Acme' } });
    expect(tasks.inputMapper({ profile, risks: riskAnalysis }, {} as never)).toEqual({ startup: { name: 'Acme' }, risks: riskAnalysis });
    expect(() => risks.inputMapper({}, {} as never)).toThrow(/no extracted profile/);
  });

  it('keys repeated fan-out results with #N suffixes in request order', () => {
    expect(resultKeys(['A:x', 'B:y', 'A:x', 'A:x', 'B:y'])).toEqual(['A:x', 'B:y', 'A:x#2', 'A:x#3', 'B:y#2']);
  });
});
