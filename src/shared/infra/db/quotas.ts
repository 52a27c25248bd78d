import type pg from 'pg';
import { DAY_MS } from '../../core/utc-day.js';

export type QuotaDecision = { allowed: true } | { allowed: false; reason: string; retryAfterS: number };

/** An org's durable quotas as admission reads them. */
export interface OrgQuotas {
  /** The monthly budget's decision. */
  budget: QuotaDecision;
  /**
   * The daily job limit (absent: none) and `recorded`, the jobs created in the UTC day starting at `dayStartMs`
   * that agent_runs holds a row of: a floor for the day's count, which admission keeps in Redis (daily-jobs.ts).
   */
  daily?: { limit: number; recorded: number; dayStartMs: number };
}


/**
 * Per-org monthly spend (UTC calendar month, every attempt's cost, since each was billed, with the estimated cost of
 * its embedding calls, of the org's knowledge ingestion and of its search API queries: migrations 023-025) computed from
 * agent_runs, and the org's daily job limit with the jobs of a day agent_runs already records. The daily limit
 * counts new jobs, reserved at admission (producers/admission.ts): rows are written after an attempt ends, so
 * they can only be a floor, never the count.
 */
export function createQuotaChecker({ pool }: { pool: pg.Pool }) {
  /** `dayStartMs` null: the daily part is not read. */
  async function read(orgId: string, dayStartMs: number | null): Promise<OrgQuotas> {
    const { rows } = await pool.query(
      `WITH b AS (
         -- Calendar arithmetic on UTC wall-clock values (timestamp), then back to timestamptz: an interval
         -- added to a timestamptz follows the session's TimeZone (a month after a local midnight), and the
         -- session's zone need not be UTC.
         SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS month_utc
       ), t AS (
         SELECT month_utc AT TIME ZONE 'UTC' AS month_start, (month_utc + interval '1 month') AT TIME ZONE 'UTC' AS month_end
         FROM b
       )
       SELECT o.daily_job_limit,
              o.monthly_budget_usd,
              -- Jobs created that day (job_ts, ms) with a row: a job admitted the day before that ran today, or a
              -- retry of one, is not a job of today.
              CASE WHEN o.daily_job_limit IS NULL OR $2::bigint IS NULL THEN 0 ELSE
                (SELECT count(DISTINCT (r.job_id, r.job_ts)) FROM agent_runs r
                 WHERE r.org_id = o.id AND r.created_at >= to_timestamp($2::bigint / 1000.0)
                   AND r.job_ts >= $2::bigint AND r.job_ts < $2::bigint + ${DAY_MS}) END AS jobs_recorded,
              -- Spend: what Gemini billed the model calls, and the embedding calls (an attempt's, an ingest's, a search's), whose
              -- cost is ESTIMATED (Gemini reports no usage for them): a budget is a spend limit, so an estimate counts
              -- rather than nothing.
              CASE WHEN o.monthly_budget_usd IS NULL THEN 0 ELSE
                (SELECT COALESCE(sum(r.cost_usd + r.embedding_cost_usd), 0) FROM agent_runs r WHERE r.org_id = o.id AND r.created_at >= t.month_start) END AS spent,
              extract(epoch FROM t.month_end - now()) AS month_left_s
       FROM orgs o, t
       WHERE o.id = $1`,
      [orgId, dayStartMs],
    );
    const r = rows[0];
    if (!r) return { budget: { allowed: true } };
    const budget: QuotaDecision =
      r.monthly_budget_usd !== null && Number(r.spent) >= Number(r.monthly_budget_usd)
        ? { allowed: false, reason: `monthly budget of $${Number(r.monthly_budget_usd)} reached`, retryAfterS: Math.max(1, Math.ceil(Number(r.month_left_s))) }
        : { allowed: true };
    return r.daily_job_limit !== null && dayStartMs !== null
      ? { budget, daily: { limit: Number(r.daily_job_limit), recorded: Number(r.jobs_recorded), dayStartMs } }
      : { budget };
  }

  return {
    /** Admission's read: the budget, and the daily limit with the jobs of the UTC day from `dayStartMs` recorded. */
    read: (orgId: string, dayStartMs: number) => read(orgId, dayStartMs),
    /**
     * The monthly budget alone: what the worker's quota guard checks at every attempt. The daily job limit is
     * admission's alone: a retry, a DLQ replay or a delay of an admitted job is not a new job.
     */
    async check(orgId: string): Promise<QuotaDecision> {
      return (await read(orgId, null)).budget;
    },
  };
}

export type QuotaChecker = ReturnType<typeof createQuotaChecker>;
