import { EventEmitter } from 'node:events';
import type { Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../src/shared/core/logger.js';
import { jobStreamKey } from '../src/shared/core/queue-keys.js';
import { decodeEvent } from '../src/shared/core/stream-event.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import type { JobContext } from '../src/workers/middleware.js';
import { createStreamPublisher } from '../src/workers/stream-publisher.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

describe('the stream publisher', () => {
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  afterAll(() => redis.disconnect());

  it('forgets a streaming job a guard delayed once its delayed event is written (its next attempt may run in another process)', async () => {
    const publisher = createStreamPublisher({ redis, maxLen: 100, runningTtlS: 60, endTtlS: 60, logger: createLogger({ level: 'silent' }) });
    const worker = new EventEmitter();
    publisher.attach(worker as unknown as Worker<AgentJobData, AgentResult>);
    const prefix = `${randomPrefix()}:agent-jobs`;
    const job = { id: 'job-1', prefix, attemptsMade: 0, opts: { attempts: 3 }, data: { orgId: 'o', agent: 'a', action: 'b', input: {}, stream: true, enqueuedAt: Date.now() } } as unknown as Job<AgentJobData, AgentResult>;

    worker.emit('active', job);
    expect(publisher.tracked()).toBe(1);
    publisher.delayed({ job } as JobContext, 'provider_rate_limited', 1200.4);
    await vi.waitFor(() => expect(publisher.tracked()).toBe(0), POLL);

    const entries = await redis.xrange(jobStreamKey(prefix, 'job-1'), '-', '+');
    expect(entries.map(([, fields]) => decodeEvent(fields))).toEqual([
      { kind: 'progress', progress: { stage: 'started', attempt: 1 } },
      { kind: 'progress', progress: { stage: 'delayed', reason: 'provider_rate_limited', delayMs: 1200 } },
    ]);
    // The job's next attempt in this process starts a new entry, and its completion forgets it again.
    worker.emit('active', job);
    expect(publisher.tracked()).toBe(1);
    worker.emit('completed', job, { data: {} });
    await vi.waitFor(() => expect(publisher.tracked()).toBe(0), POLL);
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});
