export interface TokenUsage {
  input: number;
  output: number;
}

export type CacheLevel = 'l1' | 'l2' | 'semantic';

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
  /** Hash of the request an idempotency key was first used with (agent, action, input, options). */
  fingerprint?: string;
  enqueuedAt: number;
}

export function emptyUsage(): TokenUsage {
  return { input: 0, output: 0 };
}
