import type { AdmissionCheck } from './admission.js';
import type { OpsMetrics } from '../shared/ops/metrics.js';

/**
 * Wraps an admission check so every refusal is counted in `agentq_admission_rejections_total`.
 * `metrics` is read at each refusal, so a caller may hand over metrics it creates later.
 */
export function countingAdmission(inner: AdmissionCheck, metrics: () => OpsMetrics): AdmissionCheck {
  return {
    async admit(orgId, jobs, newJobs) {
      const verdict = await inner.admit(orgId, jobs, newJobs);
      if (!verdict.allowed) metrics().admissionRejected(verdict.kind);
      return verdict;
    },
    ...(inner.refund ? { refund: inner.refund.bind(inner) } : {}),
  };
}
