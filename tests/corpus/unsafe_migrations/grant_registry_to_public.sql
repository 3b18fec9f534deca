-- expect: refused: grant the registry to PUBLIC
-- execution: refused
-- reason: line 4: acts on tenancy.tenants
GRANT SELECT, UPDATE ON tenancy.tenants TO PUBLIC;
