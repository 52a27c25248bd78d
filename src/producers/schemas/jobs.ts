import { z } from 'zod';
import { jobRequestSchema } from '../../shared/queue/job-request.js';
import { isStreamId, STREAM_ID } from '../../shared/core/stream-event.js';
import { jobStageSchema } from '../../shared/core/job-stage.js';

export { jobRequestSchema };

export const MAX_BULK_JOBS = 1000;

/** Structural checks here; each `input` is then checked against its agent's schema (paths `jobs.N.input...`). */
export const bulkBody = z.object({ jobs: z.array(jobRequestSchema).min(1).max(MAX_BULK_JOBS) }).strict();

export const enqueuedJob = z.looseObject({ id: z.string(), state: z.string() });

export const agentResult = z
  .looseObject({
    success: z.boolean(),
    data: z.unknown().optional(),
    error: z.string().optional(),
    tokensUsed: z.looseObject({ input: z.number(), output: z.number() }),
    costUsd: z.number(),
    durationMs: z.number(),
    model: z.string(),
    cacheHit: z.enum(['l1', 'l2', 'semantic']).optional(),
    route: z.enum(['primary', 'fallback']).optional(),
  })
  .describe('AgentResult');

export const jobView = z.looseObject({
  id: z.string(),
  agent: z.string(),
  action: z.string(),
  state: z.string(),
  stage: jobStageSchema.describe('The named stage: queued, waiting (reason, eta), calling_model (attempt, model), streaming, validating or done (outcome)'),
  progress: z.unknown().describe('The stage the running attempt’s worker stored (0 before any)'),
  result: agentResult.optional(),
  error: z.string().optional(),
  attempts: z.number(),
  createdAt: z.string(),
  finishedAt: z.string().optional(),
  waitingFor: z
    .object({
      reason: z.string().describe('fair_share, org_concurrency, rate_limited, model_blocked, breaker_open, quota, delayed, retry_backoff, provider_rate_limited (Gemini 429, per minute), provider_quota (Gemini per-day quota, until its reset) or database_unavailable (Postgres did not answer the attempt; it runs again after a wait that doubles at each such deferral in a row)'),
      limit: z.string().optional().describe('The limit that holds the job, e.g. rpm:org:acme:gemini-2.5-pro'),
      eta: z.string().optional(),
      position: z.number().optional().describe('Place in its org and model’s line (0 = next)'),
    })
    .optional()
    .describe('Why a waiting job has not started yet (the fair dispatcher)'),
});

export const JOB_STATES = ['waiting', 'prioritized', 'delayed', 'waiting-children', 'active', 'completed', 'failed', 'cancelled'] as const;

const since = z.union([
  z.string().regex(/^\d{1,15}$/).transform(Number),
  z.iso.datetime({ offset: true }).transform((s) => Date.parse(s)),
]);

export const listQuery = z
  .object({
    state: z.enum(JOB_STATES).optional(),
    agent: z.string().min(1).max(100).optional(),
    since: since.optional().describe('Epoch ms or an ISO 8601 date-time: jobs created at or after it'),
    limit: z.coerce.number().int().min(1).max(1_000_000).optional(),
  })
  .strict();

const STREAM_ID_HINT = 'a Redis Stream id such as 1700000000000-0, each half at most 18446744073709551615';
// The pattern stays for the OpenAPI document; the refinement bounds the halves, which a pattern cannot.
const streamId = z.string().regex(STREAM_ID, STREAM_ID_HINT).refine(isStreamId, STREAM_ID_HINT);

export const streamQuery = z.object({ lastEventId: streamId.optional() }).strict();

/** Only Last-Event-ID is checked; every other header passes untouched. Empty means "not resuming". */
export const streamHeaders = z.looseObject({ 'last-event-id': z.union([z.literal(''), streamId]).optional() });

export const sseResponse = z.string().describe('text/event-stream: `data:` frames with ids, ending with `data: [DONE]`');
