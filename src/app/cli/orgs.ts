import { parseArgs } from 'node:util';
import { Queue } from 'bullmq';
import { config } from '../../shared/core/config.js';
import { AgentqError } from '../../shared/core/errors.js';
import { queueShards } from '../../shared/core/queue-shards.js';
import { QUEUE } from '../../shared/core/queue-names.js';
import { fairKickChannel } from '../../shared/core/queue-keys.js';
import { zodDetails } from '../../shared/core/zod-details.js';
import { createFairSchedulerFromConfig } from '../../shared/fair/from-config.js';
import { ORG_ID, orgPlanChangeSchema, type OrgPlanChangeInput } from '../../shared/fair/org-plan-schema.js';
import { changeOrgPlan } from '../../shared/fair/org-plans-sync.js';
import type { FairScheduler } from '../../shared/fair/index.js';
import { migrate } from '../../shared/infra/db/migrate.js';
import { createOrgPlanStore, type OrgPlanStore } from '../../shared/infra/db/org-plans.js';
import { dbTimeoutsOf } from '../../shared/infra/db/pool.js';
import { openSharedDatabase } from '../../shared/infra/db/shared-embedded.js';
import { createRedis, logConnectionErrors, redisTargetOf, whenReady } from '../../shared/infra/redis/connection.js';
import { followShardLayout } from '../../shared/queue/shard-layout.js';
import { createCliLogger, runCliIfMain, shardsGiven } from './run-cli.js';

const USAGE = `usage:
  npm run orgs -- set ORG [--weight N] [--concurrency N] [--rpm-pro N] [--rpm-flash N] [--tpm N]
                          [--daily-jobs N] [--monthly-usd N]     (a value "default" clears the org's own)
  npm run orgs -- show ORG`;

export class UsageError extends AgentqError {
  constructor(message: string) {
    super(message, 'EUSAGE');
  }
}

export type OrgsCommand = { cmd: 'set'; orgId: string; change: OrgPlanChangeInput } | { cmd: 'show'; orgId: string };

const FLAGS = {
  weight: 'weight',
  concurrency: 'concurrency',
  'rpm-pro': 'rpmPro',
  'rpm-flash': 'rpmFlash',
  tpm: 'tpm',
  'daily-jobs': 'dailyJobLimit',
  'monthly-usd': 'monthlyBudgetUsd',
} as const;

export function parseOrgsArgs(argv: string[]): OrgsCommand {
  const [cmd, ...rest] = argv;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: 'string' as const }])),
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (cmd !== 'set' && cmd !== 'show') throw new UsageError(cmd ? `unknown command ${cmd}` : 'missing command');
  if (positionals.length !== 1) throw new UsageError(`${cmd} takes exactly one ORG`);
  const orgId = positionals[0];
  if (!ORG_ID.test(orgId)) throw new UsageError('ORG may only contain letters, digits and _ . : - (max 128)');
  if (cmd === 'show') {
    if (Object.keys(values).length) throw new UsageError('show takes no options');
    return { cmd, orgId };
  }
  const raw: Record<string, number | null> = {};
  for (const [flag, field] of Object.entries(FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    if (v === 'default') raw[field] = null;
    else if (/^\d+(\.\d+)?$/.test(v)) raw[field] = Number(v);
    else throw new UsageError(`--${flag} must be a number or "default", got "${v}"`);
  }
  if (!Object.keys(raw).length) throw new UsageError('set needs at least one option');
  const checked = orgPlanChangeSchema.safeParse(raw);
  if (!checked.success) {
    const d = zodDetails(checked.error)[0];
    const flag = Object.entries(FLAGS).find(([, f]) => f === d.path)?.[0] ?? d.path;
    throw new UsageError(`--${flag}: ${d.message}`);
  }
  return { cmd, orgId, change: checked.data };
}

/** Runs one command; returns the exit code. Output is JSON, so scripts can read it. */
export async function runOrgs(
  c: OrgsCommand,
  deps: { plans: OrgPlanStore; scheduler: Pick<FairScheduler, 'setPlan' | 'orgStats'>; dispatch?: () => Promise<unknown> },
  io: { out: (s: string) => void; err: (s: string) => void },
): Promise<number> {
  if (c.cmd === 'set') await changeOrgPlan(deps, c.orgId, c.change);
  const stored = await deps.plans.get(c.orgId);
  if (!stored) {
    io.err(`org ${c.orgId} has no plan of its own (defaults apply)\n`);
  }
  const stats = await deps.scheduler.orgStats(c.orgId);
  io.out(`${JSON.stringify({ org: c.orgId, own: stored ?? {}, effective: stats.plan, waiting: stats.waiting + stats.backoff, inFlight: stats.inFlight }, null, 2)}\n`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  let command: OrgsCommand;
  try {
    command = parseOrgsArgs(argv);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const cfg = config();
  const logger = createCliLogger(cfg);
  const db = await openSharedDatabase({ databaseUrl: cfg.DATABASE_URL, dataDir: cfg.DATA_DIR, pglitePort: cfg.PGLITE_PORT, pgliteSharedBuffers: cfg.PGLITE_SHARED_BUFFERS, pglitePrewarm: false, logger, timeouts: dbTimeoutsOf(cfg) });
  const redis = createRedis(redisTargetOf(cfg), 'api', { commandTimeout: cfg.REDIS_COMMAND_TIMEOUT_MS });
  let queue: Queue | undefined;
  try {
    await whenReady(redis);
    const shards = await followShardLayout({ redis, prefix: cfg.QUEUE_PREFIX, shards: shardsGiven(cfg) });
    // The org's plan is read by the dispatcher of its own queue shard.
    const prefix = queueShards(cfg.QUEUE_PREFIX, shards).prefixOf(command.orgId);
    queue = new Queue(QUEUE.agent, { connection: redis, prefix });
    logConnectionErrors(queue, logger, 'agent queue');
    await migrate(db.longPool, { logger });
    const scheduler = createFairSchedulerFromConfig({ redis, queue, cfg, prefix, shards });
    // Like the direct producer, the CLI does not dispatch with its own copy of the limits: it asks the workers.
    const dispatch = () => redis.spublish(fairKickChannel(prefix), '1');
    return await runOrgs(command, { plans: createOrgPlanStore({ pool: db.pool }), scheduler, dispatch }, {
      out: (s) => process.stdout.write(s),
      err: (s) => process.stderr.write(s),
    });
  } catch (err) {
    process.stderr.write(`orgs ${command.cmd} failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await queue?.close();
    redis.disconnect();
    await db.close();
  }
}

runCliIfMain(import.meta.url, main);
