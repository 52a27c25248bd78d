import { z } from 'zod';

/** The one error body of the API. Loose: some errors add fields (429: `limit`, `retryAfter`). */
export const errorBody = z.looseObject({
  error: z.string(),
  details: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
});

const ERROR_TEXT: Record<number, string> = {
  400: 'Invalid request; `details` names each field (`input.startup.name`, `query.waitMs`)',
  401: 'Missing, unknown or revoked credentials',
  403: 'The key lacks the role this needs',
  404: 'Not found (another org’s resource answers exactly like a missing one)',
  409: 'Conflicts with the resource’s current state; `code` is its stable code (`ECONFLICT` unless it has one of its own)',
  413: 'Body larger than BODY_LIMIT_BYTES',
  415: 'Content-Type is not application/json',
  429: 'Over the org’s rate plan, quota or stream cap; see Retry-After',
  503: 'Redis unavailable, or this instance is shutting down (Retry-After: 1; another instance answers); retry shortly. An enqueue past ENQUEUE_DEADLINE_MS adds `outcome: "unknown"` and `jobIds` (a flow\'s or pipeline run\'s start: `flowId` or `runId`): the add may still land, so read those ids before retrying (or retry with an idempotencyKey)',
};

/** Documented error responses, all in the error shape. */
export function errors(...codes: number[]): Record<number, z.ZodType> {
  return Object.fromEntries(codes.map((c) => [c, errorBody.describe(ERROR_TEXT[c] ?? 'Error')]));
}

export const idParam = z.object({ id: z.string().min(1).max(200) });

/** `?waitMs=N` long polls until the thing finishes (capped by LONG_POLL_MAX_MS). */
export const waitQuery = z.object({ waitMs: z.coerce.number().int().min(0).optional().describe('Long-poll up to this many ms (capped by LONG_POLL_MAX_MS)') }).strict();
