import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { GoogleGenAI } from '@google/genai';
import { z } from 'zod';
import { defaultRegistry } from '../../src/shared/agents/registry.js';
import { createApiKeyStore } from '../../src/shared/infra/db/api-keys.js';
import { createSseParser } from '../../src/producers/client/sse-parser.js';
import { RISK_REQUEST, riskInput, startAgentq } from '../lib/agentq.js';
import type { BenchContext } from '../lib/context.js';
import { percentile, round } from '../lib/stats.js';

const ITERATIONS = 20;
const CHUNK_DELAY_MS = 25;
const TARGET_ADDED_MS = 20;

/** Time to the first text chunk of the same request straight from the emulator through the SDK; reads to the end. */
async function directTtfc(ai: GoogleGenAI, n: number): Promise<number> {
  const action = defaultRegistry().resolve('RiskAnalyzer', 'analyze_risks').action;
  const { $schema: _drop, ...schema } = z.toJSONSchema(action.output) as Record<string, unknown>;
  const prompt = await action.prompt(riskInput(`direct-${n}`), { orgId: 'bench' });
  const started = performance.now();
  let first: number | undefined;
  const stream = await ai.models.generateContentStream({
    model: 'gemini-2.5-pro',
    contents: prompt.user,
    config: { systemInstruction: prompt.system, responseMimeType: 'application/json', responseJsonSchema: schema },
  });
  for await (const chunk of stream) if (first === undefined && chunk.text) first = performance.now() - started;
  if (first === undefined) throw new Error('the emulator streamed no text');
  return first;
}

/** Time from `POST /v1/stream` to the first `{text}` SSE message (queue + worker + Redis Stream + SSE); reads to [DONE]. */
async function agentqTtfc(url: string, auth: string, n: number): Promise<number> {
  const started = performance.now();
  const res = await fetch(url, { method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' }, body: JSON.stringify(RISK_REQUEST(`sse-${n}-${randomUUID()}`)) });
  if (res.status !== 200) throw new Error(`POST /v1/stream answered ${res.status}: ${await res.text()}`);
  const parser = createSseParser();
  const decoder = new TextDecoder();
  const reader = res.body!.getReader();
  let first: number | undefined;
  let finished = false;
  while (!finished) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const m of parser.feed(decoder.decode(value, { stream: true }))) {
      if (m.data === '[DONE]') finished = true;
      else if (first === undefined && m.event === 'message' && 'text' in JSON.parse(m.data)) first = performance.now() - started;
    }
  }
  if (first === undefined) throw new Error('the SSE stream carried no text chunk');
  return first;
}

/**
 * Case 7: extra time to first chunk through the queue, a worker, the job's Redis Stream and SSE, against
 * the same streaming call made straight to the emulator, which streams at a fixed pace. Direct and agentq
 * requests alternate so noise hits both alike.
 */
export async function streamingCase(ctx: BenchContext): Promise<void> {
  const tc = '7 streaming time to first chunk';
  await ctx.b.control.flushall();
  const q = await startAgentq(ctx.b, { api: true, env: { WORKER_CONCURRENCY: '4' } });
  try {
    if (!q.app!.hasRoute({ method: 'POST', url: '/v1/stream' })) {
      ctx.add({ case: tc, name: 'added time to first chunk', value: null, unit: 'ms', target: `< ${TARGET_ADDED_MS} ms`, met: null, note: 'POST /v1/stream does not exist in this build' });
      return;
    }
    await q.startWorker();
    await q.app!.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(q.app!.server.address() as AddressInfo).port}/v1/stream`;
    const { key } = await createApiKeyStore({ pool: ctx.b.pool }).create({ orgId: `bench-sse-${randomUUID().slice(0, 6)}` });
    const ai = new GoogleGenAI({ apiKey: 'bench-not-a-real-key', vertexai: false, httpOptions: { baseUrl: ctx.b.emulatorUrl } });
    await ctx.b.emulator.setStreamChunkDelay(CHUNK_DELAY_MS);
    const direct: number[] = [];
    const viaAgentq: number[] = [];
    // One of each first, unmeasured: connection set-up and JIT.
    await directTtfc(ai, -1);
    await agentqTtfc(url, `Bearer ${key}`, -1);
    for (let i = 0; i < ITERATIONS; i++) {
      direct.push(await directTtfc(ai, i));
      viaAgentq.push(await agentqTtfc(url, `Bearer ${key}`, i));
    }
    await ctx.b.emulator.setStreamChunkDelay(0);
    const added50 = percentile(viaAgentq, 50) - percentile(direct, 50);
    const added95 = percentile(viaAgentq, 95) - percentile(direct, 95);
    ctx.details.streaming = { chunkDelayMs: CHUNK_DELAY_MS, direct, viaAgentq };
    ctx.log(`  TTFC direct p50 ${round(percentile(direct, 50), 1)} ms, via agentq p50 ${round(percentile(viaAgentq, 50), 1)} ms`);
    ctx.add({ case: tc, name: 'direct SDK stream from the emulator p50 / p95', value: `${round(percentile(direct, 50), 1)} / ${round(percentile(direct, 95), 1)}`, unit: 'ms', note: `emulator streams a chunk every ${CHUNK_DELAY_MS} ms; ${ITERATIONS} requests each` });
    ctx.add({ case: tc, name: 'POST /v1/stream (queue + worker + Redis Stream + SSE) p50 / p95', value: `${round(percentile(viaAgentq, 50), 1)} / ${round(percentile(viaAgentq, 95), 1)}`, unit: 'ms' });
    ctx.add({ case: tc, name: 'added time to first chunk, p50', value: round(added50, 1), unit: 'ms', target: `< ${TARGET_ADDED_MS} ms`, met: added50 < TARGET_ADDED_MS });
    ctx.add({ case: tc, name: 'added time to first chunk, p95', value: round(added95, 1), unit: 'ms' });
  } finally {
    await q.close();
  }
}
