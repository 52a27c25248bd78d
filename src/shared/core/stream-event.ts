import type { AgentResult } from './types.js';
import type { JobStageName } from './job-stage.js';

/**
 * How often the API writes a heartbeat comment (`: ping`) on an open SSE response unless told otherwise
 * (streamingFeature's `heartbeatMs`); the typed client takes a stream that brings nothing for three of them
 * for a dead connection (three of the announced ones, `SSE_HEARTBEAT_HEADER`, when the server says).
 */
export const DEFAULT_SSE_HEARTBEAT_MS = 15_000;

/**
 * The response header of an SSE response that announces its heartbeat interval in ms, so the typed client
 * sizes its idle timeout to the server's heartbeat whatever it is configured to. A header, not an SSE field:
 * `retry:` is the reconnection delay of EventSource, and a header is ignored by clients that do not know it.
 */
export const SSE_HEARTBEAT_HEADER = 'x-heartbeat-ms';

/**
 * Progress of a streaming job. `retrying` and `restarted` void the text sent so far: the next attempt (or
 * the fallback route) writes its answer from the start. `stage` names the event; `jobStage` the job's stage
 * in the one vocabulary of job-stage.ts (added to every progress frame the API sends).
 */
export interface ProgressEvent {
  stage: 'queued' | 'waiting' | 'started' | 'retrying' | 'restarted' | 'delayed' | 'streaming' | 'validating';
  jobStage?: JobStageName;
  jobId?: string;
  /** 1-based attempt: the one starting (`started`, `restarted`), streaming or validating, or the one that failed (`retrying`). */
  attempt?: number;
  /** Why the previous attempt failed (`retrying`) or why the job waits (`delayed`). */
  reason?: string;
  delayMs?: number;
  /** `waiting`: the limit that holds the job (e.g. `rpm:org:acme:gemini-2.5-pro`), its ETA and place in line. */
  limit?: string;
  eta?: string;
  position?: number;
}

/** One entry of a job's Redis Stream, and one SSE message. */
export type StreamEvent =
  | { kind: 'text'; text: string }
  | { kind: 'progress'; progress: ProgressEvent }
  | { kind: 'result'; result: AgentResult }
  | { kind: 'error'; error: string; state: 'failed' | 'cancelled' };

export const isTerminal = (e: StreamEvent) => e.kind === 'result' || e.kind === 'error';

/**
 * Stream entries carry `k` (kind), `v` (the text itself, or JSON for the other kinds) and `j`, the job
 * incarnation that wrote them (`job.timestamp`, the same key as usage rows' `job_ts`).
 *
 * Why a tag and not a fresh stream per incarnation: a job id comes back (an idempotency key sent again once
 * the old job was removed by retention or cancelled) while its stream key may still hold the old job's entries,
 * its final one included. Deleting the key when the new job is stored would need a command in every enqueue
 * path (the dispatcher's store script, BullMQ's add for flow children), paid by jobs that never stream, and
 * would still lose a race: a cancel that removed the old job writes its `cancelled` entry after the removal,
 * so it can land after the new job's store. A tag costs a streaming job a few bytes per entry and nothing else,
 * and readers skip every entry of another incarnation, whenever it was written.
 */
export function encodeEvent(e: StreamEvent, incarnation?: number): string[] {
  const tag = incarnation === undefined ? [] : ['j', String(incarnation)];
  switch (e.kind) {
    case 'text':
      return ['k', 'text', 'v', e.text, ...tag];
    case 'progress':
      return ['k', 'progress', 'v', JSON.stringify(e.progress), ...tag];
    case 'result':
      return ['k', 'result', 'v', JSON.stringify(e.result), ...tag];
    case 'error':
      return ['k', 'error', 'v', JSON.stringify({ error: e.error, state: e.state }), ...tag];
  }
}

/**
 * Whether an entry belongs to the job incarnation `incarnation` (its `job.timestamp`). An entry without a tag
 * (written before tags) and a reader that does not know the incarnation (a job id that cannot come back) take
 * every entry.
 */
export function ofIncarnation(fields: string[], incarnation: number | undefined): boolean {
  if (incarnation === undefined) return true;
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'j') return fields[i + 1] === String(incarnation);
  return true;
}

/** The event of an entry's flat field list; undefined for an entry this version does not know. */
export function decodeEvent(fields: string[]): StreamEvent | undefined {
  let kind: string | undefined;
  let value: string | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === 'k') kind = fields[i + 1];
    else if (fields[i] === 'v') value = fields[i + 1];
  }
  if (value === undefined) return undefined;
  try {
    if (kind === 'text') return { kind, text: value };
    if (kind === 'progress') return { kind, progress: JSON.parse(value) as ProgressEvent };
    if (kind === 'result') return { kind, result: JSON.parse(value) as AgentResult };
    if (kind === 'error') {
      const parsed = JSON.parse(value) as { error: string; state: 'failed' | 'cancelled' };
      return { kind, error: parsed.error, state: parsed.state };
    }
  } catch {
    return undefined;
  }
  return undefined;
}

/** The shape of a Redis Stream id; `isStreamId` also bounds its halves. */
export const STREAM_ID = /^\d{1,20}-\d{1,20}$/;

const U64_MAX = 2n ** 64n - 1n;

/**
 * An id Redis accepts in XREAD: each half is an unsigned 64-bit number. Twenty digits alone reach
 * 99999999999999999999, which Redis refuses ("Invalid stream ID") for the whole read that names it.
 */
export function isStreamId(id: string): boolean {
  if (!STREAM_ID.test(id)) return false;
  const [ms, seq] = id.split('-');
  return BigInt(ms) <= U64_MAX && BigInt(seq) <= U64_MAX;
}

/** Orders Redis Stream ids (`<ms>-<seq>`) numerically; BigInt because both halves are 64-bit. */
export function compareStreamIds(a: string, b: string): number {
  const [am, as] = a.split('-');
  const [bm, bs] = b.split('-');
  const ms = BigInt(am) - BigInt(bm);
  if (ms !== 0n) return ms < 0n ? -1 : 1;
  const seq = BigInt(as ?? '0') - BigInt(bs ?? '0');
  return seq === 0n ? 0 : seq < 0n ? -1 : 1;
}
