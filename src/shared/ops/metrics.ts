import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { AgentResult, CacheLevel } from '../core/types.js';
import { labelCache, NO_LABELS, pendingCounter, pendingHistogram } from './metric-cells.js';
import type { DlqClass, FailureType } from '../core/dlq-classify.js';

/** Cache levels in lookup order: a hit at one level means a miss at every level before it. */
const CACHE_LEVELS: CacheLevel[] = ['l1', 'l2', 'semantic'];
/** Each level's label set, made once: prom-client only reads the labels it is handed (and keeps the first it sees). */
const LEVEL_LABELS = CACHE_LEVELS.map((level) => Object.freeze({ level }));

const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const LATENCY_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const MODEL_CALL_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120];
const WRITE_LAG_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * What the per-job metrics read of a job: BullMQ's Job has this shape, so a listener hands its job over as it is
 * (no copy of these fields per event).
 */
export interface JobFacts {
  data: {
    agent: string;
    orgId?: string;
    action: string;
    enqueuedAt?: number;
    /** The caller's `options.delayMs` (the job's data): the job could not start before `enqueuedAt` + it. */
    delayMs?: number;
  };
  processedOn?: number;
  finishedOn?: number;
  attemptsStarted?: number;
}

/** What made an embedding call's ledger row: a job attempt (its own row), an ingest batch, a search API call. */
export type EmbeddingSource = 'attempt' | 'ingest' | 'search';

/** A ledger row's embedding calls: their ESTIMATED tokens (Gemini reports no usage for embeddings) and cost, USD. */
export interface EmbeddingSpend {
  tokens: number;
  costUsd: number;
}

/** How often the event-loop lag histogram samples: a lag spike shorter than this may go unseen. */
export const EVENT_LOOP_SAMPLE_MS = 100;

/**
 * The metrics one process records, on a registry it is given (never prom-client's global one). Several
 * processes' registries are summed at scrape time (see metrics-exchange.ts), so every metric here must
 * make sense summed: counters, histograms, and gauges that count things in this process.
 */
export function createOpsMetrics(registry: Registry = new Registry(), opts: { processId?: string } = {}) {
  const registers = [registry];
  // Node and process metrics (event-loop lag, heap, GC, CPU, handles), labelled with the process they describe
  // so the scrape keeps one series per process instead of summing them (metrics-exchange.ts). The event-loop
  // lag is sampled every EVENT_LOOP_SAMPLE_MS, not prom-client's default 10 ms: that timer alone kept an idle
  // process at ~1 % of a core (0.96 % vs 0.24 % without the default metrics, 0.32 % at 100 ms; 10 s each).
  if (opts.processId) collectDefaultMetrics({ register: registry, labels: { process: opts.processId }, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  const modelCallObs = pendingHistogram<{ model: string; status: string }>({
    name: 'agentq_model_call_duration_seconds',
    help: 'Model call latency (request to parsed answer), by model and status: ok or the error code',
    labelNames: ['model', 'status'] as const,
    buckets: MODEL_CALL_BUCKETS,
    registers,
  });
  const modelErrors = new Counter({
    name: 'agentq_model_call_errors_total',
    help: 'Failed model calls by model, error code and provider HTTP status ("none" when no answer came)',
    labelNames: ['model', 'code', 'http_status'] as const,
    registers,
  });
  const durationObs = pendingHistogram<{ agent: string; action: string; outcome: string }>({
    name: 'agentq_job_duration_seconds',
    help: 'Time from a job attempt starting to it ending, by outcome',
    labelNames: ['agent', 'action', 'outcome'] as const,
    buckets: DURATION_BUCKETS,
    registers,
  });
  const startLatencyObs = pendingHistogram<{ agent: string }>({
    name: 'agentq_job_start_latency_seconds',
    help: 'Time from a job becoming runnable (its enqueue, or the end of its delayMs) to its first start',
    labelNames: ['agent'] as const,
    buckets: LATENCY_BUCKETS,
    registers,
  });
  // No org label: every org ever seen would add 16 series to every process for good (and, summed across processes,
  // to the retired totals). Per org, the dispatcher's gauges read at scrape say who waits.
  const dispatchLatencyObs = pendingHistogram({
    name: 'agentq_dispatch_latency_seconds',
    help: 'Time from a job becoming runnable (its enqueue, or the end of its delayMs) to its first start, every org together: what the fair dispatcher made jobs wait',
    buckets: LATENCY_BUCKETS,
    registers,
  });
  // Counted per job as the token counter below is (`pendingCounter`): prom-client's own inc hashed the labels of
  // every completed job, a cache hit's $0 too (~0.3 us and ~350 bytes a job).
  const cost = pendingCounter({ name: 'agentq_cost_usd_total', help: 'Model cost of completed jobs in USD', labelNames: ['agent', 'model', 'tier'] as const, registers });
  const savings = pendingCounter({
    name: 'agentq_cost_savings_usd_total',
    help: 'What completed jobs would have cost more on the standard tier (flex / batch discounts), in USD',
    labelNames: ['agent', 'model', 'tier'] as const,
    registers,
  });
  // Beside agentq_cost_usd_total, never in it: that counter is what Gemini billed; this one is an estimate (Gemini
  // reports no usage for embeddings), counted where its agent_runs row is made, so the two can be told apart.
  const embeddingCost = new Counter({
    name: 'agentq_embedding_cost_usd_total',
    help: 'ESTIMATED cost in USD of the embedding calls recorded in agent_runs (Gemini reports no usage for them), by what made them: a job attempt, an org knowledge ingest, a search API call',
    labelNames: ['source', 'estimated'] as const,
    registers,
  });
  // Its tokens beside it: the same rows, the same estimate (~4 characters a token), so a price change is not
  // read as a change of volume.
  const embeddingTokens = new Counter({
    name: 'agentq_embedding_tokens_total',
    help: 'ESTIMATED tokens of the embedding calls recorded in agent_runs (Gemini reports no usage for them), by what made them: a job attempt, an org knowledge ingest, a search API call',
    labelNames: ['source', 'estimated'] as const,
    registers,
  });
  // Counted per job, handed to prom-client when read (metric-cells.ts `pendingCounter`, as the per-job histograms'
  // `pendingHistogram`): no handle on these metrics but their pending cells.
  const tokenIncs = pendingCounter({
    name: 'agentq_tokens_total',
    help: 'Model tokens of completed jobs',
    labelNames: ['agent', 'model', 'direction'] as const,
    registers,
  });
  const errors = new Counter({ name: 'agentq_job_errors_total', help: 'Failed job attempts by error type', labelNames: ['agent', 'type'] as const, registers });
  const hitIncs = pendingCounter({
    name: 'agentq_cache_hits_total',
    help: 'Completed jobs served by a cache level',
    labelNames: ['level'] as const,
    registers,
  });
  const missIncs = pendingCounter({
    name: 'agentq_cache_misses_total',
    help: 'Completed jobs a cache level could not serve',
    labelNames: ['level'] as const,
    registers,
  });
  const delays = new Counter({ name: 'agentq_job_delays_total', help: 'Jobs delayed without using an attempt, by a guard or for want of a dispatcher slot (reason no_slot)', labelNames: ['reason'] as const, registers });
  const delaySeconds = new Counter({ name: 'agentq_job_delay_seconds_total', help: 'Delay imposed by guards, summed', labelNames: ['reason'] as const, registers });
  const admission = new Counter({ name: 'agentq_admission_rejections_total', help: 'API requests refused by admission (rate plan or quota)', labelNames: ['reason'] as const, registers });
  const deadLetters = new Counter({ name: 'agentq_dlq_entries_total', help: 'Jobs that entered the dead-letter queue', labelNames: ['agent', 'class'] as const, registers });
  const usageLagObs = pendingHistogram({
    name: 'agentq_usage_write_lag_seconds',
    help: 'Time from an attempt ending (its usage row in the Redis Stream) to the row committed in agent_runs',
    buckets: WRITE_LAG_BUCKETS,
    registers,
  });
  const usageRefused = new Counter({
    name: 'agentq_usage_rows_refused_total',
    help: 'Usage rows Postgres refused for what they held (a data or integrity error), dropped by the run sink so the rows behind them are written',
    registers,
  });
  const sse = new Gauge({ name: 'agentq_sse_streams_open', help: 'Server-sent event streams currently open', registers });
  const agentLabels = labelCache((agent) => ({ agent }));
  const completedLabels = labelCache((agent, action) => ({ agent, action, outcome: 'completed' }));
  const failedLabels = labelCache((agent, action) => ({ agent, action, outcome: 'failed' }));
  const spendLabels = labelCache((agent, model, tier) => ({ agent, model, tier }));
  const tokenLabels = labelCache((agent, model, direction) => ({ agent, model, direction }));
  const modelCallLabels = labelCache((model, status) => ({ model, status }));

  return {
    registry,
    processId: opts.processId,

    modelCall(e: { model: string; seconds: number; code?: string; httpStatus?: number }) {
      modelCallObs.observe(modelCallLabels(e.model, e.code ?? 'ok'), Math.max(0, e.seconds));
      if (e.code) modelErrors.inc({ model: e.model, code: e.code, http_status: e.httpStatus ? String(e.httpStatus) : 'none' });
    },

    jobStarted(job: JobFacts) {
      const d = job.data;
      // Only the first start: a retry or a guard's delay would otherwise count the same job again.
      if (d.enqueuedAt && job.processedOn && (job.attemptsStarted ?? 1) <= 1) {
        // From when it could run: a job the caller delayed 60 s did not wait 60 s for the queue. Its data's delay,
        // never BullMQ's `opts.delay` (a parked job's is the far-future park, park.ts).
        const seconds = Math.max(0, job.processedOn - d.enqueuedAt - (d.delayMs ?? 0)) / 1000;
        startLatencyObs.observe(agentLabels(d.agent), seconds);
        if (d.orgId) dispatchLatencyObs.observe(NO_LABELS, seconds);
      }
    },

    jobCompleted(job: JobFacts, result: AgentResult) {
      const seconds = job.processedOn ? ((job.finishedOn ?? Date.now()) - job.processedOn) / 1000 : result.durationMs / 1000;
      const { agent } = job.data;
      durationObs.observe(completedLabels(agent, job.data.action), Math.max(0, seconds));
      const spend = spendLabels(agent, result.model, result.tier ?? 'standard');
      cost.add(spend, result.costUsd || 0);
      // A premium tier (priority) costs more than standard: a counter only grows, so only savings are counted.
      const saved = result.cacheHit ? 0 : (result.standardCostUsd ?? result.costUsd) - (result.costUsd || 0);
      if (saved > 0) savings.add(spend, saved);
      tokenIncs.add(tokenLabels(agent, result.model, 'input'), result.tokensUsed?.input ?? 0);
      tokenIncs.add(tokenLabels(agent, result.model, 'output'), result.tokensUsed?.output ?? 0);
      const hitAt = result.cacheHit ? CACHE_LEVELS.indexOf(result.cacheHit) : CACHE_LEVELS.length;
      for (let i = 0; i < LEVEL_LABELS.length && i <= hitAt; i++) {
        if (i < hitAt) missIncs.add(LEVEL_LABELS[i], 1);
        else hitIncs.add(LEVEL_LABELS[i], 1);
      }
    },

    /** Every failed attempt, retried or final. */
    jobFailed(job: JobFacts, type: FailureType) {
      // finishedOn is only set when the attempt was the last one; a retried attempt ends now.
      if (job.processedOn) {
        durationObs.observe(failedLabels(job.data.agent, job.data.action), Math.max(0, (job.finishedOn ?? Date.now()) - job.processedOn) / 1000);
      }
      errors.inc({ agent: job.data.agent, type });
    },

    delayed(reason: string, delayMs: number) {
      delays.inc({ reason });
      delaySeconds.inc({ reason }, Math.max(0, delayMs) / 1000);
    },

    usageCommitted(lagsMs: number[]) {
      for (const ms of lagsMs) usageLagObs.observe(NO_LABELS, Math.max(0, ms) / 1000);
    },

    usageRefused(rows: number) {
      usageRefused.inc(rows);
    },

    /** An agent_runs row with embedding calls was made (its usage stream entry appended, its insert committed). */
    embeddingRecorded(source: EmbeddingSource, spend: EmbeddingSpend) {
      if (spend.tokens > 0) embeddingTokens.inc({ source, estimated: 'true' }, spend.tokens);
      if (spend.costUsd > 0) embeddingCost.inc({ source, estimated: 'true' }, spend.costUsd);
    },

    admissionRejected(kind: 'rate_limit' | 'quota') {
      admission.inc({ reason: kind });
    },

    deadLettered(agent: string, cls: DlqClass) {
      deadLetters.inc({ agent, class: cls });
    },

    /** For the streaming feature: the number of SSE streams this process holds open. */
    sseStreams: {
      inc: () => sse.inc(),
      dec: () => sse.dec(),
      set: (n: number) => sse.set(n),
    },
  };
}

export type OpsMetrics = ReturnType<typeof createOpsMetrics>;
