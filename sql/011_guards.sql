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
    -- The DDL of enable_rls and disable_rls (each holds the setting on for
    -- its call) is theirs to get right. A session may set it
    -- too: only owners of guarded tables can run DDL that reaches here, and
    -- they can switch row-level security off anyway.
    IF current_setting('pgtenancy.guarding_children', true) = 'on' THEN
        RETURN;
    END IF;
    -- Most DDL touches neither a guarded table nor a table with a parent or
    -- children: one query tells, and the three checks below (each about
    -- such a table) are skipped. A CREATE TABLE invalidates every cached
    -- plan of the session (its row type), so each query of this function is
    -- planned anew at every call: a tenant's provisioning pays per query.
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() AS c
                    WHERE c.classid = 'pg_class'::regclass
                      AND (EXISTS (SELECT 1 FROM pg_inherits AS i
                                    WHERE i.inhrelid = c.objid OR i.inhparent = c.objid)
                           OR EXISTS (SELECT 1 FROM tenancy.guarded_tables AS g
                                       WHERE g.table_name = c.objid))) THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(c.objid), '{}'::oid[]) INTO v_touched
      FROM pg_event_trigger_ddl_commands() AS c
     WHERE c.classid = 'pg_class'::regclass;
    -- Only pairs this command touched (child or parent), here and below:
    -- one left from before (no trigger then; the doctor reports it) must
    -- not make every later DDL of the database fail.
    FOR r IN
        SELECT i.inhrelid::regclass AS child, g.tenant_column
          FROM tenancy.guarded_tables AS g
          JOIN pg_inherits AS i ON i.inhparent = g.table_name
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS c WHERE c.table_name = i.inhrelid)
           AND (i.inhrelid = ANY (v_touched) OR i.inhparent = ANY (v_touched))
         ORDER BY i.inhrelid
    LOOP
        -- A child that cannot be guarded (another owner, a foreign table)
        -- fails here, and with it the DDL that attached it.
        PERFORM tenancy.enable_rls(r.child, r.tenant_column);
    END LOOP;
    -- A guarded table put under a parent that is not guarded (INHERIT,
    -- ATTACH PARTITION into it) shows its rows to every tenant through the
    -- parent: refused.
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
                  HINT = 'Guard the parent first (SELECT tenancy.enable_rls(...)), or detach the '
                         'table (NO INHERIT, DETACH PARTITION). To repair a pair left from before, '
                         'run the fix with SET LOCAL pgtenancy.guarding_children = on.';
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
                  HINT = 'Leave guarded tables to the kit''s owner. To repair a table left so '
                         'from before, run the fix with SET LOCAL pgtenancy.guarding_children = on.';
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.guard_new_children() IS
    'Event trigger (ddl_command_end of CREATE TABLE, ALTER TABLE, their FOREIGN TABLE forms and '
    'CREATE SCHEMA with tables in it): guard with enable_rls every partition or inheritance child '
    'of a guarded table that is not guarded yet (CREATE TABLE ... PARTITION OF, ATTACH PARTITION, '
    'INHERITS, INHERIT), where the command touched the child or the parent; the DDL '
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
        WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE',
                     'CREATE SCHEMA')
        EXECUTE FUNCTION tenancy.guard_new_children();
END
$$;
