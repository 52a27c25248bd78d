import { z } from 'zod';

const rate = z.number().int().min(0).max(100_000_000).nullable();

/**
 * A change to an org's plan, as the orgs CLI and `PUT /admin/orgs/:org/plan` take it. A field left out stays
 * as it is; `null` returns it to the configured default. Rates of 0 mean unlimited.
 */
export const orgPlanChangeSchema = z
  .object({
    weight: z.number().positive().max(1000).nullable(),
    concurrency: z.number().int().min(1).max(1_000_000).nullable(),
    rpmPro: rate,
    rpmFlash: rate,
    tpm: rate,
    dailyJobLimit: z.number().int().min(0).max(100_000_000).nullable(),
    monthlyBudgetUsd: z.number().min(0).max(100_000_000).nullable(),
  })
  .partial()
  .strict();

export type OrgPlanChangeInput = z.infer<typeof orgPlanChangeSchema>;

export const ORG_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
