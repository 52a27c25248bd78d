import { z } from 'zod';
import { principalOf } from '../auth.js';
import { withStartDeadline } from '../http-errors.js';
import { closeInputSchema } from '../../shared/agents/closed-schema.js';
import { newFlowId, newRunId, type FlowService } from '../flow-service.js';
import type { PipelineRegistry } from '../../shared/orchestration/pipeline.js';
import type { FlowPreset } from '../../shared/orchestration/presets.js';
import type { Handler } from '../route-spec.js';
import type { idParam, waitQuery } from '../schemas/common.js';
import type { parallelBody, pipelineBody } from '../schemas/flows.js';

export interface FlowRouteDeps {
  flows: FlowService;
  pipelines: PipelineRegistry;
  /** Each preset gets its own route (`POST /v1/flows/<name>`) with its own input schema. */
  presets: FlowPreset[];
  longPollMaxMs: number;
  /** Starting a flow or run answers 503 after this long instead of hanging while Redis is down, naming its id. */
  enqueueDeadlineMs?: number;
}

const deadlineOf = (deps: FlowRouteDeps) => deps.enqueueDeadlineMs ?? 5000;
const waitOf = (deps: FlowRouteDeps, waitMs: number | undefined) => Math.min(waitMs ?? 0, deps.longPollMaxMs);

export const startParallelFlow =
  (deps: FlowRouteDeps): Handler<{ body: typeof parallelBody }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const flowId = newFlowId();
    const flow = await withStartDeadline(deps.flows.startParallel(req.body, { orgId, requestId: req.id }, flowId), deadlineOf(deps), { flowId });
    req.log.info({ flowId: flow.id }, 'parallel flow started');
    return reply.code(202).send(flow);
  };

/** The handler of one preset's route; its body was validated by the preset's own input schema. */
export const startPresetFlow =
  (name: string) =>
  (deps: FlowRouteDeps): Handler<{ body: z.ZodType }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const flowId = newFlowId();
    const flow = await withStartDeadline(deps.flows.startPreset(name, req.body, { orgId, requestId: req.id }, flowId), deadlineOf(deps), { flowId });
    req.log.info({ flowId: flow.id, preset: name }, 'preset flow started');
    return reply.code(202).send(flow);
  };

export const getFlow =
  (deps: FlowRouteDeps): Handler<{ params: typeof idParam; querystring: typeof waitQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    return deps.flows.getFlow(orgId, req.params.id, waitOf(deps, req.query.waitMs));
  };

/** 202 while the flow's cancel is under way (its worker ends it), 200 for a flow that had already finished or that settled as it came. */
export const cancelFlow =
  (deps: FlowRouteDeps): Handler<{ params: typeof idParam }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const view = await deps.flows.cancelFlow(orgId, req.params.id);
    req.log.info({ flowId: view.id, cancelled: view.cancelled.length, cancelling: view.cancelling.length }, 'flow cancel');
    return reply.code(view.state === 'cancelling' ? 202 : 200).send(view);
  };

export const listPipelines =
  (deps: FlowRouteDeps): Handler<object> =>
  async (req) => {
    principalOf(req);
    return {
      pipelines: deps.pipelines.list().map((p) => ({
        name: p.name,
        description: p.description ?? '',
        steps: p.steps.map((s) => ({ id: s.id, agent: s.agent, action: s.action, outputKey: s.outputKey, continueOnError: Boolean(s.continueOnError) })),
        // Closed as GET /v1/agents's input schemas are: the route refuses unknown fields.
        inputSchema: closeInputSchema(z.toJSONSchema(p.input, { io: 'input' }) as Record<string, unknown>),
      })),
    };
  };

/** The handler of one pipeline's route; `input` was validated by the pipeline's own schema. */
export const startPipelineRun =
  (name: string) =>
  (deps: FlowRouteDeps): Handler<{ body: ReturnType<typeof pipelineBody> }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const runId = newRunId();
    const run = await withStartDeadline(deps.flows.startPipeline(name, req.body.input, { orgId, requestId: req.id }, runId), deadlineOf(deps), { runId });
    req.log.info({ runId: run.id, pipeline: name }, 'pipeline run started');
    return reply.code(202).send(run);
  };

export const getPipelineRun =
  (deps: FlowRouteDeps): Handler<{ params: typeof idParam; querystring: typeof waitQuery }> =>
  async (req) => {
    const { orgId } = principalOf(req);
    return deps.flows.getRun(orgId, req.params.id, waitOf(deps, req.query.waitMs));
  };

/** As `cancelFlow`, for a pipeline run: its running step is cancelled and no later step is made. */
export const cancelPipelineRun =
  (deps: FlowRouteDeps): Handler<{ params: typeof idParam }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const view = await deps.flows.cancelRun(orgId, req.params.id);
    req.log.info({ runId: view.id, cancelled: view.cancelled.length, cancelling: view.cancelling.length }, 'pipeline run cancel');
    return reply.code(view.state === 'cancelling' ? 202 : 200).send(view);
  };
