-- expect: refused: rename a schema
-- execution: refused
-- reason: line 4: ALTER SCHEMA ... RENAME: not a tenant object
ALTER SCHEMA tenant_acme RENAME TO tenant_gone;
