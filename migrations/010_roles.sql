-- Three roles instead of member | admin (README "Roles"). An old `admin` key was an org's key that could also
-- reach every org's data; it becomes that org's `org-admin`. Platform access is the new `operator` role,
-- whose keys belong to no org: org_id is NULL exactly for operator keys.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
UPDATE api_keys SET role = 'org-admin' WHERE role = 'admin';
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('member', 'org-admin', 'operator'));
ALTER TABLE api_keys ALTER COLUMN org_id DROP NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_org_by_role CHECK ((role = 'operator') = (org_id IS NULL));
