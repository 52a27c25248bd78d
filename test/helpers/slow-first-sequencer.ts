import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Longest files first, so the suite does not end with one worker running a long file while the other idles.
 * vitest orders by the durations it cached from a previous run; a fresh clone (CI) has none and falls back to
 * file size, which says little about a test that spawns processes. These names come from the per-file times
 * of a CI run beside two CPU hogs, longest first; files not named keep vitest's own order after them.
 */
const SLOW_FIRST = [
  // fault suite
  'faults/pglite-single-owner',
  'faults/worker-signals',
  // Split from pglite-single-owner (82 s, the suite's longest file, alone on its worker to the end).
  'faults/pglite-owner-takeover',
  'faults/fair-crash',
  'faults/redis-outage',
  'faults/npm-signals',
  'faults/tenant-isolation',
  'faults/crash-recovery-defaults',
  // Not from the CI run above (added after it): about 30 s alone (a 6-node cluster, then a ~4 s election).
  'faults/cluster-primary-kill',
  // Node 24 runtime subset (vitest.runtime.config.ts): compiles the whole tree, then starts it like quickstart.
  'production-build',
  // unit suite: from a whole-suite run on a shared 2-core machine at load 10 (2124bbe, the file's own time, then
  // api-malformed, strict-contracts-runs and usage-sink as shortened after it). Files of 8 s and more: the ones
  // left out ran last before (buffer-ask-worker, 12 s, started at 327 s of 340).
  'quickstart',
  'fair-fairness',
  'cli-keys',
  'cli-ingest',
  'worker-process',
  'pipeline-crash',
  'strict-contracts-runs',
  'api-malformed',
  'fair-scheduler',
  'batch-tier',
  'deploy-postgres',
  'embedded-prewarm',
  'db-embedded-postgres',
  'buffer-ask-worker',
  'vectors-scale',
  'usage-sink',
  'fair-dispatch',
  'startup-signal',
  'job-list',
  'idempotency-window',
  'openapi',
];

function rank(spec: TestSpecification): number {
  const i = SLOW_FIRST.findIndex((name) => spec.moduleId.endsWith(`/test/${name}.test.ts`));
  return i < 0 ? SLOW_FIRST.length : i;
}

export default class SlowFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    // Array.prototype.sort is stable: unnamed files keep the base order.
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}
