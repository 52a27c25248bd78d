import type { Job } from 'bullmq';
import type { AgentAction, AgentDefinition } from '../shared/agents/define-agent.js';
import type { Logger } from '../shared/core/logger.js';
import type { AgentJobData, AgentResult, BilledCall, ServiceTier } from '../shared/core/types.js';
import type { PreparedLookup } from '../shared/cache/result-cache.js';
import { estimateTokens } from '../shared/queue/estimate-tokens.js';
import type { Span } from '../shared/telemetry/tracing.js';
import type { Cancellation } from './cancellation.js';
import type { JobContext, OrgRequests } from './middleware.js';

/**
 * What the fair dispatcher charged for the attempt's first call (`JobContext.prepaid`): the job's token estimate
 * from its data, as the producer computed it, worked out when first read (nothing for a batch-tier job, whose lane
 * no online bucket limits).
 */
export class Prepaid {
  #charged: number | undefined;
  constructor(
    readonly model: string,
    private readonly data: AgentJobData,
  ) {}

  get charged(): number {
    return (this.#charged ??= this.data.tier === 'batch' ? 0 : estimateTokens(this.data.input));
  }
}

/**
 * The JobContext of one attempt (processor.ts). A class rather than an object literal: its accessors live on the
 * prototype, where the literal made a getter, a setter and their accessor pairs for every job.
 */
export class AttemptContext implements JobContext {
  readonly orgId: string;
  readonly agentName: string;
  readonly actionName: string;
  tier: ServiceTier;
  prepaid?: Prepaid;
  charge?: JobContext['charge'];
  orgRequests?: OrgRequests;
  batchRead?: boolean;
  batchBilled?: BilledCall;
  usage?: JobContext['usage'];
  embedded?: (texts: readonly string[]) => void;
  cacheLookup?: PreparedLookup;
  /** A guard's own signal for its inner links while it runs them (route-guard.ts); else the attempt's. */
  #swapped: AbortSignal | undefined;
  #estimated: number | undefined;

  constructor(
    readonly job: Job<AgentJobData, AgentResult>,
    readonly token: string | undefined,
    public agent: AgentDefinition,
    public action: AgentAction,
    /** Input already validated against the action's schema. */
    readonly input: unknown,
    public model: string,
    readonly logger: Logger,
    readonly span: Span,
    /** The attempt's cancellation: its signal is made when first read (an attempt answered from memory never reads it). */
    private readonly cancel: Cancellation,
  ) {
    const data = job.data;
    this.orgId = data.orgId;
    this.agentName = data.agent;
    this.actionName = data.action;
    this.tier = data.tier ?? 'standard';
  }

  get signal(): AbortSignal {
    return this.#swapped ?? this.cancel.signal;
  }

  // A guard may hand its inner links a signal of its own (route-guard.ts) and then put this one back.
  set signal(s: AbortSignal) {
    this.#swapped = s;
  }

  /** Read only when the rate limiter charges a call itself (not the dispatcher's prepaid first call). */
  get estimatedTokens(): number {
    return (this.#estimated ??= estimateTokens(this.input));
  }
}
