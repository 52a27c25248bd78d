import type { AgentAction, AgentDefinition } from '../../shared/agents/define-agent.js';
import { AgentqError, PromptBuildError } from '../../shared/core/errors.js';
import { billedOf, carryBilled, classify, codeOf, EQUOTAEXHAUSTED, ERATELIMIT, EUNKNOWN } from '../../shared/core/outcomes.js';
import type { AgentResult, BilledCall } from '../../shared/core/types.js';
import { DelayJobError, type JobContext, type Middleware } from '../middleware.js';
import { guardEvent } from '../../shared/telemetry/tracing.js';
import { QuotaExhaustedError } from '../../shared/limits/quota-exhausted-error.js';
import { sleep } from '../../shared/core/abortable-sleep.js';
import { billedCall } from '../../shared/infra/llm/llm-client.js';

export interface Route {
  /** A model name, or the name of an agent whose action of the same name serves the job. */
  primary: string;
  fallback?: string;
  /** Hard timeout of one call; the in-flight request is aborted when it passes. */
  timeoutMs?: number;
  /** Retries of the primary (with exponential backoff) before the fallback runs. */
  retries?: number;
}

export class RouteTimeoutError extends AgentqError {
  readonly retryable = true;
  constructor(target: string, ms: number) {
    super(`${target} timed out after ${ms} ms`, 'ETIMEDOUT');
  }
}

/**
 * Both routes failed. Its code is the fallback failure's own (EPROVIDER, EBADOUTPUT...), so the job's
 * outcome and DLQ class follow what actually failed; EROUTEFAILED when that error had none.
 */
export class RouteFailedError extends AgentqError {
  constructor(
    message: string,
    readonly retryable: boolean,
    code = 'EROUTEFAILED',
    /** What the calls of this attempt that answered unusably were billed, summed (see `spentOn`). */
    readonly billed?: BilledCall,
  ) {
    super(message, code);
  }
}

/**
 * The calls of one attempt that answered unusably (bad output, a refusal) and were billed, summed into one: an
 * attempt has one usage row, which must carry every call it paid for (a primary tried twice, then its
 * fallback); a run of it that is delayed after such calls, one `delayed` row for them. Model and tier are the
 * last call's.
 */
function sumBilled(spent: BilledCall[]): BilledCall | undefined {
  if (spent.length <= 1) return spent[0];
  const last = spent[spent.length - 1];
  const usage = { input: 0, output: 0, cached: 0, thoughts: 0 };
  let costUsd = 0;
  let standardCostUsd = 0;
  for (const b of spent) {
    usage.input += b.usage.input;
    usage.output += b.usage.output;
    usage.cached += b.usage.cached ?? 0;
    usage.thoughts += b.usage.thoughts ?? 0;
    costUsd += b.costUsd;
    standardCostUsd += b.standardCostUsd;
  }
  return { model: last.model, tier: last.tier, usage, costUsd, standardCostUsd };
}

/** `result` with what earlier calls of the attempt were billed added to its usage and cost. */
function spentOn(result: AgentResult, spent: BilledCall[]): AgentResult {
  if (spent.length === 0) return result;
  const total = sumBilled([...spent, billedCall({ model: result.model, usage: result.tokensUsed, costUsd: result.costUsd, tier: result.tier, standardCostUsd: result.standardCostUsd })])!;
  return { ...result, tokensUsed: total.usage, costUsd: total.costUsd, standardCostUsd: total.standardCostUsd };
}

/**
 * Refusals that say the primary cannot serve now, so switching to the fallback at once is right: an open
 * breaker (refused before any call) and a per-day provider quota (it will not clear for hours), whether a call
 * just answered it or the model's quota mark refused it before any call (`QuotaExhaustedError`).
 */
const refusedBeforeCall = (err: unknown) => {
  const code = (err as { code?: string })?.code;
  return code === 'EOPENBREAKER' || code === EQUOTAEXHAUSTED;
};
/** A provider 429: rescheduled by the processor (no attempt used), never retried in-process nor failed. */
const providerLimit = (err: unknown) => {
  const code = (err as { code?: string })?.code;
  return code === ERATELIMIT || code === EQUOTAEXHAUSTED;
};

/**
 * Primary/fallback routing per agent action. Each try gets its own timeout that aborts the in-flight call
 * (through the AbortSignal every guard and the LLM client honour); retryable failures back off
 * exponentially; then the fallback model (or agent) runs once. The result says which route served it.
 */
export function createRouteGuard(opts: {
  routeFor: (agent: string, action: string) => Route | undefined;
  agents: { get(name: string): AgentDefinition | undefined };
  backoffBaseMs?: number;
}): Middleware {
  const baseMs = opts.backoffBaseMs ?? 250;

  return async (ctx, next) => {
    const route = opts.routeFor(ctx.agentName, ctx.actionName);
    if (!route) return next();
    const outer = { model: ctx.model, signal: ctx.signal, agent: ctx.agent, action: ctx.action };

    /** Points the context at `target` (an agent name or a model) and runs the rest of the chain once. */
    const tryTarget = async (target: string, fallbackModel: string) => {
      const agent = opts.agents.get(target);
      const action: AgentAction | undefined = agent?.actions[ctx.actionName];
      ctx.agent = agent && action ? agent : outer.agent;
      ctx.action = agent && action ? action : outer.action;
      ctx.model = agent && action ? fallbackModel : target;
      const controller = new AbortController();
      const onOuterAbort = () => controller.abort(outer.signal.reason);
      outer.signal.addEventListener('abort', onOuterAbort, { once: true });
      let timedOut = false;
      const timer = route.timeoutMs
        ? setTimeout(() => {
            timedOut = true;
            controller.abort(new DOMException(`route timeout ${route.timeoutMs} ms`, 'TimeoutError'));
          }, route.timeoutMs)
        : undefined;
      ctx.signal = controller.signal;
      guardEvent(ctx.span, 'agentq.guard.route', { 'agentq.route.target': target, 'gen_ai.request.model': ctx.model, 'agentq.route': target === route.primary ? 'primary' : 'fallback' });
      try {
        return await next();
      } catch (err) {
        if (timedOut) {
          // The aborted call may have been paid for (a stream cut after chunks that reported the prompt's usage):
          // the timeout carries what it was billed, as the call's own error did.
          const timeout = new RouteTimeoutError(target, route.timeoutMs!);
          const billed = billedOf(err);
          if (billed) carryBilled(timeout, billed);
          throw timeout;
        }
        throw err;
      } finally {
        clearTimeout(timer);
        outer.signal.removeEventListener('abort', onOuterAbort);
        ctx.signal = outer.signal;
      }
    };

    const primaryModel = opts.agents.get(route.primary) ? outer.model : route.primary;
    let primaryError: unknown;
    /** Calls of this attempt that answered unusably, each billed. */
    const spent: BilledCall[] = [];
    /**
     * `err` rethrown as it is (its code, delay and model decide what happens) but carrying what the calls of
     * this run that answered unusably were billed, summed: the row it ends in counts them (the attempt's failed
     * or cancelled row, or, for a delay, the delayed part's row: processor.ts). A delay leaves out a stored
     * batch answer (tier batch): the re-run of this same attempt is served that answer again and its own row
     * bills it (batch-tier.ts, readBy), so the delayed part's would bill it twice.
     */
    const carrying = (err: unknown) => {
      const delayed = !outer.signal.aborted && classify(err).kind === 'delay';
      const total = sumBilled(delayed ? spent.filter((b) => b.tier !== 'batch') : spent);
      if (total && total !== billedOf(err) && !carryBilled(err, total)) {
        ctx.logger.warn({ err, costUsd: total.costUsd }, 'route: an error that cannot carry what its attempt was billed; that usage is not recorded');
      }
      return err;
    };
    for (let attempt = 0; attempt <= (route.retries ?? 0); attempt++) {
      try {
        return { ...spentOn(await tryTarget(route.primary, primaryModel), spent), route: 'primary' as const };
      } catch (err) {
        // The prompt (its knowledge search) failed before any model was called: no route would build it
        // differently, and the fallback is no answer to an embedding 429 or a database outage.
        if (err instanceof PromptBuildError) {
          restore(ctx, outer);
          throw carrying(err);
        }
        primaryError = err;
        const billed = billedOf(err);
        if (billed) spent.push(billed);
        // A per-minute 429 waits for its retryDelay (the whole model pauses); it does not burn the fallback.
        if (outer.signal.aborted || err instanceof DelayJobError || (err as { code?: string })?.code === ERATELIMIT) throw carrying(err);
        if (refusedBeforeCall(err) || (err as { retryable?: boolean }).retryable === false) break;
        if (attempt < (route.retries ?? 0)) await sleep(baseMs * 2 ** attempt * (0.5 + Math.random() / 2), outer.signal);
      }
    }
    if (!route.fallback) {
      restore(ctx, outer);
      // Earlier tries were paid for and the error does not carry them all: a failure that fails the attempt
      // carries the sum, under its own code. A refusal before any call keeps its own error (its delay and model
      // decide what happens), carrying the sum too.
      const total = sumBilled(spent);
      if (total && total !== billedOf(primaryError) && !refusedBeforeCall(primaryError)) {
        const code = codeOf(primaryError);
        throw new RouteFailedError((primaryError as Error)?.message, (primaryError as { retryable?: boolean }).retryable !== false, code === EUNKNOWN ? undefined : code, sumBilled(spent));
      }
      throw carrying(primaryError);
    }
    // A primary skipped for its spent quota is the expected path until the reset (logged once, when marked).
    const level = primaryError instanceof QuotaExhaustedError ? 'debug' : 'warn';
    ctx.logger[level]({ primary: route.primary, fallback: route.fallback, err: (primaryError as Error)?.message }, 'primary route failed; trying fallback');
    try {
      return { ...spentOn(await tryTarget(route.fallback, outer.model), spent), route: 'fallback' as const };
    } catch (err) {
      const billed = billedOf(err);
      if (billed) spent.push(billed);
      if (outer.signal.aborted || err instanceof DelayJobError) throw carrying(err);
      // The fallback is rate limited too: the job waits for it (its error carries the delay and the model).
      if (providerLimit(err)) throw carrying(err);
      const message = `both primary (${route.primary}) and fallback (${route.fallback}) failed: primary: ${(primaryError as Error)?.message}; fallback: ${(err as Error)?.message}`;
      // An open breaker on both routes is an outage to wait out, not a failure: keep the breaker's delay.
      if (refusedBeforeCall(err) && refusedBeforeCall(primaryError)) throw carrying(err);
      // A fallback refused by its breaker says nothing about the job: the primary's failure is the one to classify.
      const code = codeOf(refusedBeforeCall(err) ? primaryError : err);
      throw new RouteFailedError(message, (err as { retryable?: boolean }).retryable !== false, code === EUNKNOWN ? undefined : code, sumBilled(spent));
    } finally {
      restore(ctx, outer);
    }
  };
}

function restore(ctx: JobContext, outer: Pick<JobContext, 'model' | 'signal' | 'agent' | 'action'>) {
  Object.assign(ctx, outer);
}
