import { z } from 'zod';

const rate = z.number().int().min(0).max(100_000_000).nullable();

/**
 * A change to an org's plan, as the orgs CLI and `PUT /admin/orgs/:org/plan` take it. A field left out stays
 * as it is; `null` returns it to the configured default. Rates of 0 mean unlimited.
 */
export const orgPlanChangeSchema = z
  .object({
    // The columns' precision (migrations 009: numeric(8,3) > 0; 002: numeric(12,4)): a value they would round
    // (a weight to 0, which their CHECK refuses; a budget to $0, which blocks the org) or overflow is refused here.
    weight: z.number().min(0.001).max(1000).multipleOf(0.001).nullable(),
    concurrency: z.number().int().min(1).max(1_000_000).nullable(),
    rpmPro: rate,
    rpmFlash: rate,
    tpm: rate,
    dailyJobLimit: z.number().int().min(0).max(100_000_000).nullable(),
    monthlyBudgetUsd: z.number().min(0).max(99_999_999.9999).multipleOf(0.0001).nullable(),
  })
  .partial()
  .strict();

export type OrgPlanChangeInput = z.infer<typeof orgPlanChangeSchema>;

export const ORG_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
