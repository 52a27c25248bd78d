import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { createApiKeyStore } from '../../src/shared/infra/db/api-keys.js';
import { agentJobOptions, retentionOf } from '../../src/shared/queue/agent-queue.js';
import { QUEUE } from '../../src/shared/core/queue-names.js';
import { RISK_REQUEST, riskInput, startAgentq } from '../lib/agentq.js';
import { startChild } from '../lib/child.js';
import type { BenchContext } from '../lib/context.js';
import { round } from '../lib/stats.js';

const DURATION_S = 4;
/** The bulk comparison carries the target: alternated over rounds so a burst of machine noise hits both. */
const BULK_ROUNDS = 2;
const BULK = 100;
const SINGLE_CONNECTIONS = 50;
const BULK_CONNECTIONS = 10;

interface LoadResult {
  ok2xx: number;
  non2xx: number;
  errors: number;
  durationS: number;
  latencyP50: number;
  latencyP99: number;
}

/** `concurrency` loops calling `fn` until `durationS` is over; returns calls per second. */
async function closedLoop(concurrency: number, durationS: number, fn: () => Promise<unknown>): Promise<number> {
  const end = performance.now() + durationS * 1000;
  let calls = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        await fn();
        calls++;
      }
    }),
  );
  return calls / ((performance.now() - started) / 1000);
}

/** Case 3: enqueue rate over HTTP (load from a second process) vs BullMQ's add/addBulk called directly. */
export async function enqueueCase(ctx: BenchContext): Promise<void> {
  await ctx.b.control.flushall();
  const cfg = ctx.b.config();
  const connection = new Redis(ctx.b.redis.url, { maxRetriesPerRequest: null });
  const queue = new Queue(QUEUE.agent, { connection, prefix: cfg.QUEUE_PREFIX, defaultJobOptions: agentJobOptions(retentionOf(cfg)) });
  let n = 0;
  const data = () => ({ orgId: 'bench-http', agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput(n++), enqueuedAt: Date.now() });
  const directAdd = await closedLoop(SINGLE_CONNECTIONS, DURATION_S, () => queue.add('RiskAnalyzer:analyze_risks', data(), { jobId: randomUUID() }));
  ctx.log(`  direct add: ${round(directAdd, 0)} jobs/s`);
  const directBulkRuns: number[] = [];
  const runDirectBulk = async () => {
    const rate = BULK * (await closedLoop(BULK_CONNECTIONS, DURATION_S, () => queue.addBulk(Array.from({ length: BULK }, () => ({ name: 'RiskAnalyzer:analyze_risks', data: data(), opts: { jobId: randomUUID() } })))));
    directBulkRuns.push(rate);
    ctx.log(`  direct addBulk(${BULK}): ${round(rate, 0)} jobs/s`);
  };

  const q = await startAgentq(ctx.b, { api: true });
  const http: Record<string, LoadResult> = {};
  const httpBulkRuns: number[] = [];
  try {
    await q.app!.listen({ host: '127.0.0.1', port: 0 });
    const base = `http://127.0.0.1:${(q.app!.server.address() as AddressInfo).port}`;
    const { key } = await createApiKeyStore({ pool: ctx.b.pool }).create({ orgId: `bench-http-${randomUUID().slice(0, 6)}` });
    const headers = { authorization: `Bearer ${key}` };
    const load = async (path: string, body: unknown, connections: number) => {
      const child = startChild<LoadResult>('http-load', [JSON.stringify({ url: `${base}${path}`, body: JSON.stringify(body), headers, connections, durationS: DURATION_S })]);
      const result = await child.ready;
      await child.exited;
      return result;
    };
    http.single = await load('/v1/jobs', RISK_REQUEST('http'), SINGLE_CONNECTIONS);
    ctx.log(`  HTTP POST /v1/jobs: ${round(http.single.ok2xx / http.single.durationS, 0)} jobs/s (${http.single.non2xx} non-2xx)`);
    const bulkBody = { jobs: Array.from({ length: BULK }, (_, i) => RISK_REQUEST(`http-${i}`)) };
    for (let round_ = 0; round_ < BULK_ROUNDS; round_++) {
      await runDirectBulk();
      http.bulk = await load('/v1/jobs/bulk', bulkBody, BULK_CONNECTIONS);
      httpBulkRuns.push((BULK * http.bulk.ok2xx) / http.bulk.durationS);
      ctx.log(`  HTTP POST /v1/jobs/bulk: ${round(httpBulkRuns.at(-1)!, 0)} jobs/s (${http.bulk.non2xx} non-2xx)`);
    }
  } finally {
    await q.close();
    await queue.close();
    connection.disconnect();
  }
  const single = http.single.ok2xx / http.single.durationS;
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const bulk = mean(httpBulkRuns);
  const directBulk = mean(directBulkRuns);
  ctx.details.enqueue = { directAdd, directBulkRuns, httpBulkRuns, http };

  const tc = '3 enqueue';
  ctx.add({ case: tc, name: `BullMQ add, direct (${SINGLE_CONNECTIONS} in flight)`, value: round(directAdd, 0), unit: 'jobs/s' });
  ctx.add({ case: tc, name: `BullMQ addBulk(${BULK}), direct (${BULK_CONNECTIONS} in flight)`, value: round(directBulk, 0), unit: 'jobs/s', note: `mean of ${BULK_ROUNDS} rounds alternated with the HTTP rounds: ${directBulkRuns.map((r) => round(r, 0)).join(', ')}` });
  ctx.add({
    case: tc,
    name: `HTTP POST /v1/jobs (${SINGLE_CONNECTIONS} connections, autocannon in a 2nd process)`,
    value: round(single, 0),
    unit: 'jobs/s',
    note: `p50 ${http.single.latencyP50} ms, p99 ${http.single.latencyP99} ms; ${http.single.non2xx} non-2xx, ${http.single.errors} errors; ${round(single / directAdd, 2)}x direct add`,
  });
  ctx.add({
    case: tc,
    name: `HTTP POST /v1/jobs/bulk (${BULK} jobs, ${BULK_CONNECTIONS} connections)`,
    value: round(bulk, 0),
    unit: 'jobs/s',
    note: `mean of ${BULK_ROUNDS} rounds: ${httpBulkRuns.map((r) => round(r, 0)).join(', ')}; last round p50 ${http.bulk.latencyP50} ms, p99 ${http.bulk.latencyP99} ms, ${http.bulk.non2xx} non-2xx, ${http.bulk.errors} errors`,
  });
  ctx.add({ case: tc, name: 'bulk HTTP / direct addBulk', value: round(bulk / directBulk, 2), unit: 'x', target: '>= 0.5', met: bulk / directBulk >= 0.5 });
}
