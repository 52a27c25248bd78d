-- Embedding calls an attempt made (its semantic cache lookup or store, its prompt's knowledge search) ride on the
-- attempt's own row: Gemini's embedContent / batchEmbedContents answers carry no usage metadata, so their tokens
-- are ESTIMATED locally (estimateTextTokens: about 4 characters per token) and priced at the embedding model's
-- input price. `embedding_estimated` says so on every row that has any; cost_usd stays what Gemini billed the
-- attempt's model calls (from their usageMetadata), so the estimate never mixes into the exact figures.
ALTER TABLE agent_runs ADD COLUMN embedding_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN embedding_cost_usd numeric(12, 8) NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN embedding_estimated boolean NOT NULL DEFAULT false;
