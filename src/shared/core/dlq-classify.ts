import { CANCELLED_REASON } from './cancel.js';

/** What an operator can do with a dead-lettered job. */
export const DLQ_CLASSES = ['retryable', 'poison', 'cancelled'] as const;
export type DlqClass = (typeof DLQ_CLASSES)[number];

/** A bounded set, so it can be a metric label. */
export type FailureType =
  | 'rate_limit'
  | 'timeout'
  | 'provider'
  | 'network'
  | 'bad_request'
  | 'bad_output'
  | 'invalid_input'
  | 'aborted'
  | 'cancelled'
  | 'stalled'
  | 'other';

export interface Classification {
  class: DlqClass;
  type: FailureType;
}

const TYPE_OF_CODE: Record<string, FailureType> = {
  ERATELIMIT: 'rate_limit',
  ETIMEDOUT: 'timeout',
  EPROVIDER: 'provider',
  ENETWORK: 'network',
  EBADREQUEST: 'bad_request',
  EBADOUTPUT: 'bad_output',
  EABORTED: 'aborted',
};

/**
 * The processor wraps non-retryable errors in BullMQ's `UnrecoverableError(message)`, which keeps only the
 * message; these patterns recover the kind from it (and from `failedReason` when no error object is left).
 */
function typeOfMessage(message: string): FailureType {
  if (message === CANCELLED_REASON) return 'cancelled';
  if (/^invalid job\b/i.test(message)) return 'invalid_input';
  if (/model output does not match/i.test(message)) return 'bad_output';
  if (/stalled more than allowable limit/i.test(message)) return 'stalled';
  const status = /Gemini API (\d{3})/.exec(message)?.[1];
  if (status) {
    const s = Number(status);
    if (s === 429) return 'rate_limit';
    if (s === 408 || s === 504) return 'timeout';
    if (s >= 500 || s === 499) return 'provider';
    return 'bad_request';
  }
  if (/timed out/i.test(message)) return 'timeout';
  if (/network error/i.test(message)) return 'network';
  if (/malformed response|Gemini call failed/i.test(message)) return 'provider';
  if (/aborted by the caller/i.test(message)) return 'aborted';
  return 'other';
}

const POISON_TYPES = new Set<FailureType>(['bad_request', 'bad_output', 'invalid_input']);

/**
 * Classifies a job that failed for good. `unrecoverable` is true when the last attempt was refused as
 * unrecoverable (not retried by BullMQ); everything else ran out of attempts on errors that were
 * retryable one by one. A schema failure after all attempts is poison: the model keeps answering wrong.
 */
export function classifyFailure(err: { name?: string; message?: string; code?: unknown }, opts: { unrecoverable: boolean }): Classification {
  const message = String(err.message ?? '');
  const byCode = typeof err.code === 'string' ? TYPE_OF_CODE[err.code] : undefined;
  const type = byCode ?? typeOfMessage(message);
  if (type === 'cancelled') return { class: 'cancelled', type };
  if (opts.unrecoverable || POISON_TYPES.has(type)) return { class: 'poison', type };
  return { class: 'retryable', type };
}

/** For entries the failed-event hook never saw (e.g. failed by another process's stalled check). */
export function classifyFailedJob(job: { failedReason?: string; attemptsMade: number; opts: { attempts?: number } }): Classification {
  const reason = job.failedReason ?? '';
  // A job that failed with attempts left was refused as unrecoverable.
  const unrecoverable = job.attemptsMade < (job.opts.attempts ?? 1) && typeOfMessage(reason) !== 'stalled';
  return classifyFailure({ message: reason }, { unrecoverable });
}

export const isUnrecoverable = (err: { name?: string }) => err.name === 'UnrecoverableError';
