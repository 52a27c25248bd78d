import type { EmbeddingSpend, FlowJobResult } from './flow-data.js';

/** What `GET /v1/flows/:id` and `GET /v1/pipelines/runs/:id` answer (shared with the typed client). */
export interface FlowView {
  id: string;
  /** "parallel", or the preset's name. */
  kind: string;
  state: string;
  result?: FlowJobResult;
  error?: string;
  children: Array<{ id: string; key: string; state: string }>;
  createdAt: string;
  finishedAt?: string;
}

export interface PipelineRunView {
  id: string;
  pipeline: string;
  state: string;
  steps: Array<{
    id: string;
    agent: string;
    action: string;
    state: string;
    jobId?: string;
    /** The step job's BullMQ state while the step is running. */
    jobState?: string;
    output?: unknown;
    error?: string;
    costUsd?: number;
    /** The step job's embedding calls, estimated (see `EmbeddingSpend`), when it made any. */
    embedding?: EmbeddingSpend;
    durationMs?: number;
  }>;
  outputs: Record<string, unknown>;
  errors: Record<string, string>;
  result?: FlowJobResult;
  error?: string;
  createdAt: string;
  finishedAt?: string;
}

/** What `POST /v1/flows/:id/cancel` and `POST /v1/pipelines/runs/:id/cancel` answer. */
export interface FlowCancelView {
  id: string;
  /**
   * "cancelling" until the flows worker ends it "cancelled"; a flow that had already finished keeps its state, and
   * so does one the worker was settling when nothing was left to cancel (the state it ended in).
   */
  state: string;
  /** Child or step jobs removed before they ran. */
  cancelled: string[];
  /** Child or step jobs that were running: their workers abort them. */
  cancelling: string[];
}
