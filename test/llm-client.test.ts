import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { ApiError, type GenerateContentResponse, type SafetyRating } from '@google/genai';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { cosine, countTokens, DEFAULT_BATCH_TIMING, startGeminiEmulator, type GeminiEmulator } from '../dev/gemini-emulator/emulator.js';
import { geminiOptionsFromConfig, startGemini } from '../src/app/gemini.js';
import { parseConfig } from '../src/shared/core/config.js';
import { answerEndOf, refusalOf } from '../src/shared/infra/llm/answer-end.js';
import { createBatchApi, inlinedRequestOf } from '../src/shared/infra/llm/batch-api.js';
import { createLlmClient, type LlmClient } from '../src/shared/infra/llm/llm-client.js';
import { createNodeHttpFetch } from '../src/shared/infra/llm/node-http-fetch.js';
import { LlmError, nextPacificMidnight, toLlmError } from '../src/shared/infra/llm/llm-errors.js';
import { costUsd, DEFAULT_PRICE, priceOf } from '../src/shared/infra/llm/pricing.js';
import { createLogger } from '../src/shared/core/logger.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

const MODEL = 'gemini-2.5-flash';
const Answer = z.object({ answer: z.string().min(1), sources: z.array(z.string()).max(3), confidence: z.number().min(0).max(1) });
const schema = z.toJSONSchema(Answer);

let emu: GeminiEmulator;
let llm: LlmClient;

beforeAll(async () => {
  emu = await startGeminiEmulator();
});
afterAll(async () => {
  await emu.close();
});
beforeEach(() => {
  emu.clearFaults();
  emu.resetCalls();
  emu.setStreamChunkDelay(0);
});

async function failure(p: Promise<unknown>): Promise<LlmError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LlmError);
  return err as LlmError;
}


// Every call and every fault through both transports: the SDK's default fetch and LLM_HTTP_TRANSPORT=node-http.
for (const transport of ['fetch', 'node-http'] as const) {
  describe(`transport: ${transport}`, () => {
    let sent = 0;
    const nodeHttp = createNodeHttpFetch();
    const counted: typeof fetch = (input, init) => {
      sent++;
      return nodeHttp(input, init);
    };
    beforeAll(() => {
      llm = createLlmClient({ apiKey: 'test-key', baseUrl: emu.url, timeoutMs: 5000, ...(transport === 'node-http' ? { fetch: counted } : {}) });
    });
    afterAll(() => {
      // The transport under test carried the calls (the SDK fell back to its own fetch for none of them).
      if (transport === 'node-http') expect(sent).toBeGreaterThan(20);
    });

    describe(`llm client against the emulator (${transport})`, () => {
      it('generates schema-valid JSON with usage, model and cost', async () => {
        const system = 'You answer questions about the handbook.';
        const prompt = 'How many vacation days do new employees get in their first year?';
        const res = await llm.generate({ model: MODEL, system, prompt, responseJsonSchema: schema });
        expect(Answer.parse(res.json)).toEqual(JSON.parse(res.text));
        expect(res.usage).toEqual({ input: countTokens(system) + countTokens(prompt), output: countTokens(res.text) });
        expect(res.model).toBe(MODEL);
        expect(res.costUsd).toBe(costUsd(MODEL, res.usage));
        expect(res.costUsd).toBeGreaterThan(0);
        const again = await llm.generate({ model: MODEL, system, prompt, responseJsonSchema: schema });
        expect(again.text).toBe(res.text);
      });

      it('streams through onText in order and ends with the same text and usage as a plain call', async () => {
        const prompt = 'Explain why idempotency keys make job retries safe';
        const plain = await llm.generate({ model: MODEL, prompt });
        emu.setStreamChunkDelay(20);
        const pieces: string[] = [];
        const at: number[] = [];
        const streamed = await llm.generate({
          model: MODEL,
          prompt,
          onText: async (t) => {
            pieces.push(t);
            at.push(performance.now());
          },
        });
        expect(pieces.length).toBeGreaterThan(2);
        // Handed over as they arrive, not all at the end: the emulator waits 20 ms between chunks (a slower
        // machine only spreads them further).
        expect(at.at(-1)! - at[0]).toBeGreaterThanOrEqual(10 * (pieces.length - 1));
        expect(pieces.join('')).toBe(plain.text);
        expect(streamed.text).toBe(plain.text);
        expect(streamed.usage).toEqual(plain.usage);
        expect(emu.calls().map((c) => c.kind)).toEqual(['generate', 'stream']);
      });

      it('embeds in batches of 100 into 768-dim unit vectors, order kept', async () => {
        const texts = Array.from({ length: 230 }, (_, i) => `document ${i} about topic ${i % 7} and shelf ${i % 13}`);
        texts[5] = 'How do I reset my password for the billing portal?';
        texts[6] = 'How can I reset the password of my billing portal?';
        texts[7] = 'Photosynthesis converts sunlight into chemical energy in plants';
        const vectors = await llm.embed(texts, { taskType: 'RETRIEVAL_DOCUMENT' });
        expect(vectors).toHaveLength(230);
        expect(emu.calls().map((c) => c.kind)).toEqual(['embed', 'embed', 'embed']);
        for (const v of vectors) expect(v).toHaveLength(768);
        expect(Math.hypot(...vectors[100])).toBeCloseTo(1, 9);
        expect(cosine(vectors[5], vectors[6])).toBeGreaterThan(0.9);
        expect(cosine(vectors[5], vectors[7])).toBeLessThan(0.5);
        const [alone] = await llm.embed([texts[150]]);
        expect(alone).toEqual(vectors[150]);
        expect(await llm.embed([])).toEqual([]);
      });
    });

    describe(`llm client error classification (real SDK, real HTTP, ${transport})`, () => {
      const gen = (extra: Partial<Parameters<LlmClient['generate']>[0]> = {}) => llm.generate({ model: MODEL, prompt: 'classify this', responseJsonSchema: schema, ...extra });

      it('429 -> ERATELIMIT, retryable, with the server retry delay', async () => {
        emu.script({ status: 429, retryAfterS: 3 });
        const e = await failure(gen());
        expect(e).toMatchObject({ code: 'ERATELIMIT', retryable: true, status: 429, retryAfterMs: 3000 });
        emu.script({ status: 429 });
        const bare = await failure(gen());
        expect(bare).toMatchObject({ code: 'ERATELIMIT', retryable: true });
        expect(bare.retryAfterMs).toBeUndefined();
      });

      it("429: the SDK's error carries the status and the body, never the response's headers; the delay is RetryInfo's", async () => {
        // The emulator sends Retry-After: 3 beside RetryInfo's 3s. Should the SDK ever hand the headers over (a
        // new field on its ApiError), this fails: llm-errors.ts reads RetryInfo alone, since nothing else reaches it.
        emu.script({ status: 429, retryAfterS: 3 });
        const e = await failure(gen());
        expect(e).toMatchObject({ code: 'ERATELIMIT', retryAfterMs: 3000 });
        expect(e.cause).toBeInstanceOf(ApiError);
        expect(Object.keys(e.cause as object).sort()).toEqual(['name', 'status']);
        expect(Object.getOwnPropertyNames(e.cause).sort()).toEqual(['message', 'name', 'stack', 'status']);
      });

      it('429 QuotaFailure: per-minute -> ERATELIMIT with the quota id; per-day -> EQUOTAEXHAUSTED until RetryInfo\'s delay, else the Pacific midnight reset', async () => {
        emu.script({ status: 429, quota: 'per_minute', retryAfterS: 46 });
        expect(await failure(gen())).toMatchObject({ code: 'ERATELIMIT', retryAfterMs: 46_000, quotaId: 'GenerateRequestsPerMinutePerProjectPerModel', model: MODEL });
        emu.script({ status: 429, quota: 'per_day', retryAfterS: 46 });
        const before = Date.now();
        const day = await failure(gen());
        expect(day).toMatchObject({ code: 'EQUOTAEXHAUSTED', retryable: true, retryAfterMs: 46_000, quotaId: 'GenerateRequestsPerDayPerProjectPerModel', model: MODEL });
        expect(day.retryAtMs).toBeGreaterThanOrEqual(before + 46_000);
        expect(day.retryAtMs).toBeLessThanOrEqual(Date.now() + 46_000);
        emu.script({ status: 429, quota: 'per_day' });
        const noDelay = await failure(gen());
        expect(noDelay).toMatchObject({ code: 'EQUOTAEXHAUSTED', quotaId: 'GenerateRequestsPerDayPerProjectPerModel' });
        expect(noDelay.retryAtMs).toBe(nextPacificMidnight());
      });

      it('nextPacificMidnight: the next 00:00 in Los Angeles, across daylight saving changes', () => {
        // 2026-07-01 12:00 UTC = 05:00 PDT -> 2026-07-02 07:00 UTC; 2026-01-15 12:00 UTC = 04:00 PST -> 2026-01-16 08:00 UTC.
        expect(new Date(nextPacificMidnight(Date.parse('2026-07-01T12:00:00Z'))).toISOString()).toBe('2026-07-02T07:00:00.000Z');
        expect(new Date(nextPacificMidnight(Date.parse('2026-01-15T12:00:00Z'))).toISOString()).toBe('2026-01-16T08:00:00.000Z');
        // The day DST starts (2026-03-08) is 23 hours long; the day it ends (2026-11-01) 25.
        expect(new Date(nextPacificMidnight(Date.parse('2026-03-08T09:00:00Z'))).toISOString()).toBe('2026-03-09T07:00:00.000Z');
        expect(new Date(nextPacificMidnight(Date.parse('2026-11-01T08:00:00Z'))).toISOString()).toBe('2026-11-02T08:00:00.000Z');
      });

      it('500 and 503 -> EPROVIDER retryable; 400 -> EBADREQUEST not retryable', async () => {
        emu.script([{ status: 500 }, { status: 503 }, { status: 400 }]);
        expect(await failure(gen())).toMatchObject({ code: 'EPROVIDER', retryable: true, status: 500 });
        expect(await failure(gen())).toMatchObject({ code: 'EPROVIDER', retryable: true, status: 503 });
        expect(await failure(gen())).toMatchObject({ code: 'EBADREQUEST', retryable: false, status: 400 });
      });

      it('errors on a stream request are classified the same way', async () => {
        emu.script({ status: 503, match: { kind: 'stream' } });
        expect(await failure(gen({ onText: () => undefined }))).toMatchObject({ code: 'EPROVIDER', retryable: true, status: 503 });
      });

      it("the caller's own deadline (a route's timeout: a TimeoutError abort) -> ETIMEDOUT retryable, so it counts against the model", async () => {
        emu.script({ hang: true });
        const ac = new AbortController();
        const pending = failure(gen({ signal: ac.signal }));
        await vi.waitFor(() => expect(emu.calls()).toHaveLength(1), POLL);
        ac.abort(new DOMException('route timeout 100 ms', 'TimeoutError'));
        expect(await pending).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
        expect(await failure(gen({ signal: ac.signal }))).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
      });

      it('malformed JSON -> EBADOUTPUT retryable', async () => {
        emu.script({ malformed: true });
        expect(await failure(gen())).toMatchObject({ code: 'EBADOUTPUT', retryable: true });
      });

      it("a 200 without a finishReason -> EPROVIDER retryable, its usage billed; a stream ended before its last chunk too, billed what its last chunk reported", async () => {
        emu.script([{ noFinishReason: true, match: { kind: 'generate' } }, { noFinishReason: true, match: { kind: 'stream' } }]);
        const plain = await failure(gen());
        expect(plain).toMatchObject({ code: 'EPROVIDER', retryable: true, model: MODEL });
        expect(plain.message).toMatch(/the answer came without a finishReason/);
        const [call] = emu.calls();
        expect(call).toMatchObject({ kind: 'generate', status: 200, fault: 'no-finish-reason' });
        expect(plain.billed).toMatchObject({ model: MODEL, tier: 'standard', usage: { input: call.promptTokens, output: call.outputTokens } });
        expect(plain.billed!.costUsd).toBe(costUsd(MODEL, plain.billed!.usage));
        expect(plain.billed!.costUsd).toBeGreaterThan(0);
        const seen: string[] = [];
        const streamed = await failure(gen({ onText: (t) => void seen.push(t) }));
        expect(streamed).toMatchObject({ code: 'EPROVIDER', retryable: true, model: MODEL });
        expect(streamed.message).toMatch(/the stream ended without a finishReason/);
        expect(seen.length).toBeGreaterThan(1);
        // Every chunk carried the prompt's usage and (2.5) the running count of the text so far: billed once, the last
        // chunk's, never a sum over chunks.
        const out = countTokens(seen.join(''));
        const cut = emu.calls()[1];
        expect(cut).toMatchObject({ kind: 'stream', fault: 'no-finish-reason', outputTokens: out });
        expect(streamed.billed).toMatchObject({ model: MODEL, tier: 'standard', usage: { input: cut.promptTokens, output: out } });
        expect(streamed.billed!.costUsd).toBe(costUsd(MODEL, { input: cut.promptTokens!, output: out }));
        expect(streamed.billed!.costUsd).toBeGreaterThan(0);
        // The same call without the fault is an answer.
        expect((await gen()).json).toBeDefined();
      });

      it('hang + timeout -> ETIMEDOUT retryable, and the HTTP request is really cancelled', async () => {
        emu.script({ hang: true });
        const e = await failure(gen({ timeoutMs: 150 }));
        expect(e).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
        await vi.waitFor(() => expect(emu.calls()[0]?.aborted).toBe(true), POLL);
        expect(emu.calls()[0]).toMatchObject({ fault: 'hang', status: 499 });
      });

      it('caller abort -> EABORTED not retryable; the emulator sees the socket close', async () => {
        emu.script({ hang: true });
        const ac = new AbortController();
        const pending = failure(gen({ signal: ac.signal }));
        await vi.waitFor(() => expect(emu.calls()).toHaveLength(1), POLL);
        ac.abort();
        expect(await pending).toMatchObject({ code: 'EABORTED', retryable: false });
        await vi.waitFor(() => expect(emu.calls()[0].aborted).toBe(true), POLL);
        // An already-aborted signal never reaches the network.
        expect(await failure(gen({ signal: ac.signal }))).toMatchObject({ code: 'EABORTED' });
        expect(await failure(llm.embed(['x'], { signal: ac.signal }))).toMatchObject({ code: 'EABORTED' });
        expect(emu.calls()).toHaveLength(1);
      }, waitsTimeout(POLL.timeout, POLL.timeout));

      it('abort in the middle of a stream cancels it', async () => {
        emu.setStreamChunkDelay(200);
        const ac = new AbortController();
        const seen: string[] = [];
        const pending = failure(
          llm.generate({
            model: MODEL,
            prompt: 'a long streamed answer about queues and workers',
            signal: ac.signal,
            onText: (t) => {
              seen.push(t);
              ac.abort();
            },
          }),
        );
        const aborted = await pending;
        expect(aborted).toMatchObject({ code: 'EABORTED' });
        expect(seen).toHaveLength(1);
        await vi.waitFor(() => expect(emu.calls()[0]?.aborted).toBe(true), POLL);
        // The chunk it read reported the prompt's usage and its own text's count: the cancelled call is billed that.
        expect(aborted.billed).toMatchObject({ model: MODEL, usage: { input: emu.calls()[0].promptTokens, output: countTokens(seen[0]) } });
      });

      it('an onText failure propagates unchanged and releases the stream', async () => {
        emu.setStreamChunkDelay(200);
        const boom = new Error('subscriber went away');
        const err = await llm.generate({ model: MODEL, prompt: 'stream me', onText: () => Promise.reject(boom) }).catch((e: unknown) => e);
        expect(err).toBe(boom);
        await vi.waitFor(() => expect(emu.calls()[0]?.aborted).toBe(true), POLL);
      });

      it("an onText failure mid-stream is billed what the chunks read reported, once, on the caller's own error", async () => {
        const prompt = 'stream me, then drop the subscriber';
        const whole: string[] = [];
        await llm.generate({ model: MODEL, prompt, onText: (t) => void whole.push(t) });
        expect(whole.length).toBeGreaterThanOrEqual(3);
        emu.resetCalls();
        // Thrown on the second piece: the chunks read carried the prompt's usage and the running count of their text
        // (a 2.5 model), so the call is billed the second chunk's, once.
        const mid = new Error('the SSE write failed');
        let n = 0;
        const err = await llm.generate({ model: MODEL, prompt, onText: () => (++n === 2 ? Promise.reject(mid) : undefined) }).catch((e: unknown) => e);
        expect(err).toBe(mid);
        expect(err).not.toBeInstanceOf(LlmError);
        const [call] = emu.calls();
        expect(call.promptTokens).toBeGreaterThan(0);
        const told = countTokens(whole.slice(0, 2).join(''));
        expect(mid).toMatchObject({ billed: { model: MODEL, tier: 'standard', usage: { input: call.promptTokens, output: told } } });
        expect((mid as LlmError).billed!.costUsd).toBe(costUsd(MODEL, { input: call.promptTokens!, output: told }));
        expect((mid as LlmError).billed!.costUsd).toBeGreaterThan(0);
        // Thrown on the last piece, the one with the finishReason: the whole usage, once.
        emu.resetCalls();
        const atEnd = new Error('the SSE write failed at the end');
        n = 0;
        expect(await llm.generate({ model: MODEL, prompt, onText: () => (++n === whole.length ? Promise.reject(atEnd) : undefined) }).catch((e: unknown) => e)).toBe(atEnd);
        const [done] = emu.calls();
        expect(done.outputTokens).toBe(countTokens(whole.join('')));
        expect(atEnd).toMatchObject({ billed: { usage: { input: done.promptTokens, output: done.outputTokens } } });
        // An error that cannot carry it goes on as it is.
        const frozen = Object.freeze(new Error('frozen'));
        expect(await llm.generate({ model: MODEL, prompt, onText: () => Promise.reject(frozen) }).catch((e: unknown) => e)).toBe(frozen);
        expect(frozen).not.toHaveProperty('billed');
      });

      it('socket reset -> ENETWORK retryable, before or during a stream', async () => {
        emu.script([{ reset: true }, { reset: true, afterChunks: 1, match: { kind: 'stream' } }, { reset: true, match: { kind: 'embed' } }]);
        const early = await failure(gen());
        expect(early).toMatchObject({ code: 'ENETWORK', retryable: true });
        const seen: string[] = [];
        const cut = await failure(gen({ onText: (t) => void seen.push(t) }));
        expect(cut).toMatchObject({ code: 'ENETWORK', retryable: true });
        // The cut came after the first chunk reached onText: a reset during a stream, not before it.
        expect(seen).toHaveLength(1);
        expect(seen[0].length).toBeGreaterThan(0);
        // That chunk reported the prompt's usage and its text's count: the cut call is billed it; the one reset
        // before any answer is not.
        const during = emu.calls()[1];
        expect(during).toMatchObject({ kind: 'stream', fault: 'reset', outputTokens: countTokens(seen[0]) });
        expect(cut.billed).toMatchObject({ model: MODEL, usage: { input: during.promptTokens, output: during.outputTokens } });
        expect(cut.billed!.costUsd).toBeGreaterThan(0);
        expect(early.billed).toBeUndefined();
        expect(await failure(llm.embed(['some text']))).toMatchObject({ code: 'ENETWORK', retryable: true });
      });

      it('a refusal -> EBLOCKED naming the category that blocked, never the prompt; plain, streamed and a blocked prompt', async () => {
        const prompt = 'a secret prompt the filters stop';
        emu.script([
          { refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, match: { kind: 'generate' } },
          { refuse: { blockReason: 'SAFETY', category: 'HARM_CATEGORY_HATE_SPEECH' }, match: { kind: 'stream' } },
          { refuse: { finishReason: 'PROHIBITED_CONTENT' }, match: { kind: 'generate' } },
        ]);
        const stopped = await failure(gen({ prompt }));
        expect(stopped).toMatchObject({ code: 'EBLOCKED', retryable: false, model: MODEL, finishReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_HARASSMENT'] });
        expect(stopped.message).toBe(`Gemini ${MODEL} generate: answer stopped (finishReason SAFETY; blocked categories HARM_CATEGORY_HARASSMENT)`);
        const [call] = emu.calls();
        expect(stopped.billed).toMatchObject({ usage: { input: call.promptTokens, output: 0 } });
        expect(call.promptTokens).toBe(countTokens(prompt));
        const seen: string[] = [];
        const blocked = await failure(gen({ prompt, onText: (t) => void seen.push(t) }));
        expect(blocked).toMatchObject({ code: 'EBLOCKED', blockReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_HATE_SPEECH'], billed: { usage: { input: countTokens(prompt), output: 0 } } });
        expect(blocked.message).toBe(`Gemini ${MODEL} generate: prompt blocked (SAFETY; blocked categories HARM_CATEGORY_HATE_SPEECH)`);
        expect(seen).toEqual([]);
        expect(blocked.streamedChars).toBeUndefined();
        // A filter that rates no category (PROHIBITED_CONTENT) names none.
        const prohibited = await failure(gen({ prompt }));
        expect(prohibited).toMatchObject({ code: 'EBLOCKED', finishReason: 'PROHIBITED_CONTENT' });
        expect(prohibited.blockedCategories).toBeUndefined();
        expect(prohibited.message).toBe(`Gemini ${MODEL} generate: answer stopped (finishReason PROHIBITED_CONTENT)`);
        for (const e of [stopped, blocked, prohibited]) expect(e.message).not.toContain(prompt);
      });

      it('a stream stopped for SAFETY after some text -> EBLOCKED naming the category; the text reached onText, its tokens billed', async () => {
        emu.script({ refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, afterChunks: 2, match: { kind: 'stream' } });
        const seen: string[] = [];
        const e = await failure(gen({ onText: (t) => void seen.push(t) }));
        expect(e).toMatchObject({ code: 'EBLOCKED', retryable: false, model: MODEL, finishReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_HARASSMENT'] });
        expect(seen).toHaveLength(2);
        // The caller already had that text: the error says how much, for the failed reason, never the text itself.
        const chars = seen.join('').length;
        expect(e.streamedChars).toBe(chars);
        expect(e.message).toBe(`Gemini ${MODEL} generate: answer stopped (finishReason SAFETY; blocked categories HARM_CATEGORY_HARASSMENT; ${chars} chars already streamed to the caller)`);
        for (const piece of seen) expect(JSON.stringify({ ...e, message: e.message })).not.toContain(piece);
        const [call] = emu.calls();
        expect(call).toMatchObject({ kind: 'stream', status: 200, fault: 'refuse:SAFETY@2' });
        expect(call.outputTokens).toBe(countTokens(seen.join('')));
        expect(e.billed).toMatchObject({ model: MODEL, usage: { input: call.promptTokens, output: call.outputTokens } });
        expect(e.billed!.costUsd).toBe(costUsd(MODEL, e.billed!.usage));
      });

      it('a plain answer stopped for SAFETY after some text (its content, then the stop) -> EBLOCKED naming the category, its text never the result, its tokens billed', async () => {
        // The text the answer's stream sends: the stopped answer's content is its first chunks.
        const chunks: string[] = [];
        const whole = await gen({ onText: (t) => void chunks.push(t) });
        expect(chunks.length).toBeGreaterThanOrEqual(3);
        emu.resetCalls();
        emu.script([
          { refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, afterChunks: 2, match: { kind: 'generate' } },
          // All of it: whole, valid JSON, and still no answer, since Gemini stopped it.
          { refuse: { finishReason: 'SAFETY' }, afterChunks: 99, match: { kind: 'generate' } },
        ]);
        const partial = await failure(gen());
        expect(partial).toMatchObject({ code: 'EBLOCKED', retryable: false, model: MODEL, finishReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_HARASSMENT'] });
        expect(partial.message).toBe(`Gemini ${MODEL} generate: answer stopped (finishReason SAFETY; blocked categories HARM_CATEGORY_HARASSMENT)`);
        // Nothing was streamed to the caller: a plain call's stopped content never reached it.
        expect(partial.streamedChars).toBeUndefined();
        const all = await failure(gen());
        expect(all).toMatchObject({ code: 'EBLOCKED', finishReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_DANGEROUS_CONTENT'] });
        const [first, second] = emu.calls();
        expect([first, second].map((c) => [c.kind, c.status, c.fault])).toEqual([
          ['generate', 200, 'refuse:SAFETY@2'],
          ['generate', 200, 'refuse:SAFETY@99'],
        ]);
        // Billed the prompt and the text Gemini sent; the text itself rides nowhere on the error.
        expect(first.outputTokens).toBe(countTokens(chunks.slice(0, 2).join('')));
        expect(partial.billed).toMatchObject({ model: MODEL, usage: { input: first.promptTokens, output: first.outputTokens } });
        expect(all.billed).toMatchObject({ usage: { input: second.promptTokens, output: countTokens(whole.text) } });
        for (const e of [partial, all]) {
          expect(e.billed!.costUsd).toBe(costUsd(MODEL, e.billed!.usage));
          expect(JSON.stringify({ ...e, message: e.message })).not.toContain(chunks[0]);
          expect(e).not.toHaveProperty('json');
        }
      });

      it('a RECITATION stop -> EBLOCKED naming the reason; its citationMetadata is deliberately not carried (answer-end.ts says why)', async () => {
        const uri = 'https://www.example.org/recited-book';
        emu.script([
          { refuse: { finishReason: 'RECITATION', citations: [{ startIndex: 3, endIndex: 90, uri, license: 'cc-by' }] }, match: { kind: 'generate' } },
          { refuse: { finishReason: 'RECITATION' }, afterChunks: 1, match: { kind: 'stream' } },
        ]);
        const plain = await failure(gen());
        const seen: string[] = [];
        const streamed = await failure(gen({ onText: (t) => void seen.push(t) }));
        expect(seen).toHaveLength(1);
        for (const e of [plain, streamed]) {
          expect(e).toMatchObject({ code: 'EBLOCKED', retryable: false, finishReason: 'RECITATION' });
          expect(Object.keys(e)).not.toContain('citations');
        }
        expect(plain.message).toBe(`Gemini ${MODEL} generate: answer stopped (finishReason RECITATION)`);
        expect(plain.streamedChars).toBeUndefined();
        // The stream's first chunk reached the caller before the stop: said, as a count.
        expect(streamed.streamedChars).toBe(seen[0].length);
        expect(streamed.message).toBe(`Gemini ${MODEL} generate: answer stopped (finishReason RECITATION; ${seen[0].length} chars already streamed to the caller)`);
      });

      it("a candidate's finishMessage: sent by the emulator, dropped by @google/genai 2.32 on the Gemini API (when it starts passing it, the error carries it)", async () => {
        emu.script({ refuse: { finishReason: 'SAFETY', finishMessage: 'Stopped by the safety filter.' } });
        const e = await failure(gen());
        expect(e).toMatchObject({ code: 'EBLOCKED', finishReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_DANGEROUS_CONTENT'] });
        expect(e.finishMessage).toBeUndefined();
      });

      it('embed faults: 429 carries retryAfterMs', async () => {
        emu.script({ status: 429, retryAfterS: 2, match: { kind: 'embed' } });
        expect(await failure(llm.embed(['a', 'b']))).toMatchObject({ code: 'ERATELIMIT', retryAfterMs: 2000 });
      });
    });
  });
}

describe('batch API: finding a batch by its displayName (crash recovery)', () => {
  it('reads every page whatever order the list comes in, skips batches older than the intent, and logs when it gives up at its limit', async () => {
    const lines: Array<{ msg: string; listed?: number }> = [];
    const destination = new Writable({
      write(chunk, _enc, cb) {
        lines.push(JSON.parse(String(chunk)));
        cb();
      },
    });
    const logger = createLogger({ level: 'warn', destination });
    const batches = createBatchApi({ apiKey: 'k', baseUrl: emu.url, logger });
    const ask = (i: number) => [inlinedRequestOf({ prompt: `question ${i}` }, `job-${i}`)];
    // Batches made long before the intent, then the intent's own, made 3 h later (the emulator's clock).
    const old = await batches.create(MODEL, 'agentq-find-old', ask(0));
    for (let i = 1; i <= 3; i++) await batches.create(MODEL, `agentq-find-other-${i}`, ask(i));
    emu.advanceClock(3 * 3600_000);
    const since = emu.now();
    const mine = await batches.create(MODEL, 'agentq-find-mine', ask(9));
    expect((await batches.findByDisplayName('agentq-find-mine', since))?.name).toBe(mine.name);
    // A batch of that name older than the intent (less the hour of skew) is not the intent's.
    expect(await batches.findByDisplayName('agentq-find-old', since)).toBeUndefined();
    expect(old.name).toBeTruthy();
    expect(lines).toEqual([]);
    const bounded = createBatchApi({ apiKey: 'k', baseUrl: emu.url, logger, listLimit: 2 });
    expect(await bounded.findByDisplayName('agentq-find-mine', since)).toBeUndefined();
    expect(lines).toMatchObject([{ msg: expect.stringMatching(/stopped at its limit/), listed: 2 }]);
  });
});

describe('a refusal read from the answer (answer-end.ts)', () => {
  const opts = { model: MODEL, billed: { model: MODEL, usage: { input: 5, output: 0 }, costUsd: 0, standardCostUsd: 0, tier: 'standard' as const } };
  const rating = (category: string, blocked?: boolean) => ({ category, probability: blocked ? 'HIGH' : 'NEGLIGIBLE', ...(blocked ? { blocked } : {}) }) as SafetyRating;

  it("carries the candidate's finishMessage (one line, bounded) and its blocked categories, enum values only", () => {
    const long = `Blocked:\n${'because '.repeat(60)}`;
    const res = { candidates: [{ finishReason: 'SAFETY', index: 0, finishMessage: long, safetyRatings: [rating('HARM_CATEGORY_HARASSMENT', true), rating('HARM_CATEGORY_HATE_SPEECH'), rating('not a category', true)] }] } as GenerateContentResponse;
    const e = refusalOf(answerEndOf(res), 'Gemini m generate', opts)!;
    expect(e).toMatchObject({ code: 'EBLOCKED', finishReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_HARASSMENT'] });
    expect(e.finishMessage).toHaveLength(200);
    expect(e.finishMessage).toMatch(/^Blocked: because because .*…$/);
    expect(e.message).toBe(`Gemini m generate: answer stopped (finishReason SAFETY; blocked categories HARM_CATEGORY_HARASSMENT; finishMessage ${JSON.stringify(e.finishMessage)})`);
  });

  it("gathers a stream's chunks: the prompt's feedback from the first, a stop's ratings from the last, each category once", () => {
    const first = { promptFeedback: { safetyRatings: [rating('HARM_CATEGORY_DANGEROUS_CONTENT', true)] }, candidates: [{ content: { parts: [{ text: 'a' }] }, safetyRatings: [rating('HARM_CATEGORY_HARASSMENT')] }] } as GenerateContentResponse;
    const last = { candidates: [{ finishReason: 'SPII', finishMessage: 'Sensitive data.', safetyRatings: [rating('HARM_CATEGORY_HARASSMENT', true), rating('HARM_CATEGORY_DANGEROUS_CONTENT', true)] }] } as GenerateContentResponse;
    const end = answerEndOf(last, answerEndOf(first));
    expect(end).toEqual({ candidates: 2, finishReason: 'SPII', blockedCategories: ['HARM_CATEGORY_DANGEROUS_CONTENT', 'HARM_CATEGORY_HARASSMENT'], finishMessage: 'Sensitive data.' });
    expect(refusalOf(end, 'w', opts)).toMatchObject({ finishReason: 'SPII', blockedCategories: ['HARM_CATEGORY_DANGEROUS_CONTENT', 'HARM_CATEGORY_HARASSMENT'], finishMessage: 'Sensitive data.' });
  });

  it('a batch answer refused at create is EBLOCKED with its categories, billed at the batch price', async () => {
    emu.setBatchTiming({ pendingMs: 0, runMs: 1 });
    const batches = createBatchApi({ apiKey: 'k', baseUrl: emu.url });
    emu.script({ refuse: { blockReason: 'SAFETY', category: 'HARM_CATEGORY_SEXUALLY_EXPLICIT' }, match: { kind: 'batch' } });
    const made = await batches.create(MODEL, 'agentq-refused', [inlinedRequestOf({ prompt: 'one batched question', responseJsonSchema: schema }, 'job-1')]);
    emu.advanceClock(1);
    const [r] = (await batches.get(made.name)).responses!;
    emu.setBatchTiming(DEFAULT_BATCH_TIMING);
    let e: unknown;
    try {
      batches.resultOf(MODEL, r.response!, true);
    } catch (err) {
      e = err;
    }
    expect(e).toMatchObject({ code: 'EBLOCKED', blockReason: 'SAFETY', blockedCategories: ['HARM_CATEGORY_SEXUALLY_EXPLICIT'], billed: { tier: 'batch', usage: { input: countTokens('one batched question'), output: 0 } } });
    expect((e as Error).message).toBe(`Gemini ${MODEL} batch answer: prompt blocked (SAFETY; blocked categories HARM_CATEGORY_SEXUALLY_EXPLICIT)`);
  });
});

// What the emulator never sends: a stream closed cleanly (a well-formed end of the body) before Gemini's last chunk.
describe('a stream that ends cleanly without a finishReason', () => {
  let server: Server;
  let url = '';
  let chunks: object[] = [];
  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (const c of chunks) res.write(`data: ${JSON.stringify(c)}\r\n\r\n`);
        res.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  const piece = (text: string, extra: object = {}) => ({ candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0, ...extra }] });

  for (const transport of ['fetch', 'node-http'] as const) {
    it(`${transport}: is a retryable EPROVIDER, never an answer at $0; with the last chunk it is an answer`, async () => {
      const client = createLlmClient({ apiKey: 'k', baseUrl: url, timeoutMs: 5000, ...(transport === 'node-http' ? { fetch: createNodeHttpFetch() } : {}) });
      const seen: string[] = [];
      chunks = [piece('The first half of the ans')];
      const err = await failure(client.generate({ model: MODEL, prompt: 'q', onText: (t) => void seen.push(t) }));
      expect(err).toMatchObject({ code: 'EPROVIDER', retryable: true, model: MODEL });
      expect(err.billed).toBeUndefined();
      expect(seen).toEqual(['The first half of the ans']);
      chunks = [];
      expect(await failure(client.generate({ model: MODEL, prompt: 'q', onText: () => undefined }))).toMatchObject({ code: 'EPROVIDER', retryable: true });
      chunks = [piece('The whole '), piece('answer.', { finishReason: 'STOP' })];
      chunks.push({ ...chunks.pop()!, usageMetadata: { promptTokenCount: 3, candidatesTokenCount: 4 } });
      const ok = await client.generate({ model: MODEL, prompt: 'q', onText: () => undefined });
      expect(ok).toMatchObject({ text: 'The whole answer.', usage: { input: 3, output: 4 } });
      expect(ok.costUsd).toBeGreaterThan(0);
    });

    it(`${transport}: as Gemini streams (usage on every chunk, the prompt's before the last), billed the last chunk's usage, never a sum`, async () => {
      const client = createLlmClient({ apiKey: 'k', baseUrl: url, timeoutMs: 5000, ...(transport === 'node-http' ? { fetch: createNodeHttpFetch() } : {}) });
      // FirebaseExtended/vertexai-sdk-test-data googleai/streaming-success-basic-reply-short.txt, shortened.
      const prompt = { promptTokenCount: 7, totalTokenCount: 7, promptTokensDetails: [{ modality: 'TEXT', tokenCount: 7 }] };
      const whole = { ...prompt, candidatesTokenCount: 10, totalTokenCount: 17, candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: 10 }] };
      chunks = [{ ...piece('The'), usageMetadata: prompt }, { ...piece(' capital of Wyoming'), usageMetadata: prompt }, { ...piece(' is **Cheyenne**.\n', { finishReason: 'STOP' }), usageMetadata: whole }];
      const ok = await client.generate({ model: MODEL, prompt: 'q', onText: () => undefined });
      expect(ok.usage).toEqual({ input: 7, output: 10 });
      expect(ok.costUsd).toBe(costUsd(MODEL, { input: 7, output: 10 }));
      // Cut before its last chunk: the prompt its chunks reported, once.
      chunks = chunks.slice(0, 2);
      const cut = await failure(client.generate({ model: MODEL, prompt: 'q', onText: () => undefined }));
      expect(cut).toMatchObject({ code: 'EPROVIDER', retryable: true, billed: { model: MODEL, tier: 'standard', usage: { input: 7, output: 0 } } });
      expect(cut.billed!.costUsd).toBe(costUsd(MODEL, { input: 7, output: 0 }));
    });

    it(`${transport}: as Gemini 2.5 streams (a running candidatesTokenCount on each text chunk, the thinking on every chunk), billed the last chunk's usage, never a sum`, async () => {
      const client = createLlmClient({ apiKey: 'k', baseUrl: url, timeoutMs: 5000, ...(transport === 'node-http' ? { fetch: createNodeHttpFetch() } : {}) });
      // FirebaseExtended/vertexai-sdk-test-data googleai/streaming-success-thinking-reply-thought-summary.txt (gemini-2.5-flash),
      // its thought chunks and texts shortened: the counts as recorded.
      const prompt = { promptTokenCount: 10, promptTokensDetails: [{ modality: 'TEXT', tokenCount: 10 }] };
      const thought = { content: { parts: [{ text: '**Exploring Sky Color**', thought: true }], role: 'model' }, index: 0 };
      chunks = [
        { candidates: [thought], usageMetadata: { ...prompt, totalTokenCount: 80, thoughtsTokenCount: 70 } },
        { candidates: [thought], usageMetadata: { ...prompt, totalTokenCount: 550, thoughtsTokenCount: 540 } },
        { ...piece('The sky is blue because gas molecules scatter blue light more.'), usageMetadata: { ...prompt, candidatesTokenCount: 22, totalTokenCount: 572, thoughtsTokenCount: 540 } },
        { ...piece(' Blue light has shorter wavelengths.', { finishReason: 'STOP' }), usageMetadata: { ...prompt, candidatesTokenCount: 48, totalTokenCount: 598, thoughtsTokenCount: 540 } },
      ];
      const seen: string[] = [];
      const ok = await client.generate({ model: MODEL, prompt: 'q', onText: (t) => void seen.push(t) });
      // The thought summaries are no text of the answer; the output is the last count (48) plus the thinking, once:
      // a sum over chunks would bill 22 + 48 candidates tokens and the thinking four times.
      expect(seen).toEqual(['The sky is blue because gas molecules scatter blue light more.', ' Blue light has shorter wavelengths.']);
      expect(ok.usage).toEqual({ input: 10, output: 48 + 540, thoughts: 540 });
      expect(ok.costUsd).toBe(costUsd(MODEL, { input: 10, output: 588, thoughts: 540 }));
      // Cut after the first text chunk: what that chunk reported, the prompt, the thinking and 22 candidates tokens.
      chunks = chunks.slice(0, 3);
      const cut = await failure(client.generate({ model: MODEL, prompt: 'q', onText: () => undefined }));
      expect(cut).toMatchObject({ code: 'EPROVIDER', billed: { usage: { input: 10, output: 22 + 540, thoughts: 540 } } });
      // And a caller whose onText throws on that chunk: the same, on its own error.
      const gone = new Error('subscriber gone');
      expect(await client.generate({ model: MODEL, prompt: 'q', onText: () => Promise.reject(gone) }).catch((e: unknown) => e)).toBe(gone);
      expect(gone).toMatchObject({ billed: { usage: { input: 10, output: 562, thoughts: 540 } } });
    });
  }
});

describe('toLlmError on shapes the SDK and undici produce', () => {
  it('classifies network failures, timeouts and statuses', () => {
    const fetchFailed = new TypeError('fetch failed', { cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }) });
    expect(toLlmError(fetchFailed)).toMatchObject({ code: 'ENETWORK', retryable: true });
    const connectTimeout = new TypeError('fetch failed', { cause: Object.assign(new Error('Connect Timeout Error'), { code: 'UND_ERR_CONNECT_TIMEOUT' }) });
    expect(toLlmError(connectTimeout)).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
    expect(toLlmError(new DOMException('The operation timed out.', 'TimeoutError'))).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
    expect(toLlmError(new DOMException('This operation was aborted', 'AbortError'))).toMatchObject({ code: 'EABORTED', retryable: false });
    expect(toLlmError(Object.assign(new Error('x'), { name: 'ApiError', status: 504 }))).toMatchObject({ code: 'ETIMEDOUT', retryable: true });
    expect(toLlmError(Object.assign(new Error('x'), { name: 'ApiError', status: 404 }))).toMatchObject({ code: 'EBADREQUEST', retryable: false });
    const done = new LlmError('EBADOUTPUT', 'x');
    expect(toLlmError(done)).toBe(done);
  });
});

describe('pricing', () => {
  it('prices known models, prefixes, long context and unknown models', () => {
    expect(costUsd('gemini-2.5-flash', { input: 1_000_000, output: 1_000_000 })).toBeCloseTo(2.8, 10);
    expect(costUsd('models/gemini-2.0-flash', { input: 2_000_000, output: 0 })).toBeCloseTo(0.2, 10);
    expect(costUsd('gemini-embedding-001', { input: 1_000_000, output: 0 })).toBeCloseTo(0.15, 10);
    expect(priceOf('gemini-2.5-flash-preview-09-2025')).toBe(priceOf('gemini-2.5-flash'));
    expect(priceOf('gemini-2.5-flash-lite')).not.toBe(priceOf('gemini-2.5-flash'));
    expect(priceOf('some-new-model')).toBe(DEFAULT_PRICE);
    expect(costUsd('gemini-2.5-pro', { input: 300_000, output: 0 })).toBeCloseTo(0.75, 10);
    expect(costUsd('gemini-3-flash-preview', { input: 0, output: 0 })).toBe(0);
  });
});

describe('gemini runtime', () => {
  const models = { fast: 'gemini-2.5-flash', pro: 'gemini-2.5-pro', embedding: 'gemini-embedding-001' };
  function capture() {
    const lines: Array<{ level: number; msg: string }> = [];
    const destination = new Writable({
      write(chunk, _enc, cb) {
        lines.push(JSON.parse(String(chunk)));
        cb();
      },
    });
    return { lines, logger: createLogger({ level: 'warn', destination }) };
  }

  it('without a key starts the emulator on loopback, warns loudly, and serves through it', async () => {
    const { lines, logger } = capture();
    const rt = await startGemini({ models, timeoutMs: 5000, logger });
    try {
      expect(rt.emulator).toBeDefined();
      expect(rt.emulator!.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(lines.some((l) => l.level === 40 && /EMULATOR/.test(l.msg) && /SYNTHETIC/.test(l.msg))).toBe(true);
      const res = await rt.llm.generate({ model: models.fast, prompt: 'hello there', responseJsonSchema: schema });
      Answer.parse(res.json);
      expect(rt.emulator!.calls()).toHaveLength(1);
    } finally {
      await rt.close();
    }
    await expect(fetch(`${rt.emulator!.url}/__emulator/calls`)).rejects.toThrow();
  });

  it('LLM_HTTP_TRANSPORT=node-http: the config reaches the runtime, and the batch API (create, get, find, cancel) goes through the transport', async () => {
    const { logger } = capture();
    expect(geminiOptionsFromConfig(parseConfig({}), logger).transport).toBe('fetch');
    const opts = geminiOptionsFromConfig(parseConfig({ LLM_HTTP_TRANSPORT: 'node-http' }), logger);
    expect(opts.transport).toBe('node-http');
    const rt = await startGemini({ ...opts, models, timeoutMs: 5000, logger });
    try {
      Answer.parse((await rt.llm.generate({ model: models.fast, prompt: 'hello over node:http', responseJsonSchema: schema })).json);
      let sent = 0;
      const nodeHttp = createNodeHttpFetch();
      const batches = createBatchApi({ apiKey: 'test-key', baseUrl: rt.emulator!.url, fetch: (input, init) => (sent++, nodeHttp(input, init)) });
      const since = Date.now();
      const made = await batches.create(models.fast, 'agentq-node-http', [inlinedRequestOf({ prompt: 'one batched question', responseJsonSchema: schema }, 'job-1')]);
      expect(made.name).toMatch(/^batches\//);
      expect((await batches.get(made.name)).name).toBe(made.name);
      expect((await batches.findByDisplayName('agentq-node-http', since))?.name).toBe(made.name);
      await batches.cancel(made.name);
      expect(sent).toBeGreaterThanOrEqual(4);
    } finally {
      await rt.close();
    }
  });

  it("LLM_HTTP_TRANSPORT=node-http gives way to the SDK's fetch when Node follows the environment's proxies (NODE_USE_ENV_PROXY=1), and says so", async () => {
    const before = process.env.NODE_USE_ENV_PROXY;
    const globalFetch = vi.spyOn(globalThis, 'fetch');
    const { lines, logger } = capture();
    const ask = async () => {
      const rt = await startGemini({ models, timeoutMs: 5000, logger, transport: 'node-http' });
      try {
        Answer.parse((await rt.llm.generate({ model: models.fast, prompt: 'hello, proxy or not', responseJsonSchema: schema })).json);
      } finally {
        await rt.close();
      }
    };
    try {
      delete process.env.NODE_USE_ENV_PROXY;
      await ask();
      // The transport in use: the SDK's call never reaches the global fetch.
      expect(globalFetch).not.toHaveBeenCalled();
      expect(lines.filter((l) => /node-http is not used/.test(l.msg))).toEqual([]);
      process.env.NODE_USE_ENV_PROXY = '1';
      await ask();
      expect(globalFetch).toHaveBeenCalled();
      expect(lines.filter((l) => /node-http is not used/.test(l.msg))).toHaveLength(1);
    } finally {
      globalFetch.mockRestore();
      if (before === undefined) delete process.env.NODE_USE_ENV_PROXY;
      else process.env.NODE_USE_ENV_PROXY = before;
    }
  });

  it("takes the key the SDK would: GOOGLE_API_KEY alone, or over GEMINI_API_KEY when both are set (said once)", () => {
    const { lines, logger } = capture();
    expect(geminiOptionsFromConfig(parseConfig({ GOOGLE_API_KEY: 'g-key' }), logger).apiKey).toBe('g-key');
    expect(geminiOptionsFromConfig(parseConfig({ GEMINI_API_KEY: 'm-key' }), logger).apiKey).toBe('m-key');
    expect(lines).toEqual([]);
    expect(geminiOptionsFromConfig(parseConfig({ GEMINI_API_KEY: 'm-key', GOOGLE_API_KEY: 'g-key' }), logger).apiKey).toBe('g-key');
    expect(lines.map((l) => l.msg)).toEqual(['both GOOGLE_API_KEY and GEMINI_API_KEY are set: GOOGLE_API_KEY is used, as the SDK does']);
  });

  it('with a key never starts the emulator and uses the SDK default endpoint (GOOGLE_GEMINI_BASE_URL honoured)', async () => {
    const upstream = await startGeminiEmulator();
    const before = process.env.GOOGLE_GEMINI_BASE_URL;
    process.env.GOOGLE_GEMINI_BASE_URL = upstream.url;
    const { lines, logger } = capture();
    try {
      const rt = await startGemini({ apiKey: 'real-looking-key', models, timeoutMs: 5000, logger });
      expect(rt.emulator).toBeUndefined();
      expect(lines).toEqual([]);
      const res = await rt.llm.generate({ model: models.fast, prompt: 'hello' });
      expect(res.text.length).toBeGreaterThan(0);
      expect(upstream.calls()).toHaveLength(1);
      await rt.close();
    } finally {
      if (before === undefined) delete process.env.GOOGLE_GEMINI_BASE_URL;
      else process.env.GOOGLE_GEMINI_BASE_URL = before;
      await upstream.close();
    }
  });
});
