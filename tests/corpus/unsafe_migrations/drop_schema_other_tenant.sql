-- expect: refused: drop another tenant's schema
-- execution: refused
-- reason: line 4: DROP SCHEMA: not a tenant object
DROP SCHEMA tenant_acme CASCADE;
