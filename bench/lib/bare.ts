import { GoogleGenAI } from '@google/genai';
import type { Job } from 'bullmq';
import { z } from 'zod';
import { defaultRegistry } from '../../src/shared/agents/registry.js';
import type { AgentJobData } from '../../src/shared/core/types.js';

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
