import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { usageSinkGroup, usageStreamKey } from '../../src/shared/core/queue-keys.js';
import type { AgentRun } from '../../src/shared/infra/db/agent-runs.js';
import { migrate } from '../../src/shared/infra/db/migrate.js';
import { createPool } from '../../src/shared/infra/db/pool.js';
import { createRunAppender } from '../../src/shared/infra/db/run-stream.js';
import { databaseUrl, randomOrg, randomPrefix, redisUrl } from '../helpers/env.js';
import { until, waitsTimeout } from '../helpers/wait.js';
import { exitGuard, exitWithin } from '../helpers/processes.js';
import { nodeArgsFor } from '../helpers/transpiled.js';

/** The victim's run to its kill point; the rescuer's close on SIGTERM; the stream's emptying. Past each, the wait fails naming it. */
const SELF_KILL_MS = 60_000;
const RESCUER_EXIT_MS = 30_000;
const POLL_MS = 60_000;

const row = (orgId: string, jobId: string): AgentRun => ({
  jobId,
  attempt: 1,
  orgId,
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  model: 'gemini-2.5-pro',
  state: 'completed',
  inputTokens: 10,
  outputTokens: 20,
  costUsd: 0.0001,
  durationMs: 5,
});

/**
 * Run sinks as real processes SIGKILLed at exact points of a batch (the fixture kills itself there): the
 * usage rows they held are written by the next sink, each exactly once.
 */
describe('usage rows under a killed sink', () => {
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  let pool: pg.Pool;
  const children: Array<ReturnType<typeof spawn>> = [];

  beforeAll(async () => {
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    redis.disconnect();
    await pool.end();
  });

  function startSink(key: string, killAt: string, claimIdleMs: number) {
    const child = spawn(process.execPath, nodeArgsFor('test/fixtures/usage-sink-process.ts'), {
      env: { ...process.env, REDIS_URL: redisUrl(), DATABASE_URL: databaseUrl(), USAGE_KEY: key, USAGE_GROUP: usageSinkGroup, CONSUMER: `sink-${randomUUID().slice(0, 8)}`, CLAIM_IDLE_MS: String(claimIdleMs), KILL_AT: killAt },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    const points: string[] = [];
    createInterface({ input: child.stdout! }).on('line', (l) => {
      try {
        const j = JSON.parse(l) as { at?: string };
        if (j.at) points.push(j.at);
      } catch {
        // not a line of ours
      }
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('close', (_code, signal) => resolve(signal)));
    return { child, points, exited };
  }

  const rowsOf = async (ids: string[]) =>
    (await pool.query<{ job_id: string; n: number }>('SELECT job_id, count(*)::int AS n FROM agent_runs WHERE job_id = ANY($1) GROUP BY job_id', [ids])).rows;

  for (const killAt of ['read', 'committed'] as const) {
    it(`SIGKILL after the batch is ${killAt === 'read' ? 'read, before its commit' : 'committed, before its XACK'}: the next sink writes every row exactly once`, async () => {
      const key = usageStreamKey(randomPrefix());
      const org = randomOrg();
      const ids = Array.from({ length: 50 }, (_, i) => `usage-kill-${killAt}-${i}-${randomUUID().slice(0, 6)}`);
      const appender = createRunAppender({ redis, key });
      for (const id of ids) await appender.record(row(org, id));

      const victim = startSink(key, killAt, 60_000);
      expect(await exitWithin(victim, SELF_KILL_MS, 'the victim sink killing itself')).toBe('SIGKILL');
      expect(victim.points.at(-1)).toBe(killAt);
      // Every entry is still pending under the dead consumer; the rows are in Postgres only if it committed.
      const [pendingCount] = (await redis.xpending(key, usageSinkGroup)) as [number];
      expect(pendingCount).toBe(ids.length);
      expect((await rowsOf(ids)).length).toBe(killAt === 'committed' ? ids.length : 0);

      // A sink that takes over entries idle for 1 ms: the dead consumer's are all older than that.
      const rescuer = startSink(key, '', 1);
      await until('the stream emptied by the rescuer', async () => (await redis.xlen(key)) === 0, POLL_MS);
      const rows = await rowsOf(ids);
      expect(rows.length).toBe(ids.length);
      expect(rows.every((r) => r.n === 1)).toBe(true);
      expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
      rescuer.child.kill('SIGTERM');
      expect(await exitWithin(rescuer, RESCUER_EXIT_MS, 'the rescuer closing on SIGTERM')).toBeNull();
    }, waitsTimeout(exitGuard(SELF_KILL_MS), POLL_MS, exitGuard(RESCUER_EXIT_MS)));
  }
});
