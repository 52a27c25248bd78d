import { z } from 'zod';
import type { FlowPreset } from '../shared/orchestration/presets.js';
import type { PipelineDefinition } from '../shared/orchestration/pipeline.js';
import { route, type RouteSpec } from './route-spec.js';
import { prometheusMetrics, type AdminRouteDeps } from './routes/admin.js';
import { listAgents, type AgentCatalog } from './routes/agents.js';
import { deleteDeadLetter, getDeadLetter, listDeadLetters, retryDeadLetter, retryDeadLetters, type DlqRouteDeps } from './routes/dlq.js';
import { cancelFlow, cancelPipelineRun, getFlow, getPipelineRun, listPipelines, startParallelFlow, startPipelineRun, startPresetFlow, type FlowRouteDeps } from './routes/flows.js';
import { healthz, readyz, type ReadinessChecks } from './routes/health.js';
import { listJobs, type JobListDeps } from './routes/job-list.js';
import { cancelJob, enqueueBulk, enqueueJob, getJob, type JobRouteDeps } from './routes/jobs.js';
import { ingestOrgDocuments, ingestSharedDocuments, invalidateCache, searchKnowledge, type KnowledgeRouteDeps } from './routes/knowledge.js';
import { createKey, listKeys, revokeKey, type KeyRouteDeps } from './routes/keys.js';
import { keyCreateBody, keyCreated, keyIdParam, keyInfo, keyList } from './schemas/keys.js';
import { enqueueAndStream, streamJob, type StreamHandlerDeps } from './routes/stream.js';
import { adminUsageReport, usageReport, type UsageRouteDeps } from './routes/usage.js';
import { usageAsset, usagePage } from './routes/usage-dashboard.js';
import { getOrgPlan, putOrgPlan, type OrgPlanRouteDeps } from './routes/org-plans.js';
import { orgParam, orgPlanView } from './schemas/org-plans.js';
import { orgPlanChangeSchema } from '../shared/fair/org-plan-schema.js';
import { errors, idParam, waitQuery } from './schemas/common.js';
import { flowCancelled, flowStarted, flowView, parallelBody, pipelineBody, pipelineList, runView } from './schemas/flows.js';
import { bulkBody, enqueuedJob, jobRequestSchema, jobView, listQuery, sseResponse, streamHeaders, streamQuery } from './schemas/jobs.js';
import { cacheInvalidated, cacheQuery, ingestBody, ingestResult, orgTableParam, searchBody, searchResult, sharedTableParam } from './schemas/knowledge.js';
import { dlqBulkBody, dlqBulkRetried, dlqEntry, dlqListQuery, dlqPage, dlqRetried, dlqRetryBody, usageQuery, usageReport as usageReportBody, adminUsageQuery, adminUsageReport as adminUsageReportBody, usageAssetParam } from './schemas/ops.js';

const readiness = z.object({ status: z.enum(['ready', 'unavailable']), checks: z.record(z.string(), z.string()) });
const sse = { description: 'Server-Sent Events', content: { 'text/event-stream': { schema: sseResponse } } };

/**
 * Every public route of the API, by area: method, URL, the role it needs (a required field: no route
 * ships without that decision, and test/route-roles.test.ts walks every one with every role), its zod schemas (validated by the
 * type provider, documented at /openapi.json) and its handler. An area is registered where its feature
 * plugs in (src/producers/area-routes.ts); flows and pipelines get one route per preset and pipeline, so
 * each body is validated and documented by its own schema. Bull Board's own routes are documented where
 * it is mounted (area-routes.ts), and the docs page's are the docs plugin's.
 */
export const routeTable = {
  health: [
    route({ method: 'GET', url: '/healthz', role: 'public', quiet: true, tags: ['health'], summary: 'Liveness', schema: { response: { 200: z.object({ status: z.literal('ok') }) } }, handler: healthz }),
    route({
      method: 'GET',
      url: '/readyz',
      role: 'public',
      quiet: true,
      tags: ['health'],
      summary: 'Readiness of Redis, the database, the worker and features',
      schema: { response: { 200: readiness.describe('Ready'), 503: readiness.describe('Not ready: `checks` names what failed') } },
      handler: readyz,
    }),
  ] satisfies RouteSpec<ReadinessChecks>[],

  agents: [
    route({
      method: 'GET',
      url: '/v1/agents',
      role: 'member',
      tags: ['agents'],
      summary: 'Every agent, its actions, and each action’s input and output JSON Schema',
      schema: { response: { 200: z.object({ agents: z.array(z.looseObject({ name: z.string() })) }), ...errors(401) } },
      handler: listAgents,
    }),
  ] satisfies RouteSpec<AgentCatalog>[],

  jobs: [
    route({
      method: 'POST',
      url: '/v1/jobs',
      role: 'member',
      tags: ['jobs'],
      summary: 'Enqueue an agent job',
      description:
        'The input is validated against the agent action’s schema (400 naming `input.…` fields). The same `options.idempotencyKey` from one org returns the same job id for IDEMPOTENCY_TTL_S (a day) from its first use, and as long as the job is kept: once retention removed the job, `state` is `unknown` (`cancelled` for a cancelled job, as GET shows it) and no job is made again; another request under the key is a 409 naming `options.idempotencyKey` and the `jobId`.',
      schema: { body: jobRequestSchema, response: { 202: enqueuedJob, ...errors(400, 401, 409, 413, 415, 429, 503) } },
      handler: enqueueJob,
    }),
    route({
      method: 'POST',
      url: '/v1/jobs/bulk',
      role: 'member',
      tags: ['jobs'],
      summary: 'Enqueue up to 1000 jobs, all or nothing',
      description: 'Each element as `POST /v1/jobs` (idempotency keys too: a reused key’s 409 names `jobs.N.options.idempotencyKey`).',
      schema: { body: bulkBody, response: { 202: z.object({ jobs: z.array(enqueuedJob) }), ...errors(400, 401, 409, 413, 415, 429, 503) } },
      handler: enqueueBulk,
    }),
    route({
      method: 'GET',
      url: '/v1/jobs/:id',
      role: 'member',
      tags: ['jobs'],
      summary: 'A job’s state and result; `?waitMs=` long-polls until it finishes',
      schema: { params: idParam, querystring: waitQuery, response: { 200: jobView, ...errors(400, 401, 404) } },
      handler: getJob,
    }),
    route({
      method: 'DELETE',
      url: '/v1/jobs/:id',
      role: 'member',
      tags: ['jobs'],
      summary: 'Cancel a job',
      description: 'A waiting or delayed job is removed (200, `cancelled`); an active one is aborted by its worker (202, `cancelling`).',
      schema: { params: idParam, response: { 200: jobView, 202: jobView, ...errors(400, 401, 404, 409) } },
      handler: cancelJob,
    }),
  ] satisfies RouteSpec<JobRouteDeps>[],

  jobList: [
    route({
      method: 'GET',
      url: '/v1/jobs',
      role: 'member',
      tags: ['jobs'],
      summary: 'The org’s jobs, newest first, streamed as one JSON array',
      schema: { querystring: listQuery, response: { 200: z.array(jobView), ...errors(400, 401) } },
      handler: listJobs,
    }),
  ] satisfies RouteSpec<JobListDeps>[],

  stream: [
    route({
      method: 'GET',
      url: '/v1/jobs/:id/stream',
      role: 'member',
      tags: ['streaming'],
      summary: 'A job’s events as Server-Sent Events; Last-Event-ID resumes',
      description: 'A `: ping` comment comes every heartbeat, whose interval in ms the `x-heartbeat-ms` header announces.',
      schema: { params: idParam, querystring: streamQuery, headers: streamHeaders, response: { 200: sse, ...errors(400, 401, 404, 429, 503) } },
      handler: streamJob,
    }),
    route({
      method: 'POST',
      url: '/v1/stream',
      role: 'member',
      tags: ['streaming'],
      summary: 'Enqueue a streaming job and stream it in the same response',
      description: 'The body is a job request (as `POST /v1/jobs`); the job id is in the `x-job-id` header, the heartbeat interval in ms in `x-heartbeat-ms`.',
      schema: { body: jobRequestSchema, response: { 200: sse, ...errors(400, 401, 409, 413, 415, 429, 503) } },
      handler: enqueueAndStream,
    }),
  ] satisfies RouteSpec<StreamHandlerDeps>[],

  flows: ({ presets, pipelines }: { presets: FlowPreset[]; pipelines: PipelineDefinition[] }): RouteSpec<FlowRouteDeps>[] => [
    route({
      method: 'POST',
      url: '/v1/flows/parallel',
      role: 'member',
      tags: ['flows'],
      summary: 'Fan out up to 50 jobs as one BullMQ flow (Promise.allSettled semantics)',
      description: 'Flow-level `options` apply to every task unless it sets its own; `idempotencyKey` is not supported inside a flow.',
      schema: { body: parallelBody, response: { 202: flowStarted, ...errors(400, 401, 413, 415, 429, 503) } },
      handler: startParallelFlow,
    }),
    ...presets.map((p) =>
      route({
        method: 'POST',
        url: `/v1/flows/${p.name}`,
        role: 'member',
        tags: ['flows'],
        summary: `Start the ${p.name} preset flow`,
        schema: { body: p.input, response: { 202: flowStarted, ...errors(400, 401, 413, 415, 429, 503) } },
        handler: startPresetFlow(p.name),
      }),
    ),
    route({
      method: 'GET',
      url: '/v1/flows/:id',
      role: 'member',
      tags: ['flows'],
      summary: 'A flow’s state, children and merged result; `?waitMs=` long-polls',
      schema: { params: idParam, querystring: waitQuery, response: { 200: flowView, ...errors(400, 401, 404) } },
      handler: getFlow,
    }),
    route({
      method: 'POST',
      url: '/v1/flows/:id/cancel',
      role: 'member',
      tags: ['flows'],
      summary: 'Cancel every job of a flow that has not finished',
      description:
        'Each child still waiting, delayed or parked is removed (its slot and dispatch charge given back), each running one is aborted by its worker, as `DELETE /v1/jobs/:id` does; the flow then ends `cancelled` (202, `cancelling`). A flow already finished or cancelled: 200, its state, nothing cancelled; so is one with nothing left to cancel that the flows worker was settling (the answer waits for it, up to 5 s): `completed` when it completed.',
      schema: { params: idParam, response: { 200: flowCancelled, 202: flowCancelled, ...errors(400, 401, 404) } },
      handler: cancelFlow,
    }),
    route({
      method: 'GET',
      url: '/v1/pipelines',
      role: 'member',
      tags: ['pipelines'],
      summary: 'Every pipeline, its steps and its input JSON Schema',
      schema: { response: { 200: pipelineList, ...errors(401) } },
      handler: listPipelines,
    }),
    ...pipelines.map((p) =>
      route({
        method: 'POST',
        url: `/v1/pipelines/${p.name}`,
        role: 'member',
        tags: ['pipelines'],
        summary: `Start a ${p.name} pipeline run`,
        ...(p.description ? { description: p.description } : {}),
        schema: { body: pipelineBody(p.input), response: { 202: flowStarted, ...errors(400, 401, 413, 415, 429, 503) } },
        handler: startPipelineRun(p.name),
      }),
    ),
    route({
      method: 'GET',
      url: '/v1/pipelines/runs/:id',
      role: 'member',
      tags: ['pipelines'],
      summary: 'A pipeline run’s steps, outputs and result; `?waitMs=` long-polls',
      schema: { params: idParam, querystring: waitQuery, response: { 200: runView, ...errors(400, 401, 404) } },
      handler: getPipelineRun,
    }),
    route({
      method: 'POST',
      url: '/v1/pipelines/runs/:id/cancel',
      role: 'member',
      tags: ['pipelines'],
      summary: 'Cancel a pipeline run: its running step, and every step not made yet',
      description:
        'The running step’s job is cancelled as `DELETE /v1/jobs/:id` does, no later step is made, and the run ends `cancelled` (202, `cancelling`). A run already finished or cancelled: 200, its state, nothing cancelled; so is one with nothing left to cancel that the flows worker was finishing (the answer waits for it, up to 5 s).',
      schema: { params: idParam, response: { 200: flowCancelled, 202: flowCancelled, ...errors(400, 401, 404) } },
      handler: cancelPipelineRun,
    }),
  ],

  knowledge: [
    // Static before parametric in find-my-way: `search` is never taken for a table name.
    route({
      method: 'POST',
      url: '/v1/knowledge/search',
      role: 'member',
      tags: ['knowledge'],
      summary: 'Vector search over the knowledge tables (the org’s own rows and shared ones)',
      description: 'The query’s embedding call is recorded in the org’s ledger. An org whose monthly budget is spent (its embedding calls counted) is refused before the query is embedded: 429 with Retry-After, as its jobs and ingests are.',
      schema: { body: searchBody, response: { 200: searchResult, ...errors(400, 401, 413, 415, 429) } },
      handler: searchKnowledge,
    }),
    route({
      method: 'POST',
      url: '/v1/knowledge/:table',
      role: 'org-admin',
      tags: ['knowledge'],
      summary: 'Ingest the org’s private documents (`playbooks`, `chat_facts`; embedded in batches, upserted by external_id)',
      description: 'Shared tables are the operator’s: `POST /admin/knowledge/:table`. Each document is validated against its table’s schema (400 naming `documents.N.field`). The org’s cached answers (exact and semantic) of the agents that search the table are invalidated before the answer. An org whose monthly budget is spent (its embedding calls counted) is refused before any document is embedded: 429 with Retry-After, as its jobs are.',
      schema: { params: orgTableParam, body: ingestBody, response: { 200: ingestResult, ...errors(400, 401, 403, 413, 415, 429) } },
      handler: ingestOrgDocuments,
    }),
    route({
      method: 'DELETE',
      url: '/v1/cache',
      role: 'org-admin',
      tags: ['knowledge'],
      summary: 'Invalidate the org’s cached results (all, or one agent’s)',
      schema: { querystring: cacheQuery, response: { 200: cacheInvalidated, ...errors(400, 401) } },
      handler: invalidateCache,
    }),
    route({
      method: 'POST',
      url: '/admin/knowledge/:table',
      role: 'operator',
      tags: ['knowledge', 'admin'],
      summary: 'Ingest shared documents (`industry_packs`, global `playbooks`) that every org’s searches return',
      description: 'Each document is validated against its table’s schema (400 naming `documents.N.field`). Every org’s cached answers (exact and semantic) of the agents that search the table are invalidated before the answer.',
      schema: { params: sharedTableParam, body: ingestBody, response: { 200: ingestResult, ...errors(400, 401, 403, 413, 415) } },
      handler: ingestSharedDocuments,
    }),
  ] satisfies RouteSpec<KnowledgeRouteDeps>[],

  dlq: [
    route({
      method: 'GET',
      url: '/v1/dlq',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      tags: ['dlq'],
      summary: 'Dead-letter entries, newest first, a page at a time (the operator sees every org’s)',
      schema: { querystring: dlqListQuery, response: { 200: dlqPage, ...errors(400, 401) } },
      handler: listDeadLetters,
    }),
    route({
      method: 'POST',
      url: '/v1/dlq/retry',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      tags: ['dlq'],
      summary: 'Retry up to 1000 matching entries, oldest first; `more` says to call again',
      schema: { body: dlqBulkBody, response: { 200: dlqBulkRetried, ...errors(400, 401, 415) } },
      handler: retryDeadLetters,
    }),
    route({
      method: 'GET',
      url: '/v1/dlq/:id',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      tags: ['dlq'],
      summary: 'One dead-letter entry',
      schema: { params: idParam, response: { 200: dlqEntry, ...errors(400, 401, 404) } },
      handler: getDeadLetter,
    }),
    route({
      method: 'POST',
      url: '/v1/dlq/:id/retry',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      tags: ['dlq'],
      summary: 'Retry one entry, optionally with a corrected input (edit-and-retry)',
      description: 'The job goes back as BullMQ retries a job: 202 `{id, state, dlqRetries}`, `state` `prioritized` for a job with a priority, else `waiting`, as `GET /v1/jobs/:id` then shows it.',
      schema: { params: idParam, body: dlqRetryBody, response: { 202: dlqRetried, ...errors(400, 401, 404, 409, 415) } },
      handler: retryDeadLetter,
    }),
    route({
      method: 'DELETE',
      url: '/v1/dlq/:id',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      tags: ['dlq'],
      summary: 'Delete an entry (and its failed job)',
      schema: { params: idParam, response: { 204: z.undefined().describe('Deleted'), ...errors(400, 401, 404) } },
      handler: deleteDeadLetter,
    }),
  ] satisfies RouteSpec<DlqRouteDeps>[],

  usage: [
    route({
      method: 'GET',
      url: '/v1/usage',
      role: 'member',
      tags: ['usage'],
      summary: 'Jobs, tokens, cost, cache hit rate and p50/p95 duration per agent, model or day',
      schema: { querystring: usageQuery, response: { 200: usageReportBody, ...errors(400, 401) } },
      handler: usageReport,
    }),
  ] satisfies RouteSpec<UsageRouteDeps>[],

  // The cost dashboard: who sees which orgs is decided by usageScopeOf (usage-scope.ts), in the area's hook.
  usageDashboard: [
    route({
      method: 'GET',
      url: '/admin/usage',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      browser: true,
      tags: ['admin'],
      summary: 'Cost dashboard page (HTML): cost, tokens and jobs per day, agent and model, p50/p95, cache hit rate',
      description: 'The operator (ADMIN_TOKEN) sees every org; an org admin key its own org. Browsers log in with basic auth.',
      schema: { response: { 200: { description: 'HTML page', content: { 'text/html': { schema: z.string() } } }, ...errors(401, 403) } },
      handler: usagePage,
    }),
    route({
      method: 'GET',
      url: '/admin/usage/api',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      browser: true,
      tags: ['admin'],
      summary: 'The dashboard’s data: `/v1/usage` for the caller’s scope (one org, or every org and per org)',
      schema: { querystring: adminUsageQuery, response: { 200: adminUsageReportBody, ...errors(400, 401, 403) } },
      handler: adminUsageReport,
    }),
    route({
      method: 'GET',
      url: '/admin/usage/assets/:file',
      role: 'org-admin',
      operatorSeesEveryOrg: true,
      browser: true,
      quiet: true,
      tags: ['admin'],
      summary: 'The dashboard’s script and its bundled charting library (Chart.js)',
      schema: { params: usageAssetParam, response: { 200: { description: 'JavaScript', content: { 'text/javascript': { schema: z.string() } } }, ...errors(400, 401, 403) } },
      handler: usageAsset,
    }),
  ] satisfies RouteSpec<UsageRouteDeps>[],
  keys: [
    route({
      method: 'GET',
      url: '/v1/keys',
      role: 'org-admin',
      tags: ['keys'],
      summary: 'The org’s API keys: id, prefix, role, created and revoked times (never a secret)',
      schema: { response: { 200: keyList, ...errors(401) } },
      handler: listKeys,
    }),
    route({
      method: 'POST',
      url: '/v1/keys',
      role: 'org-admin',
      tags: ['keys'],
      summary: 'Create a key of the org; the answer is the only time its secret is shown',
      description: 'A `member` key unless `role` says `org-admin`. Operator keys are made only with `npm run keys -- create --operator`.',
      schema: { body: keyCreateBody, response: { 201: keyCreated, ...errors(400, 401, 415) } },
      handler: createKey,
    }),
    route({
      method: 'DELETE',
      url: '/v1/keys/:id',
      role: 'org-admin',
      tags: ['keys'],
      summary: 'Revoke a key of the org (it stops working within AUTH_CACHE_TTL_MS on every API process)',
      schema: { params: keyIdParam, response: { 200: keyInfo, ...errors(400, 401, 404) } },
      handler: revokeKey,
    }),
  ] satisfies RouteSpec<KeyRouteDeps>[],

  admin: [
    route({
      method: 'GET',
      url: '/metrics',
      role: 'operator',
      quiet: true,
      tags: ['admin'],
      summary: 'Prometheus metrics summed over every API and worker process',
      schema: { response: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: z.string() } } }, ...errors(401, 403) } },
      handler: prometheusMetrics,
    }),
  ] satisfies RouteSpec<AdminRouteDeps>[],

  orgPlans: [
    route({
      method: 'GET',
      url: '/admin/orgs/:org/plan',
      role: 'operator',
      tags: ['admin'],
      summary: 'An org’s scheduling plan (weight, concurrency, RPM/TPM, quotas) and its jobs waiting and in flight',
      schema: { params: orgParam, response: { 200: orgPlanView, ...errors(400, 401, 403) } },
      handler: getOrgPlan,
    }),
    route({
      method: 'PUT',
      url: '/admin/orgs/:org/plan',
      role: 'operator',
      tags: ['admin'],
      summary: 'Change an org’s plan; applies at the next dispatch, no restart',
      description: 'A field left out stays as it is; `null` returns it to the configured default; rates of 0 are unlimited.',
      schema: { params: orgParam, body: orgPlanChangeSchema, response: { 200: orgPlanView, ...errors(400, 401, 403) } },
      handler: putOrgPlan,
    }),
  ] satisfies RouteSpec<OrgPlanRouteDeps>[],

  docs: [
    route({
      method: 'GET',
      url: '/openapi.json',
      role: 'public',
      tags: ['docs'],
      summary: 'This OpenAPI 3.1 document (also browsable at /docs)',
      schema: { response: { 200: { description: 'OpenAPI 3.1 document', content: { 'application/json': { schema: z.looseObject({ openapi: z.string() }) } } } } },
      handler: (d: { document(): unknown }) => async () => d.document(),
    }),
  ] satisfies RouteSpec<{ document(): unknown }>[],
};
