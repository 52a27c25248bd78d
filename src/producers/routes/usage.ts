import { principalOf } from '../auth.js';
import type { UsageRow } from '../../shared/infra/db/agent-runs.js';
import { ValidationError } from '../../shared/core/errors.js';
import type { Handler } from '../route-spec.js';
import { USAGE_MAX_RANGE_DAYS, type usageQuery } from '../schemas/ops.js';

const DAY_MS = 24 * 3600 * 1000;

export interface UsageSource {
  usage(q: { orgId: string; from: Date; to: Date; groupBy: 'agent' | 'model' | 'day' | 'tier' }): Promise<UsageRow[]>;
}

export interface UsageRouteDeps {
  runs: UsageSource;
}

/** The caller's org's jobs, tokens, cost, cache hit rate and p50/p95 duration per group. */
export const usageReport =
  (deps: UsageRouteDeps): Handler<{ querystring: typeof usageQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    const q = req.query;
    const to = q.to ?? new Date();
    const from = q.from ?? new Date(to.getTime() - 30 * DAY_MS);
    if (from >= to) throw new ValidationError('invalid query', [{ path: 'query.from', message: 'must be before to' }]);
    if (to.getTime() - from.getTime() > USAGE_MAX_RANGE_DAYS * DAY_MS) {
      throw new ValidationError('invalid query', [{ path: 'query.from', message: `range must be at most ${USAGE_MAX_RANGE_DAYS} days` }]);
    }
    const [rows, tiers] = await Promise.all([
      deps.runs.usage({ orgId, from, to, groupBy: q.groupBy }),
      q.groupBy === 'tier' ? undefined : deps.runs.usage({ orgId, from, to, groupBy: 'tier' }),
    ]);
    const savings = (r: UsageRow) => Math.round((r.standardCostUsd - r.costUsd) * 1e8) / 1e8;
    return {
      from: from.toISOString(),
      to: to.toISOString(),
      groupBy: q.groupBy,
      groups: rows.map((r) => ({
        key: r.key,
        jobs: r.jobs,
        tokens: { input: r.inputTokens, output: r.outputTokens, total: r.inputTokens + r.outputTokens, cached: r.cachedTokens, thoughts: r.thoughtsTokens },
        costUsd: r.costUsd,
        standardCostUsd: r.standardCostUsd,
        savingsUsd: savings(r),
        cacheHitRate: r.cacheHitRate,
        durationMs: { p50: r.p50Ms, p95: r.p95Ms },
      })),
      byTier: (tiers ?? rows).map((r) => ({ tier: r.key, jobs: r.jobs, costUsd: r.costUsd, standardCostUsd: r.standardCostUsd, savingsUsd: savings(r) })),
    };
  };
