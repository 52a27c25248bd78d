import { z } from 'zod';

/**
 * The named stages a job moves through, one vocabulary for the job view (`GET /v1/jobs/:id`), SSE progress
 * events and Bull Board. Most are derived from what Redis already holds when someone asks (state, the fair
 * dispatcher's `why`); only the worker-side stages are written, each by a call that happens anyway (see
 * ARCHITECTURE.md "Job stages"):
 *   queued        enqueued, not yet handed to a worker
 *   waiting       held by a limit (org concurrency, a rate limit, an open breaker, a quota, a retry's backoff...)
 *   waiting_for_batch  a batch-tier job collected into (or about to join) a Gemini batch: its name and state
 *   calling_model a worker runs the attempt (guards, then the model call)
 *   streaming     the model's text is arriving (jobs enqueued with `stream: true`)
 *   validating    the model answered; its output is checked against the action's schema (streaming jobs)
 *   done          completed, failed for good or cancelled
 */
export const JOB_STAGE_NAMES = ['queued', 'waiting', 'waiting_for_batch', 'calling_model', 'streaming', 'validating', 'done'] as const;
export type JobStageName = (typeof JOB_STAGE_NAMES)[number];

export const jobStageSchema = z
  .discriminatedUnion('name', [
    z.object({ name: z.literal('queued') }),
    z.object({
      name: z.literal('waiting'),
      reason: z.string().describe('Why it waits: the fair dispatcher’s reason (fair_share, org_concurrency, rate_limited, ...), delayed or retry_backoff'),
      limit: z.string().optional().describe('The limit that holds the job, e.g. rpm:org:acme:gemini-2.5-pro'),
      eta: z.string().optional().describe('When it is expected to start (ISO 8601), when known'),
      position: z.number().optional(),
    }),
    z.object({
      name: z.literal('waiting_for_batch'),
      model: z.string().optional().describe('The model whose batch the request joins'),
      batch: z.string().optional().describe('The Gemini batch (batches/...), once submitted'),
      state: z.string().optional().describe('The batch state (JOB_STATE_PENDING, JOB_STATE_RUNNING...), or COLLECTING before it is submitted'),
      eta: z.string().optional().describe('When the job runs on the standard tier if no answer came back by then (ISO 8601)'),
    }),
    z.object({
      name: z.literal('calling_model'),
      attempt: z.number().describe('1-based attempt'),
      model: z.string().optional().describe('The model the attempt was dispatched for (a route may call another)'),
      since: z.string().optional().describe('When the attempt started (ISO 8601)'),
    }),
    z.object({ name: z.literal('streaming'), attempt: z.number(), model: z.string().optional().describe('The model writing'), since: z.string().optional() }),
    z.object({ name: z.literal('validating'), attempt: z.number(), model: z.string().optional().describe('The model that answered'), since: z.string().optional() }),
    z.object({ name: z.literal('done'), outcome: z.enum(['completed', 'failed', 'cancelled']) }),
  ])
  .describe('JobStage');

export type JobStage = z.infer<typeof jobStageSchema>;

/** What a worker writes to the job hash's `progress` field: a running stage of one attempt (ms since). */
export interface StoredStage {
  name: 'calling_model' | 'streaming' | 'validating';
  attempt: number;
  model?: string;
  since: number;
}

export const storedStage = (name: StoredStage['name'], attempt: number, model: string | undefined, since = Date.now()): StoredStage => ({
  name,
  attempt,
  ...(model ? { model } : {}),
  since,
});

const RUNNING = new Set(['calling_model', 'streaming', 'validating']);

/**
 * The stored running stage of the attempt in flight, or undefined. The field outlives its attempt (nothing
 * clears it: a write would cost a command per job), so it counts only while its attempt is the current one.
 */
export function currentStored(progress: unknown, attemptsMade: number): StoredStage | undefined {
  if (!progress || typeof progress !== 'object') return undefined;
  const p = progress as Partial<StoredStage>;
  if (typeof p.name !== 'string' || !RUNNING.has(p.name) || p.attempt !== attemptsMade + 1) return undefined;
  return p as StoredStage;
}

const runningStage = (s: StoredStage): JobStage => ({
  name: s.name,
  attempt: s.attempt,
  ...(s.model ? { model: s.model } : {}),
  ...(Number.isFinite(s.since) ? { since: new Date(s.since).toISOString() } : {}),
});

/**
 * The stage of a job from its state (as the job view reports it), why it waits (fair dispatcher) and its
 * stored progress. An active job with no stored stage for this attempt (no fair dispatcher, or read between
 * BullMQ's fetch and the claim) is calling the model as far as anyone outside the worker can tell.
 */
export function deriveStage(o: {
  state: string;
  attemptsMade: number;
  progress: unknown;
  waitingFor?: { reason: string; limit?: string; eta?: string; position?: number };
}): JobStage {
  switch (o.state) {
    case 'completed':
      return { name: 'done', outcome: 'completed' };
    case 'failed':
    case 'cancelled':
      return { name: 'done', outcome: o.state };
    case 'active':
    case 'cancelling': {
      const stored = currentStored(o.progress, o.attemptsMade);
      return stored ? runningStage(stored) : { name: 'calling_model', attempt: o.attemptsMade + 1 };
    }
  }
  if (o.waitingFor) return { name: 'waiting', ...o.waitingFor };
  // BullMQ's own delay (no fair dispatcher): the job's `delayMs`, or a retry's backoff once it used an attempt.
  if (o.state === 'delayed') return { name: 'waiting', reason: o.attemptsMade > 0 ? 'retry_backoff' : 'delayed' };
  return { name: 'queued' };
}

/** The stage an SSE progress event (its `stage`, the event's own name) puts the job in. */
export function stageOfEvent(event: string): JobStageName {
  switch (event) {
    case 'queued':
      return 'queued';
    case 'started':
    case 'restarted':
      return 'calling_model';
    case 'streaming':
      return 'streaming';
    case 'validating':
      return 'validating';
    // retrying: the failed attempt's job waits for its backoff; delayed / waiting: a limit holds it.
    default:
      return 'waiting';
  }
}
