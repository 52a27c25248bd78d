import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { streamingFeature } from '../src/app/features/streaming.js';
import { createSseParser } from '../src/producers/client/sse-parser.js';
import { randomOrg, randomPrefix } from './helpers/env.js';
import { startStack, type Stack } from './helpers/stack.js';

async function listen(s: Stack): Promise<string> {
  await s.app.listen({ port: 0, host: '127.0.0.1' });
  const addr = s.app.server.address();
  return `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
}

/** Two API processes on one Redis and queue prefix; only the first runs a worker. */
describe('streams across API processes', () => {
  let one: Stack;
  let two: Stack;
  let baseOne: string;
  let baseTwo: string;

  beforeAll(async () => {
    const shared = { QUEUE_PREFIX: randomPrefix() };
    // A stream's lease lasts three heartbeats: 3 s outlasts the event-loop stalls of a machine loaded past its
    // cores (with 200 ms the held streams' leases lapsed beside two CPU hogs and the cap admitted a third).
    const features = [streamingFeature({ heartbeatMs: 1000, maxStreamsPerOrg: 2 })];
    one = await startStack(shared, { worker: true, features });
    two = await startStack(shared, { worker: false, features });
    [baseOne, baseTwo] = await Promise.all([listen(one), listen(two)]);
    one.emulator.setStreamChunkDelay(40);
  });
  let twoClosed = false;
  afterAll(async () => {
    if (!twoClosed) await two?.close();
    await one?.close();
  });

  it('serves a job from any process: both followers see the same messages', async () => {
    const input = { startup: { name: 'Everywhere', industry: 'logistics', stage: 'seed', description: 'Streamed by another process' } };
    const post = await two.app.inject({ method: 'POST', url: '/v1/jobs', headers: two.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream: true } } });
    const { id } = post.json();
    const read = async (base: string) => createSseParser().feed(await (await fetch(`${base}/v1/jobs/${id}/stream`, { headers: two.auth })).text());
    const [viaTwo, viaOne] = await Promise.all([read(baseTwo), read(baseOne)]);
    expect(viaTwo.filter((m) => m.data.startsWith('{"text"')).length).toBeGreaterThan(1);
    expect(viaTwo.map((m) => m.data).slice(-1)).toEqual(['[DONE]']);
    expect(JSON.parse(viaTwo[viaTwo.length - 2].data).result.success).toBe(true);
    expect(viaOne).toEqual(viaTwo);
  });

  it('shares the per-org cap on open streams between processes', async () => {
    const org = randomOrg();
    const key = await one.newKey(org);
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const held: AbortController[] = [];
    const open = async (base: string) => {
      const input = { startup: { name: 'Capped', industry: 'robotics', stage: 'seed', description: 'Held open' } };
      const post = await fetch(`${base}/v1/jobs`, { method: 'POST', headers, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream: true, delayMs: 600_000 } }) });
      const { id } = (await post.json()) as { id: string };
      const ac = new AbortController();
      held.push(ac);
      return fetch(`${base}/v1/jobs/${id}/stream`, { headers, signal: ac.signal });
    };
    try {
      expect((await open(baseOne)).status).toBe(200);
      expect((await open(baseTwo)).status).toBe(200);
      expect((await open(baseOne)).status).toBe(429);
      expect((await open(baseTwo)).status).toBe(429);
    } finally {
      held.forEach((ac) => ac.abort());
    }
  });

  it('cuts open streams on shutdown without [DONE]; the client resumes on another process', async () => {
    one.emulator.setStreamChunkDelay(150);
    const input = { startup: { name: 'Shutdown Mid Stream', industry: 'logistics', stage: 'seed', description: 'Outlives its API process' } };
    const { id } = (await one.app.inject({ method: 'POST', url: '/v1/jobs', headers: one.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input, options: { stream: true } } })).json();
    const res = await fetch(`${baseTwo}/v1/jobs/${id}/stream`, { headers: one.auth });
    const reader = res.body!.getReader();
    const parser = createSseParser();
    const before: ReturnType<typeof parser.feed> = [];
    while (!before.some((m) => m.data.startsWith('{"text"'))) before.push(...parser.feed(new TextDecoder().decode((await reader.read()).value)));
    const closing = two.close();
    twoClosed = true;
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true as const }));
      if (done) break;
      before.push(...parser.feed(new TextDecoder().decode(value)));
    }
    await closing;
    expect(before.some((m) => m.data === '[DONE]')).toBe(false);
    const lastId = before.filter((m) => m.id).pop()!.id!;
    const rest = createSseParser().feed(await (await fetch(`${baseOne}/v1/jobs/${id}/stream`, { headers: { ...one.auth, 'last-event-id': lastId } })).text());
    const whole = createSseParser().feed(await (await fetch(`${baseOne}/v1/jobs/${id}/stream`, { headers: one.auth })).text());
    expect([...before, ...rest]).toEqual(whole);
    expect(whole[whole.length - 1].data).toBe('[DONE]');
  });
});
