import type { AgentResult } from '../../shared/core/types.js';
import { createSseParser, type SseMessage } from './sse-parser.js';
import { sleep } from '../../shared/core/abortable-sleep.js';
import { DEFAULT_SSE_HEARTBEAT_MS, type ProgressEvent } from '../../shared/core/stream-event.js';
import { AgentqTimeoutError } from './transport.js';

// Imported by the HTTP client: type-only imports, the dependency-free SSE parser and shared/core's constants.

/** What `client.stream(id)` yields; `id` is the SSE id to resume after (absent for jobs that did not stream). */
export type JobStreamEvent<T = unknown> =
  | { type: 'text'; text: string; id?: string }
  | { type: 'progress'; progress: ProgressEvent; id?: string }
  | { type: 'result'; result: AgentResult<T>; id?: string }
  | { type: 'error'; error: string; state: 'failed' | 'cancelled'; id?: string };

export interface StreamOptions {
  signal?: AbortSignal;
  /** Start after this SSE id (a previous `event.id`) instead of from the beginning. */
  lastEventId?: string;
  /** Reconnections (with Last-Event-ID) allowed in a row without receiving anything. Default 5. */
  maxReconnects?: number;
  /** Pause before the n-th reconnection in a row: n times this. Default 500 ms. */
  reconnectDelayMs?: number;
  /**
   * A connection that brings nothing for this long, not even the server's heartbeat comment, is taken for
   * dead (a half-open socket, a stalled proxy) and dropped: resumed with Last-Event-ID like any dropped one,
   * or `AgentqTimeoutError` where it cannot be (the first answer, a `POST /v1/stream` whose job id is not
   * known yet, `maxReconnects` used up). Counted only while the stream waits on the network, not while the
   * caller holds an event. Default 45 s, three of the server's default heartbeats (15 s); 0 = none.
   */
  idleTimeoutMs?: number;
}

/** The slice of the client's HTTP transport a stream needs. */
export interface SseTransport {
  raw(method: string, path: string, ro: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal; timeoutMs?: number }): Promise<Response>;
}

/** The connection ended before [DONE] more times in a row than `maxReconnects` allows. */
export class AgentqStreamError extends Error {
  override name = 'AgentqStreamError';
  readonly code = 'ESTREAM';
}

function toEvent<T>(m: SseMessage): JobStreamEvent<T> | undefined {
  let data: Record<string, unknown>;
  try {
    data = JSON.parse(m.data) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const id = m.id !== undefined ? { id: m.id } : {};
  if (m.event === 'progress') return { type: 'progress', progress: data as unknown as ProgressEvent, ...id };
  if (typeof data.text === 'string') return { type: 'text', text: data.text, ...id };
  if (data.result) return { type: 'result', result: data.result as AgentResult<T>, ...id };
  if (typeof data.error === 'string') return { type: 'error', error: data.error, state: data.state === 'cancelled' ? 'cancelled' : 'failed', ...id };
  return undefined;
}

/**
 * The watchdog of one connection: armed only while the stream waits on the network (for the answer, for
 * each read), it aborts the request and calls `onIdle` once nothing came for `ms`; 0 arms nothing.
 */
function idleWatch(ms: number, onIdle: () => void) {
  const ac = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let fired = false;
  return {
    signal: ac.signal,
    fired: () => fired,
    arm(): void {
      if (ms <= 0) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        fired = true;
        ac.abort(new AgentqTimeoutError(`stream got nothing for ${ms} ms`));
        onIdle();
      }, ms);
    },
    stop: (): void => clearTimeout(timer),
  };
}

/**
 * Follows one job's SSE stream to its `[DONE]`. `start` opens it (GET of the job's stream, or the POST
 * that enqueues a streaming job); a connection that drops early, or goes silent for `idleTimeoutMs`, is
 * reopened on `GET <jobPath>/stream` with the last id seen as Last-Event-ID, so no chunk is lost or repeated.
 * Breaking out of the loop closes the connection.
 */
export async function* streamJob<T = unknown>(
  http: SseTransport,
  start: { method: 'GET' | 'POST'; path: string; body?: unknown },
  jobPath: (id: string) => string,
  o: StreamOptions = {},
): AsyncGenerator<JobStreamEvent<T>> {
  const maxReconnects = o.maxReconnects ?? 5;
  const delayMs = o.reconnectDelayMs ?? 500;
  const idleTimeoutMs = o.idleTimeoutMs ?? 3 * DEFAULT_SSE_HEARTBEAT_MS;
  let lastId = o.lastEventId;
  let request = start;
  let failures = 0;
  let connected = false;
  const silent = (what: string) => new AgentqTimeoutError(`${request.method} ${request.path}: ${what} (nothing for ${idleTimeoutMs} ms, not even a heartbeat)`);
  for (;;) {
    const headers: Record<string, string> = { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) };
    const body: { reader?: ReadableStreamDefaultReader<Uint8Array> } = {};
    // The abort ends a request waiting for its answer (and fetch's body); cancelling the reader ends a read
    // pending on a body that ignores it.
    const idle = idleWatch(idleTimeoutMs, () => void body.reader?.cancel().catch(() => undefined));
    const signal = o.signal ? AbortSignal.any([o.signal, idle.signal]) : idle.signal;
    let res: Response;
    idle.arm();
    try {
      res = await http.raw(request.method, request.path, { body: request.body, headers, signal, timeoutMs: 0 });
    } catch (err) {
      // The first answer is the caller's to handle (404, 429...); on a reconnection, overload, network errors
      // and silence are waited out like a dropped connection.
      const e = err as { status?: number; retryAfterS?: number };
      const transient = e.status === undefined || e.status === 429 || e.status === 503;
      if (o.signal?.aborted) throw err;
      if (!connected || !transient || ++failures > maxReconnects) throw idle.fired() ? silent(connected ? `no answer to reconnection ${failures}` : 'no answer') : err;
      await sleep(Math.max(delayMs * failures, (e.retryAfterS ?? 0) * 1000), o.signal);
      continue;
    } finally {
      idle.stop();
    }
    connected = true;
    if (request.method === 'POST') {
      // Once enqueued, the job is only ever followed, never enqueued again.
      const jobId = res.headers.get('x-job-id');
      if (jobId) request = { method: 'GET', path: `${jobPath(jobId)}/stream` };
    }
    const reader = (body.reader = res.body!.getReader());
    const parser = createSseParser();
    const decoder = new TextDecoder();
    let done = false;
    try {
      for (;;) {
        // Not while the caller holds an event: a slow consumer is no sign of a dead connection.
        idle.arm();
        const chunk = await reader.read();
        idle.stop();
        if (chunk.done) break;
        for (const m of parser.feed(decoder.decode(chunk.value, { stream: true }))) {
          if (m.id) lastId = m.id;
          if (m.data === '[DONE]') {
            done = true;
            return;
          }
          const event = toEvent<T>(m);
          if (!event) continue;
          failures = 0;
          yield event;
        }
      }
    } catch (err) {
      if (o.signal?.aborted) throw err;
      // A dropped connection: reconnect below.
    } finally {
      idle.stop();
      if (!done) await reader.cancel().catch(() => undefined);
    }
    if (request.method === 'POST') {
      if (idle.fired()) throw silent('the stream went silent before the job id was known');
      throw new AgentqStreamError('stream ended before the job id was known');
    }
    if (++failures > maxReconnects) {
      if (idle.fired()) throw silent(`the stream went silent, the end of ${failures} connections in a row without [DONE]`);
      throw new AgentqStreamError(`stream ended before [DONE] ${failures} times in a row`);
    }
    await sleep(delayMs * failures, o.signal);
  }
}
