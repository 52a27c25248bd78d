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

/** The request conflicts with the resource's current state (already cancelled, being retried...): 409. */
export class ConflictError extends AgentqError {
  constructor(
    message: string,
    /** Fields added to the 409 body, e.g. `{ jobId }` of the job an idempotency key already names. */
    readonly extra: Record<string, string> = {},
  ) {
    super(message, 'ECONFLICT');
  }
}

/** Over the org's request rate plan or a durable quota: 429 with Retry-After; nothing was enqueued. */
export class RateLimitedError extends AgentqError {
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super(message, 'ERATELIMITED');
  }
}
