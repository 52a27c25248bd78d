import { AgentqError } from '../core/errors.js';
import { EQUOTAEXHAUSTED } from '../core/outcomes.js';

/**
 * Thrown by the breaker guard, before any call, for a model whose per-day quota a provider 429 said is spent
 * (its quota mark is live). Same code as the 429 itself, so routing goes straight to the fallback and, with
 * none, `classify` parks the job until `retryAtMs` (`provider_quota`, no attempt used) and pauses the model.
 */
export class QuotaExhaustedError extends AgentqError {
  readonly retryable = true;
  constructor(
    readonly model: string,
    readonly retryAtMs: number,
  ) {
    super(`${model}: provider quota spent until ${new Date(retryAtMs).toISOString()}; not called`, EQUOTAEXHAUSTED);
  }
}
