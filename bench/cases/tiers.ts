import { RISK_REQUEST, startAgentq } from '../lib/agentq.js';
import type { BenchContext } from '../lib/context.js';
import { percentile, round, sleep } from '../lib/stats.js';
import { ORG } from './throughput.js';

const JOBS = 200;
/** Closed loop: this many jobs in flight, so latency is one job's path, not the queue of a burst. */
const IN_FLIGHT = 10;
const DRAIN_MS = 60_000;
const TIERS = ['standard', 'flex', 'priority', 'batch'] as const;
/**
 * Batch tier: the collector submits what is pending at least every BATCH_MAX_AGE_MS (the closed loop keeps 10
 * jobs pending at most) and polls every BATCH_POLL_MS; the emulator finishes a batch at once. Gemini's
 * turnaround (up to 24 h) is not emulated: the latency figure is agentq's collection and polling only.
 */
const BATCH_ENV = { BATCH_MAX_REQUESTS: String(IN_FLIGHT), BATCH_MAX_AGE_MS: '1000', BATCH_POLL_MS: '200' };

/**
 * Case "tiers": the cost ledger's price of 1,000 RiskAnalyzer jobs per service tier (each job billed from the
 * emulator's real token counts at its tier's price) and the latency each tier adds over standard, enqueue ->
 * completion. Every tier runs the same 1,000-scaled set of inputs (the emulator's answers, and so the tokens,
 * are a function of the request), so the costs compare like for like. The emulator answers every tier equally
 * fast: the latency figure is agentq's own overhead per tier (Gemini's flex queueing is neither emulated nor
 * claimed). Batch jobs go through the batch collector and `ai.batches` (see BATCH_ENV).
 */
export async function tiersCase(ctx: BenchContext): Promise<void> {
  const tc = 'tiers cost per 1,000 RiskAnalyzer jobs';
  const perTier: Record<string, { costPer1000: number; standardPer1000: number; p50: number; completed: number }> = {};
  for (const tier of TIERS) {
    await ctx.b.control.flushall();
    const completed = new Set<string>();
    const waiters = new Map<string, () => void>();
    const latencies: number[] = [];
    let cacheHits = 0;
    let cost = 0;
    let standardCost = 0;
    let done = 0;
    const q = await startAgentq(ctx.b, {
      env: { WORKER_CONCURRENCY: '50', ...(tier === 'batch' ? BATCH_ENV : {}) },
      onCompleted: (job) => {
        if (job.returnvalue?.cacheHit) cacheHits++;
        cost += job.returnvalue?.costUsd ?? 0;
        standardCost += job.returnvalue?.standardCostUsd ?? job.returnvalue?.costUsd ?? 0;
        done++;
        completed.add(job.id!);
        waiters.get(job.id!)?.();
      },
    });
    try {
      await q.startWorker();
      if (tier === 'batch') {
        await ctx.b.emulator.setBatchTiming({ pendingMs: 0, runMs: 0 });
        // The runtime starts no background work here (worker: false): the collector is started by hand.
        await q.runtime.features.find((f) => f.name === 'batch')?.startBackground?.();
      }
      const producer = q.runtime.deps.producer;
      let next = 0;
      const end = performance.now() + DRAIN_MS;
      const lane = async () => {
        while (next < JOBS && performance.now() < end) {
          const i = next++;
          const started = performance.now();
          const job = await producer.enqueue({ ...RISK_REQUEST(`tier-${i}`), options: { tier } }, { orgId: ORG });
          // The job may have completed before its id was known here: `completed` remembers it.
          const finished = completed.has(job.id) ? Promise.resolve() : new Promise<void>((resolve) => waiters.set(job.id, resolve));
          await Promise.race([finished, sleep(Math.max(0, end - performance.now()))]);
          if (completed.has(job.id)) latencies.push(performance.now() - started);
        }
      };
      await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
    } finally {
      await q.close();
    }
    if (cacheHits > 0) ctx.log(`  ${tier}: ${cacheHits} cache hits (they cost nothing and skew the comparison)`);
    perTier[tier] = { costPer1000: (cost / Math.max(1, done)) * 1000, standardPer1000: (standardCost / Math.max(1, done)) * 1000, p50: percentile(latencies, 50), completed: done };
    ctx.log(`  ${tier}: ${done}/${JOBS} done, $${round(perTier[tier].costPer1000, 4)} per 1,000 jobs, p50 ${round(perTier[tier].p50, 1)} ms`);
  }
  ctx.details.tiers = perTier;
  const std = perTier.standard;
  for (const tier of TIERS) {
    const t = perTier[tier];
    ctx.add({
      case: tc,
      name: `${tier}: cost per 1,000 jobs`,
      value: round(t.costPer1000, 4),
      unit: 'USD',
      note: `${t.completed} of ${JOBS} jobs; ${round(t.costPer1000 / std.costPer1000, 3)}x standard; prices: src/shared/infra/llm/pricing.ts`,
    });
    if (tier !== 'standard') {
      ctx.add({ case: tc, name: `${tier}: added p50 latency vs standard`, value: round(t.p50 - std.p50, 1), unit: 'ms', note: `p50 ${round(t.p50, 1)} ms vs ${round(std.p50, 1)} ms (${tier === 'batch' ? 'collection and polling only: the emulator finishes a batch at once' : 'emulator: every tier answers alike'})` });
    }
  }
  ctx.add({ case: tc, name: 'flex <= 0.5x standard', value: round(perTier.flex.costPer1000 / std.costPer1000, 3), unit: 'x', target: '<= 0.5', met: perTier.flex.costPer1000 <= 0.5 * std.costPer1000 + 1e-12 });
  ctx.add({ case: tc, name: 'batch <= 0.5x standard', value: round(perTier.batch.costPer1000 / std.costPer1000, 3), unit: 'x', target: '<= 0.5', met: perTier.batch.costPer1000 <= 0.5 * std.costPer1000 + 1e-12 });
}
