import { ApiError, GoogleGenAI, JobState, ServiceTier } from '@google/genai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { countTokens, createEmulatorControl, startGeminiEmulator, type GeminiEmulator } from '../dev/gemini-emulator/emulator.js';

const MODEL = 'gemini-2.5-flash';
let emu: GeminiEmulator;
let ai: GoogleGenAI;

beforeAll(async () => {
  emu = await startGeminiEmulator();
  ai = new GoogleGenAI({ apiKey: 'test-key', httpOptions: { baseUrl: emu.url } });
});
afterAll(async () => {
  await emu.close();
});
beforeEach(async () => {
  await createEmulatorControl(emu.url).reset();
});

async function apiError(p: Promise<unknown>): Promise<ApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    return err as ApiError;
  }
  throw new Error('expected the call to fail');
}

const LONG_SYSTEM = `You are a careful analyst. ${'Weigh every risk on its evidence and say why. '.repeat(120)}`;

describe('emulator: service tiers, 429 bodies and usage details through the real SDK', () => {
  it('accepts config.serviceTier, echoes it in usageMetadata and rejects an unknown tier like Gemini', async () => {
    const res = await ai.models.generateContent({ model: MODEL, contents: 'hello flex', config: { serviceTier: ServiceTier.FLEX } });
    expect((res.usageMetadata as { serviceTier?: string } | undefined)?.serviceTier).toBe('flex');
    expect(emu.calls().at(-1)).toMatchObject({ kind: 'generate', serviceTier: 'flex', status: 200 });
    const std = await ai.models.generateContent({ model: MODEL, contents: 'hello standard' });
    expect((std.usageMetadata as { serviceTier?: string } | undefined)?.serviceTier).toBe('standard');
    const bad = await apiError(ai.models.generateContent({ model: MODEL, contents: 'x', config: { serviceTier: 'cheapest' as ServiceTier } }));
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.message).error.status).toBe('INVALID_ARGUMENT');
  });

  it('sheds only the tier a fault names (flex), leaving standard traffic alone', async () => {
    emu.script({ status: 503, match: { serviceTier: 'flex' }, times: -1 });
    expect((await apiError(ai.models.generateContent({ model: MODEL, contents: 'a', config: { serviceTier: ServiceTier.FLEX } }))).status).toBe(503);
    expect((await ai.models.generateContent({ model: MODEL, contents: 'a' })).text).toBeTruthy();
  });

  it.each([
    ['per_minute', 'GenerateRequestsPerMinutePerProjectPerModel'],
    ['per_day', 'GenerateRequestsPerDayPerProjectPerModel'],
  ] as const)('429 %s: RESOURCE_EXHAUSTED with QuotaFailure, Help and RetryInfo, as Gemini sends them', async (quota, quotaId) => {
    emu.script({ status: 429, quota, retryAfterS: 46 });
    const err = await apiError(ai.models.generateContent({ model: MODEL, contents: 'q' }));
    expect(err.status).toBe(429);
    const body = JSON.parse(err.message) as { error: { code: number; status: string; details: Array<Record<string, unknown>> } };
    expect(body.error).toMatchObject({ code: 429, status: 'RESOURCE_EXHAUSTED' });
    expect(body.error.details.map((d) => d['@type'])).toEqual([
      'type.googleapis.com/google.rpc.QuotaFailure',
      'type.googleapis.com/google.rpc.Help',
      'type.googleapis.com/google.rpc.RetryInfo',
    ]);
    expect(body.error.details[0]).toMatchObject({ violations: [{ quotaId, quotaDimensions: { model: MODEL } }] });
    expect(body.error.details[2]).toMatchObject({ retryDelay: '46s' });
  });

  it('reports a repeated long system instruction as cachedContentTokenCount (implicit caching), deterministically', async () => {
    const ask = (q: string) => ai.models.generateContent({ model: MODEL, contents: q, config: { systemInstruction: LONG_SYSTEM } });
    const first = await ask('first question');
    expect(first.usageMetadata?.cachedContentTokenCount).toBeUndefined();
    const second = await ask('second question');
    const systemTokens = countTokens(LONG_SYSTEM);
    expect(systemTokens).toBeGreaterThanOrEqual(1024);
    expect(second.usageMetadata?.cachedContentTokenCount).toBe(systemTokens);
    expect(second.usageMetadata?.promptTokenCount).toBe(systemTokens + countTokens('second question'));
    // A short system prompt is below the minimum: never cached.
    await ai.models.generateContent({ model: MODEL, contents: 'a', config: { systemInstruction: 'short' } });
    const again = await ai.models.generateContent({ model: MODEL, contents: 'b', config: { systemInstruction: 'short' } });
    expect(again.usageMetadata?.cachedContentTokenCount).toBeUndefined();
  });

  it('reports thoughtsTokenCount within the thinking budget, the same for the same request, none for budget 0', async () => {
    const think = (budget: number) => ai.models.generateContent({ model: MODEL, contents: 'think about invoices', config: { thinkingConfig: { thinkingBudget: budget } } });
    const a = await think(4096);
    const b = await think(4096);
    const t = a.usageMetadata!.thoughtsTokenCount!;
    expect(t).toBeGreaterThan(0);
    expect(t).toBeLessThanOrEqual(4096);
    expect(b.usageMetadata?.thoughtsTokenCount).toBe(t);
    expect(a.usageMetadata?.totalTokenCount).toBe(a.usageMetadata!.promptTokenCount! + a.usageMetadata!.candidatesTokenCount! + t);
    expect((await think(3)).usageMetadata?.thoughtsTokenCount).toBe(3);
    expect((await think(0)).usageMetadata?.thoughtsTokenCount).toBeUndefined();
  });
});

describe('emulator: Batch Mode through ai.batches on a clock the test moves', () => {
  const requests = (n: number) =>
    Array.from({ length: n }, (_, i) => ({
      contents: [{ role: 'user', parts: [{ text: `Rate the risk of plan ${i}` }] }],
      metadata: { job: `job-${i}` },
      config: { responseMimeType: 'application/json', responseJsonSchema: { type: 'object', properties: { risk: { type: 'string' } }, required: ['risk'] } },
    }));

  it('create -> PENDING -> RUNNING -> SUCCEEDED with inline responses in input order carrying their metadata', async () => {
    emu.setBatchTiming({ pendingMs: 1000, runMs: 60_000 });
    const job = await ai.batches.create({ model: MODEL, src: requests(3), config: { displayName: 'agentq-test-1' } });
    expect(job.name).toMatch(/^batches\//);
    expect(job.state).toBe(JobState.JOB_STATE_PENDING);
    expect(job.displayName).toBe('agentq-test-1');
    expect(emu.calls().at(-1)).toMatchObject({ kind: 'batch', requests: 3, displayName: 'agentq-test-1', batch: job.name });
    emu.advanceClock(1000);
    expect((await ai.batches.get({ name: job.name! })).state).toBe(JobState.JOB_STATE_RUNNING);
    emu.advanceClock(60_000);
    const done = await ai.batches.get({ name: job.name! });
    expect(done.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const out = done.dest?.inlinedResponses ?? [];
    expect(out.map((r) => r.metadata?.job)).toEqual(['job-0', 'job-1', 'job-2']);
    for (const r of out) {
      // The SDK hands inline responses back as plain objects (no `.text` getter): read the part.
      expect(JSON.parse(r.response!.candidates![0].content!.parts![0].text!)).toHaveProperty('risk');
      expect(r.response!.usageMetadata!.promptTokenCount).toBeGreaterThan(0);
    }
  });

  /** The inline answers of a 3-request batch created now and run to its end (the emulator's clock moved past its run). */
  const batchAnswers = async (displayName: string) => {
    const job = await ai.batches.create({ model: MODEL, src: requests(3), config: { displayName } });
    emu.advanceClock(60_000);
    return (await ai.batches.get({ name: job.name! })).dest!.inlinedResponses!.map((r) => r.response!);
  };

  it('noFinishReason at create: the answers of the requests it names come whole but for their finishReason; the others as always', async () => {
    emu.setBatchTiming({ pendingMs: 0, runMs: 60_000 });
    const answers = () => batchAnswers('agentq-unfinished');
    const whole = await answers();
    // A generate call does not take it: it waits for the batch's create.
    emu.script({ noFinishReason: true, match: { kind: 'batch', promptIncludes: 'plan 1' } });
    await ai.models.generateContent({ model: MODEL, contents: 'Rate the risk of plan 1' });
    expect(emu.faults()).toHaveLength(1);
    const cut = await answers();
    expect(emu.calls().at(-1)).toMatchObject({ kind: 'batch', status: 200, fault: 'no-finish-reason' });
    expect(whole.map((r) => r.candidates![0].finishReason)).toEqual(['STOP', 'STOP', 'STOP']);
    const { finishReason: _stop, ...candidate } = whole[1].candidates![0];
    expect(cut).toEqual([whole[0], { ...whole[1], candidates: [candidate] }, whole[2]]);
  });

  it('refuse at create: the answers of the requests it names are refusals as a model call gets them, without a responseId', async () => {
    emu.setBatchTiming({ pendingMs: 0, runMs: 60_000 });
    const answers = () => batchAnswers('agentq-refused');
    const whole = await answers();
    emu.script({ refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, match: { kind: 'batch', promptIncludes: 'plan 1' } });
    const refused = await answers();
    expect(emu.calls().at(-1)).toMatchObject({ kind: 'batch', status: 200, fault: 'refuse:SAFETY' });
    const n = countTokens('Rate the risk of plan 1');
    const rated = ['HARM_CATEGORY_SEXUALLY_EXPLICIT', 'HARM_CATEGORY_HATE_SPEECH', 'HARM_CATEGORY_HARASSMENT', 'HARM_CATEGORY_DANGEROUS_CONTENT'];
    expect(refused).toEqual([
      whole[0],
      {
        candidates: [{ finishReason: 'SAFETY', index: 0, safetyRatings: rated.map((category) => (category === 'HARM_CATEGORY_HARASSMENT' ? { category, probability: 'HIGH', blocked: true } : { category, probability: 'NEGLIGIBLE' })) }],
        usageMetadata: { promptTokenCount: n, totalTokenCount: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }] },
        modelVersion: MODEL,
      },
      whole[2],
    ]);
    emu.script({ refuse: { blockReason: 'OTHER' }, match: { kind: 'batch' } });
    expect((await answers()).map((r) => [r.promptFeedback, r.usageMetadata, r.candidates])).toEqual(
      [0, 1, 2].map((i) => [{ blockReason: 'OTHER' }, { promptTokenCount: countTokens(`Rate the risk of plan ${i}`), totalTokenCount: countTokens(`Rate the risk of plan ${i}`) }, undefined]),
    );
  });

  it('a batch that does not finish in time ends JOB_STATE_EXPIRED, with no responses', async () => {
    emu.setBatchTiming({ runMs: -1, expireMs: 48 * 3600_000 });
    const job = await ai.batches.create({ model: MODEL, src: requests(1), config: { displayName: 'agentq-expire' } });
    emu.advanceClock(47 * 3600_000);
    expect((await ai.batches.get({ name: job.name! })).state).toBe(JobState.JOB_STATE_RUNNING);
    emu.advanceClock(3600_000);
    const expired = await ai.batches.get({ name: job.name! });
    expect(expired.state).toBe(JobState.JOB_STATE_EXPIRED);
    expect(expired.dest?.inlinedResponses).toBeUndefined();
  });

  it('list pages through batches (adopting one by displayName is possible), cancel stops one, delete forgets it', async () => {
    const made = [];
    for (let i = 0; i < 3; i++) made.push(await ai.batches.create({ model: MODEL, src: requests(1), config: { displayName: `agentq-list-${i}` } }));
    const pager = await ai.batches.list({ config: { pageSize: 2 } });
    const seen: string[] = [];
    for await (const b of pager) seen.push(b.displayName!);
    expect(seen.sort()).toEqual(['agentq-list-0', 'agentq-list-1', 'agentq-list-2']);

    await ai.batches.cancel({ name: made[1].name! });
    expect((await ai.batches.get({ name: made[1].name! })).state).toBe(JobState.JOB_STATE_CANCELLED);
    emu.advanceClock(3600_000);
    expect((await ai.batches.get({ name: made[1].name! })).state).toBe(JobState.JOB_STATE_CANCELLED);
    expect((await ai.batches.get({ name: made[0].name! })).state).toBe(JobState.JOB_STATE_SUCCEEDED);

    await ai.batches.delete({ name: made[0].name! });
    expect((await apiError(ai.batches.get({ name: made[0].name! }))).status).toBe(404);
  });

  it('creating twice with the same displayName makes two batches (create is not idempotent, as in Gemini)', async () => {
    const a = await ai.batches.create({ model: MODEL, src: requests(1), config: { displayName: 'same' } });
    const b = await ai.batches.create({ model: MODEL, src: requests(1), config: { displayName: 'same' } });
    expect(a.name).not.toBe(b.name);
    expect(emu.calls().filter((c) => c.kind === 'batch')).toHaveLength(2);
  });
});
