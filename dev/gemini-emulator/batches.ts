import type { WireGenerateRequest } from './gemini-wire.js';
import type { Refusal } from './refusal.js';
import { hash32 } from './seeded.js';

/** Batch Mode's states as the Gemini API names them (the SDK maps BATCH_STATE_* to JOB_STATE_*). */
export type BatchState = 'BATCH_STATE_PENDING' | 'BATCH_STATE_RUNNING' | 'BATCH_STATE_SUCCEEDED' | 'BATCH_STATE_FAILED' | 'BATCH_STATE_CANCELLED' | 'BATCH_STATE_EXPIRED';

/**
 * How long a batch spends in each state, on the emulator's clock (which tests move by hand: no sleeps).
 * `runMs` -1 never finishes, so the batch expires at `expireMs` (Gemini: 48 h).
 */
export interface BatchTiming {
  pendingMs: number;
  runMs: number;
  expireMs: number;
}

export const DEFAULT_BATCH_TIMING: BatchTiming = { pendingMs: 1_000, runMs: 60_000, expireMs: 48 * 3600_000 };

export interface InlineRequest {
  request: WireGenerateRequest & { model?: string };
  metadata?: Record<string, string>;
}

/** How a batch's create fault changes one request's answer: without its finishReason, or a refusal. */
export interface InlineFault {
  noFinishReason?: boolean;
  refuse?: Refusal;
}

export interface InlineResponse {
  response?: unknown;
  /** A google.rpc.Status: `code` is a gRPC code (3 INVALID_ARGUMENT), not an HTTP status. */
  error?: { code: number; message: string };
  metadata?: Record<string, string>;
}

interface StoredBatch {
  id: string;
  model: string;
  displayName: string;
  requests: InlineRequest[];
  /** Per request (same order): how a fault at create changes its answer (`noFinishReason`, `refuse`), if it does. */
  faulted?: Array<InlineFault | undefined>;
  createdAt: number;
  timing: BatchTiming;
  /** Set by cancel or delete-before-end: the state is frozen from then on. */
  cancelledAt?: number;
  /** Built once, when the batch is first seen succeeded. */
  responses?: InlineResponse[];
}

/** The emulator's clock: real time plus an offset tests advance (`POST /__emulator/clock`). */
export interface EmulatorClock {
  now(): number;
  advance(ms: number): number;
  reset(): void;
}

export function createClock(): EmulatorClock {
  let offset = 0;
  return {
    now: () => Date.now() + offset,
    advance(ms) {
      if (!(Number.isFinite(ms) && ms >= 0)) throw new RangeError('advanceMs must be a non-negative number');
      offset += ms;
      return Date.now() + offset;
    },
    reset() {
      offset = 0;
    },
  };
}

const iso = (ms: number) => new Date(ms).toISOString();

/**
 * Gemini Batch Mode with inline requests: `models/{m}:batchGenerateContent` creates a batch (not
 * idempotent: every call is a new batch, whatever its displayName), `batches/{id}` reads it as a
 * long-running Operation, list pages through them, cancel stops one, delete forgets it. The state is a
 * function of the clock, evaluated when read; responses come back inline, in input order, with metadata.
 */
export function createBatchStore(deps: { clock: EmulatorClock; answer: (model: string, req: WireGenerateRequest, fault: InlineFault) => InlineResponse['response'] | Error }) {
  const batches = new Map<string, StoredBatch>();
  let seq = 0;
  let timing: BatchTiming = { ...DEFAULT_BATCH_TIMING };

  function stateOf(b: StoredBatch, now: number): { state: BatchState; endAt?: number } {
    if (b.cancelledAt !== undefined) return { state: 'BATCH_STATE_CANCELLED', endAt: b.cancelledAt };
    const doneAt = b.timing.runMs < 0 ? Infinity : b.createdAt + b.timing.pendingMs + b.timing.runMs;
    const expireAt = b.createdAt + b.timing.expireMs;
    if (expireAt <= doneAt && now >= expireAt) return { state: 'BATCH_STATE_EXPIRED', endAt: expireAt };
    if (now >= doneAt) return { state: 'BATCH_STATE_SUCCEEDED', endAt: doneAt };
    if (now >= b.createdAt + b.timing.pendingMs) return { state: 'BATCH_STATE_RUNNING' };
    return { state: 'BATCH_STATE_PENDING' };
  }

  function responsesOf(b: StoredBatch): InlineResponse[] {
    b.responses ??= b.requests.map((r, i) => {
      const out = deps.answer(b.model, r.request, b.faulted?.[i] ?? {});
      const metadata = r.metadata ? { metadata: r.metadata } : {};
      if (out instanceof Error) return { error: { code: 3, message: out.message }, ...metadata };
      return { response: out, ...metadata };
    });
    return b.responses;
  }

  /** The Operation Gemini returns for create and get (`metadata` is the GenerateContentBatch). */
  function operation(b: StoredBatch) {
    const now = deps.clock.now();
    const { state, endAt } = stateOf(b, now);
    const n = b.requests.length;
    const done = state !== 'BATCH_STATE_PENDING' && state !== 'BATCH_STATE_RUNNING';
    const responses = state === 'BATCH_STATE_SUCCEEDED' ? responsesOf(b) : undefined;
    const failed = responses?.filter((r) => r.error).length ?? 0;
    const output = responses ? { inlinedResponses: { inlinedResponses: responses } } : undefined;
    const metadata = {
      '@type': 'type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch',
      model: `models/${b.model}`,
      displayName: b.displayName,
      name: `batches/${b.id}`,
      createTime: iso(b.createdAt),
      updateTime: iso(endAt ?? (state === 'BATCH_STATE_RUNNING' ? b.createdAt + b.timing.pendingMs : b.createdAt)),
      ...(endAt !== undefined ? { endTime: iso(endAt) } : {}),
      // int64 fields are strings in proto3 JSON.
      batchStats: {
        requestCount: String(n),
        ...(responses ? { successfulRequestCount: String(n - failed), failedRequestCount: String(failed) } : { pendingRequestCount: String(done ? 0 : n) }),
      },
      state,
      ...(output ? { output } : {}),
    };
    return {
      name: `batches/${b.id}`,
      metadata,
      ...(done ? { done: true } : {}),
      ...(output ? { response: { '@type': 'type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput', ...output } } : {}),
    };
  }

  return {
    /** `faulted`: how a fault changes each request's answer (same order; undefined: answered as always). */
    create(model: string, displayName: string, requests: InlineRequest[], faulted?: Array<InlineFault | undefined>) {
      seq += 1;
      const id = `emu${seq.toString(36)}${hash32(`${displayName}:${seq}`).toString(36)}`;
      const b: StoredBatch = { id, model, displayName, requests, createdAt: deps.clock.now(), timing: { ...timing }, ...(faulted?.some(Boolean) ? { faulted } : {}) };
      batches.set(id, b);
      return operation(b);
    },
    get(id: string) {
      const b = batches.get(id);
      return b ? operation(b) : undefined;
    },
    /** Newest first; the page token is the offset (opaque to the SDK). */
    list(pageSize: number, pageToken: string | undefined) {
      // Oldest first: Gemini documents no order for this list, so the emulator uses one a client must not rely on
      // (newest first, the guess a client might make, is what it must not count on).
      const all = [...batches.values()].sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
      const from = pageToken ? Number(Buffer.from(pageToken, 'base64url').toString('utf8')) || 0 : 0;
      const page = all.slice(from, from + pageSize);
      const next = from + pageSize < all.length ? Buffer.from(String(from + pageSize)).toString('base64url') : undefined;
      return { operations: page.map(operation), ...(next ? { nextPageToken: next } : {}) };
    },
    /** Gemini answers cancel with an empty body; a finished batch keeps its state. */
    cancel(id: string): boolean {
      const b = batches.get(id);
      if (!b) return false;
      const { state } = stateOf(b, deps.clock.now());
      if (state === 'BATCH_STATE_PENDING' || state === 'BATCH_STATE_RUNNING') b.cancelledAt = deps.clock.now();
      return true;
    },
    delete(id: string): boolean {
      return batches.delete(id);
    },
    setTiming(t: Partial<BatchTiming>): BatchTiming {
      for (const [k, v] of Object.entries(t)) {
        if (!(typeof v === 'number' && (v >= 0 || (k === 'runMs' && v === -1)))) throw new RangeError(`batch timing ${k} must be a non-negative number (runMs may be -1)`);
      }
      timing = { ...timing, ...t };
      return timing;
    },
    reset(): void {
      batches.clear();
      timing = { ...DEFAULT_BATCH_TIMING };
    },
    count: () => batches.size,
  };
}

export type BatchStore = ReturnType<typeof createBatchStore>;
