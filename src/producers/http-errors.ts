import { AgentqError, IdempotencyConflictError, type ConflictError } from '../shared/core/errors.js';

/** An error that maps to one HTTP status with a JSON body `{ error, ...extra }`. */
export class HttpError extends AgentqError {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message, `E${statusCode}`);
  }
}

/**
 * A 409's body, wherever it is answered (the API's error handler, Bull Board's routes): the message naming why, the
 * conflict's stable code (`ECONFLICT`, or one of its own: RemovalRefusedError's), the fields it adds, and for an idempotency
 * key reused for another request `details` naming its field.
 */
export function conflictBody(err: ConflictError): Record<string, unknown> {
  return { error: err.message, code: err.code, ...err.extra, ...(err instanceof IdempotencyConflictError ? { details: err.details } : {}) };
}

const REDIS_DOWN = [/Stream isn't writeable/i, /Connection is closed/i, /ECONNREFUSED/, /max retries per request/i, /Command timed out/i, /ECONNRESET/, /Redis is down/];
/**
 * A cluster between owners of a slot (failover, resharding, a node loading its data): Redis's own error
 * codes, the first word of the reply, plus ioredis's cluster client states. All pass once the cluster settles.
 */
const CLUSTER_UNSETTLED = [/^(CLUSTERDOWN|TRYAGAIN|MOVED|ASK|LOADING|READONLY|MASTERDOWN)\b/, /Failed to refresh slots cache/i, /None of startup nodes is available/i, /Cluster isn't ready/i, /Too many Cluster redirections/i];

/** True for errors that mean "Redis is unreachable right now": the API answers 503, never hangs. */
export function isRedisUnavailable(err: unknown): boolean {
  const message = err instanceof Error ? err.message : String(err);
  return REDIS_DOWN.some((re) => re.test(message)) || CLUSTER_UNSETTLED.some((re) => re.test(message));
}

/** Rejects with a 503 HttpError when `promise` takes longer than `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what = 'queue'): Promise<T> {
  return raceDeadline(promise, ms, () => new HttpError(503, `${what} unavailable`, {}, { 'retry-after': '1' }));
}

/**
 * `withDeadline` for an enqueue of jobs whose ids are known before it is sent. The add still in flight when
 * the deadline passes may land (a Redis command once sent cannot be called back), so the 503 says the
 * outcome is unknown and names the ids: the caller reads them (`GET /v1/jobs/:id`) before it retries, or
 * retries with an idempotencyKey, instead of adding the same work twice.
 */
export async function withEnqueueDeadline<T>(promise: Promise<T>, ms: number, jobIds: string[]): Promise<T> {
  const error = () =>
    new HttpError(503, 'queue did not confirm the enqueue in time: the jobs may still be added; read them (GET /v1/jobs/:id) before retrying, or retry with an idempotencyKey', { outcome: 'unknown', jobIds }, { 'retry-after': '1' });
  return raceDeadline(promise, ms, error);
}

/**
 * `withEnqueueDeadline` for a fan-out flow or a pipeline run, whose id is known before it is added: the 503 names
 * it (`flowId`, `runId`) and says the outcome is unknown, so a caller reads it before starting the work again
 * (a flow or run has no idempotencyKey: a blind retry would run, and bill, every child or step twice).
 */
export async function withStartDeadline<T>(promise: Promise<T>, ms: number, started: { flowId: string } | { runId: string }): Promise<T> {
  const read = 'runId' in started ? 'GET /v1/pipelines/runs/:id' : 'GET /v1/flows/:id';
  const error = () =>
    new HttpError(503, `queue did not confirm the start in time: it may still be started; read it (${read}) before retrying`, { outcome: 'unknown', ...started }, { 'retry-after': '1' });
  return raceDeadline(promise, ms, error);
}

async function raceDeadline<T>(promise: Promise<T>, ms: number, error: () => HttpError): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(error()), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
