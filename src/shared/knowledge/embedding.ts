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

/** The text form pg sends for a `$n::vector` parameter. */
export const toVectorSql = (v: number[]): string => pgvector.toSql(v) as string;
