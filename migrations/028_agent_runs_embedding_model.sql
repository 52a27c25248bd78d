-- An attempt's row names its chat call's model only; `/v1/usage?groupBy=model` showed the row's embedding calls
-- under the embedding model configured when it READ them (GEMINI_EMBEDDING_MODEL), so a change of that model moved
-- every older row's embedding spend to the new model. The worker now records the model it embedded with on the
-- row, beside its embedding columns (migration 023), and the split reads it. NULL for rows written before (and for
-- rows with no embedding call): those fall back to the configured model, as before. An ingest's or a search's row
-- names the embedding model as its `model` already.
ALTER TABLE agent_runs ADD COLUMN embedding_model text;
