-- expect: refused: drop a kit function
-- execution: refused
-- reason: line 4: acts on tenancy.current_tenant_id
DROP FUNCTION tenancy.current_tenant_id();
