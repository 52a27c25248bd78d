import type { FastifyRequest } from 'fastify';
import { callerOf, principalOf } from '../auth.js';
import type { UsageGroupBy, UsageRow } from '../../shared/infra/db/agent-runs.js';
import { ValidationError } from '../../shared/core/errors.js';
import { HttpError } from '../http-errors.js';
import type { Handler } from '../route-spec.js';
import { USAGE_MAX_RANGE_DAYS, type adminUsageQuery, type usageQuery } from '../schemas/ops.js';
import { orgInScope, usageScopeOf, type UsageScope } from '../usage-scope.js';

const DAY_MS = 24 * 3600 * 1000;


export interface UsageSource {
  usage(q: { orgId: string | null; from: Date; to: Date; groupBy: UsageGroupBy }): Promise<UsageRow[]>;
}

export interface UsageRouteDeps {
  runs: UsageSource;
}

function windowOf(q: { from?: Date; to?: Date }): { from: Date; to: Date } {
  const to = q.to ?? new Date();
  const from = q.from ?? new Date(to.getTime() - 30 * DAY_MS);
  if (from >= to) throw new ValidationError('invalid query', [{ path: 'query.from', message: 'must be before to' }]);
  if (to.getTime() - from.getTime() > USAGE_MAX_RANGE_DAYS * DAY_MS) {
    throw new ValidationError('invalid query', [{ path: 'query.from', message: `range must be at most ${USAGE_MAX_RANGE_DAYS} days` }]);
  }
  return { from, to };
}

const savings = (r: UsageRow) => Math.round((r.standardCostUsd - r.costUsd) * 1e8) / 1e8;

const view = (r: UsageRow) => ({
  key: r.key,
  jobs: r.jobs,
  tokens: { input: r.inputTokens, output: r.outputTokens, total: r.inputTokens + r.outputTokens, cached: r.cachedTokens, thoughts: r.thoughtsTokens },
  costUsd: r.costUsd,
  standardCostUsd: r.standardCostUsd,
  savingsUsd: savings(r),
  // Gemini reports no usage for embedding calls: estimated, and apart from costUsd (what Gemini billed). `ingest`:
  // the part of them the org's knowledge ingestion made (no job; agent `knowledge`, migration 024); `search`: the part
  // POST /v1/knowledge/search made (no job either; migration 025).
  embedding: {
    tokens: r.embeddingTokens,
    costUsd: r.embeddingCostUsd,
    estimated: true as const,
    ingest: { tokens: r.ingestEmbeddingTokens, costUsd: r.ingestEmbeddingCostUsd },
    search: { tokens: r.searchEmbeddingTokens, costUsd: r.searchEmbeddingCostUsd },
  },
  cacheHitRate: r.cacheHitRate,
  durationMs: { p50: r.p50Ms, p95: r.p95Ms },
});

const EMPTY: UsageRow = { key: 'total', jobs: 0, inputTokens: 0, outputTokens: 0, cachedTokens: 0, thoughtsTokens: 0, costUsd: 0, standardCostUsd: 0, embeddingTokens: 0, embeddingCostUsd: 0, ingestEmbeddingTokens: 0, ingestEmbeddingCostUsd: 0, searchEmbeddingTokens: 0, searchEmbeddingCostUsd: 0, cacheHitRate: 0, p50Ms: 0, p95Ms: 0 };

/** The groups and the window's total: one read path for the API and the dashboard, so their numbers agree. */
async function report<G extends UsageGroupBy>(deps: UsageRouteDeps, q: { orgId: string | null; from: Date; to: Date; groupBy: G }) {
  const [rows, [total], tiers] = await Promise.all([
    deps.runs.usage(q),
    deps.runs.usage({ ...q, groupBy: 'total' }),
    q.groupBy === 'tier' ? undefined : deps.runs.usage({ ...q, groupBy: 'tier' }),
  ]);
  return {
    from: q.from.toISOString(),
    to: q.to.toISOString(),
    groupBy: q.groupBy,
    groups: rows.map(view),
    total: view(total ?? EMPTY),
    // A tier's embedding calls too (groupBy=tier files an attempt's under `standard`, the price they were billed at):
    // the tiers' `costUsd` and `embedding.costUsd` each add up to the total's. Until 2026-12-07 they were left out.
    byTier: (tiers ?? rows).map((r) => ({
      tier: r.key,
      jobs: r.jobs,
      costUsd: r.costUsd,
      standardCostUsd: r.standardCostUsd,
      savingsUsd: savings(r),
      embedding: { tokens: r.embeddingTokens, costUsd: r.embeddingCostUsd, estimated: true as const },
    })),
  };
}

/** The caller's org's jobs, tokens, cost, cache hit rate and p50/p95 duration per group, and in total. */
export const usageReport =
  (deps: UsageRouteDeps): Handler<{ querystring: typeof usageQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    return report(deps, { orgId, ...windowOf(req.query), groupBy: req.query.groupBy });
  };

function scopeOf(req: FastifyRequest): Exclude<UsageScope, { kind: 'forbidden' }> {
  // The route table admits org-admins and the operator only, so forbidden here is a second line.
  const scope = usageScopeOf(callerOf(req));
  if (scope.kind === 'forbidden') throw new HttpError(403, 'usage dashboard: not allowed');
  return scope;
}

/** The dashboard's data: as `/v1/usage`, for the orgs the caller's scope covers (usage-scope.ts). */
export const adminUsageReport =
  (deps: UsageRouteDeps): Handler<{ querystring: typeof adminUsageQuery }> =>
  async (req) => {
    const scope = scopeOf(req);
    const pick = orgInScope(scope, req.query.org);
    if (!pick.allowed) throw new HttpError(403, 'an org admin sees only its own org');
    const body = await report(deps, { orgId: pick.org, ...windowOf(req.query), groupBy: req.query.groupBy });
    return { ...body, scope, org: pick.org };
  };
