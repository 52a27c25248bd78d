import { DelayJobError, type JobContext, type Middleware, type OrgRequests } from '../middleware.js';
import { OpenCircuitError } from '../../shared/limits/circuit-breaker.js';
import { QuotaExhaustedError } from '../../shared/limits/quota-exhausted-error.js';
import type { BucketRequest, TakeResult, TokenBuckets } from '../../shared/limits/token-bucket.js';
import { defaultModelLimits, type ModelLimits } from '../../shared/limits/model-limits.js';
import { guardEvent } from '../../shared/telemetry/tracing.js';
import { PromptBuildError } from '../../shared/core/errors.js';
import { billedOf } from '../../shared/core/outcomes.js';
import type { AgentResult } from '../../shared/core/types.js';

export { defaultModelLimits, type ModelLimits };

/** The org's request of one call, taken through the fair dispatcher (`JobContext.orgRequests`). */
interface OrgTake {
  rate: OrgRequests;
  orgId: string;
  model: string;
}

/** A limit that is not a positive finite number turns its bucket off. */
const usable = (n: number) => Number.isFinite(n) && n > 0;

/**
 * Takes [org+model RPM, model RPM, model TPM (cost = estimated tokens)] in one atomic call before
 * the LLM call; refusal delays the job (`DelayJobError`, no attempt used). Afterwards the TPM bucket
 * is corrected with the real usage, and when nothing was called (an inner guard refused) every
 * bucket is refunded. With the fair dispatcher (`JobContext.orgRequests`) the org's RPM bucket is the
 * dispatcher's: that call goes through it, which takes the org's request at the dispatch's own capacity and
 * rate (the org's plan first) with the other buckets, and `limits.perOrgModelRpm` is not used.
 */
export function createRateLimitGuard(opts: {
  buckets: TokenBuckets;
  /**
   * Where the model-wide buckets live when not in `buckets` (QUEUE_SHARDS > 1: the models' global buckets,
   * which the shards' dispatchers lease from, under QUEUE_PREFIX's tag). The take is then two calls: the org's
   * bucket, then the model's (the org's is given back when the model's refuses).
   */
  modelBuckets?: TokenBuckets;
  limits?: Partial<ModelLimits>;
  maxJitterMs?: number;
  /**
   * Token corrections after calls are summed per bucket and written every `correctionFlushMs` (0 = after
   * each call), so a busy model costs one bucket write per interval instead of one per job. The bucket is
   * then up to this long behind the real usage.
   */
  correctionFlushMs?: number;
  onError?: (err: unknown) => void;
}): Middleware & { flush(): Promise<void> } {
  const limits = { ...defaultModelLimits, ...opts.limits };
  const maxJitterMs = opts.maxJitterMs ?? 250;
  const flushMs = opts.correctionFlushMs ?? 0;
  const { buckets } = opts;
  const isModelWide = (key: string) => key.startsWith('rpm:model:') || key.startsWith('tpm:model:');
  const storeOf = (key: string) => (opts.modelBuckets && isModelWide(key) ? opts.modelBuckets : buckets);
  const allowed: TakeResult = { allowed: true, msBeforeNext: 0, redisTimeMs: 0 };
  /**
   * `org`: the org's request goes through the fair dispatcher, in one call with the shard's own buckets (all of
   * them with one queue shard: the dispatcher's bucket prefix is the shard's, `buckets`').
   */
  async function takeAll(requests: BucketRequest[], org?: OrgTake): Promise<TakeResult> {
    const own = opts.modelBuckets ? requests.filter((r) => !isModelWide(r.key)) : requests;
    const wide = opts.modelBuckets ? requests.filter((r) => isModelWide(r.key)) : [];
    const first = org ? await org.rate.take(org.orgId, org.model, own) : own.length > 0 ? await buckets.take(own) : allowed;
    if (!first.allowed || wide.length === 0 || !opts.modelBuckets) return first;
    const second = await opts.modelBuckets.take(wide);
    if (!second.allowed) {
      await Promise.all([...own.map((r) => buckets.adjust(r.key, r.capacity, r.refillPerSec, -r.cost)), ...(org ? [org.rate.giveBack(org.orgId, org.model)] : [])]);
    }
    return second;
  }
  const pending = new Map<string, { capacity: number; refillPerSec: number; delta: number }>();
  let timer: NodeJS.Timeout | undefined;

  async function flush(): Promise<void> {
    clearTimeout(timer);
    timer = undefined;
    const batch = [...pending.entries()];
    pending.clear();
    await Promise.all(
      batch.map(([key, c]) => (c.delta === 0 ? undefined : storeOf(key).adjust(key, c.capacity, c.refillPerSec, c.delta).catch((err: unknown) => opts.onError?.(err)))),
    );
  }

  function later(r: BucketRequest, delta: number) {
    const entry = pending.get(r.key) ?? { capacity: r.capacity, refillPerSec: r.refillPerSec, delta: 0 };
    entry.delta += delta;
    pending.set(r.key, entry);
    // unref: a pending correction must not keep a closing process alive.
    timer ??= setTimeout(() => void flush(), flushMs).unref();
  }

  const giveBack = (ctx: JobContext, t: OrgTake) =>
    t.rate.giveBack(t.orgId, t.model).catch((err: unknown) => ctx.logger.warn({ err, bucket: `rpm:org:${t.orgId}:${t.model}` }, 'rate limit: failed to give a request back'));

  const guard: Middleware = async (ctx, next) => {
    const { orgId, model } = ctx;
    const requests: BucketRequest[] = [];
    const perMinute = (key: string, perMin: number, cost: number) => {
      if (usable(perMin)) requests.push({ key, capacity: perMin, refillPerSec: perMin / 60, cost });
    };
    // The dispatcher charged these buckets when it let the job run: only the TPM correction is left to do.
    const prepaid = ctx.prepaid?.model === model ? ctx.prepaid : undefined;
    if (prepaid) ctx.prepaid = undefined;
    // With the fair dispatcher the org's RPM bucket is its own, taken at its capacity and rate (the org's plan):
    // taken here at this limiter's (MODEL_LIMITS), the shared bucket would admit calls past the plan and refill
    // at this rate.
    const orgRate = ctx.orgRequests;
    const orgTake = orgRate && !prepaid ? { rate: orgRate, orgId, model } : undefined;
    if (!orgRate) perMinute(`rpm:org:${orgId}:${model}`, limits.perOrgModelRpm(orgId, model), 1);
    perMinute(`rpm:model:${model}`, limits.modelRpm(model), 1);
    const estimate = prepaid ? 0 : Math.max(0, Math.ceil(ctx.estimatedTokens || 0));
    perMinute(`tpm:model:${model}`, limits.modelTpm(model), estimate);
    // With the fair dispatcher the org's TPM bucket is kept by the dispatcher: the call's real usage is
    // charged to it (`charge`) whether or not this guard has buckets of its own to take.
    const ledger = ctx.charge;
    if (requests.length === 0 && !ledger && !orgTake) return next();
    const taken: TakeResult = prepaid || (requests.length === 0 && !orgTake) ? allowed : await takeAll(requests, orgTake);
    guardEvent(ctx.span, 'agentq.guard.rate_limit', {
      'gen_ai.request.model': model,
      // prepaid: the fair dispatcher charged the buckets when it let the job run (its wait is the attempt's queue wait).
      'agentq.rate_limit.decision': prepaid ? 'prepaid' : taken.allowed ? 'taken' : 'refused',
      ...(taken.allowed ? {} : { 'agentq.rate_limit.wait_ms': taken.msBeforeNext, 'agentq.rate_limit.limited_by': taken.limitedBy ?? '' }),
    });
    if (!taken.allowed) {
      // Jitter spreads the jobs that were refused together so they do not all return at once.
      const jitter = Math.floor(Math.random() * Math.min(maxJitterMs, 1 + taken.msBeforeNext / 10));
      ctx.logger.debug({ limitedBy: taken.limitedBy, msBeforeNext: taken.msBeforeNext }, 'rate limited');
      throw new DelayJobError(taken.msBeforeNext + jitter, 'rate_limited');
    }

    const correct = (r: BucketRequest, delta: number) =>
      delta === 0
        ? Promise.resolve()
        : storeOf(r.key).adjust(r.key, r.capacity, r.refillPerSec, delta).then(
            () => undefined,
            (err: unknown) => ctx.logger.warn({ err, bucket: r.key }, 'rate limit: failed to correct a bucket'),
          );
    const tpm = requests.find((r) => r.key.startsWith('tpm:'));
    /** Corrects the TPM buckets from what the model answered (`tokensUsed`), successful or not. */
    const settle = async (answered: Pick<AgentResult, 'tier' | 'tokensUsed'>) => {
      // An answer from a Gemini batch used none of the online per-minute quota.
      const used = answered.tier === 'batch' ? 0 : (answered.tokensUsed?.input ?? 0) + (answered.tokensUsed?.output ?? 0);
      if (prepaid && ledger) {
        // Both TPM buckets were charged the job's estimate by the dispatch. A batch-tier job's dispatch charged
        // no online bucket: an answer from the standard tier instead (its batch expired, failed or would be
        // late) is charged its request too, after the call rather than refused before it (its deadline is near).
        const online = ctx.tier === 'batch' && answered.tier !== 'batch';
        ledger(model, { orgTokens: used - prepaid.charged, modelTokens: used - prepaid.charged, requests: online ? 1 : 0 });
        return;
      }
      // Not prepaid (a fallback model, a retry within the route): the org's bucket was not charged at all.
      ledger?.(model, { orgTokens: used, modelTokens: 0 });
      if (tpm) {
        if (flushMs > 0) later(tpm, used - tpm.cost);
        else await correct(tpm, used - tpm.cost);
      }
    };
    let result;
    try {
      result = await next();
    } catch (err) {
      // Refused before the call, or its prompt could not be built (nothing was sent to the model): what was
      // taken for it goes back. The dispatcher's charge is handed back unspent, for the processor to refund
      // once the attempt is over.
      if (err instanceof DelayJobError || err instanceof OpenCircuitError || err instanceof QuotaExhaustedError || err instanceof PromptBuildError) {
        if (prepaid) ctx.prepaid = prepaid;
        else await Promise.all([...requests.map((r) => correct(r, -r.cost)), ...(orgTake ? [giveBack(ctx, orgTake)] : [])]);
      }
      // The model answered, unusably (bad output, a refusal): its tokens were spent all the same.
      const billed = billedOf(err);
      if (billed) await settle({ tier: billed.tier, tokensUsed: billed.usage });
      throw err;
    }
    await settle(result);
    return result;
  };
  return Object.assign(guard, { flush });
}
