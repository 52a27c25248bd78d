import { INVALID_SPAN_CONTEXT, trace } from '@opentelemetry/api';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createLogger } from '../src/shared/core/logger.js';
import type { ServiceTier } from '../src/shared/core/types.js';
import { AttemptContext } from '../src/workers/attempt-context.js';
import { createAgentCall, type GenerateFn } from '../src/workers/call-agent.js';
import { Cancellation } from '../src/workers/cancellation.js';
import { fakeAgentJob } from './helpers/fake-job.js';

const action = { model: 'fast', promptVersion: 1, output: z.object({ answer: z.string() }), prompt: async (input: { q: string }) => ({ system: 'be brief', user: input.q }) } as never;
const agent = { name: 'Demo', description: 'demo', actions: { run: action } } as never;

/** The request the model call sends for a job of `tier` (no batch tier configured). */
async function requestFor(tier: ServiceTier | undefined) {
  const sent: Array<Parameters<GenerateFn['generate']>[0]> = [];
  const generate: GenerateFn['generate'] = async (req) => {
    sent.push(req);
    return { text: '{"answer":"a"}', json: { answer: 'a' }, usage: { input: 1, output: 1 }, model: req.model, costUsd: 0 };
  };
  const job = fakeAgentJob({ data: { agent: 'Demo', action: 'run', input: { q: 'hi' }, ...(tier ? { tier } : {}) } });
  const cancel = new Cancellation();
  const ctx = new AttemptContext(job, 'token', agent, action, { q: 'hi' }, 'gemini-2.5-flash', createLogger({ level: 'silent' }), trace.wrapSpanContext(INVALID_SPAN_CONTEXT), cancel);
  await createAgentCall({ llm: { generate } })(ctx);
  expect(sent).toHaveLength(1);
  return { req: sent[0]!, cancel };
}

describe("the model call's request", () => {
  it('carries an online tier other than standard, and none for standard or for a batch-tier job run on the standard tier', async () => {
    expect((await requestFor('flex')).req.tier).toBe('flex');
    expect((await requestFor('priority')).req.tier).toBe('priority');
    for (const tier of [undefined, 'standard', 'batch'] as const) expect('tier' in (await requestFor(tier)).req).toBe(false);
  });

  it("aborts on the attempt's cancellation signal and carries the prompt", async () => {
    const { req, cancel } = await requestFor(undefined);
    expect(req.signal).toBe(cancel.signal);
    expect(req).toMatchObject({ model: 'gemini-2.5-flash', system: 'be brief', prompt: 'hi' });
  });
});
