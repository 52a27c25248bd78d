import type { Config } from '../core/config.js';
import { migrate } from './db/migrate.js';
import type { Database } from './db/pool.js';
import { openSharedDatabase } from './db/shared-embedded.js';
import type { Logger } from '../core/logger.js';
import { assertNoEviction, createRedis, ensureRedis, whenReady } from './redis/connection.js';

export interface Infra {
  redisUrl: string;
  db: Database;
  close(): Promise<void>;
}

/** Redis (started as a child if allowed and needed, refused unless noeviction) and Postgres (migrated). */
export async function openInfra(cfg: Config, logger: Logger): Promise<Infra> {
  const child = await ensureRedis({ url: cfg.REDIS_URL, autostart: cfg.REDIS_AUTOSTART, dataDir: cfg.DATA_DIR, logger });
  const probe = createRedis(cfg.REDIS_URL, 'api');
  try {
    await whenReady(probe);
    await assertNoEviction(probe);
  } finally {
    probe.disconnect();
  }
  const db = await openSharedDatabase({ databaseUrl: cfg.DATABASE_URL, dataDir: cfg.DATA_DIR, pglitePort: cfg.PGLITE_PORT, logger });
  try {
    await migrate(db.pool, { logger });
  } catch (err) {
    await db.close();
    await child?.stop();
    throw err;
  }
  return {
    redisUrl: cfg.REDIS_URL,
    db,
    async close() {
      await db.close();
      await child?.stop();
    },
  };
}
