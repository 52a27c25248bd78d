import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { pipeline, Readable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';

/** Statuses whose Response may not carry a body (the Response constructor refuses one). */
const NULL_BODY = new Set([101, 103, 204, 205, 304]);
/**
 * Idle sockets are closed after this long, or a second before the server's own `Keep-Alive: timeout=` when that
 * is sooner (node's Agent applies the hint only under a timeout of its own), so a request is not sent on a socket
 * the server is closing. The same value as node's global agent. An active request is not affected.
 */
const IDLE_SOCKET_MS = 5000;

/**
 * A `fetch` for the SDK's `httpOptions.fetch` (`LLM_HTTP_TRANSPORT=node-http`): the requests the SDK builds,
 * retries and parses, sent over node:http(s) keep-alive agents instead of the global (undici) fetch.
 *
 * Why it exists: each undici fetch leaves ~45-50 KB of objects that outlive the young generation (what its web
 * streams reference: the request body's, the response body's, the tee kept for a redirect) and die only
 * in a mark-compact, so a worker making a few hundred calls a second runs a major GC every few seconds, and
 * the jobs queued behind each pause make its latency tail (bench case 4 attributes the tail to those GCs and
 * measures this transport beside the default). The SDK's default stays the default: with a key set agentq
 * talks to Gemini exactly as the SDK does unless this is asked for.
 *
 * A JSON answer is read whole before its Response is handed over (the SDK reads it whole anyway); an event
 * stream (`text/event-stream`, the SDK's `alt=sse` calls) is handed over as it arrives. Request bodies other
 * than a string or bytes (the SDK sends JSON strings) go through the global fetch unchanged.
 */
export function createNodeHttpFetch(opts: { maxSockets?: number; idleSocketMs?: number } = {}): typeof fetch {
  const maxSockets = opts.maxSockets ?? Infinity;
  // LIFO: the most recently used socket goes first, so the others idle out instead of all staying half-used.
  const agentOpts = { keepAlive: true, maxSockets, timeout: opts.idleSocketMs ?? IDLE_SOCKET_MS, scheduling: 'lifo' as const };
  const agents = { 'http:': new HttpAgent(agentOpts), 'https:': new HttpsAgent(agentOpts) };

  const nodeFetch = (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    const body = init.body;
    const plainBody = body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array;
    if (input instanceof Request || !plainBody) return fetch(input, init);
    const url = new URL(input);
    const agent = url.protocol === 'https:' ? agents['https:'] : url.protocol === 'http:' ? agents['http:'] : undefined;
    if (!agent) return fetch(input, init);
    const signal = init.signal ?? undefined;
    if (signal?.aborted) return Promise.reject(signal.reason ?? new DOMException('This operation was aborted', 'AbortError'));
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise<Response>((resolve, reject) => {
      const req = send(url, { method: init.method ?? 'GET', headers: Object.fromEntries(new Headers(init.headers)), agent, signal }, (res) => {
        const status = res.statusCode ?? 502;
        const head = { status, statusText: res.statusMessage ?? '', headers: headersOf(res) };
        if (NULL_BODY.has(status) || init.method === 'HEAD') {
          res.resume();
          resolve(new Response(null, head));
        } else if (/^text\/event-stream/i.test(res.headers['content-type'] ?? '')) {
          resolve(new Response(Readable.toWeb(decoded(res)) as ReadableStream<Uint8Array>, head));
        } else {
          readWhole(decoded(res)).then((bytes) => resolve(new Response(new Uint8Array(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength), head)), reject);
        }
      });
      req.on('error', reject);
      req.end(body ?? undefined);
    });
  };
  return nodeFetch as typeof fetch;
}

/** The response's headers as a Headers object, repeated ones kept (rawHeaders holds name, value pairs). */
function headersOf(res: IncomingMessage): Headers {
  const headers = new Headers();
  for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) headers.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
  return headers;
}

/**
 * The body as sent, decompressed when a server compressed it anyway (no Accept-Encoding is sent, so none should);
 * the global fetch decodes these too. A failure of either stream fails the one returned.
 */
function decoded(res: IncomingMessage): Readable {
  const encoding = (res.headers['content-encoding'] ?? '').trim().toLowerCase();
  const decoder = encoding === 'gzip' || encoding === 'x-gzip' ? createGunzip() : encoding === 'deflate' ? createInflate() : encoding === 'br' ? createBrotliDecompress() : undefined;
  if (!decoder) return res;
  return pipeline(res, decoder, () => undefined);
}

/** The whole body; rejects when the response is cut off (a reset, an abort) before its end. */
function readWhole(res: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let ended = false;
    res.on('data', (chunk: Buffer) => chunks.push(chunk));
    res.on('end', () => {
      ended = true;
      resolve(Buffer.concat(chunks));
    });
    res.on('error', reject);
    res.on('close', () => {
      if (!ended) reject(Object.assign(new Error('the response was cut off before its end'), { code: 'ECONNRESET' }));
    });
  });
}

/**
 * Whether Node is set to send its global fetch through the proxies the environment names (`NODE_USE_ENV_PROXY=1`
 * or `--use-env-proxy`, on the command line or in NODE_OPTIONS; Node 24, not 20): the SDK's own fetch then
 * follows HTTP(S)_PROXY and NO_PROXY, which this transport's agents do not, so it must not be used (startGemini).
 */
export function nodeUsesEnvProxy(env: NodeJS.ProcessEnv = process.env, execArgv: readonly string[] = process.execArgv): boolean {
  const flags = [...execArgv, ...(env.NODE_OPTIONS ?? '').split(/\s+/)];
  return env.NODE_USE_ENV_PROXY === '1' || flags.includes('--use-env-proxy');
}
