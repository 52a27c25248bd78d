export interface ModelLimits {
  /**
   * Requests per minute one org may send to one model, where no fair dispatcher keeps the org's buckets (the
   * bench's baseline): with it, the org's plan, the model's `orgRpm` and ORG_RPM_* decide (fair-buckets.lua orgRpmOf).
   */
  perOrgModelRpm: (orgId: string, model: string) => number;
  /** Requests per minute for the model across all orgs (the project's upstream quota). */
  modelRpm: (model: string) => number;
  /** Input + output tokens per minute for the model across all orgs. */
  modelTpm: (model: string) => number;
}

/**
 * The one tier rule: a model whose name contains "pro" in any case (`gemini-2.5-Pro` too) is a pro model, any other
 * a flash one. fair-buckets.lua's orgRpmOf applies the same rule (lower-cased name) to the org's RPM bucket, and
 * fair-plan.ts's tierOf is this: a model must not get pro limits here and the flash org RPM there.
 */
export const isProModel = (model: string): boolean => /pro/i.test(model);
const isPro = isProModel;

/**
 * Defaults in the range of Gemini's paid tier 1 quotas: `*pro*` models 150 RPM / 2M TPM, every
 * other model (flash, flash-lite) 1000 RPM / 1M TPM; one org may use a fifth of a model's RPM.
 * Real quotas differ per project: pass `limits` from configuration.
 */
export const defaultModelLimits: ModelLimits = {
  modelRpm: (model) => (isPro(model) ? 150 : 1000),
  modelTpm: (model) => (isPro(model) ? 2_000_000 : 1_000_000),
  perOrgModelRpm: (_orgId, model) => (isPro(model) ? 30 : 200),
};

/** Limits from `MODEL_LIMITS` (config) over the defaults: a model's RPM and TPM are its global quota. */
export function modelLimitsFromConfig(limits: Record<string, { rpm?: number; tpm?: number; orgRpm?: number }>): ModelLimits {
  return {
    modelRpm: (m) => limits[m]?.rpm ?? defaultModelLimits.modelRpm(m),
    modelTpm: (m) => limits[m]?.tpm ?? defaultModelLimits.modelTpm(m),
    perOrgModelRpm: (o, m) => limits[m]?.orgRpm ?? defaultModelLimits.perOrgModelRpm(o, m),
  };
}
