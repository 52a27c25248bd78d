-- What of an action's input besides its free text decides the answer (the action's `semanticScope`: which
-- startup a question is about, which knowledge tables it may draw on): a lookup compares only entries with the
-- same one. Without it a question about one startup (or with chat facts) could be answered from a near-identical
-- one about another (or without them). Rows stored before this migration have none ('').
ALTER TABLE semantic_cache ADD COLUMN input_scope text NOT NULL DEFAULT '';
DROP INDEX semantic_cache_scope_idx;
CREATE INDEX semantic_cache_scope_idx ON semantic_cache (org_id, agent, action, model, prompt_version, input_scope);
