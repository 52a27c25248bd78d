import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentqTimeoutError, createAgentqClient, type JobStreamEvent, type JobView } from '../src/producers/client/client.js';
import { sleep } from '../src/shared/core/abortable-sleep.js';
import { SSE_HEARTBEAT_HEADER } from '../src/shared/core/stream-event.js';

/**
 * The typed client against a stand-in for the API that misbehaves the ways a network does: an answer whose
 * body stops half way, an SSE stream that sends its headers and then nothing (a half-open socket, a stalled
 * proxy), on every reconnection too, an overloaded server that says Retry-After: 0, a server whose heartbeat is
 * not the default one. Each path id picks the misbehaviour.
 */
const API_KEY = 'aq_test_secret';
let server: Server;
let baseUrl: string;
let requests: Array<{ method: string; path: string; lastEventId?: string; at: number }> = [];
/** Per path: how many times it was asked (a behaviour may change after the first). */
const asked = new Map<string, number>();
/** The open responses of `slow-heartbeat`, written by the test. */
const slowHeartbeat: ServerResponse[] = [];

const view = (id: string, state: JobView['state']): JobView => ({
  id,
  agent: 'DealScorer',
  action: 'pipeline_summary',
  state,
  progress: state === 'completed' ? 100 : 0,
  attempts: state === 'completed' ? 1 : 0,
  createdAt: new Date(0).toISOString(),
  ...(state === 'completed' ? { result: { success: true, data: { ok: true }, tokensUsed: { input: 1, output: 1 }, costUsd: 0, durationMs: 1, model: 'gemini-2.5-flash' } } : {}),
});

const sseHead = (res: ServerResponse) => {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  res.flushHeaders();
};
const RESULT_FRAME = `data: ${JSON.stringify({ result: view('x', 'completed').result })}\n\n`;

function handle(req: IncomingMessage, res: ServerResponse): void {
  const path = new URL(req.url!, 'http://x').pathname;
  const n = (asked.get(path) ?? 0) + 1;
  asked.set(path, n);
  const lastEventId = req.headers['last-event-id'] as string | undefined;
  requests.push({ method: req.method!, path, ...(lastEventId ? { lastEventId } : {}), at: Date.now() });
  const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
  const stallBody = () => {
    // Headers and the start of the body, then silence: the request's timeout has to cover the body too.
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{"id":');
  };

  switch (path) {
    case '/v1/jobs/stalled-body':
      return stallBody();
    case '/v1/jobs/stalls-once':
      return n === 1 ? stallBody() : json(200, view('stalls-once', 'completed'));
    case '/v1/jobs/overloaded':
      return json(503, { error: 'queue unavailable, retry shortly' }, { 'retry-after': '0' });
    case '/v1/jobs/silent/stream':
      return sseHead(res);
    case '/v1/jobs/goes-silent/stream':
      sseHead(res);
      // The first connection brings one chunk then nothing; the resumed one the rest, after Last-Event-ID.
      if (!lastEventId) return void res.write('id: 1-0\ndata: {"text":"a"}\n\n');
      return void res.end(`id: 2-0\ndata: {"text":"b"}\n\nid: 3-0\n${RESULT_FRAME}data: [DONE]\n\n`);
    case '/v1/jobs/heartbeats/stream': {
      // Nothing but heartbeats for a while (a job waiting its turn), each well within the idle timeout.
      sseHead(res);
      const ping = setInterval(() => res.write(': ping\n\n'), 40);
      const end = setTimeout(() => {
        clearInterval(ping);
        res.end(`id: 1-0\n${RESULT_FRAME}data: [DONE]\n\n`);
      }, 600);
      res.on('close', () => {
        clearInterval(ping);
        clearTimeout(end);
      });
      return;
    }
    case '/v1/jobs/two-parts/stream': {
      // The rest comes soon after the first chunk, in a read of its own, while the caller still holds that chunk.
      sseHead(res);
      res.write('id: 1-0\ndata: {"text":"a"}\n\n');
      const rest = setTimeout(() => res.end(`id: 2-0\n${RESULT_FRAME}data: [DONE]\n\n`), 30);
      res.on('close', () => clearTimeout(rest));
      return;
    }
    case '/v1/jobs/silent-then-unanswered/stream':
      // Headers then nothing, and no reconnection is ever answered (a server wedged behind its proxy).
      if (n === 1) sseHead(res);
      return;
    case '/v1/jobs/drips/stream': {
      // Every connection brings the next chunk and goes silent; the fifth brings the result.
      sseHead(res);
      const k = lastEventId ? Number(lastEventId.split('-')[0]) + 1 : 1;
      if (k < 5) return void res.write(`id: ${k}-0\ndata: {"text":"${k}"}\n\n`);
      return void res.end(`id: ${k}-0\n${RESULT_FRAME}data: [DONE]\n\n`);
    }
    case '/v1/jobs/slow-heartbeat/stream':
      // A server whose heartbeat (60 s) is slower than the default (15 s) says so; the test writes the rest.
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', [SSE_HEARTBEAT_HEADER]: '60000' });
      res.write('event: progress\ndata: {"stage":"queued"}\n\n');
      slowHeartbeat.push(res);
      return;
    case '/v1/jobs/fast-heartbeats/stream':
      // Announces a 30 ms heartbeat, then sends none: dead after three of them, not after the default's three.
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', [SSE_HEARTBEAT_HEADER]: '30' });
      return void res.flushHeaders();
    case '/v1/stream':
      // The enqueue is never answered: re-sending it could enqueue the job twice.
      return;
    default:
      return json(404, { error: 'job not found' });
  }
}

beforeAll(async () => {
  server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // A process's first fetch loads undici: not inside the first test's 200 ms.
  await (await fetch(`${baseUrl}/warm-up`)).text();
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

beforeEach(() => {
  requests = [];
  asked.clear();
  slowHeartbeat.splice(0).forEach((res) => res.destroy());
});

async function caught(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** Fails the test at `ms` instead of letting a hung client run into the test timeout. */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, bound]).finally(() => clearTimeout(timer));
}

const collect = async <T>(events: AsyncIterable<JobStreamEvent<T>>, onEvent?: () => Promise<void>) => {
  const out: Array<JobStreamEvent<T>> = [];
  for await (const e of events) {
    out.push(e);
    await onEvent?.();
  }
  return out;
};

describe('client timeouts', () => {
  it('a body that stalls after the headers rejects with AgentqTimeoutError, not a bare DOMException', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY, timeoutMs: 200 });
    const err = await within(10_000, caught(c.get('stalled-body')));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.code).toBe('ETIMEOUT');
    expect(err.message).toMatch(/GET \/v1\/jobs\/stalled-body: the answer's body did not arrive within 200 ms/);
  });

  it('waitFor asks again after a long poll whose body stalled, and returns the finished job', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY, timeoutMs: 200, minPollIntervalMs: 10 });
    const done = await within(10_000, c.waitFor('stalls-once', { timeoutMs: 8000, pollMs: 100 }));
    expect(done.state).toBe('completed');
    expect(requests.filter((r) => r.path === '/v1/jobs/stalls-once')).toHaveLength(2);
  });

  it('waitFor pauses after a 503 with Retry-After: 0 instead of asking again at once', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY, timeoutMs: 2000, minPollIntervalMs: 10 });
    const err = await caught(c.waitFor('overloaded', { timeoutMs: 1000, pollMs: 100 }));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    const polls = requests.filter((r) => r.path === '/v1/jobs/overloaded');
    // One request per 250 ms pause at most: 4 or 5 in the second (a busy machine makes fewer, never more).
    expect(polls.length).toBeGreaterThanOrEqual(2);
    expect(polls.length).toBeLessThanOrEqual(6);
    // The last pause may be cut short by the wait's own deadline.
    for (let i = 1; i < polls.length - 1; i++) expect(polls[i].at - polls[i - 1].at).toBeGreaterThanOrEqual(240);
  });

  it('a stream that goes silent after its headers is resumed with Last-Event-ID once the idle timeout passes', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    const started = Date.now();
    // No stall bound: the reconnection's answer may be slow on a busy machine, and this is no test of the bound.
    const events = await within(10_000, collect(c.stream('goes-silent', { idleTimeoutMs: 200, reconnectDelayMs: 10, stallTimeoutMs: 0 })));
    expect(events.map((e) => e.type)).toEqual(['text', 'text', 'result']);
    expect(events.map((e) => e.id)).toEqual(['1-0', '2-0', '3-0']);
    const calls = requests.filter((r) => r.path === '/v1/jobs/goes-silent/stream');
    expect(calls).toHaveLength(2);
    expect(calls[0].lastEventId).toBeUndefined();
    expect(calls[1].lastEventId).toBe('1-0');
    expect(calls[1].at - calls[0].at).toBeGreaterThanOrEqual(190);
    // Resumed after one idle timeout: the two requests above show it. How long it took is printed, not bounded.
    console.log(`[figure] stream silent after its first chunk, 200 ms idle timeout: resumed and ended after ${Date.now() - started} ms`);
  });

  it('a stream that stays silent ends with AgentqTimeoutError once its reconnections are used up', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    const started = Date.now();
    // No stall bound: the reconnections run out first.
    const err = await within(10_000, caught(collect(c.stream('silent', { idleTimeoutMs: 200, maxReconnects: 2, reconnectDelayMs: 10, stallTimeoutMs: 0 }))));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.message).toMatch(/went silent, the end of 3 connections in a row without \[DONE\] \(nothing for 200 ms, not even a heartbeat\)/);
    expect(requests.filter((r) => r.path === '/v1/jobs/silent/stream')).toHaveLength(3);
    // Three idle timeouts and two short pauses: the three connections and the message show it. How long it took
    // is printed, not bounded.
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(590);
    console.log(`[figure] stream silent on 3 connections, 200 ms idle timeout: failed after ${took} ms`);
  });

  it('a stream silent on every reconnection fails at its stall bound (twice the idle timeout), not after every reconnection', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    const started = Date.now();
    const err = await within(10_000, caught(collect(c.stream('silent', { idleTimeoutMs: 200, maxReconnects: 20, reconnectDelayMs: 10 }))));
    const took = Date.now() - started;
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.code).toBe('ETIMEOUT');
    expect(err.message).toMatch(/^GET \/v1\/jobs\/silent\/stream: .*: nothing for \d+ ms, not even a heartbeat, and the stream's bound is 400 ms \(stallTimeoutMs\)$/);
    // The first connection's idle timeout, then the reconnection cut at the bound: 2 of the 21 allowed (without
    // the bound, the reconnections run out, 21 idle timeouts later). How long it took is printed, not bounded.
    expect(requests.filter((r) => r.path === '/v1/jobs/silent/stream')).toHaveLength(2);
    expect(took).toBeGreaterThanOrEqual(390);
    console.log(`[figure] stream silent on every reconnection, 400 ms stall bound: failed after ${took} ms`);
  });

  it('stallTimeoutMs bounds reconnections that are never answered', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    const started = Date.now();
    const err = await within(10_000, caught(collect(c.stream('silent-then-unanswered', { idleTimeoutMs: 200, stallTimeoutMs: 500, maxReconnects: 20, reconnectDelayMs: 1 }))));
    const took = Date.now() - started;
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.message).toMatch(/reconnection \d+.*: nothing for \d+ ms, not even a heartbeat, and the stream's bound is 500 ms \(stallTimeoutMs\)$/);
    // At the bound, or a pause (a few ms) before it when that pause would cross it; the message says it was the
    // bound, and the 20 reconnections allowed were not used up. How long it took is printed, not bounded.
    expect(requests.filter((r) => r.path === '/v1/jobs/silent-then-unanswered/stream').length).toBeLessThan(21);
    expect(took).toBeGreaterThanOrEqual(480);
    console.log(`[figure] reconnections never answered, 500 ms stall bound: failed after ${took} ms`);
  });

  it('reconnections that each bring something are not cut by the stall bound', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    const started = Date.now();
    // Four idle timeouts in all, twice the stream's 800 ms bound, but each connection brought a chunk.
    const events = await within(10_000, collect(c.stream('drips', { idleTimeoutMs: 400, reconnectDelayMs: 10 })));
    expect(events.map((e) => e.type)).toEqual(['text', 'text', 'text', 'text', 'result']);
    expect(requests.filter((r) => r.path === '/v1/jobs/drips/stream').map((r) => r.lastEventId)).toEqual([undefined, '1-0', '2-0', '3-0', '4-0']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1600);
  });

  it('a heartbeat slower than the default, announced by the server, is no idle connection', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    // The client's timers only, faked so that 50 s pass at once: past the 45 s default idle timeout, within three
    // of the announced 60 s heartbeats. The sockets and the server run in real time.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    let rest: Promise<Array<JobStreamEvent<unknown>>>;
    let first: IteratorResult<JobStreamEvent<unknown>>;
    try {
      // No idleTimeoutMs.
      const it = c.stream('slow-heartbeat')[Symbol.asyncIterator]();
      // The answer is in, its heartbeat read: the stream now waits on its next read.
      first = await it.next();
      rest = collect({ [Symbol.asyncIterator]: () => it });
      await vi.advanceTimersByTimeAsync(50_000);
    } finally {
      vi.useRealTimers();
    }
    expect(first.value).toMatchObject({ type: 'progress', progress: { stage: 'queued' } });
    slowHeartbeat[0].end(`: ping\n\nid: 1-0\n${RESULT_FRAME}data: [DONE]\n\n`);
    expect((await within(30_000, rest)).map((e) => e.type)).toEqual(['result']);
    expect(requests.filter((r) => r.path === '/v1/jobs/slow-heartbeat/stream')).toHaveLength(1);
  });

  it('a connection silent past three of the announced heartbeats is dead, however short they are', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    // No stall bound: it counts the wait for the answer too, and could cut in first on a slow machine.
    const err = await within(10_000, caught(collect(c.stream('fast-heartbeats', { maxReconnects: 0, stallTimeoutMs: 0 }))));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.message).toMatch(/went silent, the end of 1 connections in a row without \[DONE\] \(nothing for 90 ms, not even a heartbeat\)/);
  });

  it('enqueueStream whose POST is never answered fails with AgentqTimeoutError and is never sent again', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    const err = await within(10_000, caught(collect(c.enqueueStream('DealScorer', 'pipeline_summary', { startupId: 's1' }, undefined, { idleTimeoutMs: 200 }))));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(requests.filter((r) => r.path === '/v1/stream')).toHaveLength(1);
  });

  it('heartbeats keep a quiet stream open, and a caller slow with an event is no idle connection', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY });
    // 600 ms of heartbeats only, past the default 400 ms stall bound too: a heartbeat is something.
    const quiet = await within(10_000, collect(c.stream('heartbeats', { idleTimeoutMs: 200, reconnectDelayMs: 10 })));
    expect(quiet.map((e) => e.type)).toEqual(['result']);
    expect(requests.filter((r) => r.path === '/v1/jobs/heartbeats/stream')).toHaveLength(1);

    // The caller holds each event longer than the idle timeout while the rest of the stream waits in the buffer.
    const slow = await within(10_000, collect(c.stream('two-parts', { idleTimeoutMs: 100, reconnectDelayMs: 10 }), () => sleep(250)));
    expect(slow.map((e) => e.type)).toEqual(['text', 'result']);
    expect(requests.filter((r) => r.path === '/v1/jobs/two-parts/stream')).toHaveLength(1);
  });
});
