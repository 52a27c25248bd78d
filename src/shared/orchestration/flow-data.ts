import type { AgentResult, TraceCarrier } from '../core/types.js';
import type { DailyReservation } from '../queue/admission-check.js';

/** One child agent job of a fan-out flow, in request order. */
export interface FlowChildRef {
  id: string;
  /** Where its result goes in `results`: "Agent:action", or "Agent:action#N" for the N-th repeat of that pair. */
  key: string;
  agent: string;
  action: string;
  /** The model the child asked for (explicit or its tier's default): reported when the child failed. */
  model: string;
}

/** The parent job of `POST /v1/flows/parallel` (and of presets), in the flows queue. */
export interface ParallelFlowData {
  kind: 'parallel';
  orgId: string;
  requestId?: string;
  /** A named preset whose result mapper adds fields to the result (see presets.ts). */
  preset?: string;
  children: FlowChildRef[];
}

/**
 * The embedding calls of a flow's children or a run's steps (their semantic cache lookups, their prompts' knowledge
 * searches), as `/v1/usage`'s `embedding`: Gemini reports no usage for them, so the tokens are ESTIMATED (~4
 * characters a token) and priced at the embedding model's input price; not in `costUsd`, which is what Gemini billed
 * the model calls.
 */
export interface EmbeddingSpend {
  tokens: number;
  costUsd: number;
  estimated: true;
}

export const embeddingSpend = (tokens: number, costUsd: number): EmbeddingSpend => ({ tokens, costUsd, estimated: true });

/** A child's entry of a fan-out's `results`: its result, with its embedding calls when it made any. */
export type FlowChildResult = AgentResult & { embedding?: EmbeddingSpend };

export interface ParallelFlowResult {
  results: Record<string, FlowChildResult>;
  /** Wall-clock time from the flow's creation until every child had settled. */
  totalDurationMs: number;
  /** Every child's billed attempts: a completed child's result and its earlier failed attempts, a failed child's attempts. */
  totalCostUsd: number;
  /** Every child's embedding calls, apart from `totalCostUsd`. */
  embedding: EmbeddingSpend;
  [presetField: string]: unknown;
}

export type StepState = 'pending' | 'running' | 'completed' | 'failed' | 'skipped';

/** The persisted progress of one pipeline step; the run job's data is the pipeline's checkpoint. */
export interface StepRecord {
  id: string;
  agent: string;
  action: string;
  outputKey: string;
  state: StepState;
  /** `<runId>-<stepId>`, set (and persisted) before the job is created, so a retry finds the same job. */
  jobId?: string;
  /** The mapped input, persisted with `jobId` so a resumed run re-creates exactly the same job. */
  input?: unknown;
  /**
   * Set once the step's job was made: a run that then finds neither the job nor its outcome knows someone removed
   * it before it finished, which is the step's failure, not a job never made (to be made now, and run and billed).
   */
  added?: boolean;
  error?: string;
  /** What the step's job was billed: its result's cost plus its earlier attempts'; a failed step's billed attempts. */
  costUsd?: number;
  /** The step job's embedding calls (every run's), when it made any; apart from `costUsd`. */
  embedding?: EmbeddingSpend;
  durationMs?: number;
  model?: string;
  startedAt?: number;
  finishedAt?: number;
}

/** The deterministic id of a run's step job, known before the job is made (its cancel is marked under it). */
export const stepJobId = (runId: string, stepId: string) => `${runId}-${stepId}`;

/** A pipeline run job, in the flows queue. */
export interface PipelineRunData {
  kind: 'pipeline';
  orgId: string;
  requestId?: string;
  pipeline: string;
  input: unknown;
  /** The trace of the request that started the run: each step's enqueue joins it. */
  trace?: TraceCarrier;
  /** Index of the step to work on next. */
  cursor: number;
  steps: StepRecord[];
  outputs: Record<string, unknown>;
  /** Step id -> error, for every step that failed (continued past or not). */
  errors: Record<string, string>;
  /** What the run's start reserved against the org's daily job limit: one job per step, made or not. */
  reserved?: DailyReservation;
  /** Set (before the refund is sent) once the steps never made were given back: at most once, whatever retries. */
  refunded?: boolean;
}

export interface PipelineRunResult {
  /** True when every step completed. */
  success: boolean;
  outputs: Record<string, unknown>;
  errors: Record<string, string>;
  /** Wall-clock time from the run's creation to its end. */
  totalDurationMs: number;
  totalCostUsd: number;
  /** Every step's embedding calls, apart from `totalCostUsd`. */
  embedding: EmbeddingSpend;
}

export type FlowJobData = ParallelFlowData | PipelineRunData;
export type FlowJobResult = ParallelFlowResult | PipelineRunResult;

/**
 * What a child that failed for good contributes to a fan-out: `Promise.allSettled` semantics. `costUsd`: what its
 * attempts were billed (its failed rows in the ledger, `childrenBilledUsd`), 0 when none answered.
 */
export function failedChildResult(error: string, model: string, costUsd = 0): AgentResult {
  return { success: false, error, tokensUsed: { input: 0, output: 0 }, costUsd, durationMs: 0, model };
}
