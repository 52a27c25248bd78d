import type { Config } from '../core/config.js';
import { migrate } from './db/migrate.js';
import { dbTimeoutsOf, type Database } from './db/pool.js';
import { openSharedDatabase } from './db/shared-embedded.js';
import type { Logger } from '../core/logger.js';
import { assertNoEviction, createRedis, ELECTION_MARGIN_MS, ensureRedis, lockShorterThanFailover, redisTargetOf, whenReady, type RedisTarget } from './redis/connection.js';

export interface Infra {
  /** Where Redis is (a URL or a cluster): every connection is made from it with createRedis. */
  redisTarget: RedisTarget;
  db: Database;
  close(): Promise<void>;
}

/** Redis (started as a child if allowed and needed, refused unless noeviction) and Postgres (migrated). */
export async function openInfra(cfg: Config, logger: Logger): Promise<Infra> {
  const target = redisTargetOf(cfg);
  const child = await ensureRedis({ target, autostart: cfg.REDIS_AUTOSTART, dataDir: cfg.DATA_DIR, logger });
  const probe = createRedis(target, 'api', { commandTimeout: cfg.REDIS_COMMAND_TIMEOUT_MS });
  try {
    await whenReady(probe);
    await assertNoEviction(probe);
    const short = await lockShorterThanFailover(probe, cfg.LOCK_DURATION_MS);
    if (short.length) {
      // Not refused: a double run costs a model call, not data; the operator decides.
      logger.error(
        { lockDurationMs: cfg.LOCK_DURATION_MS, nodes: short, electionMarginMs: ELECTION_MARGIN_MS },
        'LOCK_DURATION_MS is shorter than a failover of these cluster primaries (cluster-node-timeout + election): jobs running when one fails can run twice. Raise LOCK_DURATION_MS.',
      );
    }
  } finally {
    probe.disconnect();
  }
  const db = await openSharedDatabase({ databaseUrl: cfg.DATABASE_URL, dataDir: cfg.DATA_DIR, pglitePort: cfg.PGLITE_PORT, pgliteSharedBuffers: cfg.PGLITE_SHARED_BUFFERS, pglitePrewarm: cfg.PGLITE_PREWARM, logger, timeouts: dbTimeoutsOf(cfg) });
  try {
    await migrate(db.longPool, { logger });
  } catch (err) {
    await db.close();
    await child?.stop();
    throw err;
  }
  return {
    redisTarget: target,
    db,
    async close() {
      await db.close();
      await child?.stop();
    },
  };
}
