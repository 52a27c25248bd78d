import type pg from 'pg';

/** An org's own scheduling limits; a missing field means "the configured default". 0 = unlimited for rates. */
export interface OrgPlanFields {
  weight?: number;
  concurrency?: number;
  rpmPro?: number;
  rpmFlash?: number;
  tpm?: number;
  dailyJobLimit?: number;
  monthlyBudgetUsd?: number;
}

/** `null` clears a field back to the default; `undefined` leaves it as it is. */
export type OrgPlanChange = { [K in keyof OrgPlanFields]?: OrgPlanFields[K] | null };

const COLUMNS = {
  weight: 'weight',
  concurrency: 'concurrency',
  rpmPro: 'rpm_pro',
  rpmFlash: 'rpm_flash',
  tpm: 'tpm',
  dailyJobLimit: 'daily_job_limit',
  monthlyBudgetUsd: 'monthly_budget_usd',
} as const satisfies Record<keyof OrgPlanFields, string>;

type Row = { id: string } & Record<(typeof COLUMNS)[keyof typeof COLUMNS], string | number | null>;

function toFields(r: Row): OrgPlanFields {
  const out: OrgPlanFields = {};
  for (const [field, column] of Object.entries(COLUMNS) as Array<[keyof OrgPlanFields, keyof Row]>) {
    const v = r[column];
    if (v !== null && v !== undefined) out[field] = Number(v);
  }
  return out;
}

/** Org plans in Postgres, the source of truth; the dispatcher reads a copy in Redis (see shared/fair). */
export function createOrgPlanStore({ pool }: { pool: pg.Pool }) {
  return {
    async get(orgId: string): Promise<OrgPlanFields | null> {
      const { rows } = await pool.query<Row>(`SELECT id, ${Object.values(COLUMNS).join(', ')} FROM orgs WHERE id = $1`, [orgId]);
      return rows[0] ? toFields(rows[0]) : null;
    },

    /** Creates the org if needed and sets the given fields; returns the org's whole plan. */
    async set(orgId: string, change: OrgPlanChange): Promise<OrgPlanFields> {
      const fields = (Object.keys(COLUMNS) as Array<keyof OrgPlanFields>).filter((f) => change[f] !== undefined);
      await pool.query('INSERT INTO orgs (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING', [orgId]);
      const sets = fields.map((f, i) => `${COLUMNS[f]} = $${i + 2}`);
      const { rows } = await pool.query<Row>(
        `UPDATE orgs SET ${sets.length ? sets.join(', ') : 'id = id'} WHERE id = $1 RETURNING id, ${Object.values(COLUMNS).join(', ')}`,
        [orgId, ...fields.map((f) => change[f])],
      );
      return toFields(rows[0]);
    },

    /** Every org with at least one scheduling field of its own (to copy into Redis at start-up). */
    async listCustom(): Promise<Array<{ orgId: string; plan: OrgPlanFields }>> {
      const { rows } = await pool.query<Row>(
        `SELECT id, ${Object.values(COLUMNS).join(', ')} FROM orgs
         WHERE weight IS NOT NULL OR concurrency IS NOT NULL OR rpm_pro IS NOT NULL OR rpm_flash IS NOT NULL OR tpm IS NOT NULL`,
      );
      return rows.map((r) => ({ orgId: r.id, plan: toFields(r) }));
    },
  };
}

export type OrgPlanStore = ReturnType<typeof createOrgPlanStore>;
