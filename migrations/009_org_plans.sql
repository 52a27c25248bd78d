-- Per-org scheduling plan for the fair dispatcher. NULL means "the configured default" (ORG_* variables),
-- so changing a default reaches every org that never had its own value.
ALTER TABLE orgs
  ADD COLUMN weight      numeric(8, 3) NULL CHECK (weight IS NULL OR weight > 0),
  ADD COLUMN concurrency integer NULL CHECK (concurrency IS NULL OR concurrency >= 1),
  ADD COLUMN rpm_pro     integer NULL CHECK (rpm_pro IS NULL OR rpm_pro >= 0),
  ADD COLUMN rpm_flash   integer NULL CHECK (rpm_flash IS NULL OR rpm_flash >= 0),
  ADD COLUMN tpm         integer NULL CHECK (tpm IS NULL OR tpm >= 0);
