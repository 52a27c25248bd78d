import type { FairScheduler } from '../../shared/fair/index.js';
import type { orgPlanChangeSchema } from '../../shared/fair/org-plan-schema.js';
import { changeOrgPlan } from '../../shared/fair/org-plans-sync.js';
import type { OrgPlanStore } from '../../shared/infra/db/org-plans.js';
import type { Handler } from '../route-spec.js';
import type { orgParam } from '../schemas/org-plans.js';

export interface OrgPlanRouteDeps {
  plans: OrgPlanStore;
  /** The fair dispatcher of the org's queue shard. */
  schedulerOf(orgId: string): Pick<FairScheduler, 'setPlan' | 'orgStats' | 'dispatch'>;
}

async function view(deps: OrgPlanRouteDeps, org: string) {
  const stats = await deps.schedulerOf(org).orgStats(org);
  return { org, own: (await deps.plans.get(org)) ?? {}, effective: stats.plan, waiting: stats.waiting + stats.backoff, inFlight: stats.inFlight };
}

/** An org's own plan fields, the plan in force (defaults filled in), and its jobs waiting and in flight. */
export const getOrgPlan =
  (deps: OrgPlanRouteDeps): Handler<{ params: typeof orgParam }> =>
  async (req) =>
    view(deps, req.params.org);

/** Stored in Postgres, then copied to the dispatcher, which applies it at its next call (no restart). */
export const putOrgPlan =
  (deps: OrgPlanRouteDeps): Handler<{ params: typeof orgParam; body: typeof orgPlanChangeSchema }> =>
  async (req) => {
    // Dispatched here, as an enqueue from this process is: the answer shows the change applied. This process has
    // no dispatch loop: a wake-up the dispatch leaves (a lane asleep on the new RPM) is told, not taken, and the
    // scheduler asks the workers' loops to take it (its `kick`).
    const scheduler = deps.schedulerOf(req.params.org);
    await changeOrgPlan({ plans: deps.plans, scheduler, dispatch: () => scheduler.dispatch() }, req.params.org, req.body);
    req.log.info({ org: req.params.org, change: req.body }, 'org plan changed');
    return view(deps, req.params.org);
  };
