import type pg from 'pg';

export type RatePlan = 'ai_pro' | 'ai_flash' | 'general';

export interface Org {
  id: string;
  name: string;
  ratePlan: string;
  dailyJobLimit: number | null;
  monthlyBudgetUsd: number | null;
  createdAt: Date;
}

interface OrgRow {
  id: string;
  name: string;
  rate_plan: string;
  daily_job_limit: number | null;
  monthly_budget_usd: string | null;
  created_at: Date;
}

const toOrg = (r: OrgRow): Org => ({
  id: r.id,
  name: r.name,
  ratePlan: r.rate_plan,
  dailyJobLimit: r.daily_job_limit,
  monthlyBudgetUsd: r.monthly_budget_usd === null ? null : Number(r.monthly_budget_usd),
  createdAt: r.created_at,
});

export interface OrgUpsert {
  id: string;
  name?: string;
  ratePlan?: string;
  /** `null` removes the limit; `undefined` leaves it as it is. */
  dailyJobLimit?: number | null;
  monthlyBudgetUsd?: number | null;
}

export function createOrgStore({ pool }: { pool: pg.Pool }) {
  return {
    async get(orgId: string): Promise<Org | null> {
      const { rows } = await pool.query<OrgRow>('SELECT * FROM orgs WHERE id = $1', [orgId]);
      return rows[0] ? toOrg(rows[0]) : null;
    },

    /** Creates the org or updates only the fields given. */
    async upsert(o: OrgUpsert): Promise<Org> {
      const { rows } = await pool.query<OrgRow>(
        `INSERT INTO orgs (id, name, rate_plan, daily_job_limit, monthly_budget_usd)
         VALUES ($1, COALESCE($2, $1), COALESCE($3, 'general'), $5::integer, $7::numeric)
         ON CONFLICT (id) DO UPDATE SET
           name = COALESCE($2, orgs.name),
           rate_plan = COALESCE($3, orgs.rate_plan),
           daily_job_limit = CASE WHEN $4 THEN $5::integer ELSE orgs.daily_job_limit END,
           monthly_budget_usd = CASE WHEN $6 THEN $7::numeric ELSE orgs.monthly_budget_usd END
         RETURNING *`,
        [
          o.id,
          o.name ?? null,
          o.ratePlan ?? null,
          o.dailyJobLimit !== undefined,
          o.dailyJobLimit ?? null,
          o.monthlyBudgetUsd !== undefined,
          o.monthlyBudgetUsd ?? null,
        ],
      );
      return toOrg(rows[0]);
    },
  };
}

export type OrgStore = ReturnType<typeof createOrgStore>;
