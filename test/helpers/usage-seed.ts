import type pg from 'pg';
import { createRunStore, type AgentRun } from '../../src/shared/infra/db/agent-runs.js';

/**
 * A window no other test writes into, so the all-orgs view holds only what one dashboard test seeded: each file
 * that seeds takes a year of its own (the test files share one database and run side by side; two seeding the same
 * window made an all-orgs view read between the other's seeding and its own read differ from it).
 */
export const usageWindow = (year: number) => ({ year, from: `${year}-05-10`, to: `${year}-05-12`, toExclusive: `${year}-05-13` }) as const;
export const USAGE_WINDOW = usageWindow(2037);

/**
 * Attempts for two orgs over three days of USAGE_WINDOW (a failed attempt, a cache hit, two agents, two
 * models), plus one run the day after the window that must never show.
 */
export async function seedUsage(pool: pg.Pool, orgs: { a: string; b: string }, tag: string, window: { year: number } = USAGE_WINDOW): Promise<void> {
  const runs = createRunStore({ pool });
  const at = (day: number, hour: number) => new Date(Date.UTC(window.year, 4, day, hour));
  const base = { action: 'analyze_risks', state: 'completed' as const, error: null };
  const rows: AgentRun[] = [
    { ...base, orgId: orgs.a, jobId: `${tag}-1`, attempt: 1, agent: 'RiskAnalyzer', model: 'gemini-2.5-pro', state: 'failed', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 120, createdAt: at(10, 9) },
    { ...base, orgId: orgs.a, jobId: `${tag}-1`, attempt: 2, agent: 'RiskAnalyzer', model: 'gemini-2.5-pro', inputTokens: 1200, outputTokens: 340, costUsd: 0.0049, durationMs: 850, createdAt: at(10, 9) },
    { ...base, orgId: orgs.a, jobId: `${tag}-2`, attempt: 1, agent: 'RiskAnalyzer', model: 'gemini-2.5-pro', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 12, cacheHit: 'l1', createdAt: at(11, 14) },
    { ...base, orgId: orgs.a, jobId: `${tag}-3`, attempt: 1, agent: 'DealScorer', model: 'gemini-2.5-flash', inputTokens: 800, outputTokens: 150, costUsd: 0.000615, durationMs: 430, createdAt: at(11, 15) },
    { ...base, orgId: orgs.a, jobId: `${tag}-4`, attempt: 1, agent: 'DealScorer', model: 'gemini-2.5-flash', inputTokens: 640, outputTokens: 90, costUsd: 0.000417, durationMs: 390, createdAt: at(12, 8) },
    { ...base, orgId: orgs.b, jobId: `${tag}-5`, attempt: 1, agent: 'TaskGenerator', model: 'gemini-2.5-pro', inputTokens: 3000, outputTokens: 900, costUsd: 0.01275, durationMs: 2100, createdAt: at(11, 10) },
    { ...base, orgId: orgs.b, jobId: `${tag}-6`, attempt: 1, agent: 'TaskGenerator', model: 'gemini-2.5-pro', inputTokens: 0, outputTokens: 0, costUsd: 0, durationMs: 9, cacheHit: 'semantic', createdAt: at(12, 11) },
    // Outside the window: never counted.
    { ...base, orgId: orgs.a, jobId: `${tag}-7`, attempt: 1, agent: 'RiskAnalyzer', model: 'gemini-2.5-pro', inputTokens: 99_999, outputTokens: 99_999, costUsd: 99, durationMs: 99_999, createdAt: at(13, 1) },
  ];
  await runs.recordMany(rows);
}
