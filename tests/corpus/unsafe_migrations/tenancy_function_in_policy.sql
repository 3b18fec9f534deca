-- expect: allowed: an RLS policy calling tenancy.current_tenant_id()
-- execution: allowed
-- passes the gate
CREATE TABLE t (id int, tenant uuid);
CREATE POLICY own ON t USING (tenant = tenancy.current_tenant_id());
