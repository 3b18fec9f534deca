-- pgtenancy — uninstall: remove the tenancy schema and everything in it.
--
-- Guarded shared tables get their row-level security removed (data kept).
-- Refuses (PT009) while tenants are registered, because their schemas would
-- be orphaned, unless the transaction sets pgtenancy.drop_tenants = 'on', in
-- which case every tenant schema is dropped first.

DO $$
DECLARE
    v_count  bigint;
    v_schema text;
BEGIN
    IF pg_catalog.to_regclass('tenancy.tenants') IS NULL THEN
        RETURN;
    END IF;
    -- Guarded shared tables keep their data and lose their policy: without
    -- the kit, FORCE ROW LEVEL SECURITY and no policy would hide every row.
    IF pg_catalog.to_regclass('tenancy.guarded_tables') IS NOT NULL THEN
        PERFORM tenancy.forget_dropped_tables();
        PERFORM tenancy.disable_rls(g.table_name)
           FROM tenancy.guarded_tables AS g;
    END IF;
    EXECUTE 'SELECT count(*) FROM tenancy.tenants' INTO v_count;
    IF v_count = 0 THEN
        RETURN;
    END IF;
    IF coalesce(pg_catalog.current_setting('pgtenancy.drop_tenants', true), '') <> 'on' THEN
        RAISE EXCEPTION '% tenants are registered; uninstalling would orphan their schemas', v_count
            USING ERRCODE = 'PT009',
                  HINT = 'Drop the tenants first, or uninstall with --drop-tenants to drop their schemas too.';
    END IF;
    FOR v_schema IN EXECUTE 'SELECT schema_name FROM tenancy.tenants WHERE schema_name IS NOT NULL' LOOP
        EXECUTE pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', v_schema);
    END LOOP;
END
$$;

DROP SCHEMA IF EXISTS tenancy CASCADE;
