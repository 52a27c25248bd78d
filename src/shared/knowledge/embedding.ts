import pgvector from 'pgvector';

/** Dimensions of every vector column (gemini-embedding-001 asked for outputDimensionality 768). */
export const EMBEDDING_DIM = 768;

/** Texts in, one vector per text out, same order. */
export type EmbedFn = (texts: string[]) => Promise<number[][]>;

export class EmbeddingError extends Error {
  readonly code = 'EEMBEDDING';
  override name = 'EmbeddingError';
}

/** Calls `embed` and checks what came back, so a misconfigured model fails loudly instead of in SQL. */
export async function embedChecked(embed: EmbedFn, texts: string[]): Promise<number[][]> {
  const vectors = await embed(texts);
  if (!Array.isArray(vectors) || vectors.length !== texts.length) {
    throw new EmbeddingError(`embed returned ${Array.isArray(vectors) ? vectors.length : 'no'} vectors for ${texts.length} texts`);
  }
  for (const v of vectors) {
    if (!Array.isArray(v) || v.length !== EMBEDDING_DIM) {
      throw new EmbeddingError(`embedding has ${Array.isArray(v) ? v.length : 'no'} dimensions, expected ${EMBEDDING_DIM}`);
    }
  }
  return vectors;
}

/** The text form of a vector (a SQL literal, or a parameter where binary is not wanted). */
export const toVectorSql = (v: number[]): string => pgvector.toSql(v) as string;

/**
 * A `$n::vector` parameter in pgvector's binary form (its vector_recv: int16 dimensions, int16 zero, then
 * float4 big-endian each), which `pg` sends as a binary parameter because it is a Buffer. The server then
 * skips parsing the decimal text of a dense embedding (768 numbers, ~7 KB): `SELECT vector_dims($1::vector)`
 * through the embedded PGlite's socket, p50 0.486 ms binary against 1.801 ms text (bench case `vectors`).
 * Rounding to float4 is the text path's (both round to nearest); the server refuses NaN either way.
 * pgvector's npm package has no binary encoder for pg, hence this one.
 */
export function toVectorParam(v: number[]): Buffer {
  const buf = Buffer.allocUnsafe(4 + 4 * v.length);
  buf.writeInt16BE(v.length, 0);
  buf.writeInt16BE(0, 2);
  for (let i = 0; i < v.length; i++) buf.writeFloatBE(v[i], 4 + 4 * i);
  return buf;
}
