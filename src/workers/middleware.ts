import type { Job } from 'bullmq';
import type { Span } from '../shared/telemetry/tracing.js';
import type { AgentAction, AgentDefinition } from '../shared/agents/define-agent.js';
import type { Logger } from '../shared/core/logger.js';
import type { AgentJobData, AgentResult, BilledCall, ServiceTier } from '../shared/core/types.js';
import type { PreparedLookup } from '../shared/cache/result-cache.js';
import type { UsageBill, UsageRider } from '../shared/infra/db/run-stream.js';
import type { BucketRequest, TakeResult } from '../shared/limits/token-bucket.js';

/** Everything a guard needs to know about the job it wraps. Built once per attempt by the processor. */
export interface JobContext {
  job: Job<AgentJobData, AgentResult>;
  /** The lock token of this attempt (needed by `job.moveToDelayed`). */
  token?: string;
  orgId: string;
  agent: AgentDefinition;
  agentName: string;
  actionName: string;
  action: AgentAction;
  /** Input already validated against the action's schema. */
  input: unknown;
  /** Concrete model name this attempt calls (may be switched by routing to the fallback). */
  model: string;
  /** Aborted on timeout, cancellation or shutdown; pass it to every I/O call. */
  signal: AbortSignal;
  logger: Logger;
  /** The service tier this attempt is billed at (the job's `options.tier`, or chosen from its deadline). */
  tier?: ServiceTier;
  /** Estimated tokens charged up front by the rate limiter; corrected with real usage afterwards. */
  estimatedTokens: number;
  /**
   * Set when the fair dispatcher already charged this attempt's first call to `model` (org and model RPM,
   * estimated TPM): the rate limiter then only corrects TPM with the real usage. Consumed by the first call;
   * set again when that call is refused before it is sent. Still set when the attempt ends, it was never spent
   * (a cache hit, a refusal): the processor gives the charge back.
   */
  prepaid?: { model: string; /** Tokens the dispatcher charged to the TPM buckets (the job's estimate). */ readonly charged: number };
  /**
   * Set when the fair dispatcher keeps the org's buckets: what a call really used is charged to them
   * through the fair gate, which batches it onto its next claim or release. `orgTokens` / `modelTokens`:
   * tokens used minus tokens already charged to the org's / the model's TPM bucket; `requests`: requests
   * to charge to both RPM buckets that no dispatch charged (a batch-tier job's call on the standard tier).
   */
  charge?: (model: string, d: { orgTokens: number; modelTokens: number; requests?: number }) => void;
  /**
   * Set when the fair dispatcher keeps the org's buckets (with `charge`): the request of a call no dispatch charged
   * (a fallback model, a retry within the route) is taken from the org's RPM bucket through the dispatcher, at the
   * capacity and rate its dispatches take it at (the org's plan, then the model's configured orgRpm, then
   * ORG_RPM_*), not at the rate limiter's own. Shared by every attempt of the worker (no allocation per job).
   */
  orgRequests?: OrgRequests;
  /** This attempt's span: guards add their decisions to it as events (a no-op span while tracing is off). */
  span?: Span;
  /**
   * Set by the batch tier once this attempt was served its batch answer (or its batch error): a second model call
   * in the same attempt (a route's retry or fallback) runs on the standard tier, never that answer again.
   */
  batchRead?: boolean;
  /**
   * What the batch answer served to this run was billed (tier batch; absent for a batch error answer, billed
   * nothing): its row is the attempt's, '' whichever run reads it, and the calls the run made after it are a row
   * of their own (attempt-rows.ts).
   */
  batchBilled?: BilledCall;
  /**
   * The attempt's usage row as a usage stream entry, for a guard whose own Redis write can carry it (the
   * result cache's store script): `entry(result)` encodes the row of a completed attempt, `carried()` tells
   * the processor it was appended, so it does not append it again. `bill()`, asked after `entry`: that row's bill
   * (a flow child's: run-stream.ts `usageBillOf`), for the same script to sum on the job's and its parent's hashes.
   */
  usage?: { field: string; entry(result: AgentResult): string; bill?(): UsageBill | undefined; carried(): void; rider?: UsageRider };
  /**
   * Tells the attempt an embedding call was made for it (its semantic cache lookup or store, its prompt's knowledge
   * search) with these texts: Gemini reports no usage for embeddings, so the processor estimates their tokens and
   * puts them, marked estimated, on the row the attempt writes anyway (no write of their own).
   */
  embedded?: (texts: readonly string[]) => void;
  /**
   * The result-cache lookup the fair gate's claim already ran for this attempt (`ResultCache.prepare`): the
   * result cache guard starts from its reply instead of a round trip of its own.
   */
  cacheLookup?: PreparedLookup;
}

/**
 * The org's request rate as the fair dispatcher keeps it (FairScheduler `takeRequest` / `giveBackRequest`): `take`
 * takes the org's request for `model` with `others` (the shard's own buckets under the dispatcher's bucket prefix)
 * in one atomic call; `giveBack` returns the org's request alone.
 */
export interface OrgRequests {
  take(orgId: string, model: string, others: BucketRequest[]): Promise<TakeResult>;
  giveBack(orgId: string, model: string): Promise<void>;
}

/** An attempt answered before its claim (an L1 hit from memory): its result, and `serve` to hand it out. */
export interface ClaimAnswer {
  result: AgentResult;
  serve(): AgentResult;
}

/**
 * What the result cache guard prepares for the fair claim of an attempt: the lookup the claim runs (becomes
 * `JobContext.cacheLookup`), or, when L1 answers from memory, the answer itself: the claim then appends the
 * attempt's usage row, and the chain is not run (the result cache guard is its first link, and its L1 hit
 * calls nothing after it). Neither: the chain looks up on its own.
 */
export interface ClaimPrep {
  lookup?: PreparedLookup;
  answer?: ClaimAnswer;
}

export type Next = () => Promise<AgentResult>;
export type Middleware = (ctx: JobContext, next: Next) => Promise<AgentResult>;

/** Onion composition: `compose([a, b, c], call)` runs a(b(c(call))). */
export function compose(middlewares: Middleware[], terminal: (ctx: JobContext) => Promise<AgentResult>) {
  return (ctx: JobContext): Promise<AgentResult> => {
    const dispatch = (i: number): Promise<AgentResult> => {
      if (i === middlewares.length) return terminal(ctx);
      return middlewares[i](ctx, () => dispatch(i + 1));
    };
    return dispatch(0);
  };
}

/** Moved to the outcome vocabulary (shared/core/outcomes.ts); re-exported for the guards. */
export { DelayJobError } from '../shared/core/outcomes.js';
