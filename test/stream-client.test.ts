import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentqHttpError, createAgentqClient, type JobStreamEvent } from '../src/producers/client/client.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import { compareStreamIds, SSE_HEARTBEAT_HEADER } from '../src/shared/core/stream-event.js';
import { startStack, type Stack } from './helpers/stack.js';

const riskInput = (name: string) => ({ startup: { name, industry: 'robotics', stage: 'seed' as const, description: 'Streamed through the client' } });

/** Every request the client made, and a body that dies after `cutAfter` reads on the first stream GET. */
function flakyFetch(cutAfter: number) {
  const requests: Array<{ url: string; headers: Record<string, string> }> = [];
  let cut = false;
  const doFetch = async (url: string, init: RequestInit): Promise<Response> => {
    requests.push({ url, headers: { ...(init.headers as Record<string, string>) } });
    const res = await fetch(url, init);
    if (cut || !url.endsWith('/stream') || init.method !== 'GET') return res;
    cut = true;
    const upstream = res.body!.getReader();
    let reads = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (reads++ === cutAfter) {
          await upstream.cancel();
          return controller.error(new TypeError('terminated'));
        }
        const { value, done } = await upstream.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  return { doFetch, requests };
}

/** A body that stops forwarding after its first read of the first stream GET, never ending (a stalled proxy). */
function freezingFetch() {
  const streams: Array<{ heartbeat: string | null }> = [];
  const doFetch = async (url: string, init: RequestInit): Promise<Response> => {
    const res = await fetch(url, init);
    if (!url.endsWith('/stream') || init.method !== 'GET') return res;
    streams.push({ heartbeat: res.headers.get(SSE_HEARTBEAT_HEADER) });
    if (streams.length > 1) return res;
    const upstream = res.body!.getReader();
    let reads = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        // Frozen, but ended by the request's abort like a fetch body.
        if (reads++ > 0) return new Promise<void>((resolve) => init.signal?.addEventListener('abort', () => resolve(controller.error(init.signal?.reason)), { once: true }));
        const { value, done } = await upstream.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel: () => upstream.cancel(),
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  return { doFetch, streams };
}

describe('client.stream', () => {
  let s: Stack;
  let baseUrl: string;

  beforeAll(async () => {
    s = await startStack({}, { worker: true, features: [streamingFeature({ heartbeatMs: 200 })] });
    await s.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = s.app.server.address();
    baseUrl = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
    s.emulator.setStreamChunkDelay(60);
  });
  afterAll(async () => s?.close());

  const collect = async <T>(it: AsyncIterable<JobStreamEvent<T>>) => {
    const out: Array<JobStreamEvent<T>> = [];
    for await (const e of it) out.push(e);
    return out;
  };

  it('enqueueStream yields typed chunks, progress and the result', async () => {
    const client = createAgentqClient({ baseUrl, apiKey: s.apiKey });
    // This stack's heartbeat is 200 ms: three of them is no margin for a machine starved of CPU, and this is no test of it.
    const events = await collect(client.enqueueStream('RiskAnalyzer', 'analyze_risks', riskInput('Typed Streams'), undefined, { idleTimeoutMs: 10_000 }));
    expect(events[0]).toMatchObject({ type: 'progress', progress: { stage: 'queued' } });
    const text = events.flatMap((e) => (e.type === 'text' ? [e.text] : [])).join('');
    const last = events[events.length - 1];
    expect(last.type).toBe('result');
    if (last.type !== 'result') return;
    // Typed as the action's output.
    const risks: unknown[] = last.result.data!.risks;
    expect(Array.isArray(risks)).toBe(true);
    expect(JSON.parse(text)).toEqual(last.result.data);
  });

  it('resumes a dropped stream with Last-Event-ID, losing and repeating nothing', async () => {
    const { id } = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Dropped Line'), options: { stream: true } } }).then((r) => r.json());
    const flaky = flakyFetch(3);
    const client = createAgentqClient({ baseUrl, apiKey: s.apiKey, fetch: flaky.doFetch });
    // Only the cut reconnects (not a heartbeat late on a busy machine): the announced 200 ms is not used here.
    const events = await collect(client.stream(id, { reconnectDelayMs: 20, idleTimeoutMs: 10_000 }));

    const streamCalls = flaky.requests.filter((r) => r.url.endsWith('/stream'));
    expect(streamCalls.length).toBe(2);
    const resumedFrom = streamCalls[1].headers['last-event-id'];
    expect(resumedFrom).toMatch(/^\d+-\d+$/);

    const ids = events.map((e) => e.id!);
    for (let i = 1; i < ids.length; i++) expect(compareStreamIds(ids[i], ids[i - 1])).toBe(1);
    // Same events as an uninterrupted reader of the now finished job.
    const whole = await collect(createAgentqClient({ baseUrl, apiKey: s.apiKey }).stream(id));
    expect(events).toEqual(whole);
    expect(events.some((e) => e.id === resumedFrom)).toBe(true);
    expect(events[events.length - 1].type).toBe('result');
  });

  it('takes the heartbeat the server announces: a frozen connection is resumed after three of its 200 ms, unconfigured', async () => {
    // Delayed for good: the stream brings nothing but heartbeats.
    const { id } = await s.app
      .inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Frozen Line'), options: { stream: true, delayMs: 600_000 } } })
      .then((r) => r.json());
    const frozen = freezingFetch();
    const client = createAgentqClient({ baseUrl, apiKey: s.apiKey, fetch: frozen.doFetch });
    const ac = new AbortController();
    // No idleTimeoutMs: the default 45 s would leave the frozen connection hanging.
    const following = collect(client.stream(id, { signal: ac.signal, reconnectDelayMs: 20 })).catch((err: unknown) => err);
    try {
      await vi.waitFor(() => expect(frozen.streams.length).toBe(2), { timeout: 10_000, interval: 50 });
      expect(frozen.streams[0].heartbeat).toBe('200');
    } finally {
      ac.abort();
      await following;
      await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: s.auth });
    }
  });

  it('surfaces a 404 as AgentqHttpError', async () => {
    const client = createAgentqClient({ baseUrl, apiKey: s.apiKey });
    await expect(collect(client.stream('no-such-job'))).rejects.toBeInstanceOf(AgentqHttpError);
  });
});
