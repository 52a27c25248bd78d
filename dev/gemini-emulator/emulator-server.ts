import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { BadRequestError, buildAnswer, promptText, promptTokens, splitForStream, validateGenerateRequest } from './answer-builder.js';
import { embedText } from './embedder.js';
import { describeFault, FaultQueue, FaultScriptError, type BatchAdminKind, type CallKind, type EmulatorFault } from './faults.js';
import { errorPayload, type WireEmbedRequest, type WireGenerateRequest } from './gemini-wire.js';
import { createBatchStore, createClock, type BatchTiming, type InlineRequest } from './batches.js';
import { chunkUsage, createUsageModel, parseServiceTier, reportedOutput, type UsageModelOptions } from './usage-model.js';
import { refusalBody, refusalCachedTokens, stoppedAnswer, stoppedStream } from './refusal.js';

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
  cachedTokens?: number;
  thoughtsTokens?: number;
  /** The `serviceTier` the request asked for (generate/stream), absent when unset. */
  serviceTier?: string;
  /** The tier a `servedTier` fault served the request at instead. */
  servedTier?: string;
  /** Batch create: how many inline requests, and the batch's displayName and name. */
  requests?: number;
  displayName?: string;
  batch?: string;
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
  /** Moves the emulator's clock (batch states, expiry) forward; returns the new emulator time (ms). */
  advanceClock(ms: number): number;
  now(): number;
  setBatchTiming(t: Partial<BatchTiming>): BatchTiming;
  configureUsage(o: UsageModelOptions): void;
}

export interface GeminiEmulatorOptions {
  port?: number;
  host?: string;
  streamChunkDelayMs?: number;
  usage?: UsageModelOptions;
  batchTiming?: Partial<BatchTiming>;
}

const DEFAULT_EMBED_DIMS = 768;
const MAX_BODY_BYTES = 20 * 1024 * 1024;
const ROUTE = /^\/(?:v1|v1beta|v1alpha)\/models\/([^/:]+):([A-Za-z]+)$/;
const BATCH_ROUTE = /^\/(?:v1|v1beta|v1alpha)\/batches(?:\/([^/:]+)(:cancel)?)?$/;
const KINDS: Record<string, CallKind> = {
  batchGenerateContent: 'batch',
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

/** The body, read with plain events: an async iterator over the request costs a stream wrapper per call. */
function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    let ended = false;
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.once('end', () => {
      ended = true;
      if (size > MAX_BODY_BYTES) reject(new HttpError(413, 'Request payload size exceeds the limit.'));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.once('error', reject);
    // A client gone before the end of its body.
    req.once('close', () => {
      if (!ended) reject(new HttpError(400, 'The request body was cut off.'));
    });
  });
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const raw = await readBody(req);
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
  const clock = createClock();
  const usageModel = createUsageModel(opts.usage);
  const batches = createBatchStore({
    clock,
    answer: (model, req, { noFinishReason, refuse }) => {
      let answer;
      try {
        validateGenerateRequest(req);
        // A schema no value satisfies is that request's error too, not the whole batch's.
        answer = buildAnswer(model, req);
      } catch (err) {
        return err as Error;
      }
      // Inline responses carry no responseId (the batch names them), refusals included.
      if (refuse) return refusalBody(refuse, { model, usage: usageModel.complete(model, req, answer.usage, 'omit'), text: answer.text });
      return {
        // A noFinishReason fault leaves it off the candidate: all else is as Gemini sends it.
        candidates: [{ content: { parts: [{ text: answer.text }], role: 'model' }, index: 0, ...(noFinishReason ? {} : { finishReason: answer.finishReason }) }],
        usageMetadata: usageModel.complete(model, req, answer.usage, 'omit'),
        modelVersion: model,
      };
    },
  });
  if (opts.batchTiming) batches.setTiming(opts.batchTiming);

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
    if (route === 'POST /__emulator/clock') {
      const advanceMs = Number(((await readJson(req)) as { advanceMs?: unknown }).advanceMs ?? 0);
      if (!(Number.isFinite(advanceMs) && advanceMs >= 0)) throw new FaultScriptError('advanceMs must be a non-negative number');
      return sendJson(res, 200, { nowMs: clock.advance(advanceMs) });
    }
    if (route === 'GET /__emulator/clock') return sendJson(res, 200, { nowMs: clock.now() });
    if (route === 'POST /__emulator/batch-timing') {
      try {
        return sendJson(res, 200, batches.setTiming((await readJson(req)) as Partial<BatchTiming>));
      } catch (err) {
        throw new FaultScriptError((err as Error).message);
      }
    }
    if (route === 'POST /__emulator/usage') {
      try {
        usageModel.configure((await readJson(req)) as UsageModelOptions);
      } catch (err) {
        throw new FaultScriptError((err as Error).message);
      }
      return sendJson(res, 200, { configured: true });
    }
    if (route === 'POST /__emulator/reset') {
      faults.clear();
      calls = [];
      clock.reset();
      batches.reset();
      if (opts.batchTiming) batches.setTiming(opts.batchTiming);
      usageModel.reset();
      streamDelayMs = opts.streamChunkDelayMs ?? 0;
      return sendJson(res, 200, { reset: true });
    }
    if (route === 'POST /__emulator/stream-delay') {
      setDelay(Number(((await readJson(req)) as { ms?: unknown }).ms));
      return sendJson(res, 200, { streamChunkDelayMs: streamDelayMs });
    }
    return sendJson(res, 404, { error: { code: 404, message: `no control route ${route}`, status: 'NOT_FOUND' } });
  }

  /**
   * Logs a call and gives it the AbortController its answer honours: when the client goes away before the answer
   * is finished, `onGone` notes it and the controller aborts. Only an unfinished answer has something to stop (a
   * latency fault's sleep, a stream, a hang); an abort costs a DOMException with its stack, which every finished
   * call would otherwise pay.
   */
  function track(record: CallRecord, res: ServerResponse, onGone?: () => void): AbortController {
    calls.push(record);
    const ac = new AbortController();
    inflight.add(ac);
    res.on('close', () => {
      inflight.delete(ac);
      record.durationMs = Date.now() - record.at;
      if (res.writableFinished) return;
      onGone?.();
      ac.abort();
    });
    return ac;
  }

  /**
   * A scripted fault of a batch admin call, acted out; true when it answered (or hung up). Such a call is in
   * `calls()` only when a fault took it, so a collector polling in the background leaves the log to the test.
   */
  async function batchAdminFault(req: IncomingMessage, res: ServerResponse, kind: BatchAdminKind): Promise<boolean> {
    const fault = faults.take({ kind, model: '', text: '' });
    if (!fault) return false;
    const record: CallRecord = { id: nextId++, kind, model: '', status: 0, at: Date.now(), fault: describeFault(fault) };
    const ac = track(record, res);
    if (fault.latencyMs) await sleep(fault.latencyMs, undefined, { signal: ac.signal }).catch(() => undefined);
    if (ac.signal.aborted || fault.hang) return true;
    if (fault.reset) {
      req.socket.destroy();
      return true;
    }
    if (fault.status === undefined) return false;
    record.status = fault.status;
    const headers: Record<string, string> = fault.status === 429 && fault.retryAfterS !== undefined ? { 'retry-after': String(Math.ceil(fault.retryAfterS)) } : {};
    sendJson(res, fault.status, errorPayload(fault.status, fault.message, { retryAfterS: fault.retryAfterS, quota: fault.quota }), headers);
    return true;
  }

  /** get / list / cancel / delete of batches (create is a model method, answered with the others). */
  async function batchAdmin(req: IncomingMessage, res: ServerResponse, url: URL, id: string | undefined, cancel: boolean): Promise<void> {
    const kind: BatchAdminKind | undefined = !id ? (req.method === 'GET' ? 'batchList' : undefined) : cancel ? (req.method === 'POST' ? 'batchCancel' : undefined) : req.method === 'GET' ? 'batchGet' : req.method === 'DELETE' ? 'batchDelete' : undefined;
    if (kind && (await batchAdminFault(req, res, kind))) return;
    const notFound = () => sendJson(res, 404, errorPayload(404, `Requested entity was not found.`));
    if (!id && req.method === 'GET') {
      const size = Number(url.searchParams.get('pageSize') ?? 50);
      if (!(Number.isInteger(size) && size >= 1 && size <= 1000)) return sendJson(res, 400, errorPayload(400, 'page_size must be between 1 and 1000'));
      return sendJson(res, 200, batches.list(size, url.searchParams.get('pageToken') ?? undefined));
    }
    if (id && cancel && req.method === 'POST') return batches.cancel(id) ? sendJson(res, 200, {}) : notFound();
    if (id && !cancel && req.method === 'GET') {
      const op = batches.get(id);
      return op ? sendJson(res, 200, op) : notFound();
    }
    if (id && !cancel && req.method === 'DELETE') return batches.delete(id) ? sendJson(res, 200, {}) : notFound();
    return sendJson(res, 404, errorPayload(404, `Method not found: ${req.method} ${url.pathname}`));
  }

  async function api(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const b = BATCH_ROUTE.exec(url.pathname);
    if (b) {
      if (!req.headers['x-goog-api-key'] && !url.searchParams.get('key')) {
        return sendJson(res, 403, errorPayload(403, 'Method doesn\'t allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.'));
      }
      for await (const _chunk of req) void _chunk;
      return batchAdmin(req, res, url, b[1] ? decodeURIComponent(b[1]) : undefined, !!b[2]);
    }
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
    const ac = track(record, res, () => {
      if (record.fault === 'reset') return;
      record.aborted = true;
      record.status = 499;
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
    const inline = kind === 'batch' ? ((body as { batch?: { inputConfig?: { requests?: { requests?: InlineRequest[] } } } }).batch?.inputConfig?.requests?.requests ?? []) : [];
    const text = kind === 'embed' ? embedTexts.join('\n') : kind === 'batch' ? inline.map((r) => promptText(r.request ?? {})).join('\n') : promptText(body.generateContentRequest ?? body);
    const tier = kind === 'generate' || kind === 'stream' ? parseServiceTier(body.serviceTier) : undefined;
    if (tier instanceof Error) throw new BadRequestError(tier.message);
    if (body.serviceTier !== undefined) record.serviceTier = String(body.serviceTier);

    const fault = faults.take({ kind, model, text, serviceTier: tier });
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
      return reply(fault.status, errorPayload(fault.status, fault.message, { retryAfterS: fault.retryAfterS, model, quota: fault.quota }), headers);
    }

    if (kind === 'batch') {
      const spec = (body as { batch?: { displayName?: string } }).batch;
      if (!spec || inline.length === 0) throw new BadRequestError('* BatchGenerateContentRequest.batch.input_config: must hold at least one request');
      if (inline.some((r) => !r || typeof r !== 'object' || !r.request)) throw new BadRequestError('* InlinedRequest.request: request is not specified');
      // A noFinishReason or refuse fault: the answers of the requests it names (by promptIncludes; all without one).
      const only = fault?.match?.promptIncludes;
      const how = fault?.noFinishReason ? { noFinishReason: true } : fault?.refuse ? { refuse: fault.refuse } : undefined;
      const faulted = how ? inline.map((r) => (only === undefined || promptText(r.request).includes(only) ? how : undefined)) : undefined;
      const op = batches.create(model, spec.displayName ?? '', inline, faulted);
      record.requests = inline.length;
      record.displayName = spec.displayName ?? '';
      record.batch = op.name;
      return reply(200, op);
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
    const built = buildAnswer(model, body, { malformed: fault?.malformed });
    // The tier that served it: the one asked for, unless a fault makes Gemini serve it at another (a priority
    // request past its priority limit runs at standard), which Gemini says in the usage and a response header.
    const served = fault?.servedTier ?? tier;
    if (fault?.servedTier) record.servedTier = fault.servedTier;
    const answer = { ...built, usage: usageModel.complete(model, body, built.usage, served) };
    const tierHeader = { 'x-gemini-service-tier': served ?? 'standard' };
    record.promptTokens = answer.usage.promptTokenCount;
    record.outputTokens = answer.usage.candidatesTokenCount;
    if (answer.usage.cachedContentTokenCount) record.cachedTokens = answer.usage.cachedContentTokenCount;
    if (answer.usage.thoughtsTokenCount) record.thoughtsTokens = answer.usage.thoughtsTokenCount;
    const responseId = `emu-${record.id}`;
    // A noFinishReason fault leaves it off the whole answer (a generate call's one body): all else is as sent.
    const finished = !fault?.noFinishReason;
    // Every chunk carries usage, as Gemini's do: the last (with the finishReason) the whole of it, the others the
    // prompt's, and on 2.5 the text so far, `soFar` (chunkUsage). A generate call's one body is its last chunk.
    const chunkBody = (text: string, last: boolean, soFar = text) => ({
      candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0, ...(last && finished ? { finishReason: answer.finishReason } : {}) }],
      usageMetadata: last ? answer.usage : chunkUsage(answer.usage, model, soFar),
      modelVersion: model,
      responseId,
    });
    if (fault?.refuse) {
      // Gemini bills the prompt of a refusal and sends its usage, but no text (refusal.ts has the shapes); a
      // stream's refusal is its one event, the first, which alone carries a prompt's feedback, unless the fault
      // stops the answer after some text (afterChunks, a stream's or a generate call's): a stream sends those
      // chunks, then the stop; a generate call answers the stopped candidate with that text as its content.
      const sent = fault.afterChunks ? splitForStream(answer.text).slice(0, fault.afterChunks) : [];
      const o = { model, usage: answer.usage, text: answer.text, responseId };
      const events = sent.length === 0 ? [refusalBody(fault.refuse, o)] : kind === 'generate' ? [stoppedAnswer(fault.refuse, sent, o)] : stoppedStream(fault.refuse, sent, o);
      const refusal = events[events.length - 1];
      const cached = refusalCachedTokens(refusal);
      const billed = refusal.usageMetadata as { candidatesTokenCount?: number; thoughtsTokenCount?: number };
      record.outputTokens = billed.candidatesTokenCount ?? 0;
      if (billed.thoughtsTokenCount) record.thoughtsTokens = billed.thoughtsTokenCount;
      else delete record.thoughtsTokens;
      if (cached > 0) record.cachedTokens = cached;
      else delete record.cachedTokens;
      if (kind === 'generate') return reply(200, refusal, tierHeader);
      record.status = 200;
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...tierHeader });
      for (let i = 0; i < events.length; i++) {
        if (i > 0 && streamDelayMs > 0) await sleep(streamDelayMs, undefined, { signal }).catch(() => undefined);
        if (signal.aborted || res.destroyed) return;
        res.write(`data: ${JSON.stringify(events[i])}\n\n`);
      }
      res.end();
      return;
    }
    if (kind === 'generate') return reply(200, chunkBody(answer.text, true), tierHeader);

    record.status = 200;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...tierHeader });
    // A noFinishReason fault ends the stream cleanly before Gemini's last chunk, the one that says it finished.
    const pieces = finished ? splitForStream(answer.text) : splitForStream(answer.text).slice(0, -1);
    const cutAfter = fault?.reset ? (fault.afterChunks ?? 0) : undefined;
    // A stream that never sends its last chunk told the client only the usage of the others (the last whole one's
    // running count on 2.5, else none of the text): the log says that.
    const told = (sent: number) => reportedOutput(model, pieces.slice(0, sent).join(''));
    if (!finished) record.outputTokens = told(pieces.length);
    // A reset cuts after `cutAfter` whole chunks, or inside the answer's last one.
    else if (cutAfter !== undefined) record.outputTokens = told(Math.min(cutAfter, pieces.length - 1));
    let soFar = '';
    for (let i = 0; i < pieces.length; i++) {
      if (i > 0 && streamDelayMs > 0) await sleep(streamDelayMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted || res.destroyed) return;
      soFar += pieces[i];
      const event = `data: ${JSON.stringify(chunkBody(pieces[i], finished && i === pieces.length - 1, soFar))}\n\n`;
      // A cut past the answer's last chunk still cuts, inside that chunk: the client never gets a whole answer.
      const cutInside = cutAfter !== undefined && i === pieces.length - 1 && cutAfter >= pieces.length;
      if (!(i + 1 === cutAfter || cutInside)) {
        res.write(event);
        continue;
      }
      // Cut only once the chunks before the cut have left this process: with no delay between chunks a socket
      // destroyed at once would drop the ones still in Node's buffer, and the client would see no text at all.
      await new Promise<void>((resolve) => res.write(cutInside ? event.slice(0, Math.ceil(event.length / 2)) : event, () => resolve()));
      req.socket.destroy();
      return;
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
    advanceClock: (ms) => clock.advance(ms),
    now: () => clock.now(),
    setBatchTiming: (t) => batches.setTiming(t),
    configureUsage: (o) => usageModel.configure(o),
    close: () =>
      new Promise<void>((resolve) => {
        for (const ac of inflight) ac.abort();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
