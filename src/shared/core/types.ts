export interface TokenUsage {
  /** Prompt tokens, cached ones included. */
  input: number;
  /** Answer tokens, thinking tokens included (both bill at the output price). */
  output: number;
  /** Of `input`, served from Gemini's (implicit) cache: billed at the cached-input price. */
  cached?: number;
  /** Of `output`, thinking tokens. */
  thoughts?: number;
}

/**
 * Gemini's pricing/latency tiers: `standard`; `flex` (about half price, best effort, may be shed); `batch`
 * (Batch Mode: half price, turnaround up to 24 h); `priority` (a premium for the lowest latency).
 */
export const SERVICE_TIERS = ['standard', 'flex', 'batch', 'priority'] as const;
export type ServiceTier = (typeof SERVICE_TIERS)[number];

export type CacheLevel = 'l1' | 'l2' | 'semantic';

/**
 * What a model call that answered was billed (from its `usageMetadata`). An error raised after the answer came
 * (not JSON, schema-invalid, a refusal, a stream cut after chunks that reported the prompt's usage) carries it as
 * `billed`: the attempt's failed `agent_runs` row (or, when a later call of the run delays the job, the run's
 * `delayed` row), hence `/v1/usage` and the monthly USD quota, and the TPM buckets count what Gemini charged.
 */
export interface BilledCall {
  model: string;
  usage: TokenUsage;
  costUsd: number;
  /** The same tokens on the standard tier. */
  standardCostUsd: number;
  tier: ServiceTier;
}

/** What every agent job returns, successful or not. */
export interface AgentResult<T = unknown> {
  success: boolean;
  data?: T;
  error?: string;
  tokensUsed: TokenUsage;
  costUsd: number;
  durationMs: number;
  model: string;
  cacheHit?: CacheLevel;
  /** Which route served the job when a primary/fallback route was used. */
  route?: 'primary' | 'fallback';
  /** The service tier the answer was billed at (absent = standard), and its cost on the standard tier. */
  tier?: ServiceTier;
  standardCostUsd?: number;
}

/**
 * W3C trace context of the span that enqueued a job, so the worker's spans join the caller's trace in any
 * process and on every retry. Only set while tracing is on; ids only, never content.
 */
export interface TraceCarrier {
  traceparent: string;
  tracestate?: string;
}

/** The payload of one agent job in BullMQ. Everything here is JSON; nothing secret travels in it. */
export interface AgentJobData {
  orgId: string;
  agent: string;
  action: string;
  input: unknown;
  /** An explicit model name, or unset to use the action's default tier. */
  model?: string;
  requestId?: string;
  userId?: string;
  /** Publish text chunks to the job's Redis Stream as the model produces them. */
  stream?: boolean;
  /** The service tier to call at (absent = standard), fixed at enqueue from `options.tier` or `options.deadline`. */
  tier?: ServiceTier;
  /** Epoch ms by which the caller needs the answer (`options.deadline`). */
  deadlineAt?: number;
  /** Hash of the request an idempotency key was first used with (agent, action, input, options). */
  fingerprint?: string;
  enqueuedAt: number;
  /**
   * The caller's `options.delayMs`, counted from `enqueuedAt`. The dispatcher's lane holds the delay; this copy
   * is the only one a flow child or pipeline step has between BullMQ's add and its lane call, so the orphan
   * sweep (a producer that died in between) lanes it for what is left of it instead of at once.
   */
  delayMs?: number;
  trace?: TraceCarrier;
  /**
   * Written by a worker only: the job's deferrals in a row for an unavailable database (`n`), the last one made by
   * the run BullMQ fetched as `ats` (its attemptsStarted). A run fetched right after it (`ats` + 1) that meets the
   * outage again waits longer (workers/db-deferrals.ts); any other run starts over.
   */
  dbDeferrals?: { n: number; ats: number };
}

export function emptyUsage(): TokenUsage {
  return { input: 0, output: 0 };
}
