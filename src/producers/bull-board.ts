import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { appRoutes } from '@bull-board/api/dist/routes.js';
import { requestSchemas } from '@bull-board/api/dist/schemas/requests.js';
import { decodeKey } from '@bull-board/api/dist/schemas/support.js';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Queue } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { isParked } from '../shared/fair/park.js';
import { currentStored } from '../shared/core/job-stage.js';
import { MASK, maskSecrets } from './mask-secrets.js';

export const BULL_BOARD_PATH = '/admin/queues';
/** Bull Board's route for a job's logs (under the base path). */
const JOB_LOGS_ROUTE = '/api/queues/:queueName/:jobId/logs';

/**
 * Path parameters Bull Board hands on without a check, by the end of the route that takes them, with the values
 * BullMQ acts on: `clean` passes any status to BullMQ's `clean`, which cleans nothing for an unknown one (the board
 * answered 200 `{}`); `retry` checks its own but answers in the board's shape, not the API's.
 */
const BOARD_PARAM_VALUES: Array<{ route: string; param: string; values: [string, ...string[]] }> = [
  { route: '/clean/:queueStatus', param: 'queueStatus', values: ['completed', 'failed', 'delayed', 'wait', 'waiting', 'prioritized', 'paused', 'active'] },
  { route: '/retry/:queueStatus', param: 'queueStatus', values: ['failed', 'completed'] },
];

/** The schema of one of Bull Board's path parameters (`url` as registered): its values where the board has a set, else any text. */
export function boardParamSchema(url: string, param: string): z.ZodType<string> {
  const known = BOARD_PARAM_VALUES.find((p) => p.param === param && url.endsWith(p.route));
  return known ? z.enum(known.values) : z.string();
}

/** What a Standard Schema (Bull Board's valibot schemas implement it) answers; valibot's are synchronous. */
type StandardIssues = { issues?: ReadonlyArray<{ message: string; path?: ReadonlyArray<PropertyKey | { key?: unknown }> }> };
type StandardSchema = { '~standard': { validate(value: unknown): StandardIssues | Promise<StandardIssues> } };

/**
 * Bull Board's own request schemas, by method and route (under the base path): the board checks bodies and
 * queries with them itself, but a specific failure (a concurrency of -1, a delay that is not a number) names no
 * field and answers in its own shape. Checked first here with the same schemas, so the API's shape names it.
 */
const BOARD_REQUEST_SCHEMAS = new Map<string, { body?: StandardSchema; query?: StandardSchema }>();
for (const route of appRoutes.api) {
  const { body, query } = route.spec;
  if (!body && !query) continue;
  const schemas = { ...(body ? { body: requestSchemas[body] as StandardSchema } : {}), ...(query ? { query: requestSchemas[query] as StandardSchema } : {}) };
  for (const method of [route.method].flat()) for (const path of [route.route].flat()) BOARD_REQUEST_SCHEMAS.set(`${method.toUpperCase()} ${path}`, schemas);
}

/** Where the value fails `schema`, in the API's `details` shape (the board's translation key as the message), or nothing. */
async function boardIssues(schema: StandardSchema, value: unknown, whole: string): Promise<Array<{ path: string; message: string }>> {
  const { issues } = await schema['~standard'].validate(value);
  return (issues ?? []).map((issue) => ({
    path: (issue.path ?? []).map((seg) => String(typeof seg === 'object' && seg !== null ? seg.key : seg)).join('.') || whole,
    message: decodeKey(issue.message).key,
  }));
}

/** A query as the board validates it: an empty value counts as absent (its `treatEmptyValuesAsAbsent`). */
const presentQuery = (query: unknown) => Object.fromEntries(Object.entries((query ?? {}) as Record<string, unknown>).filter(([, v]) => v !== ''));

type JobLike = {
  name?: string;
  timestamp?: number;
  delay?: number;
  data?: { orgId?: unknown; model?: unknown };
  returnvalue?: { model?: unknown; costUsd?: unknown; cacheHit?: unknown } | null;
  progress?: unknown;
  attemptsMade?: number;
  finishedOn?: number | null;
};

/**
 * A job's title in Bull Board: org, agent:action, model, and once it has a result its cost and cache
 * level; a job parked for the fair dispatcher reads "waiting for dispatch" (BullMQ lists it as delayed to
 * a far-future instant, which reads like a stuck retry); a running attempt leads with its stage
 * (job-stage.ts) and attempt, e.g. "[calling_model · attempt 1]". The board's progress field shows the
 * stage as stored; the title ignores a stored stage its attempt or the job's end has made stale.
 */
export function jobTitle(job: JobLike): string {
  const result = job.returnvalue && typeof job.returnvalue === 'object' ? job.returnvalue : undefined;
  // The model that answered (a fallback route may differ from the one asked for), else the one asked for.
  const parked = typeof job.timestamp === 'number' && typeof job.delay === 'number' && isParked({ timestamp: job.timestamp, delay: job.delay });
  const running = !parked && !job.finishedOn ? currentStored(job.progress, job.attemptsMade ?? 0) : undefined;
  const asked = typeof job.data?.model === 'string' ? job.data.model : running?.model;
  const model = typeof result?.model === 'string' ? result.model : asked;
  const parts = [
    job.name ?? '',
    typeof job.data?.orgId === 'string' ? `org ${job.data.orgId}` : undefined,
    model,
    typeof result?.costUsd === 'number' ? `$${result.costUsd.toFixed(6)}` : undefined,
    result ? `cache ${typeof result.cacheHit === 'string' ? result.cacheHit : 'miss'}` : undefined,
  ];
  const prefix = parked ? '[waiting for dispatch] ' : running ? `[${running.name} · attempt ${running.attempt}] ` : '';
  return `${prefix}${parts.filter((p) => p !== undefined).join(' · ')}`;
}

/**
 * Mounts Bull Board (page, JSON API and static assets) under `basePath` in `scope`. Authentication is the
 * caller's: register this inside a scope whose onRequest hook already guards every route.
 */
export async function registerBullBoard(scope: FastifyInstance, opts: { queues: Queue[]; readOnly: boolean; basePath?: string }) {
  const basePath = opts.basePath ?? BULL_BOARD_PATH;
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(basePath);
  // Queue shards repeat a queue's name: the board keys queues by name, so each shard's copy is named by its
  // key prefix as well (`{agentq.s3}:agent-jobs`).
  const sharded = new Set(opts.queues.map((q) => q.name)).size < opts.queues.length;
  // The queues by the name the board's routes use for them.
  const byBoardName = new Map<string, Queue>();
  createBullBoard({
    // readOnlyMode also turns off retries in the UI; the auth hook refuses mutations as well.
    queues: opts.queues.map((q) => {
      const adapter = new BullMQAdapter(q, { readOnlyMode: opts.readOnly, ...(sharded ? { prefix: `${q.opts.prefix}:` } : {}) });
      byBoardName.set(adapter.getName(), q);
      adapter.setFormatter('name', jobTitle);
      // What the board shows of a job never carries a credential (mask-secrets.ts).
      adapter.setFormatter('data', (data) => maskSecrets(data));
      adapter.setFormatter('returnValue', (value) => maskSecrets(value));
      adapter.setFormatter('progress', (progress) => maskSecrets(progress));
      return adapter;
    }),
    // @bull-board/fastify pins its own copy of @bull-board/api, whose adapter type differs only nominally.
    serverAdapter: serverAdapter as never,
    options: { uiConfig: { boardTitle: 'agentq', hideDocsLink: true } },
  });
  // The board shows masked data, and its editors start from what it shows: writing that back would replace
  // a secret with the mask, so a job's data is never set from a body that still holds one.
  scope.addHook('preHandler', async (req, reply) => {
    if (req.method === 'GET' || req.body === undefined || req.body === null) return;
    if (JSON.stringify(req.body).includes(MASK)) {
      return reply.code(400).send({ error: `the data holds a masked value (${MASK}); enter the real value or leave the field out` });
    }
  });
  // Answered here, in the API's shape: a schema failure would reach the board's own error handler, which answers
  // `{ error: { key } }`. The schemas (boardParamSchema) state the same sets in the OpenAPI document. Bodies and
  // queries are checked with the board's own schemas (BOARD_REQUEST_SCHEMAS), naming the field.
  scope.addHook('preValidation', async (req, reply) => {
    const url = req.routeOptions.url;
    if (!url?.startsWith(basePath)) return;
    const params = (req.params ?? {}) as Record<string, string | undefined>;
    for (const known of BOARD_PARAM_VALUES) {
      const value = params[known.param];
      if (!url.endsWith(known.route) || value === undefined || known.values.includes(value)) continue;
      return reply.code(400).send({ error: 'invalid path', details: [{ path: known.param, message: `must be one of ${known.values.join(', ')}` }] });
    }
    const schemas = BOARD_REQUEST_SCHEMAS.get(`${req.method} ${url.slice(basePath.length)}`);
    if (schemas?.query) {
      const details = await boardIssues(schemas.query, presentQuery(req.query), 'query');
      if (details.length) return reply.code(400).send({ error: 'invalid query', details });
    }
    if (schemas?.body) {
      const details = await boardIssues(schemas.body, req.body ?? {}, 'body');
      if (details.length) return reply.code(400).send({ error: 'invalid body', details });
    }
    // The board answers a missing job's logs with 200 and an empty list, as if it had none (its job routes 404).
    if (url === `${basePath}${JOB_LOGS_ROUTE}`) {
      const queue = byBoardName.get(params.queueName ?? '');
      if (queue && params.jobId !== undefined && (await queue.getJobState(params.jobId)) === 'unknown') {
        return reply.code(404).send({ error: 'job not found', details: [{ path: 'jobId', message: `no job ${params.jobId} in ${params.queueName}` }] });
      }
    }
  });
  await scope.register(serverAdapter.registerPlugin(), { prefix: basePath });
}
