-- A playbook's external id is unique within its scope (one org's, or the shared rows: org_id NULL), as chat facts'
-- are: unique across every org, one org's "onboarding" kept every other org, and the operator, from ingesting
-- theirs. NULLS NOT DISTINCT (PostgreSQL 15+) keeps the shared rows' ids unique among themselves too; the upsert
-- names (org_id, external_id) as its conflict target.
ALTER TABLE playbooks DROP CONSTRAINT playbooks_external_id_key;
ALTER TABLE playbooks ADD CONSTRAINT playbooks_org_external_id_key UNIQUE NULLS NOT DISTINCT (org_id, external_id);
