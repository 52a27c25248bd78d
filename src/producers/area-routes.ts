import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { BULL_BOARD_PATH, boardParamSchema, registerBullBoard } from './bull-board.js';
import { documentation, registerRoutes } from './route-spec.js';
import { routeTable } from './route-table.js';
import type { AdminRouteDeps } from './routes/admin.js';
import type { AgentCatalog } from './routes/agents.js';
import type { DlqRouteDeps } from './routes/dlq.js';
import type { FlowRouteDeps } from './routes/flows.js';
import type { ReadinessChecks } from './routes/health.js';
import type { JobListDeps } from './routes/job-list.js';
import type { JobRouteDeps } from './routes/jobs.js';
import type { KnowledgeRouteDeps } from './routes/knowledge.js';
import { streamSessions, type StreamRouteDeps } from './routes/stream.js';
import type { UsageRouteDeps } from './routes/usage.js';
import type { UsageDashboardDeps } from './routes/usage-dashboard.js';
import type { OrgPlanRouteDeps } from './routes/org-plans.js';
import type { KeyRouteDeps } from './routes/keys.js';

/*
 * Each area of the route table registered with its dependencies; the features in src/app/features plug
 * these in, so a process serves exactly the areas of the features it runs.
 */

export const healthRoutes = (app: FastifyInstance, checks: ReadinessChecks) => registerRoutes(app, routeTable.health, checks);
export const agentRoutes = (app: FastifyInstance, agents: AgentCatalog) => registerRoutes(app, routeTable.agents, agents);
export function jobRoutes(app: FastifyInstance, deps: JobRouteDeps) {
  // Long polls would hold `app.close()` for up to LONG_POLL_MAX_MS: they are answered now, and clients poll again.
  app.addHook('preClose', async () => deps.jobs.endWaits());
  registerRoutes(app, routeTable.jobs, deps);
}
export const jobListRoutes = (app: FastifyInstance, deps: JobListDeps) => registerRoutes(app, routeTable.jobList, deps);
export const knowledgeRoutes = (app: FastifyInstance, deps: KnowledgeRouteDeps) => registerRoutes(app, routeTable.knowledge, deps);
export const dlqRoutes = (app: FastifyInstance, deps: DlqRouteDeps) => registerRoutes(app, routeTable.dlq, deps);
export const usageRoutes = (app: FastifyInstance, deps: UsageRouteDeps) => registerRoutes(app, routeTable.usage, deps);

/** The cost dashboard, in a scope of its own whose hook decides who sees which orgs (usage-scope.ts). */
export function usageDashboardRoutes(app: FastifyInstance, deps: UsageDashboardDeps) {
  registerRoutes(app, routeTable.usageDashboard, deps);
}

export function flowRoutes(app: FastifyInstance, deps: FlowRouteDeps) {
  app.addHook('preClose', async () => deps.flows.endWaits());
  registerRoutes(app, routeTable.flows({ presets: deps.presets, pipelines: deps.pipelines.list() }), deps);
}

/** Org plans: the platform operator's (the rows' role). */
export const orgPlanRoutes = (app: FastifyInstance, deps: OrgPlanRouteDeps) => registerRoutes(app, routeTable.orgPlans, deps);
/** An org's keys, managed by its org-admin. */
export const keyRoutes = (app: FastifyInstance, deps: KeyRouteDeps) => registerRoutes(app, routeTable.keys, deps);

/** SSE routes share this process's set of open streams, which `app.close()` cuts. */
export function streamRoutes(app: FastifyInstance, deps: StreamRouteDeps) {
  registerRoutes(app, routeTable.stream, { ...deps, sessions: streamSessions(app, deps) });
}

/**
 * Operator surfaces: Prometheus text at /metrics and Bull Board at /admin/queues. Bull Board's routes are its
 * own, so its every route (static assets included) gets the operator role here, where it is mounted: its
 * JSON API shows every org's job inputs. Its page and API are documented; its assets are not. In read-only
 * mode this scope also refuses every mutation (after the auth hook has answered 401/403).
 */
export async function adminRoutes(app: FastifyInstance, deps: AdminRouteDeps) {
  app.addHook('preValidation', async (req, reply) => {
    const mutating = !['GET', 'HEAD', 'OPTIONS'].includes(req.method);
    if (mutating && deps.readOnly) return reply.code(403).send({ error: 'read-only mode' });
  });
  app.addHook('onRoute', (opts) => {
    if (!opts.url.startsWith(BULL_BOARD_PATH)) return;
    opts.config = { ...opts.config, access: { role: 'operator' } };
    if (opts.url.startsWith(`${BULL_BOARD_PATH}/static`)) return;
    const params = [...opts.url.matchAll(/:(\w+)/g)].map((m) => m[1]);
    const api = opts.url.startsWith(`${BULL_BOARD_PATH}/api`);
    opts.schema = {
      ...(params.length ? { params: z.object(Object.fromEntries(params.map((p) => [p, boardParamSchema(opts.url, p)]))) } : {}),
      ...documentation({
        role: 'operator',
        tags: ['admin'],
        summary: api ? 'Bull Board’s JSON API (called by its page; not a stable interface)' : 'Bull Board page (HTML)',
      }),
    };
  });
  await registerBullBoard(app, { queues: deps.queues, readOnly: deps.readOnly, ...(deps.shards ? { shards: deps.shards } : {}) });
  registerRoutes(app, routeTable.admin, deps);
}
