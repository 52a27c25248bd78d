import { GoogleGenAI } from '@google/genai';
import { Queue, Worker, type Job, type Processor } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { defaultRegistry } from '../../src/shared/agents/registry.js';
import type { Config } from '../../src/shared/core/config.js';
import { QUEUE } from '../../src/shared/core/queue-names.js';
import type { AgentJobData } from '../../src/shared/core/types.js';
import { agentJobOptions, retentionOf } from '../../src/shared/queue/agent-queue.js';
import { riskInput } from './agentq.js';

/** The name and data of a RiskAnalyzer job as agentq stores it, for the bare baselines' own `add`. */
export const BARE_JOB_NAME = 'RiskAnalyzer:analyze_risks';
export function bareJobData(orgId: string, n: number | string): AgentJobData {
  return { orgId, agent: 'RiskAnalyzer', action: 'analyze_risks', input: riskInput(n), enqueuedAt: Date.now() };
}

/** The agent queue as the baselines add to it: agentq's queue name, prefix and job options. */
export function bareQueue(connection: Redis, cfg: Config): Queue {
  return new Queue(QUEUE.agent, { connection, prefix: cfg.QUEUE_PREFIX, defaultJobOptions: agentJobOptions(retentionOf(cfg)) });
}

/** A plain BullMQ worker on the agent queue with the worker options agentq's own uses (src/workers/agent-worker.ts). */
export function bareWorker(connection: Redis, cfg: Config, processor: Processor<AgentJobData>, concurrency: number): Worker<AgentJobData> {
  return new Worker<AgentJobData>(QUEUE.agent, processor, {
    connection,
    prefix: cfg.QUEUE_PREFIX,
    concurrency,
    lockDuration: cfg.LOCK_DURATION_MS,
    stalledInterval: cfg.STALLED_INTERVAL_MS,
    maxStalledCount: 2,
  });
}

/** The hand-written baseline call: the same request bytes agentq sends, through the same SDK, nothing around it. */
export function bareLlm(emulatorUrl: string) {
  const ai = new GoogleGenAI({ apiKey: 'bench-not-a-real-key', vertexai: false, httpOptions: { baseUrl: emulatorUrl } });
  const action = defaultRegistry().resolve('RiskAnalyzer', 'analyze_risks').action;
  const { $schema: _drop, ...schema } = z.toJSONSchema(action.output) as Record<string, unknown>;
  return async (job: Job<AgentJobData>) => {
    const prompt = await action.prompt(job.data.input, { orgId: job.data.orgId });
    const res = await ai.models.generateContent({
      model: 'gemini-2.5-pro',
      contents: prompt.user,
      config: { systemInstruction: prompt.system, responseMimeType: 'application/json', responseJsonSchema: schema },
    });
    return { success: true, data: JSON.parse(res.text ?? 'null'), tokensUsed: { input: res.usageMetadata?.promptTokenCount ?? 0, output: res.usageMetadata?.candidatesTokenCount ?? 0 }, model: 'gemini-2.5-pro' };
  };
}
