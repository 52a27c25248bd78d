import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres } from '../../src/shared/infra/db/embedded-postgres.js';
import { startRedisServer } from '../../src/shared/infra/redis/redis-server.js';
import { transpileForTests } from './transpiled.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    databaseUrl: string;
    /** A dump of a fresh embedded data dir (vector extension created), for `freshEmbeddedPostgres`; unset with DATABASE_URL. */
    pgDump: string | undefined;
    /** The transpiled tree spawned processes run (`transpiled.ts`); unset with AGENTQ_TEST_TSX=1. */
    transpiledRoot: string | undefined;
  }
}

/**
 * One redis-server on a free port and one PGlite (temp dir) for the whole run, unless REDIS_URL /
 * DATABASE_URL are given. Test files isolate themselves with random queue prefixes and org ids.
 */
export default async function setup(project: TestProject) {
  const stops: Array<() => Promise<void>> = [];
  let redisUrl = process.env.REDIS_URL;
  if (!redisUrl) {
    const redis = await startRedisServer();
    redisUrl = redis.url;
    stops.push(redis.stop);
  }
  let databaseUrl = process.env.DATABASE_URL;
  let pgDump: string | undefined;
  if (!databaseUrl) {
    const dir = mkdtempSync(join(tmpdir(), 'agentq-pg-'));
    const pg = await startEmbeddedPostgres({ dataDir: dir });
    // Dumped while still fresh (nothing has connected): files that need a database of their own start from it
    // instead of running initdb again (test/helpers/fresh-embedded.ts).
    const dumpFile = `${dir}-fresh.tar`;
    writeFileSync(dumpFile, Buffer.from(await (await pg.db.dumpDataDir('none')).arrayBuffer()));
    pgDump = dumpFile;
    databaseUrl = pg.url;
    stops.push(async () => {
      await pg.stop();
      rmSync(dir, { recursive: true, force: true });
      rmSync(dumpFile, { force: true });
    });
  }
  // AGENTQ_TEST_TSX=1 runs the spawned processes through tsx instead, as `npm run worker` does.
  let transpiledRoot: string | undefined;
  if (process.env.AGENTQ_TEST_TSX !== '1') {
    const dir = mkdtempSync(join(tmpdir(), 'agentq-transpiled-'));
    transpiledRoot = transpileForTests(dir);
    stops.push(async () => rmSync(dir, { recursive: true, force: true }));
  }
  project.provide('transpiledRoot', transpiledRoot);
  process.env.REDIS_URL = redisUrl;
  process.env.DATABASE_URL = databaseUrl;
  project.provide('redisUrl', redisUrl);
  project.provide('databaseUrl', databaseUrl);
  project.provide('pgDump', pgDump);
  return async () => {
    for (const stop of stops.reverse()) await stop();
  };
}
