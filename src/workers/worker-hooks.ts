import type { Worker } from 'bullmq';
import type { AgentJobData, AgentResult } from '../shared/core/types.js';
import type { JobContext } from './middleware.js';
import type { ModelCallEvent } from './call-agent.js';

/** What a feature (streaming, operations...) may plug into the agent worker. */
export interface WorkerHooks {
  /** Receives the model's text chunks of a job as they arrive (only for jobs with `stream: true`). */
  onText?: (ctx: JobContext) => ((text: string) => Promise<void>) | undefined;
  /** Called when a guard delays a job without using an attempt. */
  onDelay?: (ctx: JobContext, reason: string, delayMs: number) => void;
  /** The model answered a call of the job (its output is validated next): the `validating` stage. */
  onAnswer?: (ctx: JobContext) => void;
  /** Every model call of the agent worker (latency, error code). */
  onModelCall?: (e: ModelCallEvent) => void;
  /** Sees the agent worker once it exists (to listen to completed/failed events). */
  attachWorker?: (worker: Worker<AgentJobData, AgentResult>) => void;
  /** An attempt's usage row carrying embedding calls was handed to the usage stream: their ESTIMATED tokens and cost, USD. */
  onEmbeddingRecorded?: (spend: { tokens: number; costUsd: number }) => void;
  /** Usage rows this process's run sink committed to Postgres: ms from each attempt's end to its commit. */
  onUsageCommitted?: (lagsMs: number[]) => void;
  /** Usage rows Postgres refused for their content, dropped by this process's run sink (logged with their identity). */
  onUsageRefused?: (rows: number) => void;
}
