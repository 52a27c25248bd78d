import type { Job } from 'bullmq';
import type { AgentJobData, AgentResult } from '../../src/shared/core/types.js';

/**
 * A stand-in for a fetched BullMQ job of a RiskAnalyzer run (org-1), for processor tests that need no queue: its
 * id, attempts, data (merged over the defaults) and any method a test gives it (`extra`, e.g. moveToDelayed).
 */
export function fakeAgentJob(o: { id?: string; attemptsMade?: number; attempts?: number; data?: Partial<AgentJobData>; extra?: Record<string, unknown> } = {}): Job<AgentJobData, AgentResult> {
  return {
    id: o.id ?? 'job-1',
    timestamp: Date.now(),
    data: { orgId: 'org-1', agent: 'RiskAnalyzer', action: 'analyze_risks', input: {}, enqueuedAt: Date.now(), ...o.data } as AgentJobData,
    attemptsMade: o.attemptsMade ?? 0,
    opts: { attempts: o.attempts ?? 3 },
    ...o.extra,
  } as unknown as Job<AgentJobData, AgentResult>;
}
