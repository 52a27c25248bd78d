import { Registry } from 'prom-client';
import type { FeatureDeps } from '../shared/feature.js';
import { createOpsMetrics, type OpsMetrics } from './metrics.js';

// One metrics set per runtime, keyed by that runtime's FeatureDeps: features of the same runtime share it
// (the streaming feature sets the SSE gauge, the runtime counts admission rejections) while two runtimes
// in one process (tests) never mix. Nothing is put on prom-client's global registry.
const byRuntime = new WeakMap<FeatureDeps, OpsMetrics>();

/** The metrics of the runtime `deps` belongs to (created, on a fresh Registry, on first use). */
export function opsMetricsOf(deps: FeatureDeps): OpsMetrics {
  let m = byRuntime.get(deps);
  if (!m) {
    m = createOpsMetrics(new Registry());
    byRuntime.set(deps, m);
  }
  return m;
}
