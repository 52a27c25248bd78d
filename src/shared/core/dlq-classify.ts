import { decodeReason, ECANCELLED, ESTALLED, failureCodeOf } from './outcomes.js';

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
  | 'blocked'
  | 'invalid_input'
  | 'aborted'
  | 'cancelled'
  | 'stalled'
  | 'other';

export interface Classification {
  class: DlqClass;
  type: FailureType;
}

/**
 * Stable error code (see outcomes.ts) -> metric label, and whether the job is poison: it would fail the
 * same way however often it is replayed. Codes not listed are `other`.
 */
const BY_CODE: Record<string, { type: FailureType; poison?: true; cancelled?: true }> = {
  ERATELIMIT: { type: 'rate_limit' },
  EQUOTAEXHAUSTED: { type: 'rate_limit' },
  ETIMEDOUT: { type: 'timeout' },
  EPROVIDER: { type: 'provider' },
  ENETWORK: { type: 'network' },
  EBADREQUEST: { type: 'bad_request', poison: true },
  // Retried attempt by attempt (models are not deterministic), but after all of them the model keeps answering wrong.
  EBADOUTPUT: { type: 'bad_output', poison: true },
  // A refusal of the prompt (safety, recitation, blocklist...): a replay is refused the same way.
  EBLOCKED: { type: 'blocked', poison: true },
  EVALIDATION: { type: 'invalid_input', poison: true },
  EABORTED: { type: 'aborted' },
  [ECANCELLED]: { type: 'cancelled', cancelled: true },
  [ESTALLED]: { type: 'stalled' },
};

/** Classifies a job that failed for good, from its stable code only. */
export function classifyCode(code: string, opts: { unrecoverable: boolean }): Classification {
  const row = BY_CODE[code] ?? { type: 'other' as const };
  if (row.cancelled) return { class: 'cancelled', type: row.type };
  if (opts.unrecoverable || row.poison) return { class: 'poison', type: row.type };
  return { class: 'retryable', type: row.type };
}

/**
 * Classifies a job that failed for good. `unrecoverable` is true when the last attempt was refused as
 * unrecoverable (not retried by BullMQ); everything else ran out of attempts on errors that were
 * retryable one by one.
 */
export function classifyFailure(err: { name?: string; message?: string; code?: unknown }, opts: { unrecoverable: boolean }): Classification {
  return classifyCode(failureCodeOf(err), opts);
}

/** For entries the failed-event hook never saw (e.g. failed by another process's stalled check). */
export function classifyFailedJob(job: { failedReason?: string; attemptsMade: number; opts: { attempts?: number } }): Classification {
  const { code } = decodeReason(job.failedReason ?? '');
  // A job that failed with attempts left was refused as unrecoverable (BullMQ's stalled check aside).
  const unrecoverable = job.attemptsMade < (job.opts.attempts ?? 1) && code !== ESTALLED;
  return classifyCode(code, { unrecoverable });
}

export const isUnrecoverable = (err: { name?: string }) => err.name === 'UnrecoverableError';
