import { startLocalCluster } from '../../dev/redis-cluster/local-cluster.js';
import { RISK_REQUEST, startAgentq } from '../lib/agentq.js';
import { check, type BenchContext } from '../lib/context.js';
import { median, round } from '../lib/stats.js';
import { createCounter } from './throughput.js';

// Five rounds of 3000: at ~1200 jobs/s a 2000-job round lasted 1.6 s and one round's rate varied by 30 %.
const JOBS = 3000;
const ROUNDS = 5;
const TAG = '{bcluster}';
/** The sharded runs' prefix: a deployment records its shard count under its prefix, so the modes do not share one. */
const SHARDED_TAG = '{bshards}';
const ORGS = 100;
/** Jobs completed before the clock starts: throughput is the steady state, worker start-up excluded (reported apart). */
const WARM = 50;
const SHARDS = 12;

/**
 * Case "cluster": agentq on a local 3-primary Redis Cluster. The same miss-path jobs run through a cluster
 * client and through a standalone client pointed at the primary that owns the queue's slot (same node, so
 * the ratio is the client's cost alone), alternated; then with QUEUE_SHARDS=12 (the orgs spread over twelve
 * hash tags, four to a primary). Per-node INFO commandstats show where the commands go in each cluster run.
 */
export async function clusterCase(ctx: BenchContext): Promise<void> {
  const tc = 'cluster';
  const cluster = await startLocalCluster({ primaries: 3 });
  try {
    const owner = await cluster.ownerOf(TAG);
    const runs: Record<'standalone' | 'cluster' | 'sharded', number[]> = { standalone: [], cluster: [], sharded: [] };
    // The agentq process's own CPU per job (API + workers run in this process): where a mode's time goes.
    const cpuMs: Record<'standalone' | 'cluster' | 'sharded', number[]> = { standalone: [], cluster: [], sharded: [] };
    const startMs: Record<'standalone' | 'cluster' | 'sharded', number[]> = { standalone: [], cluster: [], sharded: [] };
    const perNode: Record<'cluster' | 'sharded', Array<{ port: number; calls: number }>> = { cluster: [], sharded: [] };
    // Round 0 warms the process up (JIT, first connections, PGlite's caches) and is not counted: without it the
    // first mode of the first round ran at half its later rate.
    for (let round_ = 0; round_ <= ROUNDS; round_++) {
      for (const mode of ['standalone', 'cluster', 'sharded'] as const) {
        if (round_ === 0 && mode !== 'standalone') continue;
        const env: Record<string, string> =
          mode === 'standalone'
            ? { REDIS_URL: `redis://127.0.0.1:${owner}`, QUEUE_PREFIX: TAG, WORKER_CONCURRENCY: '50' }
            : mode === 'cluster'
              ? { REDIS_CLUSTER_NODES: cluster.seeds, QUEUE_PREFIX: TAG, WORKER_CONCURRENCY: '50' }
              : { REDIS_CLUSTER_NODES: cluster.seeds, QUEUE_PREFIX: SHARDED_TAG, WORKER_CONCURRENCY: '50', QUEUE_SHARDS: String(SHARDS) };
        const target = mode === 'standalone' ? `redis://127.0.0.1:${owner}` : { cluster: cluster.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })) };
        const b = { ...ctx.b, infra: { ...ctx.b.infra, redisTarget: target }, config: (e?: Record<string, string>) => ctx.b.config({ ...env, ...e }) };
        const counter = createCounter();
        const q = await startAgentq(b, { env, onCompleted: counter.onCompleted });
        try {
          const producer = q.runtime.deps.producer;
          // Spread over many orgs, as a multi-tenant deployment would be (each org its own lane).
          for (let org = 0; org < ORGS; org++) {
            const n = JOBS / ORGS;
            await producer.enqueueBulk({ jobs: Array.from({ length: n }, (_, k) => RISK_REQUEST(`${mode}-${round_}-${org}-${k}`)) }, { orgId: `bench-org-${org}` });
          }
          const before = await cluster.commandsPerNode();
          const s0 = performance.now();
          await q.startWorker();
          const startedMs = performance.now() - s0;
          await counter.until(WARM, 120_000);
          const t0 = performance.now();
          const cpu0 = process.cpuUsage();
          await counter.until(JOBS, 120_000);
          const seconds = (performance.now() - t0) / 1000;
          const cpu = process.cpuUsage(cpu0);
          if (counter.completed < JOBS) throw new Error(`${mode}: only ${counter.completed} of ${JOBS} jobs completed`);
          if (round_ === 0) continue;
          startMs[mode].push(startedMs);
          cpuMs[mode].push((cpu.user + cpu.system) / 1000 / (JOBS - WARM));
          runs[mode].push((JOBS - WARM) / seconds);
          if (mode !== 'standalone') {
            const after = await cluster.commandsPerNode();
            perNode[mode] = after.filter((n) => n.role === 'master').map((n) => ({ port: n.port, calls: n.calls - before.find((b0) => b0.port === n.port)!.calls }));
          }
        } finally {
          await q.close();
        }
      }
    }
    const standalone = median(runs.standalone);
    const clustered = median(runs.cluster);
    const sharded = median(runs.sharded);
    ctx.log(`  steady state after ${WARM} jobs: standalone ${runs.standalone.map((r) => round(r, 0)).join(', ')} jobs/s; cluster ${runs.cluster.map((r) => round(r, 0)).join(', ')} jobs/s; sharded ${runs.sharded.map((r) => round(r, 0)).join(', ')} jobs/s`);
    ctx.add({ case: tc, name: 'miss path, standalone client on the owning primary (c=50)', value: round(standalone, 0), unit: 'jobs/s' });
    ctx.add({ case: tc, name: 'miss path, cluster client, 3 primaries (c=50)', value: round(clustered, 0), unit: 'jobs/s' });
    ctx.add({ case: tc, name: `miss path, cluster client, QUEUE_SHARDS=${SHARDS} (c=50)`, value: round(sharded, 0), unit: 'jobs/s' });
    ctx.add({
      case: tc,
      name: 'agentq process CPU per job: standalone / cluster / sharded',
      value: `${round(median(cpuMs.standalone), 2)} / ${round(median(cpuMs.cluster), 2)} / ${round(median(cpuMs.sharded), 2)}`,
      unit: 'ms',
      note: 'the three redis-servers share the same 2 cores: sharded runs spread one process\'s commands over three of them',
    });
    ctx.add({
      case: tc,
      name: 'worker start (one per shard, all connections ready): standalone / cluster / sharded',
      value: `${round(median(startMs.standalone), 0)} / ${round(median(startMs.cluster), 0)} / ${round(median(startMs.sharded), 0)}`,
      unit: 'ms',
    });
    // Paired by round (the two runs of a round are adjacent in time, so a slower spell of the machine hits
    // both), then the median: the medians of each mode apart are kept above.
    const ratios = runs.cluster.map((c, i) => c / runs.standalone[i]);
    const ratio = median(ratios);
    ctx.add({
      case: tc,
      name: 'cluster client / standalone client, same node (median of rounds)',
      value: round(ratio, 2),
      unit: 'x',
      target: '>= 0.9x',
      met: check(ratio >= 0.9),
      note: `rounds ${ratios.map((r) => round(r, 2)).join(', ')}; medians apart ${round(clustered / standalone, 2)}x`,
    });
    const busiestOf = (nodes: Array<{ calls: number }>) => {
      const total = nodes.reduce((sum, n) => sum + n.calls, 0);
      return total > 0 ? Math.max(...nodes.map((n) => n.calls)) / total : NaN;
    };
    const one = busiestOf(perNode.cluster);
    ctx.add({
      case: tc,
      name: `busiest primary's share of commands (${ORGS} orgs, one hash tag)`,
      value: round(one * 100, 1),
      unit: '%',
      note: perNode.cluster.map((n) => `${n.port}: ${n.calls}`).join(', '),
    });
    const spread = busiestOf(perNode.sharded);
    ctx.add({
      case: tc,
      name: `busiest primary's share of commands (${ORGS} orgs, QUEUE_SHARDS=${SHARDS})`,
      value: round(spread * 100, 1),
      unit: '%',
      target: '<= 40% (ideal 33.3%)',
      met: check(spread <= 0.4),
      note: perNode.sharded.map((n) => `${n.port}: ${n.calls}`).join(', '),
    });
    ctx.details.cluster = { runs, perNode, owner };
  } finally {
    await cluster.stop();
  }
}
