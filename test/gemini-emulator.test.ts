import { GoogleGenAI, Type } from '@google/genai';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { cosine, countTokens, createEmulatorControl, startGeminiEmulator, tokenize, type GeminiEmulator } from '../dev/gemini-emulator/emulator.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

const MODEL = 'gemini-2.5-flash';
/** The source the emulator's RECITATION stop names by default. */
const CITED = 'https://example.com/emulator/recited-source';

let emu: GeminiEmulator;
let ai: GoogleGenAI;

beforeAll(async () => {
  emu = await startGeminiEmulator();
  ai = new GoogleGenAI({ apiKey: 'test-key', httpOptions: { baseUrl: emu.url } });
});
afterAll(async () => {
  await emu.close();
});
beforeEach(() => {
  emu.clearFaults();
  emu.resetCalls();
  emu.setStreamChunkDelay(0);
});

const Ticket = z.object({
  title: z.string().min(3).max(60),
  summary: z.string().min(10),
  priority: z.enum(['low', 'medium', 'high']),
  tags: z.array(z.string().min(1)).min(1).max(4),
  confidence: z.number().min(0).max(1),
  estimateHours: z.int().min(1).max(40),
  assignee: z.email().nullable(),
  ticketId: z.uuid(),
  dueAt: z.iso.datetime(),
  flags: z.object({ blocking: z.boolean(), note: z.string().max(20).optional() }),
  counts: z.record(z.string(), z.number().int().nonnegative()),
  kind: z.union([z.object({ type: z.literal('bug'), severity: z.int().min(1).max(5) }), z.object({ type: z.literal('feature'), votes: z.int() })]),
});

const PROMPT = 'Triage this report: the invoice export crashes when the billing currency is Swiss francs';

async function generateJson(prompt: string, schema: unknown, system?: string) {
  return ai.models.generateContent({
    model: MODEL,
    contents: prompt,
    config: { systemInstruction: system, responseMimeType: 'application/json', responseJsonSchema: schema },
  });
}

describe('gemini emulator through the real SDK', () => {
  it('answers JSON that validates against a zod 4 schema, built from the prompt words', async () => {
    const res = await generateJson(PROMPT, z.toJSONSchema(Ticket), 'You triage bug reports.');
    const parsed = Ticket.parse(JSON.parse(res.text!));
    const promptWords = new Set(PROMPT.toLowerCase().match(/[a-z]+/g));
    const summaryWords = parsed.summary.toLowerCase().match(/[a-z]+/g) ?? [];
    expect(summaryWords.some((w) => w.length > 3 && promptWords.has(w))).toBe(true);
    expect(res.candidates?.[0]?.finishReason).toBe('STOP');
  });

  it('validates across many prompts, including recursive $ref schemas', async () => {
    interface Node {
      name: string;
      children: Node[];
    }
    const NodeSchema: z.ZodType<Node> = z.lazy(() => z.object({ name: z.string(), children: z.array(NodeSchema).max(3) }));
    const Tree = z.object({ root: NodeSchema, path: z.tuple([z.string(), z.number()]) });
    const treeJson = z.toJSONSchema(Tree);
    for (let i = 0; i < 12; i++) {
      const prompt = `Case ${i}: classify the shipment ${i * 7} delayed at customs in port number ${i}`;
      Ticket.parse(JSON.parse((await generateJson(prompt, z.toJSONSchema(Ticket))).text!));
      Tree.parse(JSON.parse((await generateJson(prompt, treeJson)).text!));
    }
  });

  it('supports the OpenAPI-subset responseSchema with upper-case types', async () => {
    const res = await ai.models.generateContent({
      model: MODEL,
      contents: 'List three fruits with colours',
      config: {
        responseMimeType: 'application/json',
        responseSchema: {
          type: Type.OBJECT,
          properties: {
            fruits: {
              type: Type.ARRAY,
              minItems: '3',
              maxItems: '3',
              items: { type: Type.OBJECT, properties: { name: { type: Type.STRING }, colour: { type: Type.STRING, enum: ['red', 'green'] }, weight: { type: Type.NUMBER, nullable: true } }, required: ['name', 'colour'] },
            },
          },
          required: ['fruits'],
          propertyOrdering: ['fruits'],
        },
      },
    });
    const Fruits = z.object({ fruits: z.array(z.object({ name: z.string(), colour: z.enum(['red', 'green']), weight: z.number().nullable().optional() })).length(3) });
    Fruits.parse(JSON.parse(res.text!));
  });

  it('is deterministic: the same request gives the same answer, another prompt another one', async () => {
    const a = await ai.models.generateContent({ model: MODEL, contents: 'Why do queues need backpressure?' });
    const b = await ai.models.generateContent({ model: MODEL, contents: 'Why do queues need backpressure?' });
    const c = await ai.models.generateContent({ model: MODEL, contents: 'How does Redis persist data to disk?' });
    expect(a.text).toBe(b.text);
    expect(c.text).not.toBe(a.text);
    expect(a.text!.split('. ').length).toBeGreaterThanOrEqual(3);
    expect(a.text!.toLowerCase()).toMatch(/queues|backpressure/);
  });

  it('reports usage counted by its tokenizer on the actual prompt and answer', async () => {
    const system = 'Answer in plain English, please.';
    const prompt = "What's the difference between at-least-once and exactly-once delivery?";
    const res = await ai.models.generateContent({ model: MODEL, contents: prompt, config: { systemInstruction: system } });
    const u = res.usageMetadata!;
    expect(u.promptTokenCount).toBe(countTokens(system) + countTokens(prompt));
    expect(u.candidatesTokenCount).toBe(countTokens(res.text!));
    expect(u.totalTokenCount).toBe(u.promptTokenCount! + u.candidatesTokenCount!);
    const counted = await ai.models.countTokens({ model: MODEL, contents: prompt });
    expect(counted.totalTokens).toBe(countTokens(prompt));
  });

  it("counts tokens as its tokenizer splits them, ASCII fast path and Unicode alike", () => {
    const texts = [
      '',
      'snake_case and CamelCase42, 3.14 -- ok?!',
      'tab\tline\nvt\u000bff\u000ccr\r  end',
      'ctrl\u0000\u0001\u001f\u007f chars',
      '{"a":[1,2],"b":"x y"}',
      'caf\u00e9 na\u00efve \u00e0 la carte',
      'e\u0301 combining, \u00a0nbsp\u2028sep \u4e2d\u6587 \ud83d\ude00!',
      'tail non-ASCII at the end \u00e9',
    ];
    for (const t of texts) expect(countTokens(t), JSON.stringify(t)).toBe(tokenize(t).length);
    expect(countTokens('snake_case and CamelCase42, 3.14 -- ok?!')).toBe(12);
    expect(countTokens('ctrl\u0000\u0001\u001f\u007f chars')).toBe(6);
    expect(countTokens('a\u00a0b')).toBe(2);
  });

  it('stops at maxOutputTokens with finishReason MAX_TOKENS', async () => {
    const res = await ai.models.generateContent({ model: MODEL, contents: 'Describe consistent hashing in depth', config: { maxOutputTokens: 5 } });
    expect(res.candidates?.[0]?.finishReason).toBe('MAX_TOKENS');
    expect(countTokens(res.text!)).toBe(5);
    expect(res.usageMetadata?.candidatesTokenCount).toBe(5);
  });

  it('streams SSE chunks that concatenate to the non-stream answer; the last carries STOP and usage', async () => {
    const prompt = 'Explain how a circuit breaker protects a flaky upstream service';
    const whole = await ai.models.generateContent({ model: MODEL, contents: prompt });
    emu.setStreamChunkDelay(15);
    const sent = performance.now();
    const stream = await ai.models.generateContentStream({ model: MODEL, contents: prompt });
    const pieces: string[] = [];
    let lastArrival = 0;
    let last;
    for await (const chunk of stream) {
      pieces.push(chunk.text ?? '');
      lastArrival = performance.now();
      last = chunk;
    }
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces.join('')).toBe(whole.text);
    expect(last?.candidates?.[0]?.finishReason).toBe('STOP');
    expect(last?.usageMetadata).toEqual(whole.usageMetadata);
    // The delay is a lower bound between chunks (sleep never wakes early), so the last chunk cannot arrive sooner
    // than the delays after the request was sent. Measured from the request, not from the first arrival: on a
    // busy machine the client may read the first chunk late and the next ones together (28 ms for 4 gaps once).
    expect(lastArrival - sent).toBeGreaterThanOrEqual(10 * (pieces.length - 1));
    expect(emu.calls().map((c) => c.kind)).toEqual(['generate', 'stream']);
  });

  it("every chunk of a stream carries usageMetadata, as Gemini's do: the prompt's (and the thinking, and on 2.5 the text's running count) before the last, the whole usage on the last", async () => {
    const prompt = 'Explain how a circuit breaker protects a flaky upstream service';
    const sse = async (generationConfig?: object, model = MODEL) => {
      const res = await fetch(`${emu.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-goog-api-key': 'k' },
        body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: prompt }] }], ...(generationConfig ? { generationConfig } : {}) }),
      });
      const events = (await res.text())
        .trim()
        .split('\n\n')
        .map((e) => JSON.parse(e.replace(/^data: /, '')) as { candidates: Array<{ finishReason?: string; content: { parts: Array<{ text: string }> } }>; usageMetadata: Record<string, unknown> });
      return { events, call: emu.calls().at(-1)! };
    };
    /** The text of the events up to and with the i-th. */
    const upTo = (events: Array<{ candidates: Array<{ content: { parts: Array<{ text: string }> } }> }>, i: number) => events.slice(0, i + 1).map((e) => e.candidates[0].content.parts[0].text).join('');
    const n = countTokens(prompt);
    const promptUsage = { promptTokenCount: n, totalTokenCount: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }], serviceTier: 'standard' };
    const plain = await sse();
    expect(plain.events.length).toBeGreaterThanOrEqual(3);
    // A 2.5 model (FirebaseExtended/vertexai-sdk-test-data googleai streaming-success-thinking-reply-thought-summary.txt
    // and streaming-success-url-context.txt, gemini-2.5-flash): each text chunk counts the text so far, a running
    // candidatesTokenCount in its total, without candidatesTokensDetails; only the last has the finishReason.
    for (const [i, e] of plain.events.slice(0, -1).entries()) {
      const so = countTokens(upTo(plain.events, i));
      expect(so).toBeGreaterThan(0);
      expect(e.usageMetadata).toEqual({ ...promptUsage, candidatesTokenCount: so, totalTokenCount: n + so });
      expect(e.candidates[0].finishReason).toBeUndefined();
    }
    const out = plain.call.outputTokens!;
    expect(out).toBe(countTokens(upTo(plain.events, plain.events.length - 1)));
    expect(plain.events.at(-1)!.candidates[0].finishReason).toBe('STOP');
    expect(plain.events.at(-1)!.usageMetadata).toEqual({ ...promptUsage, candidatesTokenCount: out, totalTokenCount: n + out, candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: out }] });
    // Running, never per chunk: their sum is past the whole answer's count.
    const counts = plain.events.map((e) => e.usageMetadata.candidatesTokenCount as number);
    expect(counts).toEqual([...counts].sort((a, b) => a - b));
    expect(counts.reduce((a, b) => a + b, 0)).toBeGreaterThan(out);
    // A call that thinks (streaming-success-thinking-reply-thought-summary.txt): the thinking, done before the first
    // text, is on every chunk and in its total.
    const thinking = await sse({ thinkingConfig: { thinkingBudget: 40 } });
    const t = thinking.call.thoughtsTokens!;
    expect(t).toBeGreaterThan(0);
    for (const [i, e] of thinking.events.slice(0, -1).entries()) {
      const so = countTokens(upTo(thinking.events, i));
      expect(e.usageMetadata).toEqual({ ...promptUsage, candidatesTokenCount: so, totalTokenCount: n + so + t, thoughtsTokenCount: t });
    }
    expect(thinking.events.at(-1)!.usageMetadata).toMatchObject({ candidatesTokenCount: thinking.call.outputTokens, thoughtsTokenCount: t, totalTokenCount: n + thinking.call.outputTokens! + t });
    // A 2.0 model (streaming-success-basic-reply-*.txt, streaming-success-citations.txt, gemini-2.0-flash): no
    // candidatesTokenCount before the last chunk.
    const older = await sse(undefined, 'gemini-2.0-flash');
    expect(older.events.length).toBeGreaterThanOrEqual(3);
    for (const e of older.events.slice(0, -1)) expect(e.usageMetadata).toEqual(promptUsage);
    expect(older.events.at(-1)!.usageMetadata).toMatchObject({ candidatesTokenCount: older.call.outputTokens });
  });

  it('embeds deterministically into unit vectors where paraphrases are close and unrelated texts far', async () => {
    const texts = [
      'How do I reset my password for the billing portal?',
      'How can I reset the password of my billing portal?',
      'Photosynthesis converts sunlight into chemical energy in plants',
    ];
    const res = await ai.models.embedContent({ model: 'gemini-embedding-001', contents: texts, config: { outputDimensionality: 768, taskType: 'RETRIEVAL_QUERY' } });
    const [a, b, c] = res.embeddings!.map((e) => e.values!);
    for (const v of [a, b, c]) {
      expect(v).toHaveLength(768);
      expect(Math.hypot(...v)).toBeCloseTo(1, 9);
    }
    expect(cosine(a, b)).toBeGreaterThan(0.9);
    expect(cosine(a, c)).toBeLessThan(0.3);
    const again = await ai.models.embedContent({ model: 'gemini-embedding-001', contents: texts[0], config: { outputDimensionality: 256 } });
    expect(again.embeddings![0].values).toHaveLength(256);
    const same = await ai.models.embedContent({ model: 'gemini-embedding-001', contents: [texts[0]], config: { outputDimensionality: 768 } });
    expect(same.embeddings![0].values).toEqual(a);
  });

  it('serves the single embedContent route and rejects bad requests like Gemini', async () => {
    const post = (path: string, body: unknown, key = true) =>
      fetch(`${emu.url}/v1beta/models/${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(key ? { 'x-goog-api-key': 'k' } : {}) }, body: JSON.stringify(body) });
    const one = await post('gemini-embedding-001:embedContent', { content: { parts: [{ text: 'hello world' }] } });
    expect(((await one.json()) as { embedding: { values: number[] } }).embedding.values).toHaveLength(768);
    expect((await post(`${MODEL}:generateContent`, { contents: [{ parts: [{ text: 'x' }] }] }, false)).status).toBe(403);
    expect((await post(`${MODEL}:generateContent`, {})).status).toBe(400);
    const both = await post(`${MODEL}:generateContent`, { contents: [{ parts: [{ text: 'x' }] }], generationConfig: { responseMimeType: 'application/json', responseSchema: { type: 'STRING' }, responseJsonSchema: { type: 'string' } } });
    expect(both.status).toBe(400);
    expect(((await both.json()) as { error: { status: string } }).error.status).toBe('INVALID_ARGUMENT');
    // A schema no value satisfies (an integer strictly between 5 and 6) is refused like Gemini, not a 500.
    const empty = await post(`${MODEL}:generateContent`, { contents: [{ parts: [{ text: 'x' }] }], generationConfig: { responseMimeType: 'application/json', responseJsonSchema: { type: 'integer', exclusiveMinimum: 5, exclusiveMaximum: 6 } } });
    expect(empty.status).toBe(400);
    expect(((await empty.json()) as { error: { status: string } }).error.status).toBe('INVALID_ARGUMENT');
    expect((await post(`${MODEL}:frobnicate`, {})).status).toBe(404);
  });
});

describe('scripted faults', () => {
  const call = (prompt = 'ping the service', model = MODEL) => ai.models.generateContent({ model, contents: prompt });
  const statusOf = (p: Promise<unknown>) =>
    p.then(
      () => 200,
      (e: { status?: number }) => e.status ?? -1,
    );

  it('answers 429 with RetryInfo in Gemini error JSON and a Retry-After header', async () => {
    emu.script({ status: 429, retryAfterS: 3 });
    const res = await fetch(`${emu.url}/v1beta/models/${MODEL}:generateContent`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-goog-api-key': 'k' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'hi' }] }] }),
    });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('3');
    const body = (await res.json()) as { error: { code: number; status: string; details: Array<Record<string, string>> } };
    expect(body.error.code).toBe(429);
    expect(body.error.status).toBe('RESOURCE_EXHAUSTED');
    expect(body.error.details).toContainEqual({ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '3s' });
  });

  it('applies faults first-in first-out, `times` times, then answers normally', async () => {
    emu.script([{ status: 503, times: 2 }, { status: 500 }]);
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push(await statusOf(call()));
    expect(seen).toEqual([503, 503, 500, 200]);
    expect(emu.calls().map((c) => c.status)).toEqual([503, 503, 500, 200]);
  });

  it('keeps an unbounded fault until cleared', async () => {
    emu.script({ status: 500, times: Infinity });
    for (let i = 0; i < 3; i++) expect(await statusOf(call())).toBe(500);
    emu.clearFaults();
    expect(await statusOf(call())).toBe(200);
  });

  it('matches faults by kind, model and prompt text', async () => {
    emu.script([{ status: 400, match: { model: 'gemini-2.5-pro' } }, { status: 503, match: { promptIncludes: 'secret sauce' } }, { status: 500, match: { kind: 'embed' } }]);
    expect(await statusOf(call('plain question'))).toBe(200);
    expect(await statusOf(call('what is the secret sauce?'))).toBe(503);
    expect(await statusOf(call('plain question', 'models/gemini-2.5-pro'))).toBe(400);
    expect(await statusOf(ai.models.embedContent({ model: 'gemini-embedding-001', contents: ['x'] }))).toBe(500);
    expect(emu.faults()).toEqual([]);
  });

  it('adds latency before a normal answer', async () => {
    emu.script({ latencyMs: 60 });
    const res = await call();
    expect(res.text).toBeTruthy();
    expect(emu.calls()[0].durationMs).toBeGreaterThanOrEqual(55);
  });

  it('returns malformed JSON on a 200', async () => {
    emu.script({ malformed: true });
    const res = await generateJson(PROMPT, z.toJSONSchema(Ticket));
    expect(res.candidates?.[0]?.finishReason).toBe('STOP');
    expect(() => JSON.parse(res.text!)).toThrow();
  });

  it('hangs until the client aborts, and records that the socket closed', async () => {
    emu.script({ hang: true });
    const ac = new AbortController();
    const hung = ai.models.generateContent({ model: MODEL, contents: 'hang please', config: { abortSignal: ac.signal } }).catch((e: Error) => e);
    await vi.waitFor(() => expect(emu.calls()).toHaveLength(1), POLL);
    expect(emu.calls()[0]).toMatchObject({ status: 0, fault: 'hang' });
    ac.abort();
    expect(((await hung) as Error).name).toBe('AbortError');
    await vi.waitFor(() => expect(emu.calls()[0].aborted).toBe(true), POLL);
    expect(emu.calls()[0]).toMatchObject({ status: 499, fault: 'hang', aborted: true });
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('ends hung requests when it closes', async () => {
    const other = await startGeminiEmulator();
    other.script({ hang: true });
    const client = new GoogleGenAI({ apiKey: 'test-key', httpOptions: { baseUrl: other.url } });
    const hung = client.models.generateContent({ model: MODEL, contents: 'x' }).catch((e: Error) => e);
    await vi.waitFor(() => expect(other.calls()).toHaveLength(1), POLL);
    await other.close();
    expect(await hung).toBeInstanceOf(TypeError);
  });

  it('resets the socket', async () => {
    emu.script({ reset: true });
    const err = (await call().catch((e: unknown) => e)) as Error & { cause?: { code?: string } };
    expect(err).toBeInstanceOf(TypeError);
    expect(err.cause?.code).toBe('UND_ERR_SOCKET');
    expect(emu.calls()[0]).toMatchObject({ status: 0, fault: 'reset' });
  });

  it('cuts a stream after exactly afterChunks chunks, inside the last one when the answer has fewer', async () => {
    const stream = async () => {
      const got: string[] = [];
      const err = await (async () => {
        for await (const c of await ai.models.generateContentStream({ model: MODEL, contents: 'a fairly long streamed answer about queues, workers and retries' })) got.push(c.text ?? '');
      })().catch((e: unknown) => e);
      return { got, err };
    };
    const whole = await stream();
    expect(whole.err).toBeUndefined();
    const n = whole.got.length;
    expect(n).toBeGreaterThanOrEqual(3);
    for (const after of [1, n - 1, n, n + 5]) {
      emu.script({ reset: true, afterChunks: after, match: { kind: 'stream' } });
      const cut = await stream();
      expect(cut.err).toBeInstanceOf(Error);
      expect(cut.got).toEqual(whole.got.slice(0, Math.min(after, n - 1)));
      expect(emu.faults()).toEqual([]);
      // Its last whole chunk told the client the prompt's usage and, on 2.5, the text so far: the call log says that.
      expect(emu.calls().at(-1)).toMatchObject({ kind: 'stream', fault: 'reset', outputTokens: countTokens(cut.got.join('')) });
    }
    const refused = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ reset: true, afterChunks: 1.5 }) });
    expect(refused.status).toBe(400);
    expect(JSON.stringify(await refused.json())).toContain('afterChunks');
  });

  it('noFinishReason: the whole answer without its finishReason, or a stream without its last chunk; only a model call takes it', async () => {
    const raw = async (prompt: string) => {
      const res = await fetch(`${emu.url}/v1beta/models/${MODEL}:generateContent`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-goog-api-key': 'k' },
        body: JSON.stringify({ contents: [{ parts: [{ text: prompt }] }] }),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as { candidates: Array<Record<string, unknown>>; responseId: string };
    };
    const prompt = 'a plain answer, finished or not';
    const whole = await raw(prompt);
    // An embed call does not take it: it waits for the model call.
    emu.script({ noFinishReason: true });
    await ai.models.embedContent({ model: 'gemini-embedding-001', contents: 'not this one' });
    expect(emu.faults()).toHaveLength(1);
    const unfinished = await raw(prompt);
    // What Gemini sends, but for the candidate's finishReason (the response id names each call).
    const { finishReason, ...candidate } = whole.candidates[0];
    expect(finishReason).toBe('STOP');
    expect(unfinished).toEqual({ ...whole, candidates: [candidate], responseId: unfinished.responseId });
    expect(emu.calls().at(-1)).toMatchObject({ kind: 'generate', status: 200, fault: 'no-finish-reason' });

    const stream = async () => {
      const chunks = [];
      for await (const c of await ai.models.generateContentStream({ model: MODEL, contents: 'a fairly long streamed answer about queues, workers and retries' })) chunks.push(c);
      return chunks;
    };
    const full = await stream();
    expect(full.length).toBeGreaterThanOrEqual(3);
    emu.script({ noFinishReason: true, match: { kind: 'stream' } });
    const cut = await stream();
    expect(cut.map((c) => c.text)).toEqual(full.slice(0, -1).map((c) => c.text));
    // Each chunk it sent carries the usage Gemini puts on every chunk but its last: the prompt's, and (2.5) the text so far.
    expect(cut.some((c) => c.candidates?.[0]?.finishReason !== undefined)).toBe(false);
    const prompted = full.at(-1)!.usageMetadata!.promptTokenCount!;
    for (const [i, c] of cut.entries()) {
      const so = countTokens(cut.slice(0, i + 1).map((x) => x.text).join(''));
      expect(c.usageMetadata).toEqual(full[i].usageMetadata);
      expect(c.usageMetadata).toMatchObject({ promptTokenCount: prompted, candidatesTokenCount: so, totalTokenCount: prompted + so });
    }
    // The call log says what the client was told it cost: the prompt and the text its last chunk counted.
    const told = countTokens(cut.map((c) => c.text).join(''));
    expect(told).toBeGreaterThan(0);
    expect(emu.calls().at(-1)).toMatchObject({ kind: 'stream', fault: 'no-finish-reason', promptTokens: prompted, outputTokens: told });
    const both = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ noFinishReason: true, malformed: true }) });
    expect(both.status).toBe(400);
    expect(JSON.stringify(await both.json())).toContain('noFinishReason');
  });

  describe('refuse: the refusals Gemini sends', () => {
    const prompt = 'a question the filters will not let through';
    const raw = async (path: 'generateContent' | 'streamGenerateContent?alt=sse') => {
      const res = await fetch(`${emu.url}/v1beta/models/${MODEL}:${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-goog-api-key': 'k' },
        body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: prompt }] }] }),
      });
      expect(res.status).toBe(200);
      return res;
    };
    const tokens = async () => (await ai.models.countTokens({ model: MODEL, contents: prompt })).totalTokens!;
    const ratings = (blocked: string) =>
      ['HARM_CATEGORY_SEXUALLY_EXPLICIT', 'HARM_CATEGORY_HATE_SPEECH', 'HARM_CATEGORY_HARASSMENT', 'HARM_CATEGORY_DANGEROUS_CONTENT'].map((category) => (category === blocked ? { category, probability: 'HIGH', blocked: true } : { category, probability: 'NEGLIGIBLE' }));

    it('a candidate stopped by a filter: no content, its safety ratings with the one that blocked, the prompt billed alone', async () => {
      const n = await tokens();
      emu.script({ refuse: { finishReason: 'SAFETY' } });
      const body = await (await raw('generateContent')).json();
      const tier = { serviceTier: 'standard' };
      expect(body).toEqual({
        candidates: [{ finishReason: 'SAFETY', index: 0, safetyRatings: ratings('HARM_CATEGORY_DANGEROUS_CONTENT') }],
        usageMetadata: { promptTokenCount: n, totalTokenCount: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }], ...tier },
        modelVersion: MODEL,
        responseId: `emu-${emu.calls().at(-1)!.id}`,
      });
      expect(emu.calls().at(-1)).toMatchObject({ kind: 'generate', status: 200, fault: 'refuse:SAFETY', promptTokens: n, outputTokens: 0 });

      // Through the SDK, named category and Gemini's finishMessage; the other filters rate no category by default.
      emu.script([
        { refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' } },
        { refuse: { finishReason: 'PROHIBITED_CONTENT', finishMessage: 'The response was blocked.' } },
        { refuse: { finishReason: 'RECITATION' } },
      ]);
      const named = await ai.models.generateContent({ model: MODEL, contents: prompt });
      expect(named.candidates).toEqual([{ finishReason: 'SAFETY', index: 0, safetyRatings: ratings('HARM_CATEGORY_HARASSMENT') }]);
      expect(named.usageMetadata).toEqual({ promptTokenCount: n, totalTokenCount: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }], ...tier });
      const prohibited = await raw('generateContent');
      expect((await prohibited.json()).candidates).toEqual([{ finishReason: 'PROHIBITED_CONTENT', index: 0, finishMessage: 'The response was blocked.' }]);
      const recitation = await ai.models.generateContent({ model: MODEL, contents: prompt });
      expect(recitation.candidates).toEqual([{ finishReason: 'RECITATION', index: 0, citationMetadata: { citations: [expect.objectContaining({ uri: CITED })] } }]);
    });

    it('a blocked prompt: promptFeedback with its ratings (SAFETY) and usage of the prompt alone; in a stream, one event', async () => {
      const n = await tokens();
      emu.script([{ refuse: { blockReason: 'SAFETY', category: 'HARM_CATEGORY_HATE_SPEECH' } }, { refuse: { blockReason: 'PROHIBITED_CONTENT' } }]);
      const blocked = { promptFeedback: { blockReason: 'SAFETY', safetyRatings: ratings('HARM_CATEGORY_HATE_SPEECH') }, usageMetadata: { promptTokenCount: n, totalTokenCount: n, serviceTier: 'standard' }, modelVersion: MODEL };
      expect(await (await raw('generateContent')).json()).toEqual(blocked);
      // PROHIBITED_CONTENT (as OTHER, BLOCKLIST) is no per-category filter: no ratings.
      const prohibited = await ai.models.generateContent({ model: MODEL, contents: prompt });
      expect(prohibited.candidates).toBeUndefined();
      expect(prohibited.promptFeedback).toEqual({ blockReason: 'PROHIBITED_CONTENT' });
      expect(prohibited.usageMetadata).toEqual({ promptTokenCount: n, totalTokenCount: n, serviceTier: 'standard' });

      emu.script({ refuse: { blockReason: 'SAFETY' }, match: { kind: 'stream' } });
      const sse = await (await raw('streamGenerateContent?alt=sse')).text();
      expect(sse.trim().split('\n\n').map((e) => JSON.parse(e.replace(/^data: /, '')))).toEqual([{ ...blocked, promptFeedback: { blockReason: 'SAFETY', safetyRatings: ratings('HARM_CATEGORY_DANGEROUS_CONTENT') } }]);
      emu.script({ refuse: { finishReason: 'SPII' }, match: { kind: 'stream' } });
      const chunks = [];
      for await (const c of await ai.models.generateContentStream({ model: MODEL, contents: prompt })) chunks.push(c);
      expect(chunks.map((c) => [c.candidates, c.usageMetadata?.candidatesTokenCount])).toEqual([[[{ finishReason: 'SPII', index: 0 }], undefined]]);
      expect(emu.calls().map((c) => [c.kind, c.fault, c.promptTokens, c.outputTokens])).toEqual([
        ['count', undefined, n, undefined],
        ['generate', 'refuse:SAFETY', n, 0],
        ['generate', 'refuse:PROHIBITED_CONTENT', n, 0],
        ['stream', 'refuse:SAFETY', n, 0],
        ['stream', 'refuse:SPII', n, 0],
      ]);
    });

    it('a stream stopped for SAFETY after some text: those chunks with the prompt\'s usage and the running count of their text, then a candidate with no content, its ratings, the text billed', async () => {
      const n = await tokens();
      const sse = async () =>
        (await (await raw('streamGenerateContent?alt=sse')).text())
          .trim()
          .split('\n\n')
          .map((e) => JSON.parse(e.replace(/^data: /, '')) as Record<string, any>);
      const whole = await sse();
      expect(whole.length).toBeGreaterThanOrEqual(3);
      const textOf = (e: Record<string, any>) => e.candidates[0].content.parts[0].text as string;
      emu.script({ refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, afterChunks: 2, match: { kind: 'stream' } });
      emu.setStreamChunkDelay(5);
      const events = await sse();
      const sent = [textOf(whole[0]), textOf(whole[1])];
      const out = countTokens(sent.join(''));
      const promptUsage = { promptTokenCount: n, totalTokenCount: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }], serviceTier: 'standard' };
      const id = `emu-${emu.calls().at(-1)!.id}`;
      expect(events).toEqual([
        ...sent.map((text, i) => {
          const so = countTokens(sent.slice(0, i + 1).join(''));
          return { candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0 }], usageMetadata: { ...promptUsage, candidatesTokenCount: so, totalTokenCount: n + so }, modelVersion: MODEL, responseId: id };
        }),
        {
          candidates: [{ finishReason: 'SAFETY', index: 0, safetyRatings: ratings('HARM_CATEGORY_HARASSMENT') }],
          usageMetadata: { ...promptUsage, candidatesTokenCount: out, totalTokenCount: n + out, candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: out }] },
          modelVersion: MODEL,
          responseId: id,
        },
      ]);
      expect(out).toBeGreaterThan(0);
      expect(emu.calls().at(-1)).toMatchObject({ kind: 'stream', status: 200, fault: 'refuse:SAFETY@2', promptTokens: n, outputTokens: out });

      // Through the SDK: the text, then the stop; past the answer's chunk count, all its text, then the stop.
      emu.script({ refuse: { finishReason: 'SAFETY' }, afterChunks: 1, match: { kind: 'stream' } });
      const stream = async () => {
        const chunks = [];
        for await (const c of await ai.models.generateContentStream({ model: MODEL, contents: prompt })) chunks.push(c);
        return chunks;
      };
      const chunks = await stream();
      emu.clearFaults();
      const sdkWhole = await stream();
      emu.script({ refuse: { finishReason: 'RECITATION' }, afterChunks: 99 });
      expect(chunks.map((c) => [c.text, c.candidates?.[0]?.finishReason, c.candidates?.[0]?.safetyRatings?.find((r) => r.blocked)?.category])).toEqual([
        [sdkWhole[0].text, undefined, undefined],
        [undefined, 'SAFETY', 'HARM_CATEGORY_DANGEROUS_CONTENT'],
      ]);
      const all = await sse();
      expect(all.slice(0, -1).map(textOf)).toEqual(whole.map(textOf));
      // Every byte of the answer was sent: the default source spans it from its start.
      const bytes = Buffer.byteLength(whole.map(textOf).join(''));
      expect(all.at(-1)!.candidates).toEqual([{ finishReason: 'RECITATION', index: 0, citationMetadata: { citationSources: [{ startIndex: 0, endIndex: bytes, uri: CITED }] } }]);

      const post = async (fault: unknown) => {
        const res = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(fault) });
        return { status: res.status, message: ((await res.json()) as { error: { message: string } }).error.message };
      };
      expect(await post({ refuse: { blockReason: 'SAFETY' }, afterChunks: 1 })).toEqual({ status: 400, message: expect.stringMatching(/afterChunks .* with a refuse that names a finishReason/) });
      expect(await post({ refuse: { finishReason: 'SAFETY' }, afterChunks: -1 })).toEqual({ status: 400, message: expect.stringMatching(/afterChunks must be a non-negative integer/) });
      expect(await post({ refuse: { finishReason: 'SAFETY' }, afterChunks: 1, match: { kind: 'batch' } })).toEqual({ status: 400, message: expect.stringMatching(/match\.kind must be stream or generate/) });
      expect(emu.faults()).toEqual([]);
    });

    it('a generate call stopped for SAFETY after some text: the candidate carries that text as its content, its finishReason and ratings, the text billed', async () => {
      const n = await tokens();
      // The text a stream of the same request sends in its first two chunks.
      const chunks = (await (await raw('streamGenerateContent?alt=sse')).text())
        .trim()
        .split('\n\n')
        .map((e) => (JSON.parse(e.replace(/^data: /, '')) as { candidates: Array<{ content: { parts: Array<{ text: string }> } }> }).candidates[0].content.parts[0].text);
      expect(chunks.length).toBeGreaterThanOrEqual(3);
      const sent = chunks.slice(0, 2).join('');
      const out = countTokens(sent);
      emu.resetCalls();
      // No match.kind: the first call takes it, a generate call as a stream would.
      emu.script({ refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, afterChunks: 2 });
      const body = await (await raw('generateContent')).json();
      const id = `emu-${emu.calls().at(-1)!.id}`;
      const promptUsage = { promptTokenCount: n, totalTokenCount: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }], serviceTier: 'standard' };
      // FirebaseExtended/vertexai-sdk-test-data googleai/unary-failure-finish-reason-safety.txt: content, then the stop.
      expect(body).toEqual({
        candidates: [{ content: { parts: [{ text: sent }], role: 'model' }, finishReason: 'SAFETY', index: 0, safetyRatings: ratings('HARM_CATEGORY_HARASSMENT') }],
        usageMetadata: { ...promptUsage, candidatesTokenCount: out, totalTokenCount: n + out, candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: out }] },
        modelVersion: MODEL,
        responseId: id,
      });
      expect(out).toBeGreaterThan(0);
      expect(emu.calls().at(-1)).toMatchObject({ kind: 'generate', status: 200, fault: 'refuse:SAFETY@2', promptTokens: n, outputTokens: out });

      // Through the SDK; past the answer's chunk count, the whole text; RECITATION cites what follows the text (none).
      emu.script([
        { refuse: { finishReason: 'SAFETY' }, afterChunks: 1, match: { kind: 'generate' } },
        { refuse: { finishReason: 'RECITATION' }, afterChunks: 99, match: { kind: 'generate' } },
      ]);
      const sdkChunks: string[] = [];
      for await (const c of await ai.models.generateContentStream({ model: MODEL, contents: prompt })) sdkChunks.push(c.text ?? '');
      const one = await ai.models.generateContent({ model: MODEL, contents: prompt });
      expect([one.text, one.candidates?.[0]?.finishReason, one.candidates?.[0]?.safetyRatings?.find((r) => r.blocked)?.category]).toEqual([sdkChunks[0], 'SAFETY', 'HARM_CATEGORY_DANGEROUS_CONTENT']);
      const all = await ai.models.generateContent({ model: MODEL, contents: prompt });
      expect(all.text).toBe(sdkChunks.join(''));
      expect(all.candidates?.[0]?.finishReason).toBe('RECITATION');
      expect(all.usageMetadata?.candidatesTokenCount).toBe(countTokens(sdkChunks.join('')));
      // A batch's create does not take it: its inline answers carry no text before a stop.
      emu.script({ refuse: { finishReason: 'SAFETY' }, afterChunks: 1 });
      await ai.batches.create({ model: MODEL, src: [{ contents: [{ role: 'user', parts: [{ text: prompt }] }] }] });
      expect(emu.faults()).toHaveLength(1);
      expect(emu.calls().at(-1)!.kind).toBe('batch');
      expect(emu.calls().at(-1)!.fault).toBeUndefined();
    });

    it('a RECITATION stop carries citationMetadata.citationSources (the SDK reads them as citations): the withheld answer by default, or the scripted sources', async () => {
      const answer = await (await raw('generateContent')).json();
      const bytes = Buffer.byteLength(answer.candidates[0].content.parts[0].text);
      const candidate = async () => (await (await raw('generateContent')).json()).candidates;
      emu.script({ refuse: { finishReason: 'RECITATION' } });
      expect(await candidate()).toEqual([{ finishReason: 'RECITATION', index: 0, citationMetadata: { citationSources: [{ startIndex: 0, endIndex: bytes, uri: CITED }] } }]);

      const sources = [
        { startIndex: 12, endIndex: 140, uri: 'https://github.com/example/repo', license: 'mit' },
        { startIndex: 150, endIndex: 320, uri: 'https://www.example.org/book' },
      ];
      emu.script([{ refuse: { finishReason: 'RECITATION', citations: sources } }, { refuse: { finishReason: 'RECITATION', citations: sources } }, { refuse: { finishReason: 'RECITATION', citations: [] } }]);
      expect(await candidate()).toEqual([{ finishReason: 'RECITATION', index: 0, citationMetadata: { citationSources: sources } }]);
      const sdk = await ai.models.generateContent({ model: MODEL, contents: prompt });
      expect(sdk.candidates).toEqual([{ finishReason: 'RECITATION', index: 0, citationMetadata: { citations: sources } }]);
      // No source: proto3 JSON leaves out the empty list, and the message holding only it.
      expect(await candidate()).toEqual([{ finishReason: 'RECITATION', index: 0 }]);

      // Stopped after two chunks of a stream: the source covers what followed them, in bytes.
      const stream = async () => (await (await raw('streamGenerateContent?alt=sse')).text()).trim().split('\n\n').map((e) => JSON.parse(e.replace(/^data: /, '')) as Record<string, any>);
      emu.script({ refuse: { finishReason: 'RECITATION' }, afterChunks: 2 });
      const events = await stream();
      const sent = Buffer.byteLength(events.slice(0, -1).map((e) => e.candidates[0].content.parts[0].text as string).join(''));
      expect(events).toHaveLength(3);
      // The text chunk the recitation began in, the last sent, cites its own bytes (streaming-failure-recitation-
      // no-content.txt: text chunks carry the citations of what they recite); the one before it cites nothing.
      const first = Buffer.byteLength(events[0].candidates[0].content.parts[0].text as string);
      expect(events[0].candidates[0].citationMetadata).toBeUndefined();
      expect(events[1].candidates[0].citationMetadata).toEqual({ citationSources: [{ startIndex: first, endIndex: sent, uri: CITED }] });
      expect(events.at(-1)!.candidates).toEqual([{ finishReason: 'RECITATION', index: 0, citationMetadata: { citationSources: [{ startIndex: sent, endIndex: bytes, uri: CITED }] } }]);
      // The scripted sources: the chunk names the first (its uri and license), the stop all of them; none, neither.
      emu.script([{ refuse: { finishReason: 'RECITATION', citations: sources }, afterChunks: 1 }, { refuse: { finishReason: 'RECITATION', citations: [] }, afterChunks: 1 }]);
      const named = await stream();
      expect(named[0].candidates[0].citationMetadata).toEqual({ citationSources: [{ startIndex: 0, endIndex: first, uri: sources[0].uri, license: sources[0].license }] });
      expect(named[1].candidates[0].citationMetadata).toEqual({ citationSources: sources });
      const unnamed = await stream();
      expect(unnamed.map((e) => e.candidates[0].citationMetadata)).toEqual([undefined, undefined]);
      // Through the SDK, the cited text chunk reads as any other: its text, its citations.
      emu.script({ refuse: { finishReason: 'RECITATION' }, afterChunks: 2 });
      const sdkChunks = [];
      for await (const c of await ai.models.generateContentStream({ model: MODEL, contents: prompt })) sdkChunks.push(c);
      const [a, b] = [sdkChunks[0].text!, sdkChunks[1].text!].map((t) => Buffer.byteLength(t));
      expect(b).toBeGreaterThan(0);
      expect(sdkChunks[1].candidates?.[0]?.citationMetadata).toEqual({ citations: [{ startIndex: a, endIndex: a + b, uri: CITED }] });

      const post = async (refuse: unknown) => {
        const res = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refuse }) });
        return { status: res.status, message: ((await res.json()) as { error: { message: string } }).error.message };
      };
      expect(await post({ finishReason: 'SAFETY', citations: [] })).toEqual({ status: 400, message: expect.stringMatching(/refuse\.citations needs finishReason RECITATION/) });
      expect(await post({ finishReason: 'RECITATION', citations: {} })).toEqual({ status: 400, message: expect.stringMatching(/refuse\.citations must be an array/) });
      expect(await post({ finishReason: 'RECITATION', citations: [{ startIndex: 9, endIndex: 3 }] })).toEqual({ status: 400, message: expect.stringMatching(/citations\[0\]\.startIndex must not be past its endIndex/) });
      expect(await post({ finishReason: 'RECITATION', citations: [{ uri: 'https://a' }, { startIndex: -1 }] })).toEqual({ status: 400, message: expect.stringMatching(/citations\[1\]\.startIndex must be a non-negative integer/) });
      expect(await post({ finishReason: 'RECITATION', citations: [{ url: 'https://a' }] })).toEqual({ status: 400, message: expect.stringMatching(/citations\[0\] has unknown field\(s\) url/) });
      expect(await post({ finishReason: 'RECITATION', citations: [{ license: '' }] })).toEqual({ status: 400, message: expect.stringMatching(/citations\[0\]\.license must be a non-empty string/) });
      expect(emu.faults()).toEqual([]);
    });

    it('a bad refusal script is refused with an error naming what is wrong', async () => {
      const post = async (refuse: unknown) => {
        const res = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refuse }) });
        return { status: res.status, message: ((await res.json()) as { error: { message: string } }).error.message };
      };
      expect(await post({ finishReason: 'SAFETY', category: 'VIOLENCE' })).toEqual({ status: 400, message: expect.stringMatching(/refuse\.category must be one of HARM_CATEGORY_/) });
      expect(await post({ noCandidate: true, category: 'HARM_CATEGORY_HARASSMENT' })).toEqual({ status: 400, message: expect.stringMatching(/refuse\.category needs a finishReason or a blockReason/) });
      expect(await post({ blockReason: 'SAFETY', finishMessage: 'no' })).toEqual({ status: 400, message: expect.stringMatching(/refuse\.finishMessage .* with a finishReason/) });
      expect(await post({ finishReason: 'SAFETY', categroy: 'HARM_CATEGORY_HARASSMENT' })).toEqual({ status: 400, message: expect.stringMatching(/unknown field\(s\) categroy/) });
      expect(await post('SAFETY')).toEqual({ status: 400, message: 'fault refuse must be an object' });
      expect(emu.faults()).toEqual([]);
    });
  });

  it('is scriptable from another process over its /__emulator/ HTTP routes', async () => {
    const ctl = createEmulatorControl(emu.url);
    await ctl.script([{ status: 503, match: { kind: 'stream' } }, { status: 429, retryAfterS: 1, times: Infinity, match: { promptIncludes: 'quota' } }]);
    const listed = (await (await fetch(`${emu.url}/__emulator/faults`)).json()) as { faults: Array<{ times: number }> };
    expect(listed.faults.map((f) => f.times)).toEqual([1, -1]);
    expect(await statusOf(ai.models.generateContentStream({ model: MODEL, contents: 'streamed' }))).toBe(503);
    expect(await statusOf(call('over quota'))).toBe(429);
    expect(await statusOf(call('over quota'))).toBe(429);
    expect((await ctl.calls()).map((c) => [c.kind, c.status])).toEqual([
      ['stream', 503],
      ['generate', 429],
      ['generate', 429],
    ]);
    await ctl.clearFaults();
    expect(await statusOf(call('over quota'))).toBe(200);
    const bad = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ status: 200 }) });
    expect(bad.status).toBe(400);
    const badRefusal = await fetch(`${emu.url}/__emulator/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refuse: { finishReason: 'SAFETY', blockReason: 'SAFETY' } }) });
    expect(badRefusal.status).toBe(400);
    expect(JSON.stringify(await badRefusal.json())).toContain('refuse');
    await ctl.setStreamChunkDelay(5);
    await ctl.script({ status: 500 });
    await ctl.reset();
    expect(await ctl.calls()).toEqual([]);
    expect(await statusOf(call())).toBe(200);
  });
});

