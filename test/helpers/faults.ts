import type pg from 'pg';
import type { Stack } from './stack.js';
import { TEST_ENV } from './stack.js';
import { expect, vi } from 'vitest';
import { usageWritten } from './usage.js';
import { POLL } from './wait.js';

/** Model limits far above what a fault test sends, so the rate limiter never paces the scenario being measured. */
export const UNTHROTTLED = {
  MODEL_LIMITS: JSON.stringify(Object.fromEntries(['gemini-2.5-pro', 'gemini-2.5-flash'].map((m) => [m, { rpm: 1e6, tpm: 1e9, orgRpm: 1e6 }]))),
};

/** Environment for `spawnAgentq` pointed at a stack's Redis, database, queue prefix and emulator. */
export function processEnv(s: Stack, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...TEST_ENV,
    REDIS_URL: s.cfg.REDIS_URL,
    DATABASE_URL: s.cfg.DATABASE_URL!,
    QUEUE_PREFIX: s.cfg.QUEUE_PREFIX,
    GEMINI_API_KEY: 'test-key-not-real',
    GOOGLE_GEMINI_BASE_URL: s.emulator.url,
    ...UNTHROTTLED,
    ...extra,
  };
}

/** A RiskAnalyzer request whose prompt contains `marker`, so emulator faults can target it. */
export const riskJob = (marker: string) => ({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: `${marker} Co`, industry: 'logistics' } } });

/**
 * Completed and failed attempts per job id in agent_runs, once every usage row appended so far is written. Counted by
 * attempt, not by row: a run the stalled check handed out again (its lock lapsed in an outage, the first run still
 * going) ends the same attempt with a row of its own (part `stalled:<n>`, migration 026), a second run, not a second
 * completion.
 */
export async function runRows(s: Pick<Stack, 'cfg' | 'infra'>, ids: string[]): Promise<Map<string, { completed: number; failed: number }>> {
  await usageWritten(s);
  const pool: pg.Pool = s.infra.db.pool;
  const { rows } = await pool.query<{ job_id: string; completed: number; failed: number }>(
    `SELECT job_id, count(DISTINCT attempt) FILTER (WHERE state = 'completed')::int AS completed, count(DISTINCT attempt) FILTER (WHERE state = 'failed')::int AS failed
     FROM agent_runs WHERE job_id = ANY($1) GROUP BY job_id`,
    [ids],
  );
  const out = new Map(ids.map((id) => [id, { completed: 0, failed: 0 }]));
  for (const r of rows) out.set(r.job_id, { completed: r.completed, failed: r.failed });
  return out;
}

/** Logs a figure so it can be quoted from the test output. */
export function figure(name: string, value: unknown): void {
  console.log(`[fault figure] ${name}: ${typeof value === 'number' ? Math.round(value * 10) / 10 : JSON.stringify(value)}`);
}

/**
 * Holds a job's model call open (an emulator hang), cancels the job through the API and waits until the
 * worker aborts the call: the cancel (SPUBLISH in the job's shard) reached the worker that holds it.
 */
export async function cancelHeldCall(s: Stack, marker: string): Promise<void> {
  s.emulator.script({ hang: true, match: { promptIncludes: marker } });
  const earlier = s.emulator.calls().filter((c) => c.fault === 'hang').length;
  const hung = () => s.emulator.calls().filter((c) => c.fault === 'hang')[earlier];
  const running = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob(marker) });
  expect(running.statusCode).toBe(202);
  await vi.waitFor(() => expect(hung(), 'the held model call').toBeDefined(), POLL);
  const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${running.json().id}`, headers: s.auth });
  expect(del.json()).toMatchObject({ state: 'cancelling' });
  await vi.waitFor(() => expect(hung()?.aborted, 'the held call aborted by the worker').toBe(true), POLL);
}
