import type { AdmissionCheck } from '../producers/routes/jobs.js';
import type { FeatureDeps } from '../shared/feature.js';
import type { OpsMetrics } from './metrics.js';

/** The metrics of the runtime `deps` belongs to: features of one runtime share one registry. */
export function opsMetricsOf(deps: FeatureDeps): OpsMetrics {
  return deps.metrics;
}

/**
 * Wraps an admission check so every refusal is counted in `agentq_admission_rejections_total`. `metrics`
 * is read lazily, so the runtime can wrap its admission before its FeatureDeps exist.
 */
export function countingAdmission(inner: AdmissionCheck, metrics: () => OpsMetrics): AdmissionCheck {
  return {
    async admit(orgId, jobs) {
      const verdict = await inner.admit(orgId, jobs);
      if (!verdict.allowed) metrics().admissionRejected(verdict.reason);
      return verdict;
    },
  };
}
