-- pgtenancy — uninstall: remove the tenancy schema and everything in it.
--
-- Guarded shared tables get their row-level security removed (data kept)
-- and the application roles lose their privileges on them, so no role reads
-- every tenant's rows afterwards. Refuses (PT009) while tenants are
-- registered, because their schemas would be orphaned, unless the
-- transaction sets pgtenancy.drop_tenants = 'on', in which case every tenant
-- schema is dropped first; and refuses while objects outside the kit (views,
-- column defaults, policies of your own) use its functions or types, which
-- DROP ... CASCADE would silently remove.

DO $$
DECLARE
    v_count   bigint;
    v_table   regclass;
    v_role    name;
    v_users   text;
BEGIN
    IF pg_catalog.to_regclass('tenancy.tenants') IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT count(*) FROM tenancy.tenants' INTO v_count;
    IF v_count > 0
       AND coalesce(pg_catalog.current_setting('pgtenancy.drop_tenants', true), '') <> 'on' THEN
        RAISE EXCEPTION '% tenants are registered; uninstalling would orphan their schemas', v_count
            USING ERRCODE = 'PT009',
                  HINT = 'Drop the tenants first, or uninstall with --drop-tenants to drop their schemas too.';
    END IF;

    -- Row-change triggers call generated functions of the tenancy schema.
    IF pg_catalog.to_regprocedure('tenancy.untrack_changes(regclass)') IS NOT NULL THEN
        PERFORM tenancy.untrack_changes(t.tgrelid::regclass)
           FROM (SELECT DISTINCT tgrelid FROM pg_catalog.pg_trigger
                  WHERE tgname LIKE 'tenancy\_changes\_%') AS t;
    END IF;
    PERFORM tenancy.forget_dropped_tables();
    -- The migration fence goes first: its event triggers use the kit's functions.
    DROP EVENT TRIGGER IF EXISTS pgtenancy_fence_ddl_start;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_fence_ddl_end;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_fence_sql_drop;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_guard_children;
    -- Children before their parents: disable_rls refuses a parent whose
    -- guarded child has another guarded parent (multiple inheritance).
    FOR v_table IN EXECUTE 'WITH RECURSIVE below (rel, depth) AS ('
                           '    SELECT g.table_name::oid, 0 FROM tenancy.guarded_tables AS g'
                           '    UNION ALL'
                           '    SELECT i.inhrelid, b.depth + 1 FROM below AS b'
                           '      JOIN pg_catalog.pg_inherits AS i ON i.inhparent = b.rel'
                           '     WHERE b.depth < 64)'
                           ' SELECT g.table_name FROM tenancy.guarded_tables AS g'
                           '  JOIN below AS b ON b.rel = g.table_name::oid'
                           ' GROUP BY g.table_name ORDER BY max(b.depth) DESC, g.table_name::oid' LOOP
        FOR v_role IN EXECUTE 'SELECT a.role_name FROM tenancy.app_roles AS a '
                              'JOIN pg_catalog.pg_roles AS r ON r.rolname = a.role_name' LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM %I', v_table, v_role);
        END LOOP;
        PERFORM tenancy.disable_rls(v_table);
    END LOOP;

    SELECT string_agg(DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
      INTO v_users
      FROM pg_catalog.pg_depend AS d
     WHERE d.deptype = 'n'
       AND ((d.refclassid = 'pg_catalog.pg_proc'::regclass
             AND d.refobjid IN (SELECT oid FROM pg_catalog.pg_proc
                                 WHERE pronamespace = 'tenancy'::regnamespace))
         OR (d.refclassid = 'pg_catalog.pg_class'::regclass
             AND d.refobjid IN (SELECT oid FROM pg_catalog.pg_class
                                 WHERE relnamespace = 'tenancy'::regnamespace))
         OR (d.refclassid = 'pg_catalog.pg_type'::regclass
             AND d.refobjid IN (SELECT oid FROM pg_catalog.pg_type
                                 WHERE typnamespace = 'tenancy'::regnamespace)))
       AND (pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid)).schema
           IS DISTINCT FROM 'tenancy'
       AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger AS t
                              JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
                             WHERE t.oid = d.objid AND c.relnamespace = 'tenancy'::regnamespace))
       AND NOT (d.classid = 'pg_catalog.pg_rewrite'::regclass
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite AS rw
                              JOIN pg_catalog.pg_class AS c ON c.oid = rw.ev_class
                             WHERE rw.oid = d.objid AND c.relnamespace = 'tenancy'::regnamespace))
       -- Objects of tenant schemas go with them (--drop-tenants): strict
       -- mode's policies on their tables (tenancy_strict_schema), whose
       -- identity names the policy first, included.
       AND NOT EXISTS (SELECT 1 FROM tenancy.tenants AS tt
                        WHERE pg_catalog.current_setting('pgtenancy.drop_tenants', true) = 'on'
                          AND tt.schema_name = tenancy.schema_prefix() || tt.slug
                          AND (pg_catalog.starts_with(
                                   (pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid)).identity,
                                   pg_catalog.quote_ident(tt.schema_name) || '.')
                               OR (d.classid = 'pg_catalog.pg_policy'::regclass
                                   AND EXISTS (SELECT 1 FROM pg_catalog.pg_policy AS p
                                                 JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
                                                WHERE p.oid = d.objid
                                                  AND c.relnamespace = pg_catalog.to_regnamespace(
                                                          pg_catalog.quote_ident(tt.schema_name))))));
    IF v_users IS NOT NULL THEN
        RAISE EXCEPTION 'objects outside pgtenancy use it: %', v_users
            USING ERRCODE = 'PT009',
                  HINT = 'Drop or change them first; uninstalling would drop them silently.';
    END IF;
END
$$;

-- pgtenancy: end of checks
-- Everything above refuses or is undone by a rollback: uninstall(...,
-- drop_tenants=True) runs it first and rolls it back, then drops the tenant
-- schemas in transactions of their own (one transaction cannot lock every
-- object of hundreds of schemas: max_locks_per_transaction), then runs the
-- whole script. The tenants left here are dropped in this transaction.

DO $$
DECLARE
    v_schema  text;
BEGIN
    IF pg_catalog.to_regclass('tenancy.tenants') IS NULL THEN
        RETURN;
    END IF;
    -- Only schemas named as the kit names tenant schemas: a row restored by
    -- hand naming public or tenancy is not a tenant schema.
    FOR v_schema IN EXECUTE 'SELECT schema_name FROM tenancy.tenants '
                            'WHERE schema_name = tenancy.schema_prefix() || slug' LOOP
        EXECUTE pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', v_schema);
        -- Its owner role, unless a database copied from this one uses it.
        IF pg_catalog.to_regprocedure('tenancy.drop_tenant_role(text)') IS NOT NULL THEN
            EXECUTE 'SELECT tenancy.drop_tenant_role($1)' USING v_schema;
        END IF;
    END LOOP;
    -- The scratch schema registration checks migrations in goes with the kit.
    DROP SCHEMA IF EXISTS tenancy_scratch CASCADE;
    -- So does the reference replay of a squash (tenancy.prepare_baseline),
    -- and the owner roles its replay and a baseline's try made.
    DROP SCHEMA IF EXISTS tenancy_check_baseline CASCADE;
    DROP SCHEMA IF EXISTS tenancy_check_baseline_try CASCADE;
    IF pg_catalog.to_regprocedure('tenancy.drop_tenant_role(text)') IS NOT NULL THEN
        EXECUTE 'SELECT tenancy.drop_tenant_role($1)' USING 'tenancy_check_baseline';
        EXECUTE 'SELECT tenancy.drop_tenant_role($1)' USING 'tenancy_check_baseline_try';
    END IF;
END
$$;

-- The migrator role goes with the kit when nothing else of it remains
-- (another database copied from this one may still use it).
DO $$
DECLARE
    v_role name;
BEGIN
    IF pg_catalog.to_regclass('tenancy.confinement') IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT migrator_role FROM tenancy.confinement' INTO v_role;
    PERFORM pg_catalog.set_config('pgtenancy.drop_migrator', coalesce(v_role, ''), true);
    PERFORM pg_catalog.set_config('pgtenancy.drop_group',
        coalesce('pgtenancy_tenants_' || pg_catalog.left(pg_catalog.md5(v_role), 12), ''), true);
END
$$;

DROP SCHEMA IF EXISTS tenancy CASCADE;

DO $$
DECLARE
    v_role name;
BEGIN
    -- The tenants' group role, then the migrator.
    FOREACH v_role IN ARRAY ARRAY[nullif(pg_catalog.current_setting('pgtenancy.drop_group', true), ''),
                                  nullif(pg_catalog.current_setting('pgtenancy.drop_migrator', true), '')]::name[] LOOP
        CONTINUE WHEN v_role IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role);
        BEGIN
            -- Its grants here (shared tables, default privileges) go first.
            EXECUTE pg_catalog.format('DROP OWNED BY %I', v_role);
            EXECUTE pg_catalog.format('DROP ROLE %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            -- Still used by another database, or not ours to drop: keep it.
            NULL;
        END;
    END LOOP;
END
$$;
