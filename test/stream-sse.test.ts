import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Job } from 'bullmq';
import { idempotencyRecordKey, jobStreamKey } from '../src/shared/core/queue-keys.js';
import { streamingFeature } from '../src/app/features/streaming.js';
import type { SseMessage } from '../src/producers/client/sse-parser.js';
import { readSseBody } from './helpers/sse.js';
import { compareStreamIds, SSE_HEARTBEAT_HEADER } from '../src/shared/core/stream-event.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, within } from './helpers/wait.js';
import { redisUrl } from './helpers/env.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { createStreamReader, StreamUnreadableError } from '../src/shared/stream/stream-reader.js';

const riskInput = (name: string) => ({ startup: { name, industry: 'robotics', stage: 'seed', description: 'Warehouse picking robots for mid-size retailers' } });

interface SseRead {
  status: number;
  headers: Headers;
  messages: SseMessage[];
  raw: string;
}

/** Reads an SSE response to its end, or until `stopAfter` says so (then the connection is dropped). */
async function readSse(url: string, init: RequestInit & { stopAfter?: (m: SseMessage[]) => boolean } = {}): Promise<SseRead> {
  const ac = new AbortController();
  return readOpenSse(await fetch(url, { ...init, signal: ac.signal }), ac, init.stopAfter);
}

/** Reads a response already open (its headers received) to its end, or until `stopAfter` says so. */
async function readOpenSse(res: Response, ac: AbortController, stopAfter?: (m: SseMessage[]) => boolean): Promise<SseRead> {
  const messages: SseMessage[] = [];
  let raw = '';
  if (res.headers.get('content-type')?.startsWith('text/event-stream')) {
    raw = await readSseBody(res, messages, (m) => {
      if (!stopAfter?.(m)) return false;
      ac.abort();
      return true;
    });
  } else {
    raw = await res.text();
  }
  return { status: res.status, headers: res.headers, messages, raw };
}

const texts = (ms: SseMessage[]) => ms.filter((m) => m.event === 'message' && m.data !== '[DONE]' && 'text' in JSON.parse(m.data)).map((m) => JSON.parse(m.data).text as string);
const progress = (ms: SseMessage[]) => ms.filter((m) => m.event === 'progress').map((m) => JSON.parse(m.data));
const last = <T>(xs: T[]) => xs[xs.length - 1];

describe('SSE job streams', () => {
  let s: Stack;
  let base: string;
  let auth: Record<string, string>;

  beforeAll(async () => {
    s = await startStack({ JOB_ATTEMPTS: '2' }, { worker: true, features: [streamingFeature({ heartbeatMs: 200, maxStreamsPerOrg: 3 })] });
    await s.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = s.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
    auth = { ...s.auth, 'content-type': 'application/json' };
    s.emulator.setStreamChunkDelay(25);
  });
  afterAll(async () => s?.close());

  const enqueue = async (payload: unknown) => {
    const res = await fetch(`${base}/v1/jobs`, { method: 'POST', headers: auth, body: JSON.stringify(payload) });
    expect(res.status).toBe(202);
    return ((await res.json()) as { id: string }).id;
  };

  it('POST /v1/stream streams chunks in order, then the result, then [DONE]', async () => {
    const r = await readSse(`${base}/v1/stream`, { method: 'POST', headers: auth, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Chunky') }) });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const jobId = r.headers.get('x-job-id');
    expect(jobId).toBeTruthy();

    const stages = progress(r.messages).map((p) => p.stage);
    expect(stages.slice(0, 2)).toEqual(['queued', 'started']);
    expect(progress(r.messages)[0].jobId).toBe(jobId);
    const chunks = texts(r.messages);
    expect(chunks.length).toBeGreaterThan(1);
    expect(last(r.messages).data).toBe('[DONE]');
    const final = JSON.parse(r.messages[r.messages.length - 2].data);
    expect(final.result.success).toBe(true);
    // The chunks are the model's JSON answer, in order: together they parse to what the job returned.
    expect(JSON.parse(chunks.join(''))).toEqual(final.result.data);

    // Entry ids are Redis Stream ids, strictly increasing.
    const ids = r.messages.filter((m) => m.id).map((m) => m.id!);
    for (let i = 1; i < ids.length; i++) expect(compareStreamIds(ids[i], ids[i - 1])).toBe(1);

    const view = await (await fetch(`${base}/v1/jobs/${jobId}`, { headers: auth })).json();
    expect(view.state).toBe('completed');
    expect(view.result).toEqual(final.result);
  });

  it('gives clients that join mid-stream or after the end every message from the start', async () => {
    s.emulator.setStreamChunkDelay(80);
    try {
      const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Latecomer'), options: { stream: true } });
      const url = `${base}/v1/jobs/${id}/stream`;
      // The second client joins while the first is live: they share the process's reader at different positions.
      // (One read can bring several messages on a busy machine, so "two chunks seen" is >= 2, not === 2.)
      let midway: Promise<SseRead> | undefined;
      let joinedLive = false;
      const early = await readSse(url, {
        headers: auth,
        stopAfter: (ms) => {
          if (!midway && texts(ms).length >= 2) {
            joinedLive = !ms.some((m) => m.data === '[DONE]');
            midway = readSse(url, { headers: auth });
          }
          return false;
        },
      });
      expect(midway).toBeDefined();
      expect(joinedLive).toBe(true);
      const mid = await midway!;
      const late = await readSse(url, { headers: auth });
      expect(texts(early.messages).length).toBeGreaterThan(2);
      expect(mid.messages).toEqual(early.messages);
      expect(late.messages).toEqual(early.messages);
      expect(progress(late.messages)[0]).toMatchObject({ stage: 'started', attempt: 1 });
      expect(JSON.parse(late.messages[late.messages.length - 2].data).result.success).toBe(true);
    } finally {
      s.emulator.setStreamChunkDelay(25);
    }
  });

  it('resumes from Last-Event-ID with no chunk lost or repeated', async () => {
    s.emulator.setStreamChunkDelay(80);
    try {
      const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Resumable Robotics'), options: { stream: true } });
      const first = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: auth, stopAfter: (ms) => texts(ms).length >= 2 });
      const cut = last(first.messages.filter((m) => m.id));
      expect(cut.id).toBeTruthy();
      const rest = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: { ...auth, 'last-event-id': cut.id! } });
      expect(rest.messages.some((m) => m.id === cut.id)).toBe(false);
      const whole = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: auth });
      expect([...first.messages, ...rest.messages]).toEqual(whole.messages);

      // Resuming after the final message gets only the end marker.
      const finalId = whole.messages[whole.messages.length - 2].id!;
      const after = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: { ...auth, 'last-event-id': finalId } });
      expect(after.messages.map((m) => m.data)).toEqual(['[DONE]']);
    } finally {
      s.emulator.setStreamChunkDelay(25);
    }
  });

  it('rejects a malformed Last-Event-ID naming it', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Bad Header'), options: { stream: true } });
    const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: { ...auth, 'last-event-id': 'yesterday' } });
    expect(res.status).toBe(400);
    expect((await res.json()).details[0].path).toBe('headers.last-event-id');
  });

  it('refuses a Last-Event-ID whose halves exceed 64 bits, naming it', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Huge Header'), options: { stream: true } });
    // Twenty digits, the regex's bound, yet above 2^64-1: Redis refuses it in XREAD.
    const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: { ...auth, 'last-event-id': '99999999999999999999-0' } });
    expect(res.status).toBe(400);
    expect((await res.json()).details[0].path).toBe('headers.last-event-id');
    const query = await fetch(`${base}/v1/jobs/${id}/stream?lastEventId=0-18446744073709551616`, { headers: auth });
    expect(query.status).toBe(400);
    expect((await query.json()).details[0].path).toBe('query.lastEventId');
    const max = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: { ...auth, 'last-event-id': '18446744073709551615-18446744073709551615' }, stopAfter: () => true });
    expect(max.status).toBe(200);
  });

  it('a stream Redis refuses to read ends with an error and holds back no other org’s stream', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Unreadable'), options: { stream: true, delayMs: 600_000 } });
    // Not a stream: the process's one XREAD naming it is refused whole (WRONGTYPE).
    await s.runtime.deps.redis.set(jobStreamKey(s.cfg.QUEUE_PREFIX, id), 'not a stream');
    const ac = new AbortController();
    const open = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: auth, signal: ac.signal });
    expect(open.status).toBe(200);
    const broken = readOpenSse(open, ac);
    try {
      const other = { authorization: `Bearer ${await s.newKey()}`, 'content-type': 'application/json' };
      const r = await readSse(`${base}/v1/stream`, { method: 'POST', headers: other, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Innocent') }) });
      expect(texts(r.messages).length).toBeGreaterThan(0);
      expect(JSON.parse(r.messages[r.messages.length - 2].data)).toMatchObject({ result: { success: true } });
      const ended = await within(broken, 10_000, 'the unreadable stream ends');
      expect(ended.messages.map((m) => m.data)).toEqual([JSON.stringify({ error: 'internal error', state: 'failed' }), '[DONE]']);
    } finally {
      ac.abort();
      await s.runtime.deps.redis.del(jobStreamKey(s.cfg.QUEUE_PREFIX, id));
    }
  });

  it('a stream Redis refuses to read ends with an error when it is the only one the process reads', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Alone Unreadable'), options: { stream: true, delayMs: 600_000 } });
    await s.runtime.deps.redis.set(jobStreamKey(s.cfg.QUEUE_PREFIX, id), 'not a stream');
    const ac = new AbortController();
    try {
      const open = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: auth, signal: ac.signal });
      expect(open.status).toBe(200);
      const ended = await within(readOpenSse(open, ac), 10_000, 'the unreadable stream ends');
      expect(ended.messages.map((m) => m.data)).toEqual([JSON.stringify({ error: 'internal error', state: 'failed' }), '[DONE]']);
    } finally {
      ac.abort();
      await s.runtime.deps.redis.del(jobStreamKey(s.cfg.QUEUE_PREFIX, id));
    }
  });

  it('the shared reader refuses an id out of range before it reaches the shared read', async () => {
    const reader = createStreamReader({ connect: () => createRedis(redisUrl(), 'worker'), control: s.runtime.deps.redis, blockMs: 1000, count: 10, logger: s.logger });
    try {
      expect(() => reader.subscribe(jobStreamKey(s.cfg.QUEUE_PREFIX, 'x'), '0-18446744073709551616', () => {}, () => {})).toThrow(StreamUnreadableError);
      expect(reader.size()).toBe(0);
    } finally {
      await reader.close();
    }
  });

  it('the shared reader gives a subscriber that joins behind a read in flight the entries it read past, not only what came after', async () => {
    // The join's wake-up cannot cut the blocked read short (UNBLOCK answers 0, as when the read has not reached Redis
    // yet): the read then answers from the first subscriber's position, which the joiner is behind.
    const control = new Proxy(s.runtime.deps.redis, {
      get(target, prop, receiver) {
        if (prop === 'client') return async () => 0;
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const reader = createStreamReader({ connect: () => createRedis(redisUrl(), 'worker'), control, blockMs: 60_000, count: 10, logger: s.logger });
    const key = jobStreamKey(s.cfg.QUEUE_PREFIX, `joiner-${Date.now()}`);
    const redis = s.runtime.deps.redis;
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await redis.xadd(key, '*', 'n', String(i)))!);
    const first: string[] = [];
    const joiner: string[] = [];
    try {
      reader.subscribe(key, '0-0', (es) => first.push(...es.map(([id]) => id)), () => {});
      await vi.waitFor(() => expect(first).toEqual(ids), POLL);
      // The reader now blocks from the last id; the joiner starts from the beginning.
      reader.subscribe(key, '0-0', (es) => joiner.push(...es.map(([id]) => id)), () => {});
      ids.push((await redis.xadd(key, '*', 'n', '3'))!);
      await vi.waitFor(() => expect(first).toEqual(ids), POLL);
      await vi.waitFor(() => expect(joiner).toEqual(ids), POLL);
    } finally {
      await reader.close();
      await redis.del(key);
    }
  });

  it('answers another org exactly like a missing job', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Private'), options: { stream: true } });
    const stranger = { authorization: `Bearer ${await s.newKey()}` };
    const theirs = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: stranger });
    const missing = await fetch(`${base}/v1/jobs/no-such-job/stream`, { headers: stranger });
    expect(theirs.status).toBe(404);
    expect(missing.status).toBe(404);
    expect(await theirs.json()).toEqual(await missing.json());
  });

  it('serves a job enqueued without streaming: its result then [DONE], with no Redis Stream', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Quiet') });
    const r = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: auth });
    expect(r.status).toBe(200);
    expect(r.messages.map((m) => m.data).slice(-1)).toEqual(['[DONE]']);
    expect(texts(r.messages)).toEqual([]);
    const final = JSON.parse(r.messages[r.messages.length - 2].data);
    expect(final).toMatchObject({ result: { success: true } });
    expect(await s.runtime.deps.redis.exists(jobStreamKey(s.cfg.QUEUE_PREFIX, id))).toBe(0);
  });

  it('a job that finishes between the route reading its hash and its state still ends with its result', async () => {
    // CI once saw {"error":"completed"} here: the hash was read before the job finished, the state after.
    const marker = 'Between Reads';
    s.emulator.script({ latencyMs: 1500, match: { promptIncludes: marker } });
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput(marker) });
    const getState = Job.prototype.getState;
    let hashReadUnfinished: boolean | undefined;
    const spy = vi.spyOn(Job.prototype, 'getState').mockImplementation(async function (this: Job) {
      if (this.id === id && hashReadUnfinished === undefined) {
        hashReadUnfinished = !this.finishedOn;
        await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(id)).toBe('completed'), POLL);
      }
      return getState.call(this);
    });
    try {
      const r = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: auth });
      expect(hashReadUnfinished).toBe(true);
      expect(r.messages.map((m) => m.data).slice(-1)).toEqual(['[DONE]']);
      expect(JSON.parse(r.messages[r.messages.length - 2].data)).toMatchObject({ result: { success: true } });
    } finally {
      spy.mockRestore();
    }
  });

  it('sends retrying progress, then the error and [DONE] for a job that fails for good', async () => {
    const marker = 'Doomed Dynamics';
    s.emulator.script({ status: 500, message: 'backend exploded', times: 2, match: { promptIncludes: marker } });
    const r = await readSse(`${base}/v1/stream`, { method: 'POST', headers: auth, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput(marker) }) });
    const stages = progress(r.messages).map((p) => `${p.stage}:${p.attempt ?? ''}`);
    expect(stages).toEqual(['queued:', 'started:1', 'retrying:1', 'started:2']);
    expect(last(r.messages).data).toBe('[DONE]');
    const final = JSON.parse(r.messages[r.messages.length - 2].data);
    expect(final).toMatchObject({ state: 'failed' });
    expect(final.error).toMatch(/500/);
    expect(r.messages.filter((m) => m.data.includes('"error"'))).toHaveLength(1);
  });

  it('a stream Gemini stops for SAFETY after some text: the client got that text, then EBLOCKED naming the category and [DONE], at one attempt; none of it cached', async () => {
    const marker = 'Filtered Fabrications';
    s.emulator.script({ refuse: { finishReason: 'SAFETY', category: 'HARM_CATEGORY_HARASSMENT' }, afterChunks: 2, match: { kind: 'stream', promptIncludes: marker } });
    const body = JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput(marker) });
    const r = await readSse(`${base}/v1/stream`, { method: 'POST', headers: auth, body });
    const jobId = r.headers.get('x-job-id')!;
    // The text of the two chunks Gemini sent before the stop (the writer may merge chunks into one entry).
    const partial = texts(r.messages).join('');
    expect(partial.length).toBeGreaterThan(0);
    // A refusal is not retried: no retrying, no second start.
    expect(progress(r.messages).map((p) => p.stage)).toEqual(['queued', 'started', 'streaming']);
    expect(last(r.messages).data).toBe('[DONE]');
    const final = JSON.parse(r.messages[r.messages.length - 2].data);
    // The failed reason says the client already got text before the stop (how much, never what).
    expect(final).toEqual({ error: expect.stringMatching(new RegExp(`^\\[EBLOCKED\\] .*answer stopped \\(finishReason SAFETY; blocked categories HARM_CATEGORY_HARASSMENT; ${partial.length} chars already streamed to the caller\\)$`)), state: 'failed' });
    expect(r.messages.filter((m) => m.data.includes('"error"') || m.data.includes('"result"'))).toHaveLength(1);
    const view = await (await fetch(`${base}/v1/jobs/${jobId}`, { headers: auth })).json();
    expect(view).toMatchObject({ state: 'failed', attempts: 1, error: final.error });
    expect(view.result).toBeUndefined();
    const stopped = s.emulator.calls().filter((c) => c.fault === 'refuse:SAFETY@2');
    expect(stopped).toHaveLength(1);
    expect(stopped[0].outputTokens).toBeGreaterThan(0);

    // Nothing of the stopped answer was cached: the same job again calls the model and gets its whole answer,
    // which is cached (a third is served from the cache), so the cache was there to take the first.
    const callsBefore = s.emulator.calls().length;
    const again = await readSse(`${base}/v1/stream`, { method: 'POST', headers: auth, body });
    const result = JSON.parse(again.messages[again.messages.length - 2].data).result;
    expect(result).toMatchObject({ success: true });
    expect(result.cacheHit).toBeUndefined();
    expect(JSON.parse(texts(again.messages).join(''))).toEqual(result.data);
    const whole = texts(again.messages).join('');
    expect(whole.startsWith(partial) && whole.length > partial.length).toBe(true);
    const third = await readSse(`${base}/v1/stream`, { method: 'POST', headers: auth, body });
    expect(JSON.parse(third.messages[third.messages.length - 2].data).result).toMatchObject({ success: true, cacheHit: expect.stringMatching(/^l[12]$/), data: result.data });
    expect(s.emulator.calls().slice(callsBefore).map((c) => [c.kind, c.status, c.fault])).toEqual([['stream', 200, undefined]]);
  });

  it('ends the stream of a job cancelled before it ran', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Cancelled Early'), options: { stream: true, delayMs: 600_000 } });
    // Once its headers are in, the server follows the job's stream: the cancel reaches a live stream.
    const ac = new AbortController();
    const open = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: auth, signal: ac.signal });
    expect(open.status).toBe(200);
    expect((await fetch(`${base}/v1/jobs/${id}`, { method: 'DELETE', headers: s.auth })).status).toBe(200);
    const r = await readOpenSse(open, ac);
    expect(r.messages.map((m) => m.data)).toEqual([JSON.stringify({ error: 'cancelled', state: 'cancelled' }), '[DONE]']);
    // Connecting afterwards answers from the cancelled tombstone at once.
    const again = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: auth });
    expect(again.messages.map((m) => m.data)).toEqual([JSON.stringify({ error: 'cancelled', state: 'cancelled' }), '[DONE]']);
  });

  it('a job id reused through an idempotency key streams its own entries, not the cancelled job’s before it', async () => {
    const key = `reused-${Date.now()}`;
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('First Go'), options: { stream: true, delayMs: 600_000, idempotencyKey: key } });
    expect((await fetch(`${base}/v1/jobs/${id}`, { method: 'DELETE', headers: s.auth })).status).toBe(200);
    // The cancel left its terminal entry in the job's stream (kept an hour for late readers).
    expect(await s.runtime.deps.redis.xlen(jobStreamKey(s.cfg.QUEUE_PREFIX, id))).toBe(1);
    // The key's record lapsed (IDEMPOTENCY_TTL_S): the key makes a new job under the id.
    await s.runtime.deps.redis.del(idempotencyRecordKey(s.cfg.QUEUE_PREFIX, id));

    const again = await readSse(`${base}/v1/stream`, { method: 'POST', headers: auth, body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Second Go'), options: { idempotencyKey: key } }) });
    expect(again.headers.get('x-job-id')).toBe(id);
    expect(texts(again.messages).length).toBeGreaterThan(0);
    expect(again.messages.some((m) => m.data.includes('cancelled'))).toBe(false);
    expect(JSON.parse(again.messages[again.messages.length - 2].data)).toMatchObject({ result: { success: true } });

    // A reader joining afterwards gets the same messages (the new job's), from the start.
    const late = await readSse(`${base}/v1/jobs/${id}/stream`, { headers: auth });
    expect(late.messages.filter((m) => m.id)).toEqual(again.messages.filter((m) => m.id));
  });

  it('skips another incarnation’s entry written while a job is followed (a late write of the job id’s previous job)', async () => {
    const id = await enqueue({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Followed'), options: { stream: true, delayMs: 600_000 } });
    const ac = new AbortController();
    const open = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: auth, signal: ac.signal });
    expect(open.status).toBe(200);
    const followed = readOpenSse(open, ac);
    const foreign = JSON.stringify({ success: true, data: { stale: true } });
    await s.runtime.deps.redis.xadd(jobStreamKey(s.cfg.QUEUE_PREFIX, id), '*', 'k', 'result', 'v', foreign, 'j', '1');
    expect((await fetch(`${base}/v1/jobs/${id}`, { method: 'DELETE', headers: s.auth })).status).toBe(200);
    const r = await within(followed, 10_000, 'the followed stream ends');
    expect(r.messages.map((m) => m.data)).toEqual([JSON.stringify({ error: 'cancelled', state: 'cancelled' }), '[DONE]']);
  });

  it('sends heartbeats while waiting, and caps open streams per org with 429 + Retry-After', async () => {
    const orgKey = { authorization: `Bearer ${await s.newKey()}`, 'content-type': 'application/json' };
    const held: AbortController[] = [];
    const open = async () => {
      const post = await fetch(`${base}/v1/jobs`, {
        method: 'POST',
        headers: orgKey,
        body: JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Later'), options: { stream: true, delayMs: 600_000 } }),
      });
      const { id } = (await post.json()) as { id: string };
      const ac = new AbortController();
      const res = await fetch(`${base}/v1/jobs/${id}/stream`, { headers: orgKey, signal: ac.signal });
      held.push(ac);
      return res;
    };
    try {
      const first = await open();
      expect(first.status).toBe(200);
      // Announced, so a client sizes its idle timeout to this deployment's heartbeat.
      expect(first.headers.get(SSE_HEARTBEAT_HEADER)).toBe('200');
      const reader = first.body!.getReader();
      let raw = '';
      while (!raw.includes(': ping')) raw += new TextDecoder().decode((await reader.read()).value);
      expect((await open()).status).toBe(200);
      expect((await open()).status).toBe(200);
      const refused = await open();
      expect(refused.status).toBe(429);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect((await refused.json()).limit).toBe(3);
      // Closing one frees its slot.
      held[0].abort();
      await vi.waitFor(async () => expect((await open()).status).toBe(200), { ...POLL, interval: 50 });
    } finally {
      held.forEach((ac) => ac.abort());
    }
  });
});

describe('POST /v1/stream admission', () => {
  let s: Stack;
  let base: string;
  beforeAll(async () => {
    s = await startStack({ RATE_LIMIT_PLANS: JSON.stringify({ general: { points: 1, durationS: 60 } }) }, { worker: false, features: [streamingFeature({ heartbeatMs: 200 })] });
    await s.app.listen({ port: 0, host: '127.0.0.1' });
    const addr = s.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(async () => s?.close());

  it('spends the org admission like POST /v1/jobs: over the plan is a 429 and nothing is enqueued', async () => {
    const body = JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput('Rate Limited') });
    const headers = { ...s.auth, 'content-type': 'application/json' };
    const ac = new AbortController();
    const first = await fetch(`${base}/v1/stream`, { method: 'POST', headers, body, signal: ac.signal });
    expect(first.status).toBe(200);
    ac.abort();
    const second = await fetch(`${base}/v1/stream`, { method: 'POST', headers, body });
    expect(second.status).toBe(429);
    expect(Number(second.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(await s.runtime.queue.getJobCountByTypes('waiting', 'prioritized', 'delayed')).toBe(1);
  });
});
