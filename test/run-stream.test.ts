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

/** `row` as the stream holds it: its fields that hold their column's default (what the sink's INSERT stores for an absent key) left out. */
const { cacheHit: _cacheHit, error: _error, tier: _tier, ...sent } = row;

describe('usage stream rows', () => {
  it('stamps an unset createdAt with the time of encoding and keeps every field that is not its default', () => {
    const before = Date.now();
    const json = encodeRun(row);
    const after = Date.now();
    const back = decodeRun(json);
    expect(back.createdAt!.getTime()).toBeGreaterThanOrEqual(before);
    expect(back.createdAt!.getTime()).toBeLessThanOrEqual(after);
    expect({ ...back, createdAt: undefined }).toEqual({ ...sent, createdAt: undefined });
    expect(JSON.parse(json)).not.toHaveProperty('cacheHit');
    expect(typeof (JSON.parse(json) as { createdAt: unknown }).createdAt).toBe('string');
  });

  it('keeps a createdAt that is set (backfills), as an ISO string', () => {
    const createdAt = new Date('2026-11-30T23:59:59.123Z');
    const json = encodeRun({ ...row, createdAt });
    expect((JSON.parse(json) as { createdAt: string }).createdAt).toBe('2026-11-30T23:59:59.123Z');
    expect(decodeRun(json)).toEqual({ ...sent, createdAt });
  });

  it('leaves out every optional field that holds its default, and standardCostUsd equal to costUsd; the fields AgentRun requires are kept', () => {
    const createdAt = new Date('2026-11-30T23:59:59.123Z');
    const defaults: AgentRun = {
      ...row, createdAt, jobTs: 0, part: '', inputTokens: 0, outputTokens: 0, durationMs: 0, requestId: null, cachedTokens: 0, thoughtsTokens: 0,
      standardCostUsd: row.costUsd, embeddingTokens: 0, embeddingCostUsd: 0, embeddingEstimated: false,
    };
    const json = encodeRun(defaults);
    expect(Object.keys(JSON.parse(json) as object)).toEqual(['jobId', 'attempt', 'orgId', 'agent', 'action', 'model', 'state', 'inputTokens', 'outputTokens', 'costUsd', 'durationMs', 'createdAt']);
    expect(decodeRun(json)).toEqual({ jobId: 'job-1', attempt: 2, orgId: 'org-1', agent: 'RiskAnalyzer', action: 'analyze_risks', model: 'gemini-2.5-pro', state: 'completed', costUsd: 0.0053, inputTokens: 0, outputTokens: 0, durationMs: 0, createdAt });
    // Any other value is kept: a standard cost that differs, a null one (the INSERT's default too) left out.
    expect(JSON.parse(encodeRun({ ...defaults, standardCostUsd: 0.01 }))).toMatchObject({ standardCostUsd: 0.01 });
    expect(JSON.parse(encodeRun({ ...defaults, standardCostUsd: null }))).not.toHaveProperty('standardCostUsd');
  });

  it('writes each value as JSON.stringify does: escapes, NaN and infinities as null, a Date as its ISO string', () => {
    const odd = { ...row, error: 'quote " backslash \\ nul \u0000 lone \uD800 漢字', requestId: 'r', inputTokens: Number.NaN, outputTokens: Number.POSITIVE_INFINITY, durationMs: -0.5, createdAt: new Date('2026-01-02T03:04:05.006Z') };
    const json = encodeRun(odd);
    expect(JSON.parse(json)).toEqual(JSON.parse(JSON.stringify({ ...odd, cacheHit: undefined, tier: undefined })));
    expect(json).toContain(JSON.stringify(odd.error));
  });

  it('treats an explicitly undefined createdAt as unset', () => {
    const back = decodeRun(encodeRun({ ...row, createdAt: undefined }));
    expect(back.createdAt).toBeInstanceOf(Date);
  });
});
