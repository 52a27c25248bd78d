export interface ModelLimits {
  /** Requests per minute one org may send to one model. */
  perOrgModelRpm: (orgId: string, model: string) => number;
  /** Requests per minute for the model across all orgs (the project's upstream quota). */
  modelRpm: (model: string) => number;
  /** Input + output tokens per minute for the model across all orgs. */
  modelTpm: (model: string) => number;
}

const isPro = (model: string) => /pro/i.test(model);

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

/**
 * Limits from `MODEL_LIMITS` (config) over the defaults. With `shards` queue shards each shard's buckets hold
 * its share of a model's global RPM and TPM (rounded down, at least 1), so all shards together stay within
 * the model's quota; an org lives in one shard, so its per-org limit is whole.
 */
export function modelLimitsFromConfig(limits: Record<string, { rpm?: number; tpm?: number; orgRpm?: number }>, shards = 1): ModelLimits {
  const share = (n: number) => (shards === 1 || !Number.isFinite(n) || n <= 0 ? n : Math.max(1, Math.floor(n / shards)));
  return {
    modelRpm: (m) => share(limits[m]?.rpm ?? defaultModelLimits.modelRpm(m)),
    modelTpm: (m) => share(limits[m]?.tpm ?? defaultModelLimits.modelTpm(m)),
    perOrgModelRpm: (o, m) => limits[m]?.orgRpm ?? defaultModelLimits.perOrgModelRpm(o, m),
  };
}

/**
 * Models whose share of their global RPM in one queue shard is below the per-org RPM an org gets by default
 * (its plan may differ): with `shards` > 1 a lone busy org of such a model is held by its shard's share, not by
 * its own limit. For a warning at start; empty with one shard.
 */
export function shardShareShortfalls(opts: {
  models: readonly string[];
  limits: Record<string, { rpm?: number; tpm?: number; orgRpm?: number }>;
  shards: number;
  /** The default per-org RPM of a model (the org plan defaults, ORG_RPM_PRO / ORG_RPM_FLASH). */
  orgRpm: (model: string) => number;
}): Array<{ model: string; shardRpm: number; orgRpm: number }> {
  if (opts.shards <= 1) return [];
  const split = modelLimitsFromConfig(opts.limits, opts.shards);
  return opts.models.flatMap((model) => {
    const shardRpm = split.modelRpm(model);
    const orgRpm = opts.limits[model]?.orgRpm ?? opts.orgRpm(model);
    return shardRpm < orgRpm ? [{ model, shardRpm, orgRpm }] : [];
  });
}
