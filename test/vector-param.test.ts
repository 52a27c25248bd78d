import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toVectorParam, toVectorSql } from '../src/shared/knowledge/embedding.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { databaseUrl } from './helpers/env.js';

describe('binary vector parameters (toVectorParam)', () => {
  let pool: pg.Pool;
  beforeAll(() => {
    pool = createPool(databaseUrl(), { max: 1 });
  });
  afterAll(() => pool.end());

  it('reach pgvector as the same vector the text form gives, rounded to float4', async () => {
    const v = Array.from({ length: 768 }, (_, i) => Math.sin(i * 0.37) / 7 + (i % 5 === 0 ? 1e-9 : 0));
    const { rows } = await pool.query<{ bin: string; txt: string; dims: number }>(
      'SELECT $1::vector::text AS bin, $2::vector::text AS txt, vector_dims($1::vector) AS dims',
      [toVectorParam(v), toVectorSql(v)],
    );
    expect(rows[0].dims).toBe(768);
    expect(rows[0].bin).toBe(rows[0].txt);
    // pgvector prints the shortest decimal of each float4: read back as float4, every element is v's, rounded.
    expect((JSON.parse(rows[0].bin) as number[]).map((x) => Math.fround(x))).toEqual(v.map((x) => Math.fround(x)));
  });

  it('is refused by the server like the text form: wrong dimensions for the column, NaN', async () => {
    await expect(pool.query('SELECT $1::vector(768)', [toVectorParam([0.1, 0.2, 0.3])])).rejects.toThrow(/expected 768 dimensions, not 3/);
    await expect(pool.query('SELECT $1::vector', [toVectorParam([0.1, Number.NaN])])).rejects.toThrow(/NaN not allowed in vector/);
  });
});
