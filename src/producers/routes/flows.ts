import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { principalOf } from '../auth.js';
import { withDeadline } from '../http-errors.js';
import { parseRequest } from '../../shared/core/zod-details.js';
import type { FlowService } from '../flow-service.js';
import type { PipelineRegistry } from '../../shared/orchestration/pipeline.js';

export interface FlowRouteDeps {
  flows: FlowService;
  pipelines: PipelineRegistry;
  longPollMaxMs: number;
  /** Starting a flow answers 503 after this long instead of hanging while Redis is down. */
  enqueueDeadlineMs?: number;
}

const idParam = z.object({ id: z.string().min(1).max(200) });
const nameParam = z.object({ name: z.string().min(1).max(100) });
const getQuery = z.object({ waitMs: z.coerce.number().int().min(0).optional() }).strict();

const parse = parseRequest;

export function flowRoutes(app: FastifyInstance, deps: FlowRouteDeps) {
  const deadline = deps.enqueueDeadlineMs ?? 5000;
  const waitOf = (query: unknown) => Math.min(parse(getQuery, query, 'query').waitMs ?? 0, deps.longPollMaxMs);

  app.post('/v1/flows/parallel', async (req, reply) => {
    const { orgId } = principalOf(req);
    const flow = await withDeadline(deps.flows.startParallel(req.body, { orgId, requestId: req.id }), deadline);
    req.log.info({ flowId: flow.id }, 'parallel flow started');
    return reply.code(202).send(flow);
  });

  // Static routes win over this one in find-my-way, so `parallel` is never taken for a preset name.
  app.post('/v1/flows/:name', async (req, reply) => {
    const { orgId } = principalOf(req);
    const { name } = parse(nameParam, req.params, 'path');
    const flow = await withDeadline(deps.flows.startPreset(name, req.body, { orgId, requestId: req.id }), deadline);
    req.log.info({ flowId: flow.id, preset: name }, 'preset flow started');
    return reply.code(202).send(flow);
  });

  app.get('/v1/flows/:id', async (req) => {
    const { orgId } = principalOf(req);
    const { id } = parse(idParam, req.params, 'path');
    return deps.flows.getFlow(orgId, id, waitOf(req.query));
  });

  app.get('/v1/pipelines', async (req) => {
    principalOf(req);
    return {
      pipelines: deps.pipelines.list().map((p) => ({
        name: p.name,
        description: p.description ?? '',
        steps: p.steps.map((s) => ({ id: s.id, agent: s.agent, action: s.action, outputKey: s.outputKey, continueOnError: Boolean(s.continueOnError) })),
        inputSchema: z.toJSONSchema(p.input, { io: 'input' }),
      })),
    };
  });

  app.post('/v1/pipelines/:name', async (req, reply) => {
    const { orgId } = principalOf(req);
    const { name } = parse(nameParam, req.params, 'path');
    const run = await withDeadline(deps.flows.startPipeline(name, req.body, { orgId, requestId: req.id }), deadline);
    req.log.info({ runId: run.id, pipeline: name }, 'pipeline run started');
    return reply.code(202).send(run);
  });

  app.get('/v1/pipelines/runs/:id', async (req) => {
    const { orgId } = principalOf(req);
    const { id } = parse(idParam, req.params, 'path');
    return deps.flows.getRun(orgId, id, waitOf(req.query));
  });
}
