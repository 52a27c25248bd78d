import type { AgentResult } from '../../shared/core/types.js';
import { createSseParser, type SseMessage } from './sse-parser.js';
import { sleep } from '../../shared/core/abortable-sleep.js';
import { DEFAULT_SSE_HEARTBEAT_MS, SSE_HEARTBEAT_HEADER, type ProgressEvent } from '../../shared/core/stream-event.js';
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
  /**
   * Reconnections (with Last-Event-ID) allowed in a row without receiving an event. Heartbeat comments do not count
   * as one: a server that answers each reconnection with heartbeats only and drops it again still uses them up.
   * Default 5.
   */
  maxReconnects?: number;
  /** Pause before the n-th reconnection in a row: n times this. Default 500 ms. */
  reconnectDelayMs?: number;
  /**
   * A connection that brings nothing for this long, not even the server's heartbeat comment, is taken for
   * dead (a half-open socket, a stalled proxy) and dropped: resumed with Last-Event-ID like any dropped one,
   * or `AgentqTimeoutError` where it cannot be (the first answer, a `POST /v1/stream` whose job id is not
   * known yet, `maxReconnects` used up). Counted only while the stream waits on the network, not while the
   * caller holds an event. Default three of the heartbeats the server announces (its `x-heartbeat-ms`
   * header), 45 s (three of the default 15 s) before the first answer and from a server that announces none;
   * 0 = none.
   */
  idleTimeoutMs?: number;
  /**
   * The bound of the whole stream: once nothing at all (no event, no heartbeat) has come for this long, across
   * any number of reconnections, it ends with `AgentqTimeoutError` instead of reconnecting again. A connection
   * that brings anything starts it over, so a stream that keeps making progress is never cut by it. Counted like
   * `idleTimeoutMs` (not while the caller holds an event), pauses between reconnections included. Default twice
   * the idle timeout (90 s with the server's default heartbeat): one reconnection after a dead connection; 0 = none.
   */
  stallTimeoutMs?: number;
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

const MAX_TIMER_MS = 2 ** 31 - 1;

/** The heartbeat interval a response announces; undefined when it says none (an older server) or nonsense. */
function announcedHeartbeat(res: Response): number | undefined {
  const value = res.headers.get(SSE_HEARTBEAT_HEADER)?.trim();
  const ms = value && /^\d+$/.test(value) ? Number(value) : 0;
  return ms > 0 && Number.isSafeInteger(ms) ? ms : undefined;
}

/**
 * The watchdog of one connection: armed only while the stream waits on the network (for the answer, for
 * each read), it aborts the request and calls `onIdle` once nothing came for the idle timeout, or once the
 * stream's stall bound is reached if that comes first; `fired` says which, and after how long.
 */
function idleWatch(onIdle: () => void) {
  const ac = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let fired: { stalled: boolean; ms: number } | undefined;
  return {
    signal: ac.signal,
    fired: () => fired,
    /** `idleMs` 0 = no idle timeout; `stallLeftMs` Infinity = no stall bound. */
    arm(idleMs: number, stallLeftMs: number): void {
      clearTimeout(timer);
      const idle = idleMs > 0 ? idleMs : Infinity;
      const ms = Math.max(0, Math.min(idle, stallLeftMs));
      if (ms === Infinity) return;
      timer = setTimeout(
        () => {
          fired = { stalled: stallLeftMs <= idle, ms };
          ac.abort(new AgentqTimeoutError(`stream got nothing for ${ms} ms`));
          onIdle();
        },
        // setTimeout fires at once past 2^31-1 ms (an announced heartbeat of weeks): ~25 days is as good as none.
        Math.min(ms, MAX_TIMER_MS),
      );
    },
    stop: (): void => clearTimeout(timer),
  };
}

/**
 * Follows one job's SSE stream to its `[DONE]`. `start` opens it (GET of the job's stream, or the POST
 * that enqueues a streaming job); a connection that drops early, or goes silent for the idle timeout, is
 * reopened on `GET <jobPath>/stream` with the last id seen as Last-Event-ID, so no chunk is lost or repeated,
 * until nothing has come for `stallTimeoutMs` in all. Breaking out of the loop closes the connection.
 */
export async function* streamJob<T = unknown>(
  http: SseTransport,
  start: { method: 'GET' | 'POST'; path: string; body?: unknown },
  jobPath: (id: string) => string,
  o: StreamOptions = {},
): AsyncGenerator<JobStreamEvent<T>> {
  const maxReconnects = o.maxReconnects ?? 5;
  const delayMs = o.reconnectDelayMs ?? 500;
  /** What the last answer announced: a server configured with another heartbeat needs no client setting. */
  let heartbeatMs: number | undefined;
  const idleMs = () => o.idleTimeoutMs ?? 3 * (heartbeatMs ?? DEFAULT_SSE_HEARTBEAT_MS);
  const stallMs = () => o.stallTimeoutMs ?? 2 * idleMs();
  /** When the stream last got anything, or last handed the caller an event (its time with it is not counted). */
  let heardAt = Date.now();
  const stallLeft = () => (stallMs() > 0 ? heardAt + stallMs() - Date.now() : Infinity);
  let lastId = o.lastEventId;
  let request = start;
  let failures = 0;
  let connected = false;
  const silent = (what: string, ms: number) => new AgentqTimeoutError(`${request.method} ${request.path}: ${what} (nothing for ${ms} ms, not even a heartbeat)`);
  const stalled = (what: string) =>
    new AgentqTimeoutError(`${request.method} ${request.path}: ${what}: nothing for ${Date.now() - heardAt} ms, not even a heartbeat, and the stream's bound is ${stallMs()} ms (stallTimeoutMs)`);
  /** Before a reconnection: the pause that would take the stream past its stall bound ends it now. */
  const pause = async (ms: number, why: string) => {
    if (ms >= stallLeft()) throw stalled(why);
    await sleep(ms, o.signal);
  };
  for (;;) {
    const headers: Record<string, string> = { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) };
    const body: { reader?: ReadableStreamDefaultReader<Uint8Array> } = {};
    // The abort ends a request waiting for its answer (and fetch's body); cancelling the reader ends a read
    // pending on a body that ignores it.
    const idle = idleWatch(() => void body.reader?.cancel().catch(() => undefined));
    const signal = o.signal ? AbortSignal.any([o.signal, idle.signal]) : idle.signal;
    let res: Response;
    idle.arm(idleMs(), stallLeft());
    try {
      res = await http.raw(request.method, request.path, { body: request.body, headers, signal, timeoutMs: 0 });
    } catch (err) {
      // The first answer is the caller's to handle (404, 429...); on a reconnection, overload, network errors
      // and silence are waited out like a dropped connection.
      const e = err as { status?: number; retryAfterS?: number };
      const transient = e.status === undefined || e.status === 429 || e.status === 503;
      const fired = idle.fired();
      if (o.signal?.aborted) throw err;
      if (fired?.stalled) throw stalled(connected ? `no answer to reconnection ${failures + 1}` : 'no answer');
      if (!connected || !transient || ++failures > maxReconnects) throw fired ? silent(connected ? `no answer to reconnection ${failures}` : 'no answer', fired.ms) : err;
      await pause(Math.max(delayMs * failures, (e.retryAfterS ?? 0) * 1000), `reconnection ${failures} failed (${(err as Error).message})`);
      continue;
    } finally {
      idle.stop();
    }
    connected = true;
    heartbeatMs = announcedHeartbeat(res);
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
        idle.arm(idleMs(), stallLeft());
        const chunk = await reader.read();
        idle.stop();
        if (chunk.done) break;
        // Anything, a heartbeat comment too, shows the server still serves the stream.
        if (chunk.value.byteLength > 0) heardAt = Date.now();
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
          heardAt = Date.now();
        }
      }
    } catch (err) {
      if (o.signal?.aborted) throw err;
      // A dropped connection: reconnect below.
    } finally {
      idle.stop();
      if (!done) await reader.cancel().catch(() => undefined);
    }
    const fired = idle.fired();
    if (fired?.stalled) throw stalled(request.method === 'POST' ? 'the stream went silent before the job id was known' : 'the stream went silent');
    if (request.method === 'POST') {
      if (fired) throw silent('the stream went silent before the job id was known', fired.ms);
      throw new AgentqStreamError('stream ended before the job id was known');
    }
    if (++failures > maxReconnects) {
      if (fired) throw silent(`the stream went silent, the end of ${failures} connections in a row without [DONE]`, fired.ms);
      throw new AgentqStreamError(`stream ended before [DONE] ${failures} times in a row`);
    }
    await pause(delayMs * failures, fired ? 'the stream went silent' : 'the stream ended before [DONE]');
  }
}
