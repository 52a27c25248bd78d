import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { parseRequest } from '../../shared/core/zod-details.js';
import type { FairScheduler } from '../../shared/fair/index.js';
import { ORG_ID, orgPlanChangeSchema } from '../../shared/fair/org-plan-schema.js';
import { changeOrgPlan } from '../../shared/fair/org-plans-sync.js';
import type { OrgPlanStore } from '../../shared/infra/db/org-plans.js';
import type { AdminAuth } from '../admin-auth.js';

const orgParam = z.object({ org: z.string().regex(ORG_ID, 'letters, digits and _ . : - (max 128)') }).strict();

/**
 * Org plans for operators (the platform, not an org's own admin): weight, concurrency, RPM/TPM and quotas.
 * A change is stored in Postgres and reaches the dispatcher at its next call; no restart.
 */
export function orgPlanRoutes(app: FastifyInstance, deps: { auth: AdminAuth; plans: OrgPlanStore; scheduler: Pick<FairScheduler, 'setPlan' | 'orgStats' | 'dispatch'> }) {
  app.addHook('onRequest', async (req, reply) => {
    const who = await deps.auth.identify(req.headers.authorization);
    if (!who) return reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'authentication required: the operator token' });
    if (who.via !== 'token') return reply.code(403).send({ error: 'org plans are managed by the platform operator (ADMIN_TOKEN)' });
  });

  const view = async (org: string) => {
    const stats = await deps.scheduler.orgStats(org);
    return { org, own: (await deps.plans.get(org)) ?? {}, effective: stats.plan, waiting: stats.waiting + stats.backoff, inFlight: stats.inFlight };
  };

  app.get('/admin/orgs/:org/plan', async (req) => view(parseRequest(orgParam, req.params, 'path').org));

  app.put('/admin/orgs/:org/plan', async (req) => {
    const { org } = parseRequest(orgParam, req.params, 'path');
    const change = parseRequest(orgPlanChangeSchema, req.body, 'body');
    // Dispatched here, as an enqueue from this process is: the answer shows the change applied.
    await changeOrgPlan({ ...deps, dispatch: () => deps.scheduler.dispatch() }, org, change);
    req.log.info({ org, change }, 'org plan changed');
    return view(org);
  });
}
