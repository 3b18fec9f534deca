-- expect: warned: drop another tenant via dynamic SQL in a DO block
-- execution: refused
-- warning: DO block runs dynamic SQL
DO $$
BEGIN
    EXECUTE format('DROP SCHEMA %I CASCADE', 'tenant_acme');
END
$$;
