import type { OrgPlanChange, OrgPlanFields, OrgPlanStore } from '../infra/db/org-plans.js';
import type { FairPlan } from './fair-plan.js';
import type { FairScheduler } from './fair-scheduler.js';

/** The dispatcher's part of an org's plan (quotas stay with admission). */
export function toFairPlan(p: OrgPlanFields): FairPlan {
  return {
    ...(p.weight !== undefined ? { weight: p.weight } : {}),
    ...(p.concurrency !== undefined ? { concurrency: p.concurrency } : {}),
    ...(p.rpmPro !== undefined || p.rpmFlash !== undefined
      ? { rpm: { ...(p.rpmPro !== undefined ? { pro: p.rpmPro } : {}), ...(p.rpmFlash !== undefined ? { flash: p.rpmFlash } : {}) } }
      : {}),
    ...(p.tpm !== undefined ? { tpm: p.tpm } : {}),
  };
}

/** Copies every org's own plan from Postgres (the source of truth) into the dispatcher's Redis state. */
export async function syncOrgPlans(deps: { plans: Pick<OrgPlanStore, 'listCustom'>; scheduler: Pick<FairScheduler, 'setPlan'> }): Promise<number> {
  const all = await deps.plans.listCustom();
  for (const { orgId, plan } of all) await deps.scheduler.setPlan(orgId, toFairPlan(plan));
  return all.length;
}

/**
 * Changes an org's plan: Postgres first (so a restart keeps it), then the dispatcher's copy, then `dispatch`
 * (a dispatch, or a kick asking the workers for one), so a raised limit lets the org's waiting jobs in now,
 * not when one of its jobs happens to finish or the next safety poll runs. Returns the org's stored plan.
 */
export async function changeOrgPlan(
  deps: { plans: Pick<OrgPlanStore, 'set'>; scheduler: Pick<FairScheduler, 'setPlan'>; dispatch?: () => Promise<unknown> },
  orgId: string,
  change: OrgPlanChange,
): Promise<OrgPlanFields> {
  const stored = await deps.plans.set(orgId, change);
  await deps.scheduler.setPlan(orgId, toFairPlan(stored));
  await deps.dispatch?.();
  return stored;
}
