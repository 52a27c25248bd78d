import { Redis } from 'ioredis';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { databaseUrl, redisUrl } from './helpers/env.js';

describe('test harness', () => {
  it('reaches its own redis-server with noeviction', async () => {
    const redis = new Redis(redisUrl());
    const [, policy] = (await redis.config('GET', 'maxmemory-policy')) as string[];
    expect(policy).toBe('noeviction');
    await redis.quit();
  });

  it('reaches PGlite with pgvector through the pg driver', async () => {
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    const { rows } = await pool.query(`select '[1,0]'::vector <=> '[0,1]'::vector as d`);
    expect(rows[0].d).toBeCloseTo(1);
    await pool.end();
  });
});
