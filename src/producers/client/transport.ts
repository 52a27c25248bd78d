/**
 * The HTTP plumbing of the agentq client: base URL, bearer key, per-request timeout, and the mapping of
 * non-2xx answers to `AgentqHttpError`. Kept apart from the typed methods so streaming, flows and pipelines
 * can reuse it (`raw` for a body read incrementally, `json` for everything else).
 */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface TransportOptions {
  baseUrl: string;
  apiKey: string;
  fetch?: FetchLike;
  /** Per request, on top of any long-poll wait the request itself asks for. Default 30 s. */
  timeoutMs?: number;
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  signal?: AbortSignal;
  /** Replaces the default timeout for this request (e.g. a long poll's wait plus margin); 0 = none. */
  timeoutMs?: number;
  headers?: Record<string, string>;
}

export interface ErrorBody {
  error: string;
  details?: Array<{ path: string; message: string }>;
  [extra: string]: unknown;
}

/** A non-2xx answer from the API. `retryAfterS` is set for 429 and 503 when the server said when to retry. */
export class AgentqHttpError extends Error {
  override name = 'AgentqHttpError';
  readonly code = 'EHTTP';
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
    readonly retryAfterS?: number,
  ) {
    super(`agentq ${status}: ${body.error}`);
  }
}

/**
 * A request whose answer (headers or body) did not arrive in time, a stream that went silent, or a wait that
 * ended before the job finished (`job` = last view).
 */
export class AgentqTimeoutError extends Error {
  override name = 'AgentqTimeoutError';
  readonly code = 'ETIMEOUT';
  constructor(
    message: string,
    readonly job?: unknown,
  ) {
    super(message);
  }
}

/** Retry-After is either delay-seconds or an HTTP date. */
export function parseRetryAfter(header: string | null, now = Date.now()): number | undefined {
  if (!header) return undefined;
  const trimmed = header.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

async function errorBody(res: Response): Promise<ErrorBody> {
  const text = await res.text().catch(() => '');
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed && typeof parsed === 'object' && typeof (parsed as ErrorBody).error === 'string') return parsed as ErrorBody;
  } catch {
    // Not JSON (a proxy's HTML page, say): keep what it said, briefly.
  }
  return { error: text.slice(0, 500) || res.statusText || `HTTP ${res.status}` };
}

export function createHttpTransport(opts: TransportOptions) {
  const baseUrl = opts.baseUrl.replace(/\/+$/, '');
  const doFetch: FetchLike = opts.fetch ?? ((input, init) => fetch(input, init));
  const defaultTimeoutMs = opts.timeoutMs ?? 30_000;

  function url(path: string, query?: RequestOptions['query']): string {
    const qs = Object.entries(query ?? {})
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join('&');
    return `${baseUrl}${path}${qs ? `?${qs}` : ''}`;
  }

  /**
   * Sends one request; a 2xx answer's response comes back unread with `timedOut`, which tells whether the
   * request's own timeout has fired since (the timeout covers reading the body too); anything else throws
   * `AgentqHttpError`.
   */
  async function send(method: string, path: string, ro: RequestOptions): Promise<{ res: Response; timedOut: () => boolean; timeoutMs: number }> {
    const timeoutMs = ro.timeoutMs ?? defaultTimeoutMs;
    const timeout = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
    const signals = [ro.signal, timeout].filter((s): s is AbortSignal => s !== undefined);
    const headers: Record<string, string> = { authorization: `Bearer ${opts.apiKey}`, accept: 'application/json', ...ro.headers };
    if (ro.body !== undefined) headers['content-type'] = 'application/json';
    // The caller's own abort stays the caller's error; only the request's timer makes it a timeout.
    const timedOut = () => timeout?.aborted === true && !ro.signal?.aborted;
    let res: Response;
    try {
      res = await doFetch(url(path, ro.query), {
        method,
        headers,
        ...(ro.body !== undefined ? { body: JSON.stringify(ro.body) } : {}),
        ...(signals.length ? { signal: signals.length === 1 ? signals[0] : AbortSignal.any(signals) } : {}),
      });
    } catch (err) {
      if (timedOut()) throw new AgentqTimeoutError(`${method} ${path} got no answer within ${timeoutMs} ms`);
      throw err;
    }
    if (!res.ok) {
      const retry = res.status === 429 || res.status === 503 ? parseRetryAfter(res.headers.get('retry-after')) : undefined;
      throw new AgentqHttpError(res.status, await errorBody(res), retry);
    }
    return { res, timedOut, timeoutMs };
  }

  /**
   * The response of a 2xx answer, unread; anything else throws `AgentqHttpError`. The request's timeout
   * keeps running while the caller reads the body: a body that stops coming errors once it fires.
   */
  async function raw(method: string, path: string, ro: RequestOptions = {}): Promise<Response> {
    return (await send(method, path, ro)).res;
  }

  async function json<T>(method: string, path: string, ro: RequestOptions = {}): Promise<T> {
    const { res, timedOut, timeoutMs } = await send(method, path, ro);
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      // The headers came in time but the body did not (a stalled proxy, a half-open socket): fetch errors the
      // body with a bare DOMException TimeoutError, which no caller would take for the request's timeout.
      if (timedOut()) throw new AgentqTimeoutError(`${method} ${path}: the answer's body did not arrive within ${timeoutMs} ms`);
      throw err;
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  return { url, raw, json, defaultTimeoutMs };
}

export type HttpTransport = ReturnType<typeof createHttpTransport>;
