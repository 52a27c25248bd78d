import { RISK_REQUEST, startAgentq } from '../lib/agentq.js';
import type { BenchContext } from '../lib/context.js';
import { percentile, round, sleep } from '../lib/stats.js';
import { ORG } from './throughput.js';

const DURATION_MS = 6000;
const DISCARD_MS = 1000;
const DRAIN_MS = 15_000;

/**
 * Case 4: enqueue -> completion latency at a steady offered load of half the measured maximum (the full
 * path's throughput from case 1), offered open-loop: jobs are enqueued on schedule whether or not earlier
 * ones have finished, so queueing shows up in the latency instead of slowing the offer down.
 */
export async function latencyCase(ctx: BenchContext): Promise<void> {
  const max = ctx.shared.agentqMissMaxPerS;
  if (!max) {
    ctx.add({ case: '4 latency', name: 'enqueue -> completion', value: null, unit: 'ms', note: 'needs the throughput case in the same run' });
    return;
  }
  const rate = max / 2;
  await ctx.b.control.flushall();
  const enqueuedAt = new Map<string, number>();
  const latencies: Array<{ at: number; ms: number }> = [];
  let done = 0;
  const q = await startAgentq(ctx.b, {
    env: { WORKER_CONCURRENCY: '50' },
    onCompleted: (job) => {
      const t = enqueuedAt.get(job.id!);
      if (t !== undefined) latencies.push({ at: t, ms: performance.now() - t });
      done++;
    },
  });
  let offered = 0;
  try {
    await q.startWorker();
    const producer = q.runtime.deps.producer;
    const t0 = performance.now();
    const pending: Array<Promise<unknown>> = [];
    while (performance.now() - t0 < DURATION_MS) {
      const due = Math.floor(((performance.now() - t0) / 1000) * rate);
      for (; offered < due; offered++) {
        const started = performance.now();
        pending.push(producer.enqueue(RISK_REQUEST(`lat-${offered}`), { orgId: ORG }).then((job) => enqueuedAt.set(job.id, started)));
      }
      await sleep(5);
    }
    await Promise.all(pending);
    const drainEnd = performance.now() + DRAIN_MS;
    while (done < offered && performance.now() < drainEnd) await sleep(20);
    const kept = latencies.filter((l) => l.at - t0 >= DISCARD_MS).map((l) => l.ms);
    const p50 = percentile(kept, 50);
    const p99 = percentile(kept, 99);
    ctx.details.latency = { offeredPerS: rate, offered, completed: done, measured: kept.length, p50, p99, max: Math.max(...kept) };
    ctx.log(`  offered ${round(rate, 1)} jobs/s: p50 ${round(p50, 1)} ms, p99 ${round(p99, 1)} ms (${kept.length} jobs, ${offered - done} not completed)`);
    const tc = '4 latency enqueue -> completion';
    ctx.add({ case: tc, name: 'offered load (half the full-path max of case 1)', value: round(rate, 1), unit: 'jobs/s', note: `${offered} jobs over ${DURATION_MS / 1000} s, open loop; first ${DISCARD_MS / 1000} s discarded` });
    ctx.add({ case: tc, name: 'p50', value: round(p50, 1), unit: 'ms' });
    ctx.add({ case: tc, name: 'p99', value: round(p99, 1), unit: 'ms', note: `max ${round(Math.max(...kept), 1)} ms; ${offered - done} of ${offered} not completed within the drain time` });
    ctx.add({ case: tc, name: 'p99 / p50', value: round(p99 / p50, 2), unit: 'x', target: '<= 4', met: p99 / p50 <= 4 && done === offered });
  } finally {
    await q.close();
  }
}
