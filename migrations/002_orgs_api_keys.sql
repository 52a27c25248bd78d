CREATE TABLE orgs (
  id                 text PRIMARY KEY,
  name               text NOT NULL,
  rate_plan          text NOT NULL DEFAULT 'general',
  daily_job_limit    integer NULL CHECK (daily_job_limit IS NULL OR daily_job_limit >= 0),
  monthly_budget_usd numeric(12, 4) NULL CHECK (monthly_budget_usd IS NULL OR monthly_budget_usd >= 0),
  created_at         timestamptz NOT NULL DEFAULT now()
);

-- Only the sha256 of a key is kept; the key itself is shown once at creation and never stored.
CREATE TABLE api_keys (
  id         text PRIMARY KEY,
  org_id     text NOT NULL REFERENCES orgs (id),
  role       text NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
  key_hash   text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
  prefix     text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz NULL
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id);
