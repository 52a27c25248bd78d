import { z } from 'zod';
import { ORG_ID } from '../../shared/fair/org-plan-schema.js';

export const orgParam = z.object({ org: z.string().regex(ORG_ID, 'letters, digits and _ . : - (max 128)') });

const planFields = z.looseObject({
  weight: z.number().optional(),
  concurrency: z.number().optional(),
  rpmPro: z.number().optional(),
  rpmFlash: z.number().optional(),
  tpm: z.number().optional(),
  dailyJobLimit: z.number().optional(),
  monthlyBudgetUsd: z.number().optional(),
});

export const orgPlanView = z.object({
  org: z.string(),
  own: planFields.describe('The org’s own fields (others take the configured defaults)'),
  effective: z.looseObject({ weight: z.number(), concurrency: z.number(), rpm: z.object({ pro: z.number(), flash: z.number() }), tpm: z.number() }),
  waiting: z.number(),
  inFlight: z.number(),
});
