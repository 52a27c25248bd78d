import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { BadRequestError, buildAnswer, promptText, promptTokens, splitForStream, validateGenerateRequest } from './answer-builder.js';
import { embedText } from './embedder.js';
import { describeFault, FaultQueue, FaultScriptError, type CallKind, type EmulatorFault } from './faults.js';
import { errorPayload, type WireEmbedRequest, type WireGenerateRequest } from './gemini-wire.js';

export interface CallRecord {
  id: number;
  kind: CallKind;
  model: string;
  /** HTTP status sent; 499 when the client went away first, 0 when the emulator reset the socket. */
  status: number;
  at: number;
  durationMs?: number;
  fault?: string;
  /** The client closed the connection before the answer was complete. */
  aborted?: boolean;
  promptTokens?: number;
  outputTokens?: number;
}

export interface GeminiEmulator {
  url: string;
  close(): Promise<void>;
  script(fault: EmulatorFault | EmulatorFault[]): void;
  clearFaults(): void;
  faults(): EmulatorFault[];
  calls(): CallRecord[];
  resetCalls(): void;
  setStreamChunkDelay(ms: number): void;
}

export interface GeminiEmulatorOptions {
  port?: number;
  host?: string;
  streamChunkDelayMs?: number;
}

const DEFAULT_EMBED_DIMS = 768;
const MAX_BODY_BYTES = 20 * 1024 * 1024;
const ROUTE = /^\/(?:v1|v1beta|v1alpha)\/models\/([^/:]+):([A-Za-z]+)$/;
const KINDS: Record<string, CallKind> = {
  generateContent: 'generate',
  streamGenerateContent: 'stream',
  embedContent: 'embed',
  batchEmbedContents: 'embed',
  countTokens: 'count',
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'Request payload size exceeds the limit.');
    chunks.push(chunk as Buffer);
  }
  const raw = Buffer.concat(chunks).toString('utf8');
  if (raw.trim() === '') return {};
  try {
    return JSON.parse(raw);
  } catch {
    throw new HttpError(400, 'Invalid JSON payload received.');
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8', 'content-length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

/**
 * A Gemini-compatible HTTP server on loopback for tests and keyless local runs. It speaks the REST
 * paths the `@google/genai` SDK calls and can be scripted to fail in the ways real Gemini does.
 */
export async function startGeminiEmulator(opts: GeminiEmulatorOptions = {}): Promise<GeminiEmulator> {
  const host = opts.host ?? '127.0.0.1';
  let streamDelayMs = opts.streamChunkDelayMs ?? 0;
  const faults = new FaultQueue();
  let calls: CallRecord[] = [];
  let nextId = 1;
  const inflight = new Set<AbortController>();

  const setDelay = (ms: number): void => {
    if (!(Number.isFinite(ms) && ms >= 0)) throw new FaultScriptError('stream chunk delay must be a non-negative number');
    streamDelayMs = ms;
  };

  async function control(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const route = `${req.method} ${path}`;
    if (route === 'POST /__emulator/faults') {
      const queued = faults.add((await readJson(req)) as EmulatorFault | EmulatorFault[]);
      return sendJson(res, 201, { queued });
    }
    if (route === 'GET /__emulator/faults') return sendJson(res, 200, { faults: faults.list() });
    if (route === 'DELETE /__emulator/faults') {
      faults.clear();
      return sendJson(res, 200, { cleared: true });
    }
    if (route === 'GET /__emulator/calls') return sendJson(res, 200, { calls });
    if (route === 'DELETE /__emulator/calls') {
      calls = [];
      return sendJson(res, 200, { cleared: true });
    }
    if (route === 'POST /__emulator/reset') {
      faults.clear();
      calls = [];
      streamDelayMs = opts.streamChunkDelayMs ?? 0;
      return sendJson(res, 200, { reset: true });
    }
    if (route === 'POST /__emulator/stream-delay') {
      setDelay(Number(((await readJson(req)) as { ms?: unknown }).ms));
      return sendJson(res, 200, { streamChunkDelayMs: streamDelayMs });
    }
    return sendJson(res, 404, { error: { code: 404, message: `no control route ${route}`, status: 'NOT_FOUND' } });
  }

  async function api(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const m = ROUTE.exec(url.pathname);
    const kind = m ? KINDS[m[2]] : undefined;
    if (!m || !kind || req.method !== 'POST') {
      return sendJson(res, 404, errorPayload(404, `Method not found: ${req.method} ${url.pathname}`));
    }
    const model = decodeURIComponent(m[1]);
    if (!req.headers['x-goog-api-key'] && !url.searchParams.get('key')) {
      return sendJson(res, 403, errorPayload(403, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."));
    }
    const record: CallRecord = { id: nextId++, kind, model, status: 0, at: Date.now() };
    calls.push(record);
    const ac = new AbortController();
    inflight.add(ac);
    res.on('close', () => {
      inflight.delete(ac);
      record.durationMs = Date.now() - record.at;
      if (!res.writableFinished && record.fault !== 'reset') {
        record.aborted = true;
        record.status = 499;
      }
      ac.abort();
    });
    try {
      await answerApi(req, res, record, m[2], ac.signal);
    } catch (err) {
      const status = err instanceof HttpError || err instanceof BadRequestError ? err.status : 500;
      record.status = status;
      sendJson(res, status, errorPayload(status, err instanceof Error ? err.message : String(err)));
    }
  }

  async function answerApi(req: IncomingMessage, res: ServerResponse, record: CallRecord, method: string, signal: AbortSignal): Promise<void> {
    const { kind, model } = record;
    const body = (await readJson(req)) as WireGenerateRequest & WireEmbedRequest & { requests?: WireEmbedRequest[]; generateContentRequest?: WireGenerateRequest };
    const batch = method === 'batchEmbedContents';
    const embedRequests = batch ? (body.requests ?? []) : [body];
    const embedTexts = embedRequests.map((r) => (r.content?.parts ?? []).map((p) => p.text ?? '').join(' '));
    const text = kind === 'embed' ? embedTexts.join('\n') : promptText(body.generateContentRequest ?? body);

    const fault = faults.take({ kind, model, text });
    if (fault) record.fault = describeFault(fault);
    if (fault?.latencyMs) await sleep(fault.latencyMs, undefined, { signal }).catch(() => undefined);
    if (signal.aborted) return;
    if (fault?.hang) return; // Say nothing; the socket stays open until the client or close() ends it.
    if (fault?.reset && !(kind === 'stream' && (fault.afterChunks ?? 0) > 0)) {
      req.socket.destroy();
      return;
    }
    const reply = (status: number, payload: unknown, headers?: Record<string, string>): void => {
      record.status = status;
      sendJson(res, status, payload, headers);
    };
    if (fault?.status !== undefined) {
      const headers: Record<string, string> = fault.status === 429 && fault.retryAfterS !== undefined ? { 'retry-after': String(Math.ceil(fault.retryAfterS)) } : {};
      return reply(fault.status, errorPayload(fault.status, fault.message, { retryAfterS: fault.retryAfterS, model }), headers);
    }

    if (kind === 'embed') {
      const requests = embedRequests;
      if (requests.length === 0 || requests.length > 100) throw new BadRequestError('* BatchEmbedContentsRequest.requests: must hold between 1 and 100 requests');
      const vectors = requests.map((r, i) => {
        const dims = r.outputDimensionality ?? DEFAULT_EMBED_DIMS;
        if (!(Number.isInteger(dims) && dims >= 1 && dims <= 3072)) throw new BadRequestError('outputDimensionality must be between 1 and 3072');
        return { values: embedText(embedTexts[i], dims) };
      });
      record.promptTokens = 0;
      return reply(200, batch ? { embeddings: vectors } : { embedding: vectors[0] });
    }
    if (kind === 'count') {
      const total = promptTokens(body.generateContentRequest ?? body);
      record.promptTokens = total;
      return reply(200, { totalTokens: total, promptTokensDetails: [{ modality: 'TEXT', tokenCount: total }] });
    }

    validateGenerateRequest(body);
    const answer = buildAnswer(model, body, { malformed: fault?.malformed });
    record.promptTokens = answer.usage.promptTokenCount;
    record.outputTokens = answer.usage.candidatesTokenCount;
    const responseId = `emu-${record.id}`;
    const chunkBody = (text: string, last: boolean) => ({
      candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0, ...(last ? { finishReason: answer.finishReason } : {}) }],
      ...(last ? { usageMetadata: answer.usage } : {}),
      modelVersion: model,
      responseId,
    });
    if (kind === 'generate') return reply(200, chunkBody(answer.text, true));

    record.status = 200;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const pieces = splitForStream(answer.text);
    for (let i = 0; i < pieces.length; i++) {
      if (fault?.reset && i === fault.afterChunks) {
        req.socket.destroy();
        return;
      }
      if (i > 0 && streamDelayMs > 0) await sleep(streamDelayMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted || res.destroyed) return;
      res.write(`data: ${JSON.stringify(chunkBody(pieces[i], i === pieces.length - 1))}\n\n`);
    }
    res.end();
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://emulator');
    const work = url.pathname.startsWith('/__emulator/') ? control(req, res, url.pathname) : api(req, res, url);
    work.catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : err instanceof FaultScriptError ? 400 : 500;
      sendJson(res, status, errorPayload(status, err instanceof Error ? err.message : String(err)));
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  return {
    url,
    script: (fault) => void faults.add(fault),
    clearFaults: () => faults.clear(),
    faults: () => faults.list(),
    calls: () => calls.map((c) => ({ ...c })),
    resetCalls: () => {
      calls = [];
    },
    setStreamChunkDelay: setDelay,
    close: () =>
      new Promise<void>((resolve) => {
        for (const ac of inflight) ac.abort();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
