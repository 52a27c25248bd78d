import type { QuotaScope } from './gemini-wire.js';
import { refusalProblem, type Refusal } from './refusal.js';

export type { Refusal } from './refusal.js';

/** `batch` is a batch's create; the others are its admin calls (get, list, cancel, delete). */
export type CallKind = 'generate' | 'stream' | 'embed' | 'count' | 'batch' | BatchAdminKind;
export type BatchAdminKind = 'batchGet' | 'batchList' | 'batchCancel' | 'batchDelete';
const BATCH_ADMIN: ReadonlySet<string> = new Set(['batchGet', 'batchList', 'batchCancel', 'batchDelete']);

export interface FaultMatch {
  kind?: CallKind;
  /** Model name with or without the `models/` prefix. */
  model?: string;
  /** Substring of the request's text (system instruction + contents, or the texts to embed). */
  promptIncludes?: string;
  /** The request's `serviceTier` ('standard' when unset), e.g. to shed only flex traffic. */
  serviceTier?: string;
}

/**
 * One scripted misbehaviour. Exactly one effect is expected (`latencyMs` may accompany another):
 * - `status`: answer with Gemini's error JSON (429 carries RetryInfo + Retry-After when `retryAfterS` is set,
 *   and a QuotaFailure naming the `quota`: per_minute (default), tokens_per_minute or per_day);
 * - `latencyMs`: wait, then answer (normally, or with the other effect);
 * - `hang`: never answer; the socket stays open until the client gives up or the server closes;
 * - `malformed`: a 200 whose candidate text is truncated JSON;
 * - `reset`: destroy the socket; for a stream, after `afterChunks` whole chunks reached the socket (default 0:
 *   before the headers); an `afterChunks` at or past the answer's chunk count cuts inside its last chunk, so the
 *   fault always fires and the client never gets a whole answer;
 * - `servedTier`: answer normally but serve the request at this tier (`usageMetadata.serviceTier` and the
 *   `x-gemini-service-tier` header), as Gemini serves a priority request past its priority limit at standard.
 * - `refuse` (generate, stream and batch create calls only): a 200 refusal shaped as Gemini sends it (refusal.ts):
 *   `{ finishReason: 'SAFETY' | 'PROHIBITED_CONTENT' | ... }` a candidate stopped for that reason, with no content;
 *   `{ blockReason: 'SAFETY' | ... }` the prompt blocked (`promptFeedback.blockReason`), no candidate;
 *   `{ noCandidate: true }` an answer with usage and no candidate at all. `category` names the harm category whose
 *   safety rating blocked (`blocked: true`; SAFETY defaults to HARM_CATEGORY_DANGEROUS_CONTENT), `finishMessage` the
 *   candidate's. A RECITATION stop carries `citationMetadata.citationSources`: one source over the answer it
 *   withheld by default, or `citations: [{ startIndex?, endIndex?, uri?, license? }]` (none when empty). A batch's create takes it for the inline answers of the requests it names (as `noFinishReason`).
 *   With `afterChunks` (a finishReason's; stream and generate calls only, never a batch's) the stop comes
 *   mid-answer, after the text of that many chunks of the answer's stream (all of them when it has fewer): a stream
 *   sends those chunks, then the stopped candidate; a generate call answers the stopped candidate with that text
 *   as its `content` (as Gemini's unary SAFETY stop does). Either usage bills the text sent.
 * - `noFinishReason` (generate, stream and batch create calls only): a 200 that never says the answer finished. A
 *   generate call gets the whole answer (candidate, usage, model version, response id) with no `finishReason` on
 *   its candidate; a stream gets every chunk but Gemini's last (the one carrying the `finishReason` and the whole
 *   usage; the others carry the prompt's and, on 2.5, the running count of the text), then a clean end of the body, as
 *   when a proxy or the backend closes a stream early. The call log's outputTokens is then what the last chunk sent
 *   counted (0 but on 2.5), as for a stream cut by `reset`: what the client was told.
 *   A batch's create takes it for its inline responses, once the batch succeeds: each response whose request's
 *   text includes `match.promptIncludes` (every response without one) is whole but for its candidate's `finishReason`.
 * A batch's admin calls (`match.kind` batchGet, batchList, batchCancel, batchDelete) take status, hang, reset
 * and latencyMs faults, and only faults that name their kind.
 * `times` defaults to 1; -1 or Infinity keeps it until cleared.
 */
export interface EmulatorFault {
  status?: number;
  retryAfterS?: number;
  quota?: QuotaScope;
  message?: string;
  latencyMs?: number;
  hang?: boolean;
  malformed?: boolean;
  reset?: boolean;
  afterChunks?: number;
  servedTier?: 'standard' | 'flex' | 'priority';
  refuse?: Refusal;
  noFinishReason?: boolean;
  match?: FaultMatch;
  times?: number;
}

export interface RequestFacts {
  kind: CallKind;
  model: string;
  text: string;
  serviceTier?: string;
}

export class FaultScriptError extends Error {
  readonly code = 'EFAULTSCRIPT';
}

const bareModel = (m: string): string => m.replace(/^models\//, '');
const named = (v: unknown): v is string => typeof v === 'string' && v !== '';

export function describeFault(f: EmulatorFault): string {
  if (f.reset) return 'reset';
  if (f.hang) return 'hang';
  if (f.malformed) return 'malformed';
  if (f.status !== undefined) return `status:${f.status}`;
  if (f.servedTier !== undefined) return `served:${f.servedTier}`;
  if (f.refuse) return `refuse:${f.refuse.finishReason ?? f.refuse.blockReason ?? 'no-candidate'}${f.afterChunks !== undefined ? `@${f.afterChunks}` : ''}`;
  if (f.noFinishReason) return 'no-finish-reason';
  return `latency:${f.latencyMs}`;
}

function validate(f: EmulatorFault): EmulatorFault {
  if (!f || typeof f !== 'object') throw new FaultScriptError('a fault must be an object');
  const effects = [f.status !== undefined, f.hang === true, f.malformed === true, f.reset === true, f.servedTier !== undefined, f.refuse !== undefined, f.noFinishReason === true].filter(Boolean).length;
  if (effects > 1) throw new FaultScriptError('a fault has at most one of status, hang, malformed, reset, servedTier, refuse, noFinishReason');
  if (effects === 0 && !(typeof f.latencyMs === 'number' && f.latencyMs >= 0)) {
    throw new FaultScriptError('a fault needs status, hang, malformed, reset, servedTier, refuse, noFinishReason or latencyMs');
  }
  const refused = f.refuse === undefined ? undefined : refusalProblem(f.refuse);
  if (refused) throw new FaultScriptError(refused);
  if (f.afterChunks !== undefined && !((f.reset === true || named(f.refuse?.finishReason)) && Number.isInteger(f.afterChunks) && f.afterChunks >= 0)) {
    throw new FaultScriptError('fault afterChunks must be a non-negative integer, with reset or with a refuse that names a finishReason');
  }
  // Text before a stop is a stream's or a generate call's: another call (a batch's) must not consume a fault it
  // does not act out.
  if (f.refuse !== undefined && f.afterChunks !== undefined && f.match?.kind !== undefined && f.match.kind !== 'stream' && f.match.kind !== 'generate') {
    throw new FaultScriptError('a refuse fault with afterChunks is a stream\'s or a generate call\'s: match.kind must be stream or generate');
  }
  const kind = f.match?.kind;
  if (kind !== undefined && BATCH_ADMIN.has(kind) && (f.malformed || f.servedTier !== undefined || f.refuse !== undefined || f.noFinishReason || f.afterChunks !== undefined)) {
    throw new FaultScriptError(`a ${kind} fault is one of status, hang, reset or latencyMs`);
  }
  if (f.servedTier !== undefined && !['standard', 'flex', 'priority'].includes(f.servedTier)) {
    throw new FaultScriptError('fault servedTier must be standard, flex or priority');
  }
  if (f.quota !== undefined && !['per_minute', 'tokens_per_minute', 'per_day'].includes(f.quota)) {
    throw new FaultScriptError('fault quota must be per_minute, tokens_per_minute or per_day');
  }
  if (f.status !== undefined && !(Number.isInteger(f.status) && f.status >= 400 && f.status <= 599)) {
    throw new FaultScriptError('fault status must be an HTTP error status (400-599)');
  }
  const times = f.times === undefined ? 1 : f.times === -1 || f.times === null ? Infinity : f.times;
  if (!(times === Infinity || (Number.isInteger(times) && times > 0))) throw new FaultScriptError('fault times must be a positive integer, -1 or Infinity');
  return { ...f, times };
}

/** Scripted faults, consumed first-in first-out by the first request each one matches. */
export class FaultQueue {
  private faults: EmulatorFault[] = [];

  add(fault: EmulatorFault | EmulatorFault[]): number {
    const list = (Array.isArray(fault) ? fault : [fault]).map(validate);
    this.faults.push(...list);
    return list.length;
  }

  clear(): void {
    this.faults = [];
  }

  /** Pending faults, JSON-safe (unbounded `times` shown as -1). */
  list(): EmulatorFault[] {
    return this.faults.map((f) => ({ ...f, times: f.times === Infinity ? -1 : f.times }));
  }

  take(req: RequestFacts): EmulatorFault | undefined {
    const i = this.faults.findIndex((f) => appliesTo(f, req.kind) && matches(f.match, req));
    if (i < 0) return undefined;
    const fault = this.faults[i];
    const left = (fault.times ?? 1) - 1;
    if (left <= 0) this.faults.splice(i, 1);
    else this.faults[i] = { ...fault, times: left };
    return fault;
  }
}

/**
 * A refusal, a tier or a missing finishReason is an answer's: such a fault waits for a generate or stream call,
 * never consumed by another; a refusal or a missing finishReason may also be taken by a batch's create (its
 * inline answers').
 */
function appliesTo(f: EmulatorFault, kind: CallKind): boolean {
  // A batch admin call takes only a fault that names its kind: a collector polling in the background must not
  // consume the faults a test scripted for model calls.
  if (BATCH_ADMIN.has(kind)) return f.match?.kind === kind;
  // A stop after some text is a stream's or a generate call's (validate), never a batch's.
  if (f.refuse !== undefined && f.afterChunks !== undefined) return kind === 'stream' || kind === 'generate';
  if (kind === 'batch' && (f.noFinishReason || f.refuse !== undefined)) return true;
  return (f.refuse === undefined && f.servedTier === undefined && !f.noFinishReason) || kind === 'generate' || kind === 'stream';
}

function matches(m: FaultMatch | undefined, req: RequestFacts): boolean {
  if (!m) return true;
  if (m.kind !== undefined && m.kind !== req.kind) return false;
  if (m.model !== undefined && bareModel(m.model) !== bareModel(req.model)) return false;
  if (m.promptIncludes !== undefined && !req.text.includes(m.promptIncludes)) return false;
  if (m.serviceTier !== undefined && m.serviceTier.toLowerCase() !== (req.serviceTier ?? 'standard')) return false;
  return true;
}
