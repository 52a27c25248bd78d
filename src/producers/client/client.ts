import type {
  ActionName,
  AgentInfo,
  AgentInput,
  AgentMap,
  AgentName,
  AgentOutput,
  BuiltInAgents,
} from '../../shared/agents/registry.js';
import type { FlowCancelView, FlowView, PipelineRunView } from '../../shared/orchestration/flow-views.js';
import type { AgentResult } from '../../shared/core/types.js';
import type { JobStage } from '../../shared/core/job-stage.js';
import { AgentqHttpError, AgentqTimeoutError, createHttpTransport, type HttpTransport, type TransportOptions } from './transport.js';
import { sleep } from '../../shared/core/abortable-sleep.js';

// Type-only imports above: the client pulls no agent code, zod or Redis into the service that uses it.
export { AgentqHttpError, AgentqTimeoutError } from './transport.js';
export type { ErrorBody, FetchLike, HttpTransport, RequestOptions } from './transport.js';
export type { FlowCancelView, FlowView, PipelineRunView } from '../../shared/orchestration/flow-views.js';
// Streaming: the SSE parser and reconnecting reader are dependency-free as well.
import { streamJob, type JobStreamEvent, type StreamOptions } from './stream-client.js';
export { AgentqStreamError } from './stream-client.js';
export type { JobStreamEvent, StreamOptions } from './stream-client.js';
export type { ProgressEvent } from '../../shared/core/stream-event.js';

export type JobState =
  | 'waiting'
  | 'prioritized'
  | 'delayed'
  | 'waiting-children'
  | 'active'
  | 'completed'
  | 'failed'
  | 'cancelling'
  | 'cancelled'
  | 'unknown';

export const FINISHED_STATES: readonly string[] = ['completed', 'failed', 'cancelled'];
export const isFinishedState = (state: string) => FINISHED_STATES.includes(state);

/** `GET /v1/jobs/:id`. `T` is the action's output, known when the view comes from a typed handle. */
export interface JobView<T = unknown> {
  id: string;
  agent: string;
  action: string;
  state: JobState;
  /** The named stage: queued, waiting (reason, eta), calling_model, streaming, validating, done (absent from older servers). */
  stage?: JobStage;
  progress: unknown;
  result?: AgentResult<T>;
  error?: string;
  attempts: number;
  createdAt: string;
  finishedAt?: string;
}

export interface EnqueueOptions {
  /** 1 is the highest; unprioritised jobs run before prioritised ones (BullMQ semantics). */
  priority?: number;
  delayMs?: number;
  /** Same key (per org) = same job: a retried enqueue does not run the work twice. */
  idempotencyKey?: string;
  /** An explicit model name instead of the action's tier default. */
  model?: string;
  stream?: boolean;
}

export interface WaitOptions {
  /** Give up (AgentqTimeoutError carrying the last view) after this long. Default 60 s. */
  timeoutMs?: number;
  /** Longest single long poll; the server may cap it lower. Default 20 s. */
  pollMs?: number;
  signal?: AbortSignal;
}

export interface RunFlowOptions extends WaitOptions {
  /** Applied to every task of the flow; a task's own `options` win. */
  defaults?: Pick<EnqueueOptions, 'priority' | 'model'>;
}

export interface JobHandle<T = unknown> {
  id: string;
  state: JobState;
  wait(opts?: WaitOptions): Promise<JobView<T>>;
  get(): Promise<JobView<T>>;
  cancel(): Promise<JobView<T>>;
}

/** One element of `enqueueBulk`: a union over every (agent, action) pair, so each input is checked. */
export type JobSpec<M extends AgentMap = BuiltInAgents> = {
  [N in AgentName<M>]: {
    [Act in ActionName<M, N>]: { agent: N; action: Act; input: AgentInput<M, N, Act>; options?: EnqueueOptions };
  }[ActionName<M, N>];
}[AgentName<M>];

type OutputOfSpec<M extends AgentMap, S> = S extends { agent: infer N extends AgentName<M> }
  ? S extends { action: infer Act extends ActionName<M, N> }
    ? AgentOutput<M, N, Act>
    : unknown
  : unknown;

/** The least pause of a wait after a 429 or 503, whatever its Retry-After says. */
const OVERLOAD_PAUSE_FLOOR_MS = 250;

export interface AgentqClientOptions extends TransportOptions {
  /**
   * Pause between polls when the server answers an unfinished job at once (no long-poll support). Default
   * 250 ms; a wait's pause after a 429 or 503 is never shorter than this nor than 250 ms, whatever Retry-After says.
   */
  minPollIntervalMs?: number;
}

/**
 * Typed client of the agentq HTTP API for Node services. `M` is the agent map the server runs; the
 * built-in agents by default, so `enqueue('RiskAnalyzer', 'analyze_risks', input)` checks `input` and the
 * handle's `wait()` yields `JobView<RiskAnalysis>`.
 */
export function createAgentqClient<M extends AgentMap = BuiltInAgents>(opts: AgentqClientOptions) {
  const http: HttpTransport = createHttpTransport(opts);
  const minPollIntervalMs = opts.minPollIntervalMs ?? 250;
  const overloadPauseFloorMs = Math.max(minPollIntervalMs, OVERLOAD_PAUSE_FLOOR_MS);
  const jobPath = (id: string) => `/v1/jobs/${encodeURIComponent(id)}`;
  const flowPath = (id: string) => `/v1/flows/${encodeURIComponent(id)}`;
  const runPath = (id: string) => `/v1/pipelines/runs/${encodeURIComponent(id)}`;
  const startFlow = async (tasks: JobSpec<M>[], defaults?: EnqueueOptions): Promise<{ id: string }> => {
    const { id } = await http.json<{ id: string }>('POST', '/v1/flows/parallel', { body: { tasks, ...(defaults ? { options: defaults } : {}) } });
    return { id };
  };
  const startPipeline = async (name: string, input: unknown): Promise<{ id: string }> => {
    const { id } = await http.json<{ id: string }>('POST', `/v1/pipelines/${encodeURIComponent(name)}`, { body: { input } });
    return { id };
  };

  const get = <T = unknown>(id: string, signal?: AbortSignal) => http.json<JobView<T>>('GET', jobPath(id), { signal });

  const cancel = <T = unknown>(id: string) => http.json<JobView<T>>('DELETE', jobPath(id));

  /** Long-polls `GET <path>?waitMs=N` (a job, flow or pipeline run) until it is finished or `timeoutMs` has passed. */
  async function poll<V extends { state: string }>(path: string, what: string, wo: WaitOptions = {}): Promise<V> {
    const deadline = Date.now() + (wo.timeoutMs ?? 60_000);
    const pollMs = wo.pollMs ?? 20_000;
    let last: V | undefined;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new AgentqTimeoutError(`${what} did not finish in time (state ${last?.state ?? 'unknown'})`, last);
      const waitMs = Math.max(1, Math.min(pollMs, remaining));
      const started = Date.now();
      try {
        last = await http.json<V>('GET', path, {
          query: { waitMs },
          signal: wo.signal,
          // The long poll's own wait plus the client's margin; a client without a timeout (0) sets none here either.
          timeoutMs: http.defaultTimeoutMs > 0 ? waitMs + http.defaultTimeoutMs : 0,
        });
      } catch (err) {
        // Overload is a reason to wait, not to give up on a job that is probably still running. Retry-After: 0
        // (or a date already past) still gets a pause: asking again at once, in a loop, is the load it answers.
        if (err instanceof AgentqHttpError && (err.status === 429 || err.status === 503)) {
          const pauseMs = Math.max((err.retryAfterS ?? 1) * 1000, overloadPauseFloorMs);
          await sleep(Math.min(pauseMs, Math.max(0, deadline - Date.now())), wo.signal);
          continue;
        }
        // One long poll that got no answer in time (or whose body stalled) says nothing about the job: ask
        // again; the loop's own deadline ends the wait with the last view, as a slow job's does.
        if (err instanceof AgentqTimeoutError) continue;
        throw err;
      }
      if (isFinishedState(last.state)) return last;
      const early = minPollIntervalMs - (Date.now() - started);
      if (early > 0) await sleep(Math.min(early, Math.max(0, deadline - Date.now())), wo.signal);
    }
  }

  /** Long-polls `GET /v1/jobs/:id?waitMs=N` until the job is finished or `timeoutMs` has passed. */
  const waitFor = <T = unknown>(id: string, wo: WaitOptions = {}) => poll<JobView<T>>(jobPath(id), `job ${id}`, wo);

  function handle<T>(job: { id: string; state: JobState }): JobHandle<T> {
    return {
      id: job.id,
      state: job.state,
      wait: (wo) => waitFor<T>(job.id, wo),
      get: () => get<T>(job.id),
      cancel: () => cancel<T>(job.id),
    };
  }

  return {
    /** The HTTP plumbing, for streaming and flow methods built on the same base URL, key and errors. */
    http,

    async enqueue<N extends AgentName<M>, Act extends ActionName<M, N>>(
      agent: N,
      action: Act,
      input: AgentInput<M, N, Act>,
      options?: EnqueueOptions,
    ): Promise<JobHandle<AgentOutput<M, N, Act>>> {
      const body = { agent, action, input, ...(options ? { options } : {}) };
      return handle(await http.json<{ id: string; state: JobState }>('POST', '/v1/jobs', { body }));
    },

    /** All-or-nothing on the server: one invalid element rejects the batch (400 naming `jobs.N.…`). */
    async enqueueBulk<J extends JobSpec<M>[]>(jobs: [...J]): Promise<{ jobs: { [K in keyof J]: JobHandle<OutputOfSpec<M, J[K]>> } }> {
      const res = await http.json<{ jobs: Array<{ id: string; state: JobState }> }>('POST', '/v1/jobs/bulk', { body: { jobs } });
      return { jobs: res.jobs.map((j) => handle(j)) as { [K in keyof J]: JobHandle<OutputOfSpec<M, J[K]>> } };
    },

    get,
    waitFor,
    cancel,

    async agents(): Promise<AgentInfo[]> {
      return (await http.json<{ agents: AgentInfo[] }>('GET', '/v1/agents')).agents;
    },

    /** Starts a fan-out (`POST /v1/flows/parallel`, 1..50 tasks) without waiting: its id, for `getFlow` / `cancelFlow`. */
    startFlow,

    /** A flow's view now (`GET /v1/flows/:id`). */
    getFlow: (id: string) => http.json<FlowView>('GET', flowPath(id)),

    /**
     * Cancels every child of a flow that has not finished (`POST /v1/flows/:id/cancel`): waiting ones are removed,
     * running ones aborted by their workers; the flow then ends `cancelled` (follow it with `getFlow` or `waitFor`).
     */
    cancelFlow: (id: string) => http.json<FlowCancelView>('POST', `${flowPath(id)}/cancel`),

    /**
     * Fan-out (`POST /v1/flows/parallel`, 1..50 tasks) and wait until every task has settled. A task that
     * failed for good is a `success: false` entry of `result.results`, not an error.
     */
    async runFlow(tasks: JobSpec<M>[], opts: RunFlowOptions = {}): Promise<FlowView> {
      const { defaults, ...wo } = opts;
      const { id } = await startFlow(tasks, defaults);
      return poll<FlowView>(flowPath(id), `flow ${id}`, wo);
    },

    /** Starts a named pipeline (`POST /v1/pipelines/:name`) without waiting: its run id. */
    startPipeline,

    /** A pipeline run's view now (`GET /v1/pipelines/runs/:id`). */
    getPipelineRun: (id: string) => http.json<PipelineRunView>('GET', runPath(id)),

    /** Cancels a run (`POST /v1/pipelines/runs/:id/cancel`): its running step is aborted and no later step is made. */
    cancelPipelineRun: (id: string) => http.json<FlowCancelView>('POST', `${runPath(id)}/cancel`),

    /** Runs a named pipeline (`POST /v1/pipelines/:name`) and waits for its outcome (`result.success`, outputs, errors). */
    async runPipeline(name: string, input: unknown, wo: WaitOptions = {}): Promise<PipelineRunView> {
      const { id } = await startPipeline(name, input);
      return poll<PipelineRunView>(runPath(id), `pipeline run ${id}`, wo);
    },

    /**
     * A job's events over SSE (`GET /v1/jobs/:id/stream`): text chunks as the model writes them, progress,
     * then its result or error. A dropped connection is resumed with Last-Event-ID: nothing lost or repeated.
     * A `retrying` or `restarted` progress event voids the text received so far.
     */
    stream<T = unknown>(id: string, so?: StreamOptions): AsyncGenerator<JobStreamEvent<T>> {
      return streamJob<T>(http, { method: 'GET', path: `${jobPath(id)}/stream` }, jobPath, so);
    },

    /** Enqueues a streaming job (`POST /v1/stream`) and follows it in the same call, like `stream`. */
    enqueueStream<N extends AgentName<M>, Act extends ActionName<M, N>>(
      agent: N,
      action: Act,
      input: AgentInput<M, N, Act>,
      options?: Omit<EnqueueOptions, 'stream'>,
      so?: StreamOptions,
    ): AsyncGenerator<JobStreamEvent<AgentOutput<M, N, Act>>> {
      const body = { agent, action, input, ...(options ? { options } : {}) };
      return streamJob<AgentOutput<M, N, Act>>(http, { method: 'POST', path: '/v1/stream', body }, jobPath, so);
    },
  };
}

export type AgentqClient<M extends AgentMap = BuiltInAgents> = ReturnType<typeof createAgentqClient<M>>;
