-- pgtenancy — 005: shared tables guarded by row-level security, and
-- the application role.
--
-- A guarded table has a tenant column (uuid) whose default is the current
-- tenant, an index led by it, ENABLE and FORCE ROW LEVEL SECURITY, and one
-- policy for all commands in the InitPlan form, so current_tenant_id() is
-- evaluated once per query, not once per row:
--     tenant_id = (SELECT tenancy.current_tenant_id())
-- With no tenant in the transaction the policy matches nothing (fail closed)
-- and the column default raises PT012. Superusers and roles with BYPASSRLS
-- skip every policy: the application must connect as a role that owns
-- nothing and has neither (tenancy.grant_app_role refuses such roles).

-- What the policy of guarded tables compares the tenant column with: the
-- tenant of the transaction, only while it is active. A suspended or deleted
-- tenant's rows stay out of reach even when app.tenant_id is set by hand
-- (set_config skips enter_tenant's status test). One primary-key lookup,
-- evaluated once per query (the policy calls it in an InitPlan).
CREATE OR REPLACE FUNCTION tenancy.active_tenant_id()
    RETURNS uuid
    LANGUAGE plpgsql
    STABLE
    PARALLEL SAFE
AS $$
DECLARE
    v_id pg_catalog.uuid := tenancy.current_tenant_id();
BEGIN
    -- PL/pgSQL, not SQL: a SQL function with sub-selects is not inlined and
    -- plans its body on every call (0.2 ms); these plans are cached.
    IF v_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.tenant_directory AS d
                WHERE d.id OPERATOR(pg_catalog.=) v_id AND d.status OPERATOR(pg_catalog.=) 'active') THEN
        RETURN v_id;
    END IF;
    -- The kit's owner (its SECURITY DEFINER functions: delete_shared_rows
    -- deleting a destroyed tenant's rows) sees the tenant whatever its status.
    IF pg_catalog.pg_has_role((SELECT n.nspowner FROM pg_catalog.pg_namespace AS n
                                WHERE n.nspname OPERATOR(pg_catalog.=) 'tenancy'), 'MEMBER') THEN
        RETURN v_id;
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.active_tenant_id() IS
    'Id of the tenant the current transaction entered while that tenant is active; NULL outside '
    'a tenant or when the tenant is suspended or deleted (except for the kit''s owner and its '
    'members). Compared with the tenant column by the policy of guarded tables.';

CREATE OR REPLACE FUNCTION tenancy.require_tenant_id()
    RETURNS uuid
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid := tenancy.current_tenant_id();
BEGIN
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'no tenant in this transaction: rows of guarded tables belong to a tenant'
            USING ERRCODE = 'PT012',
                  HINT = 'Enter a tenant first (tenant_session, or SELECT tenancy.enter_tenant(slug)).';
    END IF;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.require_tenant_id() IS
    'Id of the tenant of the current transaction; raises PT012 when there is none. Default of '
    'the tenant column of guarded tables, so a write without a tenant fails clearly.';

CREATE OR REPLACE FUNCTION tenancy.guard_write()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Roles that bypass row-level security (superusers, BYPASSRLS) are the
    -- maintenance path; every other role writes inside a tenant.
    IF tenancy.current_tenant_id() IS NULL
       AND NOT EXISTS (SELECT 1 FROM pg_roles
                        WHERE rolname = current_user AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'no tenant in this transaction: % on guarded table %.% needs one',
            TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'PT012',
                  HINT = 'Enter a tenant first (tenant_session, or SELECT tenancy.enter_tenant(slug)).';
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.guard_write() IS
    'Statement trigger of guarded tables: refuse INSERT, UPDATE and DELETE with PT012 when the '
    'transaction has no tenant (instead of silently touching no rows), except for roles that '
    'bypass row-level security.';

REVOKE ALL ON FUNCTION tenancy.guard_write() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.grant_table_to_app_roles(p_table regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name;
    v_seq  regclass;
BEGIN
    FOR v_role IN
        SELECT a.role_name FROM tenancy.app_roles AS a
          JOIN pg_roles AS r ON r.rolname = a.role_name
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %s TO %I', p_table, v_role);
        -- Sequences behind serial columns of the table.
        FOR v_seq IN
            SELECT d.objid::regclass FROM pg_depend AS d
             WHERE d.refobjid = p_table AND d.classid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i')
               AND (SELECT c.relkind FROM pg_class AS c WHERE c.oid = d.objid) = 'S'
        LOOP
            EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', v_seq, v_role);
        END LOOP;
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.grant_table_to_app_roles(regclass) IS
    'Grant every application role DML on guarded table p_table and usage of its column '
    'sequences. Internal.';

REVOKE ALL ON FUNCTION tenancy.grant_table_to_app_roles(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.enable_rls(table_name regclass, tenant_column name DEFAULT 'tenant_id')
    RETURNS tenancy.guarded_tables
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_class   pg_class;
    v_schema  name;
    v_type    regtype;
    v_attnum  smallint;
    v_guard   tenancy.guarded_tables;
    v_nulls   boolean;
    v_check   text := format('%I = (SELECT tenancy.active_tenant_id())', enable_rls.tenant_column);
    v_child   regclass;
    v_role    name;
    v_citus   boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
    v_dist    boolean := false;
    v_outer   text := current_setting('pgtenancy.guarding_children', true);
BEGIN
    SELECT * INTO v_class FROM pg_class WHERE oid = enable_rls.table_name;
    SELECT nspname INTO v_schema FROM pg_namespace WHERE oid = v_class.relnamespace;
    IF v_class.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', enable_rls.table_name
            USING ERRCODE = 'PT014';
    END IF;
    IF v_schema = 'tenancy' OR EXISTS (SELECT 1 FROM tenancy.tenants WHERE schema_name = v_schema) THEN
        RAISE EXCEPTION '% is in schema %, which is not shared', enable_rls.table_name, quote_ident(v_schema)
            USING ERRCODE = 'PT014',
                  HINT = 'Guard tables of shared schemas; a tenant schema is isolated already.';
    END IF;
    -- An owner (or a member of the owner's role) can switch RLS off.
    SELECT a.role_name INTO v_role
      FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
     WHERE pg_has_role(r.oid, v_class.relowner, 'MEMBER')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'application role % owns % (or is a member of its owner): it could switch '
                        'row-level security off', quote_ident(v_role), enable_rls.table_name
            USING ERRCODE = 'PT014',
                  HINT = 'ALTER TABLE ... OWNER TO the kit''s owner, then guard it.';
    END IF;
    PERFORM tenancy.forget_dropped_tables();
    -- This function's own DDL attaches nothing: the event trigger guarding
    -- children (011_guards.sql) leaves it alone while this call holds
    -- pgtenancy.guarding_children on (put back as it was before returning;
    -- an error rolls it back with the rest), as it would refuse the DDL that
    -- guards a parent of a guarded table. (A SET clause would scope it more
    -- simply, but a kit owner that is no superuser may not set it so.)
    PERFORM set_config('pgtenancy.guarding_children', 'on', true);
    -- Read through a parent, a table's rows get the parent's policies, not
    -- its own: a parent that is not guarded would show every tenant's rows.
    SELECT i.inhparent::regclass INTO v_child
      FROM pg_inherits AS i
     WHERE i.inhrelid = enable_rls.table_name
       AND NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS p WHERE p.table_name = i.inhparent)
     ORDER BY i.inhparent
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% is a partition or inheritance child of %, which is not guarded: read '
                        'through it, its rows would show to every tenant', enable_rls.table_name, v_child
            USING ERRCODE = 'PT014',
                  HINT = 'Guard the parent (enable_rls guards its children with it), or detach the table.';
    END IF;
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = enable_rls.table_name;
    IF FOUND AND v_guard.tenant_column <> enable_rls.tenant_column THEN
        RAISE EXCEPTION '% is already guarded on column %', enable_rls.table_name, quote_ident(v_guard.tenant_column)
            USING ERRCODE = 'PT014';
    END IF;

    SELECT a.atttypid::regtype, a.attnum INTO v_type, v_attnum
      FROM pg_attribute AS a
     WHERE a.attrelid = enable_rls.table_name AND a.attname = enable_rls.tenant_column AND NOT a.attisdropped;
    IF NOT FOUND THEN
        -- Existing rows get NULL: they belong to no tenant and nobody sees them.
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I uuid', enable_rls.table_name, enable_rls.tenant_column);
        SELECT a.attnum INTO v_attnum FROM pg_attribute AS a
         WHERE a.attrelid = enable_rls.table_name AND a.attname = enable_rls.tenant_column;
    ELSIF v_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'tenant column %.% is %, not uuid', enable_rls.table_name, quote_ident(enable_rls.tenant_column), v_type
            USING ERRCODE = 'PT014';
    END IF;
    IF v_citus THEN
        -- Entering a tenant must reach the workers (004_context.sql).
        PERFORM tenancy.prepare_citus();
        -- Citus: shards accept no subquery (InitPlan) in a policy and write a
        -- RESTRICTIVE policy to the shards as PERMISSIVE, so the check is the
        -- single permissive policy, with built-in functions only (they exist
        -- on every worker). Citus refuses a new default on the distribution
        -- column of a distributed table: guard the table before distributing it.
        v_check := format('%I = NULLIF(pg_catalog.current_setting(''app.tenant_id'', true), '''')::uuid',
                          enable_rls.tenant_column);
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM pg_catalog.%I WHERE logicalrelid = $1)', 'pg_dist_partition')
            INTO v_dist USING enable_rls.table_name;
    END IF;
    IF NOT v_dist THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.require_tenant_id()',
                       enable_rls.table_name, enable_rls.tenant_column);
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I IS NULL)', enable_rls.table_name, enable_rls.tenant_column)
        INTO v_nulls;
    IF NOT v_nulls THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', enable_rls.table_name, enable_rls.tenant_column);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = enable_rls.table_name AND indkey[0] = v_attnum) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', enable_rls.table_name, enable_rls.tenant_column);
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', enable_rls.table_name);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', enable_rls.table_name);
    -- The tenant check is RESTRICTIVE, so it is ANDed with every other
    -- policy: a permissive policy added later (USING (true), say) cannot
    -- open other tenants' rows. Restrictive policies need a permissive one
    -- to grant access at all: tenancy_tenant_rows, USING (true).
    IF v_citus THEN
        -- Never a permissive USING (true) companion on Citus, and a
        -- restrictive check left by an earlier enable_rls is replaced.
        EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_rows ON %s', enable_rls.table_name);
        IF EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = enable_rls.table_name AND polname = 'tenancy_tenant_isolation'
                      AND NOT polpermissive) THEN
            EXECUTE format('DROP POLICY tenancy_tenant_isolation ON %s', enable_rls.table_name);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policy
                        WHERE polrelid = enable_rls.table_name AND polname = 'tenancy_tenant_isolation') THEN
            EXECUTE format('CREATE POLICY tenancy_tenant_isolation ON %s AS PERMISSIVE FOR ALL '
                           'USING (%s) WITH CHECK (%s)', enable_rls.table_name, v_check, v_check);
        END IF;
    END IF;
    IF NOT v_citus AND NOT EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = enable_rls.table_name AND polname = 'tenancy_tenant_isolation') THEN
        EXECUTE format('CREATE POLICY tenancy_tenant_isolation ON %s AS RESTRICTIVE FOR ALL '
                       'USING (%s) WITH CHECK (%s)', enable_rls.table_name, v_check, v_check);
    ELSE
        -- A policy of an earlier version (current_tenant_id) gets the status test.
        EXECUTE format('ALTER POLICY tenancy_tenant_isolation ON %s USING (%s) WITH CHECK (%s)',
                       enable_rls.table_name, v_check, v_check);
    END IF;
    IF NOT v_citus AND NOT EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = enable_rls.table_name AND polname = 'tenancy_tenant_rows') THEN
        EXECUTE format('CREATE POLICY tenancy_tenant_rows ON %s AS PERMISSIVE FOR ALL '
                       'USING (true) WITH CHECK (true)', enable_rls.table_name);
    END IF;
    -- Citus refuses triggers on distributed tables (citus.enable_unsafe_triggers):
    -- there, UPDATE and DELETE without a tenant touch no rows, INSERT fails on the default.
    IF NOT v_citus AND NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = enable_rls.table_name AND tgname = 'tenancy_guard_write') THEN
        EXECUTE format('CREATE TRIGGER tenancy_guard_write BEFORE INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION tenancy.guard_write()', enable_rls.table_name);
    END IF;
    INSERT INTO tenancy.guarded_tables (table_name, tenant_column)
    VALUES (enable_rls.table_name, enable_rls.tenant_column)
    ON CONFLICT (table_name) DO NOTHING;
    PERFORM tenancy.grant_table_to_app_roles(enable_rls.table_name);
    -- Tenant migrations may reference a guarded table, never read its rows.
    EXECUTE format('REVOKE SELECT ON TABLE %s FROM %I', enable_rls.table_name, tenancy.migrator_role());
    IF EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = tenancy.tenant_group_role()) THEN
        EXECUTE format('REVOKE SELECT ON TABLE %s FROM %I', enable_rls.table_name, tenancy.tenant_group_role());
    END IF;
    -- Partitions and inheritance children are tables of their own: queried
    -- by name they apply their own policies, not the parent's. Guard each
    -- (recursively); one that cannot be guarded makes the whole call fail.
    FOR v_child IN SELECT i.inhrelid::regclass FROM pg_inherits AS i
                    WHERE i.inhparent = enable_rls.table_name ORDER BY i.inhrelid LOOP
        PERFORM tenancy.enable_rls(v_child, enable_rls.tenant_column);
    END LOOP;
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = enable_rls.table_name;
    PERFORM set_config('pgtenancy.guarding_children', coalesce(v_outer, ''), true);
    RETURN v_guard;
END
$$;

COMMENT ON FUNCTION tenancy.enable_rls(regclass, name) IS
    'Guard shared table table_name by tenant: add uuid column tenant_column if missing (existing rows '
    'get NULL and stay invisible), default it to the current tenant, index it, ENABLE and FORCE ROW '
    'LEVEL SECURITY, create the RESTRICTIVE policy tenancy_tenant_isolation FOR ALL with USING and '
    'WITH CHECK tenant_column = (SELECT tenancy.active_tenant_id()) and its permissive companion '
    'tenancy_tenant_rows (true), and statement trigger '
    'tenancy_guard_write refusing writes without a tenant (PT012). Grants DML to application roles. '
    'Partitions and inheritance children are guarded too (and, with the kit installed by a '
    'superuser, those attached later). Idempotent. Raises PT014 (not a table, tenant or tenancy '
    'schema, column not uuid, guarded on another column, owned by an application role or a role '
    'it is a member of, a partition or inheritance child of a table that is not guarded). The kit''s owner must own the table. With Citus in the database: one '
    'PERMISSIVE policy tenancy_tenant_isolation (tenant_column = app.tenant_id, no subquery), no '
    'companion, no trigger, no new default on an already distributed table.';

REVOKE ALL ON FUNCTION tenancy.enable_rls(regclass, name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.disable_rls(table_name regclass)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_guard tenancy.guarded_tables;
    v_child regclass;
    v_outer text := current_setting('pgtenancy.guarding_children', true);
BEGIN
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = disable_rls.table_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- A guarded child under a parent that is not guarded shows its rows to
    -- every tenant through the parent: the children go first (recursively;
    -- the event trigger leaves this call's DDL alone, as in enable_rls).
    -- A guarded child with another guarded parent could be neither: refused.
    SELECT i.inhrelid::regclass INTO v_child
      FROM pg_inherits AS i
      JOIN tenancy.guarded_tables AS c ON c.table_name = i.inhrelid
     WHERE i.inhparent = disable_rls.table_name
       AND EXISTS (SELECT 1 FROM pg_inherits AS o
                     JOIN tenancy.guarded_tables AS g ON g.table_name = o.inhparent
                    WHERE o.inhrelid = i.inhrelid AND o.inhparent <> disable_rls.table_name)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% has child %, which is also a child of another guarded table: unguarded '
                        'it would show its rows by name, guarded under % it would show them '
                        'through it', disable_rls.table_name, v_child, disable_rls.table_name
            USING ERRCODE = 'PT014',
                  HINT = 'Detach the child from one of its parents first (ALTER TABLE ... NO INHERIT).';
    END IF;
    PERFORM set_config('pgtenancy.guarding_children', 'on', true);
    FOR v_child IN SELECT i.inhrelid::regclass FROM pg_inherits AS i
                    WHERE i.inhparent = disable_rls.table_name ORDER BY i.inhrelid LOOP
        PERFORM tenancy.disable_rls(v_child);
    END LOOP;
    EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_isolation ON %s', disable_rls.table_name);
    EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_rows ON %s', disable_rls.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_guard_write ON %s', disable_rls.table_name);
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', disable_rls.table_name);
    EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', disable_rls.table_name);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', disable_rls.table_name, v_guard.tenant_column);
    DELETE FROM tenancy.guarded_tables WHERE table_name = disable_rls.table_name;
    PERFORM set_config('pgtenancy.guarding_children', coalesce(v_outer, ''), true);
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.disable_rls(regclass) IS
    'Undo enable_rls on table_name and on its guarded partitions and inheritance children '
    '(recursively, first; PT014 when a child has another guarded parent): drop the policies and the write trigger, NO FORCE and DISABLE ROW '
    'LEVEL SECURITY, drop the column default; the column, its data and its index stay. True when '
    'the table was guarded; a no-op otherwise.';

REVOKE ALL ON FUNCTION tenancy.disable_rls(regclass) FROM PUBLIC;
