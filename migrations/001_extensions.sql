-- pgvector powers retrieval and the semantic cache. gen_random_uuid() is built in since Postgres 13.
CREATE EXTENSION IF NOT EXISTS vector;
