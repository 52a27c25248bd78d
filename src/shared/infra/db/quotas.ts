import type pg from 'pg';

export type QuotaDecision = { allowed: true } | { allowed: false; reason: string; retryAfterS: number };

/**
 * Per-org daily job count and monthly spend, both on UTC calendar boundaries, computed from agent_runs.
 * A job counts once however many attempts it took; every attempt's cost counts, since each was billed.
 */
export function createQuotaChecker({ pool }: { pool: pg.Pool }) {
  return {
    async check(orgId: string): Promise<QuotaDecision> {
      const { rows } = await pool.query(
        `WITH b AS (
           -- Calendar arithmetic on UTC wall-clock values (timestamp), then back to timestamptz: an interval
           -- added to a timestamptz follows the session's TimeZone (a month after a local midnight, a 23-hour
           -- day across a DST change), and the session's zone need not be UTC.
           SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AS day_utc, date_trunc('month', now() AT TIME ZONE 'UTC') AS month_utc
         ), t AS (
           SELECT day_utc AT TIME ZONE 'UTC' AS day_start, month_utc AT TIME ZONE 'UTC' AS month_start,
                  (day_utc + interval '1 day') AT TIME ZONE 'UTC' AS day_end, (month_utc + interval '1 month') AT TIME ZONE 'UTC' AS month_end
           FROM b
         )
         SELECT o.daily_job_limit,
                o.monthly_budget_usd,
                CASE WHEN o.daily_job_limit IS NULL THEN 0 ELSE
                  (SELECT count(DISTINCT (r.job_id, r.job_ts)) FROM agent_runs r WHERE r.org_id = o.id AND r.created_at >= t.day_start) END AS jobs_today,
                CASE WHEN o.monthly_budget_usd IS NULL THEN 0 ELSE
                  (SELECT COALESCE(sum(r.cost_usd), 0) FROM agent_runs r WHERE r.org_id = o.id AND r.created_at >= t.month_start) END AS spent,
                extract(epoch FROM t.day_end - now()) AS day_left_s,
                extract(epoch FROM t.month_end - now()) AS month_left_s
         FROM orgs o, t
         WHERE o.id = $1`,
        [orgId],
      );
      const r = rows[0];
      if (!r) return { allowed: true };
      if (r.monthly_budget_usd !== null && Number(r.spent) >= Number(r.monthly_budget_usd)) {
        return {
          allowed: false,
          reason: `monthly budget of $${Number(r.monthly_budget_usd)} reached`,
          retryAfterS: Math.max(1, Math.ceil(Number(r.month_left_s))),
        };
      }
      if (r.daily_job_limit !== null && Number(r.jobs_today) >= r.daily_job_limit) {
        return {
          allowed: false,
          reason: `daily job limit of ${r.daily_job_limit} reached`,
          retryAfterS: Math.max(1, Math.ceil(Number(r.day_left_s))),
        };
      }
      return { allowed: true };
    },
  };
}

export type QuotaChecker = ReturnType<typeof createQuotaChecker>;
