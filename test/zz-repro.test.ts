import { it, expect, vi } from 'vitest';
import { startStack } from './helpers/stack.js';
import { startLocalCluster } from './helpers/cluster.js';

it('repro', async () => {
  const cluster = await startLocalCluster({ primaries: 3 });
  const s = await startStack({ REDIS_CLUSTER_NODES: cluster.seeds, QUEUE_PREFIX: '{bcluster}', QUEUE_SHARDS: '12', WORKER_CONCURRENCY: '50', MODEL_LIMITS: JSON.stringify({ 'gemini-2.5-pro': { rpm: 1e9, tpm: 1e12, orgRpm: 1e9 }, 'gemini-2.5-flash': { rpm: 1e9, tpm: 1e12, orgRpm: 1e9 } }) }, { worker: false });
  const ids: Array<[string, string]> = [];
  for (let org = 0; org < 100; org++) {
    const jobs = await s.runtime.deps.producer.enqueueBulk({ jobs: Array.from({ length: 4 }, (_, k) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: `R${org}-${k}`, industry: 'x' } } })) }, { orgId: `bench-org-${org}` });
    for (const j of jobs) ids.push([`bench-org-${org}`, j.id]);
  }
  await s.startWorker();
  const diag = async () => {
    for (const c of s.runtime.deps.cells) {
      const counts = await c.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
      const g = await c.scheduler.gauges();
      const w = (c.queue as any).opts.connection;
      console.log('cell', c.index, c.prefix, JSON.stringify(counts), 'orgs', g.length, JSON.stringify(g.slice(0, 2)));
    }
    const c = s.runtime.deps.cells[0];
    const delayed = await c.queue.getDelayed(0, 3);
    const r = s.runtime.deps.redis;
    for (const j of delayed) {
      const fj = await r.hgetall(`${c.prefix}:fq:job:${j.id}`);
      const score = await r.zscore(c.queue.keys.delayed, j.id!);
      const lease = await r.zscore(`${c.prefix}:fq:leases`, j.id!);
      const promoting = await r.zscore(`${c.prefix}:fq:promoting`, j.id!);
      console.log('job', j.id, 'attempts', j.attemptsMade, 'delay', j.delay, 'ts', j.timestamp, 'score', score, 'lease', lease, 'promoting', promoting, 'fq', JSON.stringify(fj), 'progress', JSON.stringify(j.progress), 'reason', j.failedReason, JSON.stringify(j.stacktrace).slice(0, 600));
    }
    console.log('workers', JSON.stringify(await r.zrange(`${c.prefix}:fq:workers`, 0, -1, 'WITHSCORES')), JSON.stringify(await r.hgetall(`${c.prefix}:fq:workerconc`)));
    console.log('leases', await r.zcard(`${c.prefix}:fq:leases`), 'timers', await r.zcard(`${c.prefix}:fq:timers`), 'lanes', await r.zcard(`${c.prefix}:fq:lanes`), 'sleep', await r.zcard(`${c.prefix}:fq:sleep`));
  };
  try {
  await vi.waitFor(async () => {
    const states = await Promise.all(ids.map(([o, id]) => s.runtime.deps.jobs.get(o, id).then((v) => v.state)));
    const left = states.filter((x) => x !== 'completed').length;
    console.log('left', left);
    expect(left).toBe(0);
  }, { timeout: 20_000, interval: 2000 });
  } catch (e) { await diag(); throw e; }
  await s.close();
  await cluster.stop();
}, 120_000);
