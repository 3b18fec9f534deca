-- expect: refused: disable the registry's triggers
-- execution: refused
-- reason: line 4: acts on tenancy.tenants
ALTER TABLE tenancy.tenants DISABLE TRIGGER ALL;
