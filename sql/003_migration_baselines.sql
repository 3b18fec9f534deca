-- pgtenancy — 003: baselines, the squashed history new tenants start from.
--
-- A long history costs every new tenant a replay of every migration. A
-- baseline through version V is one script equal to the migrations up to V
-- (checked by add_baseline of 012_baselines.sql against a replay,
-- object by object). Provisioning runs the newest baseline, in one
-- transaction, as the migrator and behind the fence like any migration,
-- records V as the tenant's migration_version, then applies the migrations
-- after V as usual. Tenants that exist already never run a baseline: their
-- state is their migration_version, and the migrations up to V stay
-- registered for them.

CREATE TABLE IF NOT EXISTS tenancy.baselines (
    through_version text COLLATE "C" NOT NULL,
    sql             text        NOT NULL,
    checksum        text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT baselines_pkey PRIMARY KEY (through_version),
    CONSTRAINT baselines_through_version_fkey FOREIGN KEY (through_version)
        REFERENCES tenancy.migrations (version)
);

COMMENT ON TABLE tenancy.baselines IS
    'Squashed histories: sql creates in a new tenant schema what the migrations up to '
    'through_version create; the newest one provisions new tenants.';

CREATE OR REPLACE FUNCTION tenancy.apply_baseline(p_schema text, p_version text)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_baseline tenancy.baselines;
    v_role     name := tenancy.migrator_role();
    -- As for every migration: the tenant schema, the catalogs, public, temp.
    v_path     text := format('%I, pg_catalog, public, pg_temp', p_schema);
    v_state    text;
    v_message  text;
    v_context  text;
BEGIN
    SELECT * INTO v_baseline FROM tenancy.baselines AS b WHERE b.through_version = p_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no baseline through version %', coalesce(quote_literal(p_version), 'NULL')
            USING ERRCODE = 'PT032';
    END IF;
    -- The same runner as apply_migrations: the migrator may create in this
    -- (new, empty) schema for the rest of this transaction only.
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', p_schema, v_role);
    PERFORM set_config('pgtenancy.migration_schema', p_schema, true);
    IF NOT EXISTS (SELECT 1 FROM pg_proc AS p
                    WHERE p.oid = 'tenancy.execute_migration(text,text)'::regprocedure
                      AND p.prosecdef
                      AND p.proowner = (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = v_role)) THEN
        RAISE EXCEPTION 'the migration runner tenancy.execute_migration was changed: it no longer runs as the migrator role'
            USING ERRCODE = 'PT017',
                  HINT = 'Install the kit again (pgtenancy install) to restore it.';
    END IF;
    BEGIN
        PERFORM tenancy.execute_migration(v_baseline.sql, v_path);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_context = PG_EXCEPTION_CONTEXT;
        PERFORM set_config('pgtenancy.migration_schema', '', true);
        IF v_state IN ('PT017', '42501')
           OR (v_state = '0A000' AND v_message LIKE 'EXECUTE of transaction commands%') THEN
            RAISE EXCEPTION 'unsafe baseline through % (schema %): %', p_version, p_schema, v_message
                USING ERRCODE = 'PT017',
                      DETAIL = format('SQLSTATE %s; %s', v_state,
                                      coalesce(substring(v_context FROM 'SQL statement "(.*?)"'),
                                               'at the baseline''s top level')),
                      HINT = 'A baseline, like a tenant migration, may change its own tenant schema only.';
        END IF;
        RAISE EXCEPTION 'baseline through % failed in schema %: %', p_version, p_schema, v_message
            USING ERRCODE = 'PT006',
                  DETAIL = format('SQLSTATE %s', v_state);
    END;
    PERFORM set_config('pgtenancy.migration_schema', '', true);
    IF NOT EXISTS (SELECT 1 FROM pg_proc AS p
                    WHERE p.proname = 'execute_migration'
                      AND p.pronamespace = 'tenancy'::regnamespace)
       OR NOT has_schema_privilege(v_role, 'tenancy', 'USAGE') THEN
        RAISE EXCEPTION 'unsafe baseline through % (schema %): it dropped the migrator role''s own objects or privileges',
            p_version, p_schema
            USING ERRCODE = 'PT017';
    END IF;
    -- At rest the tenant's own role (made here, as by its first migration)
    -- owns everything and the migrator nothing; the hand-back refuses
    -- SECURITY DEFINER functions, rules and foreign grants.
    PERFORM tenancy.ensure_tenant_role(p_schema);
    BEGIN
        PERFORM tenancy.hand_over_schema(p_schema, false);
    EXCEPTION WHEN SQLSTATE 'PT017' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE EXCEPTION 'unsafe baseline through % (schema %): %', p_version, p_schema, v_message
            USING ERRCODE = 'PT017';
    END;
    EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA %I FROM %I', p_schema, v_role);
    RETURN v_baseline.through_version;
END
$$;

COMMENT ON FUNCTION tenancy.apply_baseline(text, text) IS
    'Run the baseline through version p_version inside the new, empty schema p_schema, in the '
    'caller''s transaction, as the migrator role confined to that schema (the runner of every '
    'migration, tenancy.execute_migration), then give its objects to the kit''s owner; return '
    'p_version. Raises PT032 (no such baseline), PT017 (it reaches outside its schema), PT006 '
    '(it failed; SQLSTATE in DETAIL). Internal: not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.apply_baseline(text, text) FROM PUBLIC;
