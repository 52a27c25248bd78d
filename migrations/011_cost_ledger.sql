-- The cost ledger: which service tier each attempt was billed at, the token breakdown that prices it
-- (cached input at its discount, thinking tokens at the output price), and what the same tokens would have
-- cost on the standard tier, so savings are a sum, not a guess. Old rows are standard-tier by definition.
ALTER TABLE agent_runs ADD COLUMN tier text NOT NULL DEFAULT 'standard'
  CHECK (tier IN ('standard', 'flex', 'batch', 'priority'));
ALTER TABLE agent_runs ADD COLUMN cached_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN thoughts_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN standard_cost_usd numeric(12, 8) NULL;
