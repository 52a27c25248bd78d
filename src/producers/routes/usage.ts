import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { principalOf } from '../auth.js';
import type { UsageRow } from '../../shared/infra/db/agent-runs.js';
import { ValidationError } from '../../shared/core/errors.js';
import { paramDetails } from '../query-details.js';

const DAY_MS = 24 * 3600 * 1000;
/** Wider windows are refused: the percentiles are computed over every row of the window. */
export const USAGE_MAX_RANGE_DAYS = 366;

const isoDate = z
  .string()
  .max(40)
  .refine((s) => /^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(s) && !Number.isNaN(Date.parse(s)), 'expected an ISO 8601 date or date-time')
  .transform((s) => new Date(s));

const usageQuery = z
  .object({
    from: isoDate.optional(),
    to: isoDate.optional(),
    groupBy: z.enum(['agent', 'model', 'day']).default('agent'),
  })
  .strict();

export interface UsageSource {
  usage(q: { orgId: string; from: Date; to: Date; groupBy: 'agent' | 'model' | 'day' }): Promise<UsageRow[]>;
}

/** `GET /v1/usage`: the caller's org's jobs, tokens, cost, cache hit rate and p50/p95 duration per group. */
export function usageRoutes(app: FastifyInstance, deps: { runs: UsageSource }) {
  app.get('/v1/usage', async (req) => {
    const { orgId } = principalOf(req);
    const parsed = usageQuery.safeParse(req.query);
    if (!parsed.success) throw new ValidationError('invalid query', paramDetails(parsed.error, 'query.'));
    const to = parsed.data.to ?? new Date();
    const from = parsed.data.from ?? new Date(to.getTime() - 30 * DAY_MS);
    if (from >= to) throw new ValidationError('invalid query', [{ path: 'query.from', message: 'must be before to' }]);
    if (to.getTime() - from.getTime() > USAGE_MAX_RANGE_DAYS * DAY_MS) {
      throw new ValidationError('invalid query', [{ path: 'query.from', message: `range must be at most ${USAGE_MAX_RANGE_DAYS} days` }]);
    }
    const rows = await deps.runs.usage({ orgId, from, to, groupBy: parsed.data.groupBy });
    return {
      from: from.toISOString(),
      to: to.toISOString(),
      groupBy: parsed.data.groupBy,
      groups: rows.map((r) => ({
        key: r.key,
        jobs: r.jobs,
        tokens: { input: r.inputTokens, output: r.outputTokens, total: r.inputTokens + r.outputTokens },
        costUsd: r.costUsd,
        cacheHitRate: r.cacheHitRate,
        durationMs: { p50: r.p50Ms, p95: r.p95Ms },
      })),
    };
  });
}
