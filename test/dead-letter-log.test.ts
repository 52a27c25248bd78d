import { EventEmitter } from 'node:events';
import type { Worker } from 'bullmq';
import { describe, expect, it, vi } from 'vitest';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import type { DlqStore } from '../src/shared/ops/dlq-store.js';
import { createOpsMetrics } from '../src/shared/ops/metrics.js';
import { attachOpsListeners } from '../src/workers/ops/worker-listeners.js';
import { captureLogs, DEAD_LETTERED } from './helpers/ops.js';

/**
 * The dead-letter log line is the one an operator filters by org or request: it carries the job's ids whether or
 * not its DLQ class could be stored. No Redis: a worker stand-in emits BullMQ's `failed` event.
 */
describe('the dead-letter log line', () => {
  const job = {
    id: 'job-dl-1',
    data: { orgId: 'org-dl', agent: 'RiskAnalyzer', action: 'analyze_risks', input: {}, enqueuedAt: Date.now(), requestId: 'req-dl-1', userId: 'user-dl' },
    attemptsMade: 3,
    opts: { attempts: 3 },
  };
  const ids = { jobId: 'job-dl-1', orgId: 'org-dl', agent: 'RiskAnalyzer', action: 'analyze_risks', requestId: 'req-dl-1', userId: 'user-dl' };

  async function deadLetter(recordFailure: DlqStore['recordFailure']) {
    const logs = captureLogs();
    const worker = new EventEmitter();
    attachOpsListeners(worker as unknown as Worker<AgentJobData, AgentResult>, { store: { recordFailure } as DlqStore, metrics: createOpsMetrics(), logger: logs.logger });
    worker.emit('failed', job, Object.assign(new Error('[EPROVIDER] Gemini API 500: internal'), { code: 'EPROVIDER' }));
    return vi.waitFor(() => {
      const line = logs.lines().find((l) => typeof l.msg === 'string' && l.msg.startsWith(DEAD_LETTERED));
      expect(line, 'dead-letter line').toBeDefined();
      return line!;
    });
  }

  it('carries job, org, agent, action, request and user ids', async () => {
    expect(await deadLetter(async () => 0)).toMatchObject({ msg: DEAD_LETTERED, ...ids, class: 'retryable' });
  });

  it('carries the same ids when the DLQ class could not be stored in Redis', async () => {
    const line = await deadLetter(async () => {
      throw new Error('Connection is closed.');
    });
    expect(line).toMatchObject({ msg: `${DEAD_LETTERED} (class not stored)`, ...ids, class: 'retryable', err: 'Connection is closed.' });
  });
});
