import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FairScheduler } from '../../shared/fair/index.js';
import type { orgPlanChangeSchema } from '../../shared/fair/org-plan-schema.js';
import { changeOrgPlan } from '../../shared/fair/org-plans-sync.js';
import type { OrgPlanStore } from '../../shared/infra/db/org-plans.js';
import type { AdminAuth } from '../admin-auth.js';
import type { Handler } from '../route-spec.js';
import type { orgParam } from '../schemas/org-plans.js';

export interface OrgPlanRouteDeps {
  auth: AdminAuth;
  plans: OrgPlanStore;
  scheduler: Pick<FairScheduler, 'setPlan' | 'orgStats' | 'dispatch'>;
}

/** Org plans are the platform operator's (ADMIN_TOKEN), never an org's own admin: an onRequest hook. */
export const operatorOnly = (deps: OrgPlanRouteDeps) => async (req: FastifyRequest, reply: FastifyReply) => {
  const who = await deps.auth.identify(req.headers.authorization);
  if (!who) return reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'authentication required: the operator token' });
  if (who.via !== 'token') return reply.code(403).send({ error: 'org plans are managed by the platform operator (ADMIN_TOKEN)' });
};

async function view(deps: OrgPlanRouteDeps, org: string) {
  const stats = await deps.scheduler.orgStats(org);
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
    // Dispatched here, as an enqueue from this process is: the answer shows the change applied.
    await changeOrgPlan({ ...deps, dispatch: () => deps.scheduler.dispatch() }, req.params.org, req.body);
    req.log.info({ org: req.params.org, change: req.body }, 'org plan changed');
    return view(deps, req.params.org);
  };
