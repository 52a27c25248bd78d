import { describe, expect, it } from 'vitest';
import type { AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { decodeRun, encodeRun } from '../src/shared/infra/db/run-stream.js';

const row: AgentRun = {
  jobId: 'job-1',
  attempt: 2,
  orgId: 'org-1',
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  model: 'gemini-2.5-pro',
  state: 'completed',
  inputTokens: 812,
  outputTokens: 431,
  costUsd: 0.0053,
  durationMs: 12,
  cacheHit: null,
  error: null,
  requestId: 'req "quoted"',
  tier: 'standard',
};

describe('usage stream rows', () => {
  it('stamps an unset createdAt with the time of encoding and keeps every field', () => {
    const before = Date.now();
    const json = encodeRun(row);
    const after = Date.now();
    const back = decodeRun(json);
    expect(back.createdAt!.getTime()).toBeGreaterThanOrEqual(before);
    expect(back.createdAt!.getTime()).toBeLessThanOrEqual(after);
    expect({ ...back, createdAt: undefined }).toEqual({ ...row, createdAt: undefined });
    expect(typeof (JSON.parse(json) as { createdAt: unknown }).createdAt).toBe('string');
  });

  it('keeps a createdAt that is set (backfills), as an ISO string', () => {
    const createdAt = new Date('2026-11-30T23:59:59.123Z');
    const json = encodeRun({ ...row, createdAt });
    expect((JSON.parse(json) as { createdAt: string }).createdAt).toBe('2026-11-30T23:59:59.123Z');
    expect(decodeRun(json)).toEqual({ ...row, createdAt });
  });

  it('treats an explicitly undefined createdAt as unset', () => {
    const back = decodeRun(encodeRun({ ...row, createdAt: undefined }));
    expect(back.createdAt).toBeInstanceOf(Date);
  });
});
