import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { appRoutes } from '@bull-board/api/dist/routes.js';
import { requestSchemas } from '@bull-board/api/dist/schemas/requests.js';
import { decodeKey } from '@bull-board/api/dist/schemas/support.js';
import { errorHandler as boardErrorHandler } from '@bull-board/api/dist/handlers/error.js';
import type { ControllerHandlerReturnType, HookContext } from '@bull-board/api/dist/types.js';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Job, Queue } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { isParked } from '../shared/fair/park.js';
import { createIncarnationRemoval } from '../shared/queue/incarnation-removal.js';
import { currentStored } from '../shared/core/job-stage.js';
import { ConflictError, ObliterateRefusedError, QueueNotPausedError, RemovalRefusedError } from '../shared/core/errors.js';
import { conflictBody } from './http-errors.js';
import type { BoardActions } from '../shared/ops/board-actions.js';
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

/** One queue shard's agent queue, the queues of its jobs' parents, and agentq's side of the board's actions on them. */
export interface BoardShard {
  agent: Queue;
  /** Queues whose jobs' removal takes agent jobs with them (the flows queue: a parent's children). */
  parents: Queue[];
  actions: BoardActions;
}

/** Statuses whose jobs BullMQ's clean takes from the wait list or prioritized set: no worker fetched them. */
const UNFETCHED_STATUSES = new Set(['wait', 'waiting', 'prioritized', 'paused']);
/**
 * Statuses whose jobs the dispatcher may hold a lane, a timer or a slot for when BullMQ's clean takes them. A
 * finished job's slot is its worker's release's (batched, right after the finish): a clean of the completed or
 * failed set, thousands of jobs, is not walked for it.
 */
const DISPATCHED_STATUSES = new Set([...UNFETCHED_STATUSES, 'delayed', 'active']);

type AdapterOptions = ConstructorParameters<typeof BullMQAdapter>[1];

/**
 * The board's adapter for a queue shard's agent queue (`agent`) or a queue of its jobs' parents: BullMQ's calls the
 * board makes (bullMQ.js in @bull-board/api: a job's remove, retry, promote and removeUnprocessedChildren, the
 * queue's clean, empty, promote-all and obliterate) go through `actions`, so the fair dispatcher gives back what it
 * holds for removed jobs at once (their slots, and the charge of those no worker fetched), a promoted job it holds
 * on a timer is due now (each of them, for a promote-all), and a retried job's new run starts with a stream of its own. The board's answers and what it removes or retries stay its own.
 */
class ShardQueueAdapter extends BullMQAdapter {
  /** BullMQ's removal of an agent job, for the job the board read only. */
  private readonly removal: ReturnType<typeof createIncarnationRemoval>;

  constructor(
    private readonly bullQueue: Queue,
    options: AdapterOptions,
    private readonly actions: BoardActions,
    private readonly agent: boolean,
  ) {
    super(bullQueue, options);
    this.removal = createIncarnationRemoval(bullQueue);
  }

  override async getJob(id: string): Promise<Job | undefined> {
    const job = await super.getJob(id);
    return job && this.follow(job, false);
  }

  override async getJobs(...args: Parameters<BullMQAdapter['getJobs']>): Promise<Job[]> {
    // The board's "retry all" walks these: a retry the DLQ refuses leaves that job and goes on with the others.
    return (await super.getJobs(...args)).map((job) => this.follow(job, true));
  }

  override async clean(status: Parameters<BullMQAdapter['clean']>[0], graceTimeMs: number): Promise<void> {
    await this.cleanStatus(status, graceTimeMs);
  }

  /** As the board's own clean: BullMQ's (the status as the route passed it), whose answer names what it took. */
  private async cleanStatus(status: Parameters<Queue['clean']>[2] & string, graceTimeMs: number): Promise<void> {
    const ids = await this.bullQueue.clean(graceTimeMs, Number.MAX_SAFE_INTEGER, status);
    if (this.agent && DISPATCHED_STATUSES.has(status)) await this.actions.removed(ids, { refund: UNFETCHED_STATUSES.has(status) });
  }

  override async empty(): Promise<void> {
    if (!this.agent) return super.empty();
    // The board's empty is BullMQ's drain: every job in the wait list and the prioritized set, which it does not
    // name. BullMQ's clean of each takes the same jobs (those stamped up to now: a minute ahead, for another
    // process's clock) and names them.
    for (const status of ['wait', 'prioritized'] as const) await this.cleanStatus(status, -EMPTY_AHEAD_MS);
  }

  override async promoteAll(): Promise<void> {
    if (!this.agent) return super.promoteAll();
    // BullMQ's promote of the whole delayed set took every parked job (laned or on a timer) past the dispatcher.
    await this.actions.promoteAll((id) => this.promoteOwn(id));
  }

  /** BullMQ's promote of a job it holds on a delay of its own; one no longer delayed (promoted or removed meanwhile) is left. */
  private async promoteOwn(id: string): Promise<void> {
    const job = await this.bullQueue.getJob(id);
    await job?.promote().catch(async (err: unknown) => {
      if ((await this.bullQueue.getJobState(id)) === 'delayed') throw err;
    });
  }

  override async obliterate(...args: Parameters<BullMQAdapter['obliterate']>): Promise<void> {
    await super.obliterate(...args);
    if (this.agent) await this.actions.removed();
  }

  /** The job, its remove, retry, promote and removeUnprocessedChildren going through `actions`. */
  private follow(job: Job, bulk: boolean): Job {
    const { actions } = this;
    const id = job.id!;
    const remove = job.remove.bind(job);
    // BullMQ's remove, answering whether it removed the job: false when it refused (the job or a child it would take
    // is locked), which `actions` answers as a 409 naming why (job.remove threw a bare Error for it, a 500).
    const removeOrRefuse = (o?: { removeChildren?: boolean }) => this.bullQueue.remove(id, o).then((n) => n === 1);
    // An agent job's: of the job read only (its creation time). A job made under the id since (the one read removed,
    // its idempotency key sent again) is kept, with its lane, slot and charge: the job the operator saw is gone, as
    // BullMQ's remove of a missing job answers. A worker holding the job read refuses it, as BullMQ's does.
    const timestamp = job.timestamp;
    const removeRead = (o?: { removeChildren?: boolean }) => this.removal(id, timestamp, o).then((r) => r !== 'locked');
    const removeChildren = job.removeUnprocessedChildren.bind(job);
    const retry = job.retry.bind(job);
    const promote = job.promote.bind(job);
    // A parent's remove takes its children with it (BullMQ's default), unless told not to.
    job.remove = this.agent
      ? (o) => actions.remove(id, timestamp, () => removeRead(o))
      : (o) => (o?.removeChildren === false ? remove(o) : actions.removeChildren(job, () => removeOrRefuse(o)));
    // It leaves the children a worker holds and takes the others: never refused.
    job.removeUnprocessedChildren = () => actions.removeChildren(job, () => removeChildren().then(() => true), { unprocessed: true });
    if (this.agent) job.retry = (state = 'failed', o) => actions.retry(id, state, () => retry(state, o), { bulk });
    if (this.agent) job.promote = () => actions.promote(id, promote);
    return job;
  }
}

/**
 * Refusals the board answers itself, before any error handler, in its own keyed body (`{ error: { key }, message:
 * { key } }`), by its route, status and key, with agentq's conflict for each: the removal of a job a worker holds
 * (its cleanJob finds the job active after BullMQ refused: RemovalRefusedError, EJOBLOCKED), the obliterate of a
 * queue whose jobs workers are running (BullMQ's refusal, which its obliterateQueue catches: ObliterateRefusedError,
 * EQUEUEACTIVE) and the obliterate of a queue not paused (the board's own check, a 400 that named nothing:
 * QueueNotPausedError, EQUEUENOTPAUSED). Each is answered as a conflict that reaches the error handler is: 409.
 * A queue is named as in the board's URL (`:queueName`, a shard's copy with its prefix), the name its page shows.
 */
const BOARD_REFUSALS: Array<{ route: string; status: number; key: string; conflict(params: Record<string, string | undefined>): ConflictError }> = [
  { route: '/api/queues/:queueName/:jobId/clean', status: 409, key: 'ERRORS.JOB_IS_ACTIVE', conflict: (p) => new RemovalRefusedError(String(p.jobId)) },
  { route: '/api/queues/:queueName/obliterate', status: 409, key: 'ERRORS.QUEUE_HAS_ACTIVE_JOBS', conflict: (p) => new ObliterateRefusedError(String(p.queueName)) },
  { route: '/api/queues/:queueName/obliterate', status: 400, key: 'ERRORS.QUEUE_NOT_PAUSED', conflict: (p) => new QueueNotPausedError(String(p.queueName)) },
];

/** The board's own answer to one of BOARD_REFUSALS in the API's 409 shape; undefined for any other result. */
function boardRefusal(context: HookContext, result: ControllerHandlerReturnType): ControllerHandlerReturnType | undefined {
  const error = result.body !== null && typeof result.body === 'object' ? (result.body as { error?: { key?: unknown } }).error : undefined;
  const known = BOARD_REFUSALS.find((r) => r.route === context.route && r.status === result.status && r.key === error?.key);
  if (!known) return undefined;
  return { status: 409, body: conflictBody(known.conflict(context.request.params as Record<string, string | undefined>)) };
}

/** How far past this process's clock `empty` takes jobs (BullMQ's clean compares the time each job was stamped). */
const EMPTY_AHEAD_MS = 60_000;

/**
 * Mounts Bull Board (page, JSON API and static assets) under `basePath` in `scope`. Authentication is the
 * caller's: register this inside a scope whose onRequest hook already guards every route.
 */
export async function registerBullBoard(scope: FastifyInstance, opts: { queues: Queue[]; readOnly: boolean; basePath?: string; shards?: BoardShard[] }) {
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
      const options = { readOnlyMode: opts.readOnly, ...(sharded ? { prefix: `${q.opts.prefix}:` } : {}) };
      // A shard's agent queue and its parents' queues: the dispatcher and the jobs' streams follow the board's actions.
      const shard = opts.shards?.find((sh) => sh.agent === q || sh.parents.includes(q));
      const adapter = shard ? new ShardQueueAdapter(q, options, shard.actions, shard.agent === q) : new BullMQAdapter(q, options);
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
    options: { uiConfig: { boardTitle: 'agentq', hideDocsLink: true }, handlerHooks: { after: (context, result) => boardRefusal(context, result) ?? result } },
  });
  // A conflict agentq's side of an action throws (a refused removal, a DLQ retry refused) is answered in the API's
  // shape, `{ error, code, ...}`, whose `error` the board's page shows as it is; the board's own handler answered
  // any thrown error `{ error: { key: 'ERRORS.INTERNAL_SERVER_ERROR' }, message }`. Anything else stays the board's.
  serverAdapter.setErrorHandler((err) => (err instanceof ConflictError ? { status: 409, body: conflictBody(err) } : boardErrorHandler(err)));
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
