-- expect: refused: suspend every tenant via UPDATE tenancy.tenants
-- execution: refused
-- reason: line 4: writes tenancy.tenants
UPDATE tenancy.tenants SET status = 'suspended';
