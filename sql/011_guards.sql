-- pgtenancy — 011: guards that follow the registry and the DDL.
--
-- A suspended or deleted schema tenant loses every application role's
-- privileges on its schema as its status changes (grant_schema_to_app_roles
-- revokes for a tenant that is not active), and gets them back on resume.
-- Partitions and inheritance children attached to a guarded table later
-- are guarded as they appear (an event trigger, installed by a superuser),
-- or their DDL is refused.

CREATE OR REPLACE FUNCTION tenancy.tenants_sync_grants()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    IF tenancy.restoring() OR NEW.schema_name IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status)
       OR (TG_OP = 'INSERT' AND NEW.status = 'active')
       OR to_regnamespace(quote_ident(NEW.schema_name)) IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM tenancy.grant_schema_to_app_roles(NEW.schema_name);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_sync_grants() IS
    'Trigger: when a schema tenant''s status changes (or it is created in a status other than '
    'active), grant its schema to the application roles when active, revoke every privilege on '
    'it otherwise.';

CREATE OR REPLACE TRIGGER tenants_sync_grants
    AFTER INSERT OR UPDATE OF status ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_sync_grants();

REVOKE ALL ON FUNCTION tenancy.tenants_sync_grants() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.guard_new_children()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r         record;
    v_touched oid[];
BEGIN
    -- enable_rls runs DDL itself, which fires this trigger again; the
    -- setting lives only inside this call (the SET clause scopes it).
    IF current_setting('pgtenancy.guarding_children', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM set_config('pgtenancy.guarding_children', 'on', true);
    SELECT coalesce(array_agg(c.objid), '{}'::oid[]) INTO v_touched
      FROM pg_event_trigger_ddl_commands() AS c
     WHERE c.classid = 'pg_class'::regclass;
    FOR r IN
        SELECT i.inhrelid::regclass AS child, g.tenant_column
          FROM tenancy.guarded_tables AS g
          JOIN pg_inherits AS i ON i.inhparent = g.table_name
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS c WHERE c.table_name = i.inhrelid)
         ORDER BY i.inhrelid
    LOOP
        -- A child that cannot be guarded (another owner, a foreign table)
        -- fails here, and with it the DDL that attached it.
        PERFORM tenancy.enable_rls(r.child, r.tenant_column);
    END LOOP;
    -- A guarded table put under a parent that is not guarded (INHERIT,
    -- ATTACH PARTITION into it) shows its rows to every tenant through the
    -- parent: refused. Only where this command touched either table, so
    -- that such a pair left from before (the doctor reports it) does not
    -- make all later DDL fail.
    FOR r IN
        SELECT i.inhrelid::regclass AS child, i.inhparent::regclass AS parent
          FROM pg_inherits AS i
          JOIN tenancy.guarded_tables AS g ON g.table_name = i.inhrelid
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS p WHERE p.table_name = i.inhparent)
           AND (i.inhrelid = ANY (v_touched) OR i.inhparent = ANY (v_touched))
         ORDER BY i.inhrelid
    LOOP
        RAISE EXCEPTION 'guarded table % cannot become a partition or inheritance child of %, '
                        'which is not guarded: read through it, its rows would show to every tenant',
                        r.child, r.parent
            USING ERRCODE = 'PT014',
                  HINT = 'Guard the parent first (SELECT tenancy.enable_rls(...)).';
    END LOOP;
    -- An owner can switch row-level security off: a guarded table this
    -- command gave to an application role (or a role it is a member of)
    -- is refused, as enable_rls refuses such a table.
    FOR r IN
        SELECT g.table_name, a.role_name
          FROM tenancy.guarded_tables AS g
          JOIN pg_class AS c ON c.oid = g.table_name
          JOIN tenancy.app_roles AS a ON true
          JOIN pg_roles AS o ON o.rolname = a.role_name
         WHERE g.table_name = ANY (v_touched) AND pg_has_role(o.oid, c.relowner, 'MEMBER')
         ORDER BY g.table_name, a.role_name
    LOOP
        RAISE EXCEPTION 'application role % would own guarded table % (or be a member of its '
                        'owner): it could switch row-level security off', quote_ident(r.role_name),
                        r.table_name
            USING ERRCODE = 'PT014',
                  HINT = 'Leave guarded tables to the kit''s owner.';
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.guard_new_children() IS
    'Event trigger (ddl_command_end of CREATE TABLE, ALTER TABLE and their FOREIGN TABLE forms): '
    'guard with enable_rls every partition or inheritance child of a guarded table that is not '
    'guarded yet (CREATE TABLE ... PARTITION OF, ATTACH PARTITION, INHERITS, INHERIT); the DDL '
    'fails (PT014) when one cannot be guarded (a foreign table, another owner), when it puts a '
    'guarded table under a parent that is not guarded, or when it gives a guarded table to an '
    'application role (or a role one is a member of).';

REVOKE ALL ON FUNCTION tenancy.guard_new_children() FROM PUBLIC;

-- Event triggers need a superuser; without one the doctor reports
-- unguarded children (unguarded_child).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RETURN;
    END IF;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_guard_children;
    CREATE EVENT TRIGGER pgtenancy_guard_children ON ddl_command_end
        WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE')
        EXECUTE FUNCTION tenancy.guard_new_children();
END
$$;
