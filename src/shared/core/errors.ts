/** Small named errors with a stable `code`, in the style of opossum/BullMQ. */
export class AgentqError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad input from the caller: never retried, answered 4xx. */
export class ValidationError extends AgentqError {
  constructor(
    message: string,
    readonly details: Array<{ path: string; message: string }> = [],
  ) {
    super(message, 'EVALIDATION');
  }
}

export class NotFoundError extends AgentqError {
  constructor(message = 'not found') {
    super(message, 'ENOTFOUND');
  }
}

/**
 * An agent's prompt searched a knowledge table its action does not declare (`knowledge`): an ingest into it would
 * leave the action's cached answers stale. A definition error: never retried.
 */
export class UndeclaredKnowledgeError extends AgentqError {
  readonly retryable = false;
  constructor(agent: string, action: string, tables: string[]) {
    super(`${agent}.${action} searches knowledge it does not declare: ${tables.join(', ')} (add them to the action's \`knowledge\`)`, 'EUNDECLAREDKNOWLEDGE');
  }
}

/** Postgres did not answer in time or cannot be reached (see DatabaseUnavailableError). */
export const EDBUNAVAILABLE = 'EDBUNAVAILABLE';

/**
 * Postgres did not answer in time (a connect or a wait for a free pooled connection past PG_CONNECT_TIMEOUT_MS, a
 * query past PG_QUERY_TIMEOUT_MS) or cannot be reached now: the API answers 503 with Retry-After; a worker's
 * attempt that meets it is delayed without using an attempt (`classify`: `database_unavailable`), never retried
 * nor failed for it. pg gives these failures no code of its own: infra/db/pool.ts recognises them, once, where
 * every pooled query passes.
 */
export class DatabaseUnavailableError extends AgentqError {
  readonly retryable = true;
  constructor(cause: unknown) {
    super(`database unavailable: ${cause instanceof Error ? cause.message : String(cause)}`, EDBUNAVAILABLE);
    this.cause = cause;
  }
}

/** The request conflicts with the resource's current state (already cancelled, being retried...): 409. */
export class ConflictError extends AgentqError {
  /** Read by handlers outside agentq's own error handler (Bull Board's answers an error's `statusCode`). */
  readonly statusCode = 409;
  constructor(
    message: string,
    /** Fields added to the 409 body, e.g. `{ jobId }` of the job an idempotency key already names. */
    readonly extra: Record<string, string> = {},
    /** Its stable code when the conflict has one of its own (RemovalRefusedError's). */
    code = 'ECONFLICT',
  ) {
    super(message, code);
  }
}

/**
 * An idempotency key already names another request (its record's or its job's fingerprint differs): 409 with the
 * job the key names and `details` naming the key's field (`options.idempotencyKey`, `jobs.N.options.idempotencyKey`).
 */
export class IdempotencyConflictError extends ConflictError {
  constructor(
    message: string,
    jobId: string,
    readonly details: Array<{ path: string; message: string }>,
  ) {
    super(message, { jobId });
  }
}

/**
 * BullMQ refused to remove a job because a worker holds it (its lock: it runs), `EJOBLOCKED`, or holds one of the
 * children its removal would take with it (a parent goes with its children, all or none), `ECHILDLOCKED`: 409, with
 * the job's id. Removable once that run has ended; a running job can be cancelled instead.
 */
export class RemovalRefusedError extends ConflictError {
  /** `children`: the held children it names ([] when a held one could not be named), absent when it is the job itself. */
  constructor(jobId: string, children?: string[]) {
    const why = !children
      ? `a worker is running it; cancel it, or remove it once it has ended`
      : children.length
        ? `a worker is running its ${children.length > 1 ? 'children' : 'child'} ${children.join(', ')}, which its removal would take with it; remove it once ${children.length > 1 ? 'they have' : 'that child has'} ended`
        : 'a worker holds one of the jobs its removal would take with it; remove it once that run has ended';
    super(`job ${jobId} was not removed: ${why}`, { jobId }, children ? 'ECHILDLOCKED' : 'EJOBLOCKED');
  }
}

/**
 * BullMQ refused to obliterate a queue because workers are running some of its jobs (their locks), `EQUEUEACTIVE`:
 * 409, with the queue's name (as the board names it). Nothing was removed; it can be obliterated once those runs
 * have ended, or with `force`, which takes the running jobs too.
 */
export class ObliterateRefusedError extends ConflictError {
  constructor(queue: string) {
    super(`queue ${queue} was not obliterated: workers are running some of its jobs; obliterate it once they have ended, or with force`, { queue }, 'EQUEUEACTIVE');
  }
}

/**
 * An obliterate of a queue that is not paused, `EQUEUENOTPAUSED`: 409, with the queue's name (as the board names it).
 * Nothing was removed; pause it first, so workers stop taking its jobs while they are removed.
 */
export class QueueNotPausedError extends ConflictError {
  constructor(queue: string) {
    super(`queue ${queue} was not obliterated: it is not paused; pause it first, so no worker takes its jobs while they are removed`, { queue }, 'EQUEUENOTPAUSED');
  }
}

/** Over the org's request rate plan or a durable quota: 429 with Retry-After; nothing was enqueued. */
export class RateLimitedError extends AgentqError {
  constructor(
    message: string,
    readonly retryAfterS: number,
    /** Fields added to the 429 body, e.g. the daily job limit's `limit`, `jobsToday` and `requested`. */
    readonly extra: Record<string, number> = {},
  ) {
    super(message, 'ERATELIMITED');
  }
}

/**
 * Building the prompt failed (its knowledge search: the embedding call, `match_documents`; or the agent's own
 * prompt code), before any model was asked to generate. It says nothing about the generation model: its breaker
 * never counts it and its quota is never marked spent by it (breaker-guard.ts), and what the rate limiter took for
 * the call goes back. The attempt's outcome is the cause's (as RouteFailedError keeps the failure's code): its
 * code (EPROMPT when it has none), retryability and delay, so a retrieval 429 still delays the job, naming the
 * embedding model (the only model whose lanes it may pause), and a search Postgres could not answer (EDBUNAVAILABLE)
 * delays it as `database_unavailable`.
 */
export class PromptBuildError extends AgentqError {
  readonly retryable?: boolean;
  readonly retryAfterMs?: number;
  readonly retryAtMs?: number;
  readonly model?: string;
  constructor(cause: unknown) {
    const c = (cause && typeof cause === 'object' ? cause : {}) as { code?: unknown; retryable?: unknown; retryAfterMs?: unknown; retryAtMs?: unknown; model?: unknown };
    const code = typeof c.code === 'string' && /^E[A-Z0-9_]*$/.test(c.code) ? c.code : 'EPROMPT';
    super(`building the prompt failed: ${cause instanceof Error ? cause.message : String(cause)}`, code);
    this.cause = cause;
    if (typeof c.retryable === 'boolean') this.retryable = c.retryable;
    if (typeof c.retryAfterMs === 'number') this.retryAfterMs = c.retryAfterMs;
    if (typeof c.retryAtMs === 'number') this.retryAtMs = c.retryAtMs;
    if (typeof c.model === 'string') this.model = c.model;
  }
}
