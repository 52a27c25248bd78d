import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/shared/core/logger.js';
import type { AgentResult } from '../src/shared/core/types.js';
import type { JobContext } from '../src/workers/middleware.js';
import { Cancellation } from '../src/workers/cancellation.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { fakeAgentJob } from './helpers/fake-job.js';

const silent = createLogger({ level: 'silent' });
const RESULT = { success: true, data: {}, tokensUsed: { input: 1, output: 1 }, model: 'gemini-fast', costUsd: 0 } as unknown as AgentResult;

const job = () => fakeAgentJob();

/** The processor with `chain` as its guard chain: no gate, no Redis. */
function processorWith(chain: (ctx: JobContext) => Promise<AgentResult>) {
  return createAgentProcessor({
    agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast' } as never }), validateInput: (_a, _b, input) => input },
    chain,
    runs: { record: async () => undefined },
    models: { fast: 'gemini-fast', pro: 'gemini-pro' },
    logger: silent,
  });
}

const failureOf = (p: Promise<unknown>) =>
  p.then(
    () => expect.unreachable('the attempt must fail'),
    (e: unknown) => e as Error & { code?: string },
  );

/** The attempt's signal is made when first read (src/workers/processor.ts); a cancel must reach it whenever that is. */
describe("the attempt's abort signal", () => {
  /** A cancel before the chain's first read of the signal (`when`: before the attempt started, or inside the chain). */
  async function cancelledBeforeFirstRead(when: 'before the attempt' | 'inside the chain') {
    const cancel = new Cancellation();
    if (when === 'before the attempt') cancel.cancel();
    let seen: boolean | undefined;
    const err = await failureOf(
      processorWith(async (ctx) => {
        if (when === 'inside the chain') cancel.cancel();
        seen = ctx.signal.aborted;
        throw new Error('the call saw its signal aborted');
      })(job(), 'token', cancel),
    );
    expect(seen).toBe(true);
    expect(err.code).toBe('ECANCELLED');
  }

  it('reads as aborted when the job was cancelled before the attempt started', () => cancelledBeforeFirstRead('before the attempt'));

  it('aborts a signal already read when the cancel comes later, and only then', async () => {
    const cancel = new Cancellation();
    const states: boolean[] = [];
    const err = await failureOf(
      processorWith(async (ctx) => {
        const signal = ctx.signal;
        states.push(signal.aborted);
        cancel.cancel();
        states.push(signal.aborted, ctx.signal === signal);
        throw new Error('aborted');
      })(job(), 'token', cancel),
    );
    expect(states).toEqual([false, true, true]);
    expect(err.code).toBe('ECANCELLED');
  });

  it('is made already aborted after a cancel during the chain but before its first read', () => cancelledBeforeFirstRead('inside the chain'));

  it('can be swapped by a guard for its inner links and put back', async () => {
    const inner = new AbortController();
    const seen: AbortSignal[] = [];
    const result = await processorWith(async (ctx) => {
      const outer = ctx.signal;
      ctx.signal = inner.signal;
      seen.push(ctx.signal);
      ctx.signal = outer;
      seen.push(ctx.signal, outer);
      return RESULT;
    })(job(), 'token', new Cancellation());
    expect(result).toBe(RESULT);
    expect(seen[0]).toBe(inner.signal);
    expect(seen[1]).toBe(seen[2]);
    expect(seen[1].aborted).toBe(false);
  });
});

describe('a job that reached the worker without a dispatcher slot', () => {
  it('is handed back as a delay: the hooks hear it (stream, metrics) and BullMQ gets a DelayedError', async () => {
    const delays: Array<[string, number]> = [];
    let chainRan = false;
    let finished = 0;
    const processor = createAgentProcessor({
      agents: { resolve: () => ({ agent: {} as never, action: { model: 'fast' } as never }), validateInput: (_a, _b, input) => input },
      chain: async () => ((chainRan = true), RESULT),
      runs: { record: async () => undefined },
      models: { fast: 'gemini-fast', pro: 'gemini-pro' },
      logger: silent,
      gate: {
        admit: async () => 'parked' as const,
        defer: async () => undefined,
        correct: () => undefined,
        refundUnspent: () => undefined,
        ended: () => undefined,
        orgRequests: { take: async () => ({ allowed: true, msBeforeNext: 0, redisTimeMs: 0 }), giveBack: async () => undefined },
      },
      onDelay: (_ctx, reason, delayMs) => void delays.push([reason, delayMs]),
      onFinished: () => void finished++,
    });
    const err = await failureOf(processor(job(), 'token', new Cancellation()));
    expect(err.name).toBe('DelayedError');
    expect(delays).toEqual([['no_slot', 0]]);
    // Back in Redis with no outcome: not a run the dispatch buffer's rate counts.
    expect(finished).toBe(0);
    expect(chainRan).toBe(false);
  });
});
