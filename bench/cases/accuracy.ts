import { startChild } from '../lib/child.js';
import type { BenchContext } from '../lib/context.js';
import { round } from '../lib/stats.js';

const PROCESSES = 4;
const LOOPS_PER_PROCESS = 8;
const CAPACITY = 50;
const RATE_PER_S = 200;
const DURATION_MS = 6000;

/**
 * Case 8: four processes share one token bucket (capacity C, rate r) and keep it saturated. Over any
 * interval T the admissions must stay within C + r*T (checked for the whole run and for every 1 s
 * window), and a saturated bucket should admit at least 95% of that bound.
 */
export async function accuracyCase(ctx: BenchContext): Promise<void> {
  const startAt = Date.now() + 6000;
  const arg = { redisUrl: ctx.b.redis.url, prefix: '{bacc}', key: `acc:${Date.now()}`, capacity: CAPACITY, refillPerSec: RATE_PER_S, startAt, durationMs: DURATION_MS, loops: LOOPS_PER_PROCESS };
  const children = Array.from({ length: PROCESSES }, () => startChild<{ admitted: number[]; refused: number }>('bucket-hammer', [JSON.stringify(arg)]));
  const results = await Promise.all(children.map((c) => c.ready));
  await Promise.all(children.map((c) => c.exited));
  if (Date.now() - startAt > DURATION_MS + 5000) ctx.log('  warning: the hammer processes started late');
  const all = results.flatMap((r) => r.admitted).sort((a, b) => a - b);
  const refused = results.reduce((n, r) => n + r.refused, 0);
  const t0 = all[0];
  // Admissions can only happen while the processes run; the interval is the run as Redis timed it. The
  // script reports whole milliseconds (floored), so a span can read up to 1 ms short: it is added back.
  const spanS = (all[all.length - 1] - t0 + 1) / 1000;
  const bound = CAPACITY + RATE_PER_S * spanS;
  let worstWindow = 0;
  let worstExcess = -Infinity;
  for (let i = 0, j = 0; i < all.length; i++) {
    while (all[j] < all[i] - 1000) j++;
    const inWindow = i - j + 1;
    worstWindow = Math.max(worstWindow, inWindow);
    worstExcess = Math.max(worstExcess, inWindow - (CAPACITY + RATE_PER_S * 1.001));
  }
  ctx.details.accuracy = { processes: PROCESSES, perProcess: results.map((r) => r.admitted.length), refused, admitted: all.length, spanS, bound, worstWindow };
  ctx.log(`  ${all.length} admitted over ${round(spanS, 3)} s (bound ${round(bound, 1)}), ${refused} refusals; busiest 1 s window ${worstWindow} (bound ${CAPACITY + RATE_PER_S})`);
  const tc = '8 token-bucket accuracy (4 processes)';
  ctx.add({ case: tc, name: `admitted / bound C + r*T (C=${CAPACITY}, r=${RATE_PER_S}/s, T=${round(spanS, 2)} s)`, value: `${all.length} / ${round(bound, 1)}`, unit: '', note: `per process: ${results.map((r) => r.admitted.length).join(', ')}; ${refused} refusals` });
  ctx.add({ case: tc, name: 'never above the bound (whole run)', value: all.length <= bound ? 'yes' : `no (+${round(all.length - bound, 1)})`, unit: '', target: 'never above', met: all.length <= bound });
  ctx.add({ case: tc, name: 'never above the bound (every 1 s window)', value: worstExcess <= 0 ? 'yes' : `no (+${worstExcess})`, unit: '', target: 'never above', met: worstExcess <= 0, note: `busiest 1 s window: ${worstWindow} of ${CAPACITY + RATE_PER_S}` });
  ctx.add({ case: tc, name: 'admitted while saturated, share of the bound', value: round((100 * all.length) / bound, 1), unit: '%', target: '>= 95%', met: all.length / bound >= 0.95 });
}
