-- pgtenancy — 003: migration confinement.
--
-- A tenant migration may create, alter and drop objects in its own tenant
-- schema and nothing else (DESIGN.md principle 7). Two fences enforce that
-- at execution time, on every path (create_tenant, migrate_tenant, the
-- scratch check of add_migration, the fleet runner), DO blocks, called
-- functions and dynamic SQL included:
--
-- 1. Privileges. Migrations run as the migrator role, a NOLOGIN role of its
--    own that owns nothing at rest. For the span of a migration, inside the
--    migrating transaction (so no other session ever sees it), it gets
--    USAGE and CREATE on the one tenant schema being migrated and owns that
--    schema's objects; then they go back to the kit's owner. So it cannot
--    reach another tenant's objects, even with DROP OWNED. It has no privilege on the tenancy
--    tables, no CREATE on the database, is no member of any role and cannot
--    change role: the migration runs inside a SECURITY DEFINER function
--    owned by the migrator, where SET ROLE and SET SESSION AUTHORIZATION are
--    refused by the server. Code planted in public by another role runs with
--    the migrator's rights at most, never with the owner's.
-- 2. An event-trigger fence (created when a superuser installs the kit):
--    while a migration runs it refuses, with PT017, DDL whose objects lie
--    outside the tenant schema (creates in a PUBLIC-writable schema
--    included), drops of anything outside it, and statements that are
--    never a tenant's business (extensions, schemas, default privileges,
--    foreign servers, publications, casts, languages, ...).
-- After each migration, the runner also refuses a changed search_path,
-- default privileges of the migrator and large objects it owns, which no
-- event trigger sees.

-- The migrator role of this database, and whether the fence is installed.
CREATE TABLE IF NOT EXISTS tenancy.confinement (
    singleton     boolean     NOT NULL DEFAULT true,
    migrator_role name        NOT NULL,
    fence         boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT confinement_pkey PRIMARY KEY (singleton),
    CONSTRAINT confinement_singleton_check CHECK (singleton)
);

COMMENT ON TABLE tenancy.confinement IS
    'One row: the role tenant migrations run as (migrator_role) and whether the event-trigger '
    'fence is installed (fence).';

-- Create (or adopt) the migrator role. Its name is derived from the
-- database so two databases of one server never share it (roles are
-- cluster-wide); a database copied from a template keeps the template's.
DO $$
DECLARE
    v_role name;
BEGIN
    SELECT c.migrator_role INTO v_role FROM tenancy.confinement AS c;
    IF v_role IS NULL THEN
        v_role := 'pgtenancy_migrator_'
                  || pg_catalog.left(pg_catalog.md5(pg_catalog.current_database()), 12);
        INSERT INTO tenancy.confinement (migrator_role) VALUES (v_role);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                        WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE EXCEPTION 'pgtenancy needs role % to confine tenant migrations, and % may not create it',
                v_role, current_user
                USING ERRCODE = '42501',
                      HINT = pg_catalog.format('As a superuser: CREATE ROLE %I NOLOGIN; GRANT %I TO %I;',
                                               v_role, v_role, current_user);
        END IF;
        EXECUTE pg_catalog.format(
            'CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT', v_role);
        EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', v_role,
            'pgtenancy: tenant migrations of database ' || pg_catalog.current_database()
            || ' run as this role; it owns the objects of tenant schemas.');
    END IF;
    -- The owner manages the objects the migrator owns (grants, DROP SCHEMA
    -- ... CASCADE, ALTER ... OWNER); the migrator never gets the owner's.
    IF NOT pg_catalog.pg_has_role(current_user, v_role, 'USAGE') THEN
        EXECUTE pg_catalog.format('GRANT %I TO %I', v_role, current_user);
    END IF;
    -- Migrations may call the kit's public functions (current_tenant_id()
    -- in a policy, say); the tables stay out of reach.
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA tenancy TO %I', v_role);
END
$$;

-- The tenants' group role (see "Owners at rest" below): created when the
-- installing role may; without it tenants' objects stay the owner's.
DO $$
DECLARE
    v_group name := 'pgtenancy_tenants_'
                    || pg_catalog.left(pg_catalog.md5((SELECT c.migrator_role FROM tenancy.confinement AS c)), 12);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_group) THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                        WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RETURN;
        END IF;
        EXECUTE pg_catalog.format(
            'CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT', v_group);
        EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', v_group,
            'pgtenancy: the owner roles of the tenants of database ' || pg_catalog.current_database()
            || ' are its members; it holds their grants on shared schemas.');
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA tenancy TO %I', v_group);
END
$$;

CREATE OR REPLACE FUNCTION tenancy.migrator_role()
    RETURNS name
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.migrator_role FROM tenancy.confinement AS c
$$;

REVOKE ALL ON FUNCTION tenancy.migrator_role() FROM PUBLIC;

COMMENT ON FUNCTION tenancy.migrator_role() IS
    'Name of the role tenant migrations run as: it owns the objects of tenant schemas, may '
    'create objects only in the schema being migrated, and only while a migration runs.';

-- Owners at rest -------------------------------------------------------------
--
-- Between migrations a tenant's objects belong to a role of their own, one
-- per tenant schema: NOLOGIN, no attribute, USAGE and CREATE on its own
-- schema only, and a member of the tenants' group role, which holds what
-- the shared schemas lend to tenants (the grants the migrator gets). Code a
-- migration planted in its objects and that the server runs as their owner
-- (foreign-key actions as the referencing table's owner, expression indexes
-- and extended statistics under ANALYZE and autovacuum, REFRESH of a
-- materialized view) then runs with that role's rights: its own schema and
-- reading the shared ones, never the kit's owner's. Roles are cluster-wide:
-- the names derive from the migrator's (so from the database) and the
-- schema name; the kit's owner is a member of each, to manage them.

CREATE OR REPLACE FUNCTION tenancy.tenant_group_role()
    RETURNS name
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ('pgtenancy_tenants_' || pg_catalog.left(pg_catalog.md5(tenancy.migrator_role()), 12))::name
$$;

REVOKE ALL ON FUNCTION tenancy.tenant_group_role() FROM PUBLIC;

COMMENT ON FUNCTION tenancy.tenant_group_role() IS
    'Name of the NOLOGIN group role every tenant owner role of this database is a member of; '
    'it holds the grants on shared schemas tenants may use (those of the migrator).';

CREATE OR REPLACE FUNCTION tenancy.tenant_role(schema_name text)
    RETURNS name
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ('pgtenancy_owner_' || pg_catalog.left(pg_catalog.md5(tenancy.migrator_role()), 12)
            || '_' || pg_catalog.left(pg_catalog.md5(schema_name), 24))::name
$$;

REVOKE ALL ON FUNCTION tenancy.tenant_role(text) FROM PUBLIC;

COMMENT ON FUNCTION tenancy.tenant_role(text) IS
    'Name of the role that owns the objects of tenant schema schema_name at rest (whether it '
    'exists or not): unique per database and schema, 53 bytes.';

CREATE OR REPLACE FUNCTION tenancy.rest_owner(schema_name text)
    RETURNS name
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    -- The kit's owner when the role could not be made (installed without
    -- the right to create roles): the doctor reports those tenants. The
    -- role's name is computed once (a sub-select), not for each row of
    -- pg_authid, which holds every tenant role of the cluster.
    SELECT coalesce((SELECT r.rolname FROM pg_catalog.pg_roles AS r
                      WHERE r.rolname = (SELECT tenancy.tenant_role(schema_name))),
                    (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace AS n
                      WHERE n.nspname = 'tenancy'))::name
$$;

REVOKE ALL ON FUNCTION tenancy.rest_owner(text) FROM PUBLIC;

COMMENT ON FUNCTION tenancy.rest_owner(text) IS
    'Role the objects of tenant schema schema_name belong to between migrations: its tenant '
    'role (tenancy.tenant_role) when it exists, else the kit''s owner. Kit operations that '
    'write a tenant''s rows run as it, so no code of the tenant''s runs as the owner.';

CREATE OR REPLACE FUNCTION tenancy.ensure_tenant_role(schema_name text)
    RETURNS name
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role  name := tenancy.tenant_role(schema_name);
    v_group name := tenancy.tenant_group_role();
    v_owner name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
BEGIN
    -- With Citus the objects stay the owner's: Citus moves and copies shards
    -- (citus_schema_move) over connections as the table's owner, which a
    -- NOLOGIN role cannot open.
    IF to_regnamespace(quote_ident(schema_name)) IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = v_group)
       OR EXISTS (SELECT 1 FROM pg_extension AS e WHERE e.extname = 'citus') THEN
        RETURN v_owner;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = v_role) THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles AS r
                        WHERE r.rolname = current_user AND (r.rolsuper OR r.rolcreaterole)) THEN
            RETURN v_owner;
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS '
                           'NOREPLICATION INHERIT IN ROLE %I', v_role, v_group);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- a database copied from this one made it just now
        END;
    END IF;
    IF NOT pg_has_role(v_owner, v_role, 'USAGE') THEN
        EXECUTE format('GRANT %I TO %I', v_role, v_owner);
    END IF;
    IF NOT has_schema_privilege(v_role, to_regnamespace(quote_ident(schema_name)), 'USAGE, CREATE') THEN
        EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', schema_name, v_role);
    END IF;
    RETURN v_role;
END
$$;

REVOKE ALL ON FUNCTION tenancy.ensure_tenant_role(text) FROM PUBLIC;

COMMENT ON FUNCTION tenancy.ensure_tenant_role(text) IS
    'Create (or adopt) the owner role of tenant schema schema_name: NOLOGIN, no attributes, a '
    'member of tenancy.tenant_group_role(), USAGE and CREATE on that schema; make the kit''s '
    'owner a member of it. Returns its name, or the kit''s owner''s when roles cannot be made '
    '(no group role, or the owner lacks CREATEROLE) or Citus is installed (it moves shards over '
    'connections as the table owner, which must log in). Internal.';

CREATE OR REPLACE FUNCTION tenancy.drop_tenant_role(schema_name text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name := tenancy.tenant_role(schema_name);
    v_oid  oid := (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = v_role);
BEGIN
    -- Kept while anything of it remains, here or in a database copied from
    -- this one (its schema was not dropped, a session's temporary object).
    IF v_oid IS NULL
       OR EXISTS (SELECT 1 FROM pg_shdepend AS d
                   WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = v_oid) THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('DROP ROLE %I', v_role);
    EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
        RETURN false;
    END;
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION tenancy.drop_tenant_role(text) FROM PUBLIC;

COMMENT ON FUNCTION tenancy.drop_tenant_role(text) IS
    'Drop the owner role of tenant schema schema_name when it exists and nothing depends on it '
    'any more in any database (its schema is gone); true when dropped. Internal.';

CREATE OR REPLACE FUNCTION tenancy.run_as_rest_owner(schema_name text, statement text)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role   name := tenancy.rest_owner(schema_name);
    v_runner text;
    v_count  bigint;
BEGIN
    -- Writing a tenant's rows runs the code its migrations attached to them
    -- (check constraints, index expressions, generated columns, defaults,
    -- triggers left on) as whoever writes: never as the kit's owner. SET
    -- ROLE is refused inside the kit's SECURITY DEFINER functions, so the
    -- statement runs in a function of the tenant role's own, made for this
    -- one call and dropped after it (code running inside may change it,
    -- but nobody calls it again).
    IF v_role = (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy') THEN
        EXECUTE statement;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        RETURN v_count;
    END IF;
    v_runner := format('%I.%I', schema_name,
                       'pgtenancy_run_' || left(md5(random()::text || clock_timestamp()::text), 16));
    EXECUTE format('CREATE FUNCTION %s(statement text) RETURNS bigint LANGUAGE plpgsql '
                   'SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off '
                   'AS $r$DECLARE n bigint; BEGIN EXECUTE statement; '
                   'GET DIAGNOSTICS n = ROW_COUNT; RETURN n; END$r$', v_runner);
    EXECUTE format('REVOKE ALL ON FUNCTION %s(text) FROM PUBLIC', v_runner);
    EXECUTE format('ALTER FUNCTION %s(text) OWNER TO %I', v_runner, v_role);
    EXECUTE format('SELECT %s($1)', v_runner) INTO v_count USING statement;
    EXECUTE format('DROP FUNCTION %s(text)', v_runner);
    RETURN v_count;
END
$$;

REVOKE ALL ON FUNCTION tenancy.run_as_rest_owner(text, text) FROM PUBLIC;

COMMENT ON FUNCTION tenancy.run_as_rest_owner(text, text) IS
    'Run statement (DML on tenant schema schema_name''s tables) as that schema''s owner at rest '
    '(tenancy.rest_owner), with row_security off (an error, never fewer rows, where a policy '
    'applies); return its row count. What the statement reads must be granted to that role. '
    'Internal.';

CREATE OR REPLACE FUNCTION tenancy.watched_settings()
    RETURNS text[]
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['search_path', 'row_security', 'default_transaction_read_only',
                 'app.tenant_id', 'app.tenant', 'app.tenant_token', 'pgtenancy.migration_schema',
                 'pgtenancy.outside_migration_schema', 'pgtenancy.drop_tenants',
                 'pgtenancy.consumer_inactive_after', 'pgtenancy.consumer_stale_after',
                 'pgtenancy.prepared_stale_after', 'pgtenancy.created_payload',
                 'pgtenancy.guarding_children', 'pgtenancy.renaming',
                 'pgtenancy.accelerator']::text[]
$$;

COMMENT ON FUNCTION tenancy.watched_settings() IS
    'Settings a tenant migration must leave as it found them: the name resolution and row '
    'security of later statements, the tenant context and the kit''s own. Others (lock_timeout, '
    'work_mem, ...) a migration may change, SET LOCAL or not: the fleet runner resets its '
    'session after each tenant.';

CREATE OR REPLACE FUNCTION tenancy.session_state()
    RETURNS jsonb
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- What a statement can leave in a session beyond its transaction. A
    -- session without a temporary schema (pg_my_temp_schema() = 0) has no
    -- temporary objects: the catalogs (no index on the namespace alone) are
    -- scanned only when it has one. PL/pgSQL, not SQL: a SQL function with a
    -- SET clause is planned again at every call, and the runner calls this
    -- twice per migration.
    RETURN pg_catalog.jsonb_build_array(
        CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN 0
             ELSE (SELECT count(*) FROM pg_catalog.pg_class AS c
                    WHERE c.relnamespace = pg_catalog.pg_my_temp_schema()) END,
        CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN 0
             ELSE (SELECT count(*) FROM pg_catalog.pg_proc AS p
                    WHERE p.pronamespace = pg_catalog.pg_my_temp_schema()) END,
        (SELECT count(*) FROM pg_catalog.pg_locks AS l
          WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'advisory'),
        (SELECT count(*) FROM pg_catalog.pg_listening_channels()),
        (SELECT count(*) FROM pg_catalog.pg_prepared_statements),
        (SELECT count(*) FROM pg_catalog.pg_cursors));
END
$$;

COMMENT ON FUNCTION tenancy.session_state() IS
    'Counts of what outlives a transaction in this session: temporary relations and functions, '
    'advisory locks, LISTEN channels, prepared statements, cursors. A tenant migration must '
    'leave them as it found them.';

CREATE OR REPLACE FUNCTION tenancy.outward_fk_actions(schema_name text)
    RETURNS oid[]
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Foreign keys of schema_name's tables to tables of other schemas with an
    -- action (CASCADE, SET NULL, SET DEFAULT) on delete or update: the
    -- schema's tables through its namespace dependencies (indexed), then
    -- their constraints.
    SELECT coalesce(pg_catalog.array_agg(k.oid), '{}')
      FROM pg_catalog.pg_namespace AS n
      JOIN pg_catalog.pg_depend AS d
        ON d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.refobjid = n.oid
       AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype = 'n'
      JOIN pg_catalog.pg_constraint AS k ON k.conrelid = d.objid AND k.contype = 'f'
      JOIN pg_catalog.pg_class AS r ON r.oid = k.confrelid
     WHERE n.nspname = schema_name AND r.relnamespace <> n.oid
       AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
$$;

COMMENT ON FUNCTION tenancy.outward_fk_actions(text) IS
    'Oids of the foreign keys of schema schema_name''s tables that reference a table of another '
    'schema with ON DELETE or ON UPDATE CASCADE, SET NULL or SET DEFAULT. Internal.';

REVOKE ALL ON FUNCTION tenancy.outward_fk_actions(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.migrator_relations()
    RETURNS oid[]
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    -- The relations of the current role in this database, through its
    -- ownership dependencies (indexed): called inside the runner, where the
    -- current role is the migrator (the tenant's, handed to it for the
    -- migration, and the scratch schemas').
    SELECT coalesce(pg_catalog.array_agg(s.objid), '{}')
      FROM pg_catalog.pg_shdepend AS s
     WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
       AND s.refobjid = (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user)
       AND s.deptype = 'o'
       AND s.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND s.dbid = (SELECT d.oid FROM pg_catalog.pg_database AS d
                      WHERE d.datname = pg_catalog.current_database())
$$;

COMMENT ON FUNCTION tenancy.migrator_relations() IS
    'Oids of the relations the current role owns in this database (the runner compares them '
    'before and after a migration). Internal.';

REVOKE ALL ON FUNCTION tenancy.migrator_relations() FROM PUBLIC;

-- The runner (the migrator's) asks both before and after each migration.
DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.outward_fk_actions(text), '
                              'tenancy.migrator_relations() TO %I', tenancy.migrator_role());
END
$$;

-- Runs one migration's SQL as the migrator. SECURITY DEFINER owned by the
-- migrator role (re-owned below), so the server refuses SET ROLE and SET
-- SESSION AUTHORIZATION inside; called only by apply_migrations.
CREATE OR REPLACE FUNCTION tenancy.execute_migration(migration_sql text, migration_path text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_me        oid;
    v_settings  jsonb;
    v_session   jsonb;
    v_changed   text;
    v_prepared  text[];
    v_name      text;
    v_table     pg_catalog.regclass;
    v_owner     pg_catalog.regrole;
    v_owned     oid[];
    v_actions   oid[];
BEGIN
    PERFORM pg_catalog.set_config('search_path', migration_path, true);
    -- What the session holds before the migration: every setting, and the
    -- state a migration could leave behind for the next tenant or for the
    -- owner's own statements after it (settings made with SET, not SET
    -- LOCAL, outlive the transaction and this function's SET clause).
    SELECT pg_catalog.jsonb_object_agg(c.name, pg_catalog.current_setting(c.name, true))
      INTO v_settings
      FROM pg_catalog.unnest(tenancy.watched_settings()) AS c(name);
    SELECT pg_catalog.array_agg(p.name) INTO v_prepared FROM pg_catalog.pg_prepared_statements AS p;
    v_session := tenancy.session_state();
    SELECT r.oid INTO v_me FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) current_user;
    -- What the migration must not add to: the migrator's relations and the
    -- schema's foreign keys with an action to other schemas (both checked
    -- after it).
    v_owned := tenancy.migrator_relations();
    v_actions := tenancy.outward_fk_actions(pg_catalog.current_setting('pgtenancy.migration_schema', true));
    EXECUTE migration_sql;
    -- Deferred constraint triggers the migration queued on its tables fire
    -- now, as the migrator, not at COMMIT as whoever commits (the kit's
    -- owner in create_tenant); the constraints stay immediate for the rest
    -- of the transaction, so later writes of it check at once too.
    -- The schema's tables through its namespace dependencies, then their
    -- constraints (both indexed): pg_constraint holds every tenant's.
    SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', n.nspname, k.conname), ', ')
      INTO v_name
      FROM pg_catalog.pg_namespace AS n
      JOIN pg_catalog.pg_depend AS d
        ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
       AND d.refobjid OPERATOR(pg_catalog.=) n.oid
       AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.deptype OPERATOR(pg_catalog.=) 'n'
      JOIN pg_catalog.pg_constraint AS k ON k.conrelid OPERATOR(pg_catalog.=) d.objid
     WHERE k.condeferrable
       AND n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_setting('pgtenancy.migration_schema', true);
    IF v_name IS NOT NULL THEN
        EXECUTE 'SET CONSTRAINTS ' || v_name || ' IMMEDIATE';
        -- A trigger fired just now can defer the constraints again and queue
        -- more events, which would then fire later as whoever runs next (the
        -- owner: an attack run did so). ALTER TABLE refuses a table with
        -- pending trigger events (55006): a no-op one (OWNER TO its owner,
        -- the migrator here) on each table with a deferrable trigger (a
        -- deferrable foreign key's are on the referenced table too) finds
        -- any that are left.
        FOR v_table, v_owner IN
            SELECT DISTINCT g.tgrelid::pg_catalog.regclass, c.relowner::pg_catalog.regrole
              FROM pg_catalog.pg_trigger AS g
              JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid
              JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
             WHERE g.tgdeferrable
               AND n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_setting('pgtenancy.migration_schema', true)
        LOOP
            BEGIN
                EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %s', v_table, v_owner);
            EXCEPTION WHEN object_in_use THEN
                RAISE EXCEPTION 'unsafe migration: it left deferred trigger events pending on % '
                                '(a trigger deferred constraints again)', v_table
                    USING ERRCODE = 'PT017',
                          HINT = 'Deferred constraint triggers of a migration fire inside it; do not '
                                 'run SET CONSTRAINTS ... DEFERRED from a trigger.';
            END;
        END LOOP;
    END IF;
    v_name := NULL;
    -- Read before anything else resolves a name through the migration's path.
    SELECT pg_catalog.string_agg(c.name, ', ' ORDER BY c.name) INTO v_changed
      FROM pg_catalog.unnest(tenancy.watched_settings()) AS c(name)
     WHERE (v_settings OPERATOR(pg_catalog.->>) c.name)
           IS DISTINCT FROM pg_catalog.current_setting(c.name, true);
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- Prepared statements are not transactional: remove the migration's
    -- before refusing it, so nothing of it stays in the session.
    FOR v_name IN SELECT p.name FROM pg_catalog.pg_prepared_statements AS p
                   WHERE p.name OPERATOR(pg_catalog.<>) ALL (coalesce(v_prepared, '{}'::text[])) LOOP
        EXECUTE pg_catalog.format('DEALLOCATE %I', v_name);
        v_changed := coalesce(v_changed || ', ', '') || 'a prepared statement ' || v_name;
    END LOOP;
    IF v_changed IS NOT NULL THEN
        RAISE EXCEPTION 'unsafe migration: it changed the setting(s) % without setting them back', v_changed
            USING ERRCODE = 'PT017',
                  HINT = 'A tenant migration leaves the session as it found it: set back what it '
                         'changes, and qualify names instead of changing search_path.';
    END IF;
    IF tenancy.session_state() OPERATOR(pg_catalog.<>) v_session THEN
        RAISE EXCEPTION 'unsafe migration: it left session state behind (temporary objects, '
                        'advisory locks, LISTEN, prepared statements or cursors)'
            USING ERRCODE = 'PT017',
                  HINT = 'Use tables of the tenant schema; release what it takes.';
    END IF;
    -- EXPLAIN ANALYZE of CREATE TABLE AS, SELECT INTO or CREATE MATERIALIZED
    -- VIEW makes a relation without firing event triggers: one the migration
    -- made outside the tenant schema is refused.
    SELECT c.oid::pg_catalog.regclass::text INTO v_name
      FROM pg_catalog.unnest(tenancy.migrator_relations()) AS a(oid)
      JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) a.oid
      JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE a.oid OPERATOR(pg_catalog.<>) ALL (v_owned)
       AND n.nspname OPERATOR(pg_catalog.<>)
           coalesce(pg_catalog.current_setting('pgtenancy.migration_schema', true), '')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unsafe migration: it created % outside its tenant schema', v_name
            USING ERRCODE = 'PT017',
                  HINT = 'A tenant migration changes its own tenant schema only (EXPLAIN ANALYZE '
                         'of CREATE TABLE AS is not seen by the fence: it is checked here).';
    END IF;
    -- A foreign key to a table outside the tenant schema with an action
    -- (CASCADE, SET NULL, SET DEFAULT) runs the tenant's code (triggers,
    -- checks, index expressions) inside whoever deletes or updates the
    -- shared row, its AFTER triggers with that role's rights (attack run of
    -- 2026-12-04): a new one is refused.
    SELECT pg_catalog.format('%I on %s', k.conname, k.conrelid::pg_catalog.regclass) INTO v_name
      FROM pg_catalog.unnest(tenancy.outward_fk_actions(
               pg_catalog.current_setting('pgtenancy.migration_schema', true))) AS a(oid)
      JOIN pg_catalog.pg_constraint AS k ON k.oid OPERATOR(pg_catalog.=) a.oid
     WHERE a.oid OPERATOR(pg_catalog.<>) ALL (v_actions)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unsafe migration: foreign key % acts on the tenant''s rows when a row '
                        'outside its schema is deleted or updated', v_name
            USING ERRCODE = 'PT017',
                  HINT = 'Its action (CASCADE, SET NULL, SET DEFAULT) would run the tenant''s '
                         'triggers as whoever changes that row: use ON DELETE/UPDATE NO ACTION '
                         'or RESTRICT for a reference to a shared table.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_default_acl AS d
                WHERE d.defaclrole OPERATOR(pg_catalog.=) v_me) THEN
        RAISE EXCEPTION 'unsafe migration: ALTER DEFAULT PRIVILEGES changes privileges beyond its tenant schema'
            USING ERRCODE = 'PT017',
                  HINT = 'Grant on the tenant''s own objects instead.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata AS l
                WHERE l.lomowner OPERATOR(pg_catalog.=) v_me) THEN
        RAISE EXCEPTION 'unsafe migration: it created a large object, which lies outside its tenant schema'
            USING ERRCODE = 'PT017',
                  HINT = 'Store the data in a table of the tenant schema.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting AS d
                WHERE d.setrole OPERATOR(pg_catalog.=) v_me) THEN
        RAISE EXCEPTION 'unsafe migration: ALTER ROLE ... SET changes settings beyond its tenant schema'
            USING ERRCODE = 'PT017';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.execute_migration(text, text) IS
    'Run migration_sql as the migrator role with search_path = migration_path (pinned again '
    'right after), then fire its deferred constraint triggers (SET CONSTRAINTS ... IMMEDIATE '
    'for every deferrable constraint of the tenant schema); raise PT017 when the migration changed a setting without setting it back, '
    'left session state behind (tenancy.session_state()), set role settings or default privileges '
    'or created a large object. Internal: executable by the owner only.';

REVOKE ALL ON FUNCTION tenancy.execute_migration(text, text) FROM PUBLIC;

-- Give the runner to the migrator. ALTER ... OWNER needs the new owner to
-- have CREATE on the schema: grant it for this statement only.
DO $$
DECLARE
    v_role name := tenancy.migrator_role();
BEGIN
    EXECUTE pg_catalog.format('GRANT CREATE ON SCHEMA tenancy TO %I', v_role);
    EXECUTE pg_catalog.format('ALTER FUNCTION tenancy.execute_migration(text, text) OWNER TO %I', v_role);
    EXECUTE pg_catalog.format('REVOKE CREATE ON SCHEMA tenancy FROM %I', v_role);
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION tenancy.execute_migration(text, text) FROM %I', v_role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.execute_migration(text, text) TO %I',
                              current_user);
END
$$;

CREATE OR REPLACE FUNCTION tenancy.migration_schema()
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT nullif(pg_catalog.current_setting('pgtenancy.migration_schema', true), '')
$$;

COMMENT ON FUNCTION tenancy.migration_schema() IS
    'Tenant schema the current transaction is migrating (set by the runner), NULL otherwise.';

CREATE OR REPLACE FUNCTION tenancy.is_migration_target(schema_name text)
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nsp  oid;
    v_role name;
BEGIN
    -- The schema the runner opened to the migrator in this transaction: a
    -- schema of the kit's owner the migrator may create in (that grant never
    -- commits), neither tenancy nor public nor one everybody may create in.
    -- PL/pgSQL, not SQL: the fence asks for every DDL command of a
    -- migration, and a SECURITY DEFINER SQL function is planned at each call;
    -- one catalog query (the schema, the kit's owner, the migrator), then
    -- the two privilege checks, which read the schema's ACL from the cache.
    IF is_migration_target.schema_name IN ('tenancy', 'public') THEN
        RETURN false;
    END IF;
    SELECT n.oid, c.migrator_role INTO v_nsp, v_role
      FROM pg_catalog.pg_namespace AS n
      JOIN pg_catalog.pg_namespace AS s ON s.nspname = 'tenancy' AND s.nspowner = n.nspowner
     CROSS JOIN tenancy.confinement AS c
     WHERE n.nspname = is_migration_target.schema_name;
    RETURN FOUND
       AND coalesce(pg_catalog.has_schema_privilege(v_role, v_nsp, 'CREATE'), false)
       AND NOT pg_catalog.has_schema_privilege('public', v_nsp, 'CREATE');
END
$$;

REVOKE ALL ON FUNCTION tenancy.is_migration_target(text) FROM PUBLIC;

COMMENT ON FUNCTION tenancy.is_migration_target(text) IS
    'True when schema_name is the tenant schema a migration of the current transaction may '
    'change; the migration cannot forge this (it rests on a grant only the runner makes).';

CREATE OR REPLACE FUNCTION tenancy.called_from_migration()
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stack text;
BEGIN
    -- The call stack cannot be forged by the code on it.
    GET DIAGNOSTICS v_stack = PG_CONTEXT;
    RETURN pg_catalog.strpos(v_stack, 'function tenancy.execute_migration(text,text)') > 0;
END
$$;

COMMENT ON FUNCTION tenancy.called_from_migration() IS
    'True when the caller runs inside a tenant migration (tenancy.execute_migration is on the '
    'call stack): kit functions a migration may call then act on its tenant schema only.';

CREATE OR REPLACE FUNCTION tenancy.fence_target(stack text)
    RETURNS text
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target  text;
    v_outside text;
    v_frame   text;
BEGIN
    -- SECURITY INVOKER, called by the fence's event-trigger functions (also
    -- invoker): current_user is the role the DDL runs as, and stack is the
    -- trigger's own call stack (GET DIAGNOSTICS ... PG_CONTEXT), read once
    -- per event. Inside a tenant migration: tenancy.execute_migration is on
    -- the call stack, which the migration cannot take off (settings it can
    -- change). LIKE, not strpos: the stack quotes the migration's SQL, and
    -- strpos counts characters up to the match (several times slower); the
    -- pattern's "_" matches any character, the "_" of the name too.
    IF stack OPERATOR(pg_catalog.~~) '%function tenancy.execute_migration(text,text)%' THEN
        -- DDL run by a kit function the migration called (row-change
        -- tracking of one of its tables, which checks its target itself and
        -- creates its function in tenancy) is the kit's. Kit functions are
        -- SECURITY DEFINER functions of the kit's owner, so only DDL run as
        -- the owner can be theirs: the migration's own DDL runs as the
        -- migrator, and the text of its statements (which the call stack
        -- quotes, and in which it could write a line that looks like a
        -- frame) is never read for it. As the owner, the innermost PL/pgSQL
        -- frame below the fence's own must be a tenancy function other than
        -- the runner; a migration cannot create functions in tenancy.
        IF current_user OPERATOR(pg_catalog.=)
           (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace AS n
             WHERE n.nspname OPERATOR(pg_catalog.=) 'tenancy') THEN
            v_frame := (SELECT f.line FROM pg_catalog.regexp_split_to_table(stack, E'\n')
                                           WITH ORDINALITY AS f(line, n)
                         WHERE f.line OPERATOR(pg_catalog.~) '^PL/pgSQL function '
                           AND f.line OPERATOR(pg_catalog.!~) '^PL/pgSQL function tenancy[.](fence_|called_from_migration[(])'
                         ORDER BY f.n LIMIT 1);
            IF v_frame OPERATOR(pg_catalog.~) '^PL/pgSQL function tenancy[.]'
               AND v_frame OPERATOR(pg_catalog.!~) '^PL/pgSQL function tenancy[.]execute_migration[(]' THEN
                RETURN NULL;
            END IF;
        END IF;
        v_target := nullif(pg_catalog.current_setting('pgtenancy.migration_schema', true), '');
        -- Trust the setting only when it names the schema the runner opened
        -- to the migrator (a grant that exists only in this transaction).
        IF v_target IS NOT NULL AND tenancy.is_migration_target(v_target) THEN
            RETURN v_target;
        END IF;
        RETURN '';  -- in a migration, but no schema it may change
    END IF;
    -- The fleet runner applies a no-transaction migration statement by
    -- statement on its own connection, as the owner (each statement checked
    -- to be CREATE INDEX CONCURRENTLY of columns or the like); its objects
    -- must lie in that tenant's schema.
    v_outside := nullif(pg_catalog.current_setting('pgtenancy.outside_migration_schema', true), '');
    IF v_outside IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name OPERATOR(pg_catalog.=) v_outside) THEN
            RETURN v_outside;
        END IF;
        RETURN '';
    END IF;
    -- Outside a migration the fence stays out of the way of everyone's DDL.
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.fence_target(text) IS
    'For the migration fence, given the call stack of its trigger function (PG_CONTEXT; SECURITY '
    'INVOKER: it reads the role the DDL runs as): NULL outside '
    'a migration and for the kit''s own DDL (run as the owner by a tenancy function); inside one, '
    'the tenant schema it may change, or the empty string when the setting names no tenant schema '
    '(everything refused).';

CREATE OR REPLACE FUNCTION tenancy.fence_target()
    RETURNS text
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stack text;
BEGIN
    -- The caller's call stack (this frame on top, which the frame test of
    -- tenancy.fence_target(text) skips like the fence's own).
    GET DIAGNOSTICS v_stack = PG_CONTEXT;
    RETURN tenancy.fence_target(v_stack);
END
$$;

COMMENT ON FUNCTION tenancy.fence_target() IS
    'tenancy.fence_target(text) of the current call stack: NULL outside a migration and for the '
    'kit''s own DDL, inside one the tenant schema it may change or the empty string.';

CREATE OR REPLACE FUNCTION tenancy.fence_refuse(command text, object text, target text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'unsafe migration: % %', command,
        CASE WHEN object IS NULL THEN 'is not allowed in a tenant migration'
             ELSE pg_catalog.format('on %s is outside tenant schema %s', object,
                                    coalesce(nullif(target, ''), '(none)')) END
        USING ERRCODE = 'PT017',
              HINT = 'A tenant migration changes its own tenant schema only; change shared '
                     'schemas with a shared migration (pgtenancy migrate --shared-dir).';
END
$$;

COMMENT ON FUNCTION tenancy.fence_refuse(text, text, text) IS
    'Raise PT017 for command on object (NULL: the command itself) outside tenant schema target.';

CREATE OR REPLACE FUNCTION tenancy.fence_in_target(object_schema text, target text)
    RETURNS boolean
    LANGUAGE sql
    STABLE
AS $$
    -- Temporary objects are refused too: they outlive the migration in the
    -- session, where the next tenant's migration or the owner would meet them.
    -- No SET clause, so the fence's triggers inline it (a SQL function with
    -- one is run by the SQL function executor at every call); the operator
    -- qualified, so a migration's own "=" cannot answer for it.
    SELECT object_schema OPERATOR(pg_catalog.=) target
$$;

COMMENT ON FUNCTION tenancy.fence_in_target(text, text) IS
    'True when an object in schema object_schema is the current migration''s to change.';

CREATE OR REPLACE FUNCTION tenancy.fence_start_tags()
    RETURNS text[]
    LANGUAGE sql
    IMMUTABLE
AS $$
    -- No SET clause and every name qualified: the fence's triggers inline
    -- it, and every role's DDL may reach them (executable by PUBLIC).
    SELECT ARRAY['CREATE EXTENSION', 'ALTER EXTENSION', 'DROP EXTENSION',
                 'CREATE SCHEMA', 'ALTER SCHEMA', 'DROP SCHEMA',
                 'ALTER DEFAULT PRIVILEGES',
                 'CREATE FOREIGN DATA WRAPPER', 'ALTER FOREIGN DATA WRAPPER',
                 'DROP FOREIGN DATA WRAPPER', 'CREATE SERVER', 'ALTER SERVER', 'DROP SERVER',
                 'CREATE USER MAPPING', 'ALTER USER MAPPING', 'DROP USER MAPPING',
                 'IMPORT FOREIGN SCHEMA',
                 'CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION',
                 'CREATE SUBSCRIPTION', 'ALTER SUBSCRIPTION', 'DROP SUBSCRIPTION',
                 'CREATE CAST', 'DROP CAST', 'CREATE LANGUAGE', 'ALTER LANGUAGE', 'DROP LANGUAGE',
                 'CREATE TRANSFORM', 'DROP TRANSFORM', 'CREATE ACCESS METHOD',
                 'DROP ACCESS METHOD', 'SECURITY LABEL']::pg_catalog.text[]
$$;

COMMENT ON FUNCTION tenancy.fence_start_tags() IS
    'Command tags that a tenant migration may never run (refused by tenancy.fence_ddl_start '
    'before they start).';

CREATE OR REPLACE FUNCTION tenancy.fence_ddl_start()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stack  text;
    v_target text;
BEGIN
    -- This runs as the role the DDL runs as (SECURITY INVOKER: the fence
    -- tells the kit's own DDL by it). The event trigger hears only the
    -- commands refused outright in a tenant migration
    -- (tenancy.fence_start_tags()) and those that can run CONCURRENTLY;
    -- every other command,
    -- also every command of a migration without a tenant schema, is checked
    -- when it ends (tenancy.fence_ddl_end), where a refusal rolls it back.
    -- CONCURRENTLY commits before it ends: the fleet runner runs those
    -- statements outside a migration, with pgtenancy.outside_migration_schema
    -- set, and only then is there anything to check before they start.
    IF TG_TAG IN ('CREATE INDEX', 'DROP INDEX', 'REINDEX')
       AND coalesce(pg_catalog.current_setting('pgtenancy.outside_migration_schema', true), '') = '' THEN
        RETURN;
    END IF;
    -- Outside a migration it leaves at once, calling nothing of the kit:
    -- every role's DDL of these kinds passes through here. The stack is
    -- read once per event and handed to fence_target.
    GET DIAGNOSTICS v_stack = PG_CONTEXT;
    IF v_stack OPERATOR(pg_catalog.!~~) '%function tenancy.execute_migration(text,text)%'
       AND coalesce(pg_catalog.current_setting('pgtenancy.outside_migration_schema', true), '') = '' THEN
        RETURN;
    END IF;
    v_target := tenancy.fence_target(v_stack);
    IF v_target IS NULL THEN
        RETURN;
    END IF;
    IF TG_TAG IN ('CREATE INDEX', 'DROP INDEX', 'REINDEX') THEN
        -- Refused before it starts only without a tenant schema.
        IF v_target = '' THEN
            PERFORM tenancy.fence_refuse(TG_TAG, 'an object', v_target);
        END IF;
    ELSIF TG_TAG OPERATOR(pg_catalog.=) ANY (tenancy.fence_start_tags()) THEN
        PERFORM tenancy.fence_refuse(TG_TAG, NULL, v_target);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.fence_ddl_start() IS
    'Event trigger (ddl_command_start of tenancy.fence_start_tags() and the index commands): '
    'during a tenant migration '
    'refuse, with PT017, commands that are never a tenant''s (extensions, schemas, default '
    'privileges, foreign servers, publications, casts, languages, security labels); before a '
    'CONCURRENTLY index command of the fleet runner, refuse it when no tenant schema is set.';

CREATE OR REPLACE FUNCTION tenancy.fence_ddl_end()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stack  text;
    v_target text;
    v_cmd    record;
BEGIN
    -- This runs as the role the DDL runs as (SECURITY INVOKER: the fence
    -- tells the kit's own DDL by it). Outside a migration it leaves at once,
    -- calling nothing of the kit: every role's DDL passes through here.
    -- The stack is read once per event and handed to fence_target.
    GET DIAGNOSTICS v_stack = PG_CONTEXT;
    IF v_stack OPERATOR(pg_catalog.!~~) '%function tenancy.execute_migration(text,text)%'
       AND coalesce(pg_catalog.current_setting('pgtenancy.outside_migration_schema', true), '') = '' THEN
        RETURN;
    END IF;
    v_target := tenancy.fence_target(v_stack);
    IF v_target IS NULL THEN
        RETURN;
    END IF;
    -- In a migration that names no tenant schema every command is refused
    -- (here, not before it starts: tenancy.fence_ddl_start hears few tags,
    -- and the refusal rolls the command back).
    IF v_target = '' THEN
        PERFORM tenancy.fence_refuse(TG_TAG, 'an object', v_target);
    END IF;
    FOR v_cmd IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
        -- GRANT and REVOKE name no object here, only its kind: privileges on
        -- schemas, databases, languages, servers, large objects, ... are
        -- never a tenant's (on its own tables they are; on other tables
        -- the server grants nothing, as the migrator owns none).
        IF v_cmd.command_tag IN ('GRANT', 'REVOKE')
           AND v_cmd.object_type NOT IN ('TABLE', 'SEQUENCE', 'FUNCTION', 'PROCEDURE', 'ROUTINE',
                                         'TYPE', 'DOMAIN', 'COLUMN', 'FOREIGN TABLE', 'VIEW') THEN
            PERFORM tenancy.fence_refuse(v_cmd.command_tag || ' ON ' || v_cmd.object_type, NULL,
                                         v_target);
        END IF;
        IF v_cmd.schema_name IS NOT NULL
           AND NOT tenancy.fence_in_target(v_cmd.schema_name, v_target) THEN
            PERFORM tenancy.fence_refuse(v_cmd.command_tag, v_cmd.object_identity, v_target);
        END IF;
        -- A function, operator, type (CREATE TYPE, CREATE DOMAIN, a range's
        -- multirange) or relation named like a built-in one would be found
        -- before it wherever the tenant schema comes first in a path, and run
        -- as whoever calls it there (a domain's check on a cast to it, a
        -- view's functions). (The catalogs are read for those commands only:
        -- the outer test needs no query.)
        CONTINUE WHEN v_cmd.classid NOT IN ('pg_catalog.pg_proc'::pg_catalog.regclass,
                                            'pg_catalog.pg_operator'::pg_catalog.regclass,
                                            'pg_catalog.pg_type'::pg_catalog.regclass)
                      AND (v_cmd.classid <> 'pg_catalog.pg_class'::pg_catalog.regclass
                           OR pg_catalog.strpos(v_cmd.object_identity, '.pg_') = 0);
        IF v_cmd.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p, pg_catalog.pg_proc AS b
                        WHERE p.oid = v_cmd.objid AND b.proname = p.proname
                          AND b.pronamespace = 'pg_catalog'::pg_catalog.regnamespace)
           OR v_cmd.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_operator AS o, pg_catalog.pg_operator AS b
                        WHERE o.oid = v_cmd.objid AND b.oprname = o.oprname
                          AND b.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace)
           OR v_cmd.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_type AS t, pg_catalog.pg_type AS b
                        WHERE t.oid IN (SELECT v_cmd.objid
                                        UNION ALL
                                        -- a range's multirange, which has a name of its own
                                        SELECT r.rngmultitypid FROM pg_catalog.pg_range AS r
                                         WHERE r.rngtypid = v_cmd.objid)
                          AND b.typname = t.typname
                          AND b.typnamespace = 'pg_catalog'::pg_catalog.regnamespace)
           -- A table or view named like a catalog relation (pg_roles, pg_class,
           -- ...: every one of them starts with pg_, so only such names cost a
           -- query).
           OR v_cmd.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
           AND pg_catalog.strpos(v_cmd.object_identity, '.pg_') > 0
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c, pg_catalog.pg_class AS b
                        WHERE c.oid = v_cmd.objid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                          AND b.relname = c.relname
                          AND b.relnamespace = 'pg_catalog'::pg_catalog.regnamespace) THEN
            RAISE EXCEPTION 'unsafe migration: % shadows a built-in function, operator, type or relation of the same name',
                v_cmd.object_identity
                USING ERRCODE = 'PT017',
                      HINT = 'Give it a name of its own.';
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.fence_ddl_end() IS
    'Event trigger (ddl_command_end): during a tenant migration refuse, with PT017, any command '
    'whose objects lie outside the tenant schema being migrated, and every command when no '
    'tenant schema is set.';

CREATE OR REPLACE FUNCTION tenancy.fence_sql_drop()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stack  text;
    v_target text;
    v_obj    record;
BEGIN
    -- This runs as the role the DDL runs as (SECURITY INVOKER: the fence
    -- tells the kit's own DDL by it). Outside a migration it leaves at once,
    -- calling nothing of the kit: every role's DDL passes through here.
    -- The stack is read once per event and handed to fence_target.
    GET DIAGNOSTICS v_stack = PG_CONTEXT;
    IF v_stack OPERATOR(pg_catalog.!~~) '%function tenancy.execute_migration(text,text)%'
       AND coalesce(pg_catalog.current_setting('pgtenancy.outside_migration_schema', true), '') = '' THEN
        RETURN;
    END IF;
    v_target := tenancy.fence_target(v_stack);
    IF v_target IS NULL THEN
        RETURN;
    END IF;
    FOR v_obj IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        -- A dropped table takes its TOAST table and index (schema pg_toast)
        -- with it; they cannot be dropped on their own, and the table itself
        -- is checked.
        CONTINUE WHEN v_obj.schema_name = 'pg_toast' AND NOT v_obj.original;
        -- Objects without a schema (schemas, extensions, casts, ...) are
        -- never a tenant's; policies, triggers, rules and constraints carry
        -- their table's schema in the identity.
        IF (v_obj.schema_name IS NULL
            AND v_obj.object_type NOT IN ('policy', 'trigger', 'rule', 'table constraint',
                                          'domain constraint', 'default value', 'default acl'))
           OR (v_obj.schema_name IS NOT NULL
               AND NOT tenancy.fence_in_target(v_obj.schema_name, v_target)) THEN
            PERFORM tenancy.fence_refuse('DROP ' || pg_catalog.upper(v_obj.object_type),
                                         v_obj.object_identity, v_target);
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.fence_sql_drop() IS
    'Event trigger (sql_drop): during a tenant migration refuse, with PT017, dropping (also by '
    'CASCADE) anything outside the tenant schema being migrated.';

REVOKE ALL ON FUNCTION tenancy.fence_target() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.fence_target(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.fence_ddl_start() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.fence_ddl_end() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.fence_sql_drop() FROM PUBLIC;

-- The fence's functions run as the role the DDL runs as: in a migration
-- the migrator (the kit's own DDL runs as the owner).
DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.fence_target() TO %I',
                              tenancy.migrator_role());
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.fence_target(text) TO %I',
                              tenancy.migrator_role());
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.is_migration_target(text) TO %I',
                              tenancy.migrator_role());
END
$$;

-- Event triggers need a superuser. Without one the privilege fence alone
-- holds, and the doctor says so.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RETURN;
    END IF;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_fence_ddl_start;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_fence_ddl_end;
    DROP EVENT TRIGGER IF EXISTS pgtenancy_fence_sql_drop;
    -- Only the tags refused outright and the CONCURRENTLY-capable ones:
    -- every other command of a migration is checked at ddl_command_end.
    EXECUTE pg_catalog.format(
        'CREATE EVENT TRIGGER pgtenancy_fence_ddl_start ON ddl_command_start WHEN TAG IN (%s) '
        'EXECUTE FUNCTION tenancy.fence_ddl_start()',
        (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(t), ', ')
           FROM pg_catalog.unnest(tenancy.fence_start_tags()
                                  || ARRAY['CREATE INDEX', 'DROP INDEX']
                                  || CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 170000
                                          THEN ARRAY['REINDEX'] ELSE '{}'::text[] END) AS t));
    CREATE EVENT TRIGGER pgtenancy_fence_ddl_end ON ddl_command_end
        EXECUTE FUNCTION tenancy.fence_ddl_end();
    CREATE EVENT TRIGGER pgtenancy_fence_sql_drop ON sql_drop
        EXECUTE FUNCTION tenancy.fence_sql_drop();
    UPDATE tenancy.confinement SET fence = true;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.check_tenant_grants(schema_name text)
    RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_migrator oid := to_regrole(quote_ident(tenancy.migrator_role()))::oid;
    v_owner    oid := (SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
    v_nsp      oid := to_regnamespace(quote_ident(schema_name))::oid;
    v_obj      record;
BEGIN
    -- The application roles get their privileges from grant_app_role: a
    -- migration must not grant the tenant's objects to PUBLIC or to other
    -- roles.
    -- The schema's objects through its namespace dependencies (indexed);
    -- only those with privileges of their own (a NULL ACL grants nothing
    -- beyond the owner's defaults) are exploded.
    SELECT format('%s to %s', o.objid, CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                            ELSE pg_get_userbyid(a.grantee) END) AS name
      INTO v_obj
      FROM (SELECT d.objid, c.relacl AS acl
              FROM pg_depend AS d JOIN pg_class AS c ON c.oid = d.objid
             WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp
               AND d.deptype = 'n' AND d.classid = 'pg_class'::regclass AND c.relacl IS NOT NULL
            UNION ALL
            SELECT d.objid, p.proacl
              FROM pg_depend AS d JOIN pg_proc AS p ON p.oid = d.objid
             WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp
               AND d.deptype = 'n' AND d.classid = 'pg_proc'::regclass AND p.proacl IS NOT NULL
            UNION ALL
            SELECT d.objid, t.typacl
              FROM pg_depend AS d JOIN pg_type AS t ON t.oid = d.objid
             WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp
               AND d.deptype = 'n' AND d.classid = 'pg_type'::regclass AND t.typacl IS NOT NULL) AS o
      CROSS JOIN LATERAL aclexplode(o.acl) AS a
     WHERE a.grantee NOT IN (v_owner, v_migrator)
       -- The role's name computed once (a sub-select), when a grant is
       -- found, not for each row of pg_authid (every tenant role of the
       -- cluster).
       AND a.grantee NOT IN (SELECT r.oid FROM pg_roles AS r
                              WHERE r.rolname = (SELECT tenancy.tenant_role(schema_name)))
       AND a.grantee NOT IN (SELECT r.oid FROM tenancy.app_roles AS ar
                               JOIN pg_roles AS r ON r.rolname = ar.role_name)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unsafe migration: it granted privileges on a tenant object (%)', v_obj.name
            USING ERRCODE = 'PT017',
                  HINT = 'The kit grants the application roles (grant_app_role); grant nothing else.';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.check_tenant_grants(text) IS
    'Raise PT017 when an object of tenant schema schema_name is granted to PUBLIC or to a role '
    'other than the kit''s owner, the migrator, the tenant''s own role and the application roles. Internal.';

REVOKE ALL ON FUNCTION tenancy.check_tenant_grants(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.reown_schema(
    schema_name  text,
    from_roles   oid[],
    to_role      name,
    invoker_views boolean
)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nsp   oid := to_regnamespace(quote_ident(schema_name))::oid;
    v_obj   record;
    v_kind  "char";
    v_count integer := 0;
BEGIN
    IF v_nsp IS NULL THEN
        RETURN 0;
    END IF;
    -- Everything in the schema, found through its namespace dependencies
    -- (indexed), not a scan of the catalogs.
    FOR v_obj IN
        SELECT d.classid, d.objid FROM pg_depend AS d
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp AND d.deptype = 'n'
    LOOP
        IF v_obj.classid = 'pg_class'::regclass THEN
            -- Its kind read once (one catalog query per relation).
            SELECT c.relkind INTO v_kind FROM pg_class AS c
             WHERE c.oid = v_obj.objid AND c.relowner = ANY (from_roles)
               AND (c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
                    OR (c.relkind = 'S' AND NOT EXISTS (
                            SELECT 1 FROM pg_depend AS o
                             WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid
                               AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i'))));
            CONTINUE WHEN NOT FOUND;
            EXECUTE format('ALTER %s %s OWNER TO %I',
                CASE v_kind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                            WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                            WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END,
                CASE WHEN v_kind = 'c'
                     THEN v_obj.objid::regclass::text::regtype::text
                     ELSE v_obj.objid::regclass::text END,
                to_role);
            -- A view given back reads with its caller's rights, so it never
            -- lends its owner's to the application.
            IF invoker_views AND v_kind = 'v' THEN
                EXECUTE format('ALTER VIEW %s SET (security_invoker = true)', v_obj.objid::regclass);
            END IF;
        ELSIF v_obj.classid = 'pg_proc'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_proc AS p
                                       WHERE p.oid = v_obj.objid AND p.proowner = ANY (from_roles));
            EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_obj.objid::regprocedure, to_role);
        ELSIF v_obj.classid = 'pg_type'::regclass THEN
            -- Also a composite type made by CREATE TYPE (its relation has no
            -- namespace dependency of its own) and a range's multirange
            -- (ALTER TYPE of the range leaves it to its owner on PostgreSQL
            -- 15); read now, so one given with its range is seen as given.
            SELECT t.typtype INTO v_kind FROM pg_type AS t
             WHERE t.oid = v_obj.objid AND t.typowner = ANY (from_roles)
               AND (t.typtype IN ('d', 'e', 'r', 'm')
                    OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class AS r
                                                     WHERE r.oid = t.typrelid AND r.relkind = 'c')));
            CONTINUE WHEN NOT FOUND;
            IF v_kind = 'm' THEN
                BEGIN
                    EXECUTE format('ALTER TYPE %s OWNER TO %I', v_obj.objid::regtype, to_role);
                EXCEPTION WHEN wrong_object_type OR feature_not_supported THEN
                    -- A release that alters a multirange only with its
                    -- range: the range (also in this schema) takes it along.
                    CONTINUE;
                END;
            ELSE
                EXECUTE format('ALTER %s %s OWNER TO %I', CASE v_kind WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                               v_obj.objid::regtype, to_role);
            END IF;
        ELSIF v_obj.classid = 'pg_operator'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_operator AS o
                                       WHERE o.oid = v_obj.objid AND o.oprowner = ANY (from_roles));
            EXECUTE format('ALTER OPERATOR %s OWNER TO %I', v_obj.objid::regoperator, to_role);
        ELSIF v_obj.classid = 'pg_collation'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_collation AS o
                                       WHERE o.oid = v_obj.objid AND o.collowner = ANY (from_roles));
            EXECUTE format('ALTER COLLATION %s OWNER TO %I', v_obj.objid::regcollation, to_role);
        ELSIF v_obj.classid = 'pg_statistic_ext'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_statistic_ext AS o
                                       WHERE o.oid = v_obj.objid AND o.stxowner = ANY (from_roles));
            EXECUTE format('ALTER STATISTICS %I.%I OWNER TO %I', schema_name,
                           (SELECT o.stxname FROM pg_statistic_ext AS o WHERE o.oid = v_obj.objid), to_role);
        ELSIF v_obj.classid = 'pg_ts_config'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_ts_config AS o
                                       WHERE o.oid = v_obj.objid AND o.cfgowner = ANY (from_roles));
            EXECUTE format('ALTER TEXT SEARCH CONFIGURATION %s OWNER TO %I', v_obj.objid::regconfig, to_role);
        ELSIF v_obj.classid = 'pg_ts_dict'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_ts_dict AS o
                                       WHERE o.oid = v_obj.objid AND o.dictowner = ANY (from_roles));
            EXECUTE format('ALTER TEXT SEARCH DICTIONARY %s OWNER TO %I', v_obj.objid::regdictionary, to_role);
        ELSIF v_obj.classid = 'pg_conversion'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_conversion AS o
                                       WHERE o.oid = v_obj.objid AND o.conowner = ANY (from_roles));
            EXECUTE format('ALTER CONVERSION %I.%I OWNER TO %I', schema_name,
                           (SELECT o.conname FROM pg_conversion AS o WHERE o.oid = v_obj.objid), to_role);
        ELSE
            CONTINUE;
        END IF;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.reown_schema(text, oid[], name, boolean) IS
    'Give every object of schema schema_name owned by one of from_roles to to_role (tables, '
    'views, sequences not owned by a column, types (composite, domain, enum, range, multirange), '
    'functions, operators, collations, statistics, '
    'text search objects, conversions; indexes and owned sequences follow their table); with '
    'invoker_views make its views security_invoker. Returns how many changed owner. Internal.';

REVOKE ALL ON FUNCTION tenancy.reown_schema(text, oid[], name, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.hand_over_schema(schema_name text, to_migrator boolean)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_migrator oid := to_regrole(quote_ident(tenancy.migrator_role()))::oid;
    v_owner    oid := (SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
    v_rest     name := tenancy.rest_owner(schema_name);
    v_from     oid[];
    v_to       name;
    v_nsp      oid := to_regnamespace(quote_ident(schema_name))::oid;
    v_obj      record;
BEGIN
    IF v_nsp IS NULL THEN
        RETURN 0;
    END IF;
    IF to_migrator THEN
        -- From the tenant's role, or from the kit's owner (a tenant made
        -- before it had a role of its own).
        v_from := ARRAY[v_owner, (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = v_rest)];
        v_to := tenancy.migrator_role();
    ELSE
        v_from := ARRAY[v_migrator];
        v_to := v_rest;
        -- Given back to the owner, these would run with the owner's rights
        -- for whoever calls them: never from a tenant migration. The
        -- schema's functions through its namespace dependencies (indexed;
        -- pg_proc has no index on the namespace alone, and a scan reads
        -- every function of the database).
        SELECT p.oid::regprocedure::text AS name INTO v_obj
          FROM pg_depend AS d JOIN pg_proc AS p ON p.oid = d.objid
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp
           AND d.deptype = 'n' AND d.classid = 'pg_proc'::regclass
           AND p.prosecdef AND p.proowner = v_migrator
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'unsafe migration: SECURITY DEFINER function % in a tenant schema would run with the owner''s rights',
                v_obj.name
                USING ERRCODE = 'PT017',
                      HINT = 'Declare it SECURITY INVOKER (the default).';
        END IF;
        SELECT format('%s on %s', r.rulename, r.ev_class::regclass) AS name INTO v_obj
          FROM pg_rewrite AS r JOIN pg_class AS c ON c.oid = r.ev_class
         WHERE c.relnamespace = v_nsp AND r.rulename <> '_RETURN'
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'unsafe migration: rule % would run with the owner''s rights', v_obj.name
                USING ERRCODE = 'PT017',
                      HINT = 'Use a trigger instead of a rule.';
        END IF;
    END IF;
    -- Privileges on the tenant's objects are the kit's to give.
    IF NOT to_migrator THEN
        PERFORM tenancy.check_tenant_grants(schema_name);
    END IF;
    RETURN tenancy.reown_schema(schema_name, v_from, v_to, NOT to_migrator);
END
$$;

COMMENT ON FUNCTION tenancy.hand_over_schema(text, boolean) IS
    'Give the objects of tenant schema schema_name to the migrator role (to_migrator) for the '
    'span of a migration, or afterwards to their owner at rest (tenancy.rest_owner: the tenant''s '
    'own role), so at rest the migrator owns nothing and a migration reaches no other tenant. Giving back raises PT017 for a SECURITY '
    'DEFINER function or a rule the migration created (they would run with the owner''s '
    'rights) and makes views security_invoker. Returns how many objects changed owner. '
    'Internal: not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.hand_over_schema(text, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.grant_shared_to_migrator()
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role   name;
    v_schema record;
    v_table  record;
BEGIN
    -- The migrator, and the tenants' owner roles at rest through their
    -- group: what a migration may use, code it planted may use later.
    FOR v_role IN
        SELECT r.rolname FROM pg_catalog.pg_roles AS r
         WHERE r.rolname IN (tenancy.migrator_role(), tenancy.tenant_group_role())
    LOOP
        -- Migrations may read and reference what the shared schemas hold (a
        -- foreign key to public.plans needs REFERENCES, a type of partman needs
        -- USAGE on partman): every schema of the owner's that is no tenant's,
        -- not the kit's and not the system's. Guarded tables hold every
        -- tenant's rows, so they may only be referenced. Tables the owner
        -- creates later are covered by default privileges; objects of other
        -- roles need grants of their own.
        FOR v_schema IN
            SELECT n.oid, n.nspname
              FROM pg_catalog.pg_namespace AS n
             WHERE n.nspname NOT IN ('tenancy', 'information_schema')
               AND n.nspname NOT LIKE 'pg\_%'
               AND n.nspname NOT LIKE 'tenancy\_check\_%'
               AND n.nspname <> 'tenancy_scratch'
               AND NOT starts_with(n.nspname, tenancy.schema_prefix())
               AND NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = n.nspname)
               AND pg_catalog.has_schema_privilege(n.oid, 'USAGE WITH GRANT OPTION')
        LOOP
            EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', v_schema.nspname, v_role);
            FOR v_table IN
                SELECT c.oid::regclass AS name,
                       EXISTS (SELECT 1 FROM tenancy.guarded_tables AS g WHERE g.table_name = c.oid) AS guarded
                  FROM pg_catalog.pg_class AS c
                 WHERE c.relnamespace = v_schema.oid
                   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                   AND pg_catalog.has_table_privilege(c.oid, 'SELECT WITH GRANT OPTION')
            LOOP
                IF v_table.guarded THEN
                    EXECUTE pg_catalog.format('REVOKE SELECT ON TABLE %s FROM %I', v_table.name, v_role);
                    EXECUTE pg_catalog.format('GRANT REFERENCES ON TABLE %s TO %I', v_table.name, v_role);
                ELSE
                    EXECUTE pg_catalog.format('GRANT SELECT, REFERENCES ON TABLE %s TO %I',
                                              v_table.name, v_role);
                END IF;
            END LOOP;
            IF pg_catalog.has_schema_privilege(v_schema.oid, 'CREATE') THEN
                EXECUTE pg_catalog.format(
                    'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, REFERENCES ON TABLES TO %I',
                    v_schema.nspname, v_role);
            END IF;
        END LOOP;
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.grant_shared_to_migrator() IS
    'Let tenant migrations (and the tenants'' owner roles, through tenancy.tenant_group_role()) use the shared schemas (every schema of the owner''s that is no '
    'tenant''s, not tenancy and not a system schema) and read and reference their tables '
    '(REFERENCES only for guarded tables), now and for tables the owner creates later. Run at '
    'install and after shared migrations. Internal: not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.grant_shared_to_migrator() FROM PUBLIC;

SELECT tenancy.grant_shared_to_migrator();

-- Shared-schema migrations ---------------------------------------------------
--
-- The sanctioned way to change shared schemas (public's tables, extensions,
-- a second schema): ordered files applied once per database, by the owner,
-- with the owner's rights, recorded here. Tenant migrations never do this.

CREATE TABLE IF NOT EXISTS tenancy.shared_migrations (
    version    text COLLATE "C" NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    applied_by name        NOT NULL DEFAULT current_user,
    CONSTRAINT shared_migrations_pkey PRIMARY KEY (version)
);

COMMENT ON TABLE tenancy.shared_migrations IS
    'Shared-schema migrations applied to this database once each, in version order (C collation).';

CREATE OR REPLACE FUNCTION tenancy.apply_shared_migration(version text, sql text)
    RETURNS tenancy.shared_migrations
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_row      tenancy.shared_migrations;
    v_checksum text;
BEGIN
    IF version IS NULL OR version !~ '^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid shared migration version %', coalesce(quote_literal(version), 'NULL')
            USING ERRCODE = 'PT008',
                  HINT = 'Use letters, digits, "_", "." or "-", such as 0001 or 0002_add_plans.';
    END IF;
    IF sql IS NULL OR btrim(sql) = '' THEN
        RAISE EXCEPTION 'shared migration % has no SQL', version
            USING ERRCODE = 'PT008';
    END IF;
    v_checksum := encode(sha256(convert_to(sql, 'UTF8')), 'hex');
    -- One runner at a time per database, with a lock the application role
    -- cannot take (an advisory lock anyone could hold, blocking every run).
    LOCK TABLE tenancy.shared_migrations IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_row FROM tenancy.shared_migrations AS s WHERE s.version = version;
    IF FOUND THEN
        IF v_row.checksum = v_checksum THEN
            RETURN v_row;  -- applied already: a no-op
        END IF;
        RAISE EXCEPTION 'shared migration % was applied with different SQL', version
            USING ERRCODE = 'PT008',
                  HINT = 'Applied migrations never change: add a new version instead.';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.shared_migrations AS s WHERE s.version > version) THEN
        RAISE EXCEPTION 'shared migration % sorts before the latest applied version %', version,
            (SELECT max(s.version) FROM tenancy.shared_migrations AS s)
            USING ERRCODE = 'PT008',
                  HINT = 'Versions are applied in C-collation order: use a later version.';
    END IF;
    -- With the caller's rights (it is not SECURITY DEFINER), public first.
    PERFORM set_config('search_path', 'public, pg_catalog, pg_temp', true);
    EXECUTE sql;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    INSERT INTO tenancy.shared_migrations (version, checksum)
    VALUES (version, v_checksum)
    RETURNING * INTO v_row;
    -- Tenant migrations may read and reference the new shared tables.
    PERFORM tenancy.grant_shared_to_migrator();
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.apply_shared_migration(text, text) IS
    'Apply shared-schema migration sql as version (once: the same version with the same SQL is '
    'a no-op) with the caller''s rights and search_path public, pg_catalog; record it in '
    'tenancy.shared_migrations. Raises PT008 for a bad version, changed SQL or an out-of-order '
    'version; on any error nothing is recorded or changed. Owner only.';

REVOKE ALL ON FUNCTION tenancy.apply_shared_migration(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.latest_shared_migration()
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT max(s.version) FROM tenancy.shared_migrations AS s
$$;

COMMENT ON FUNCTION tenancy.latest_shared_migration() IS
    'Latest applied shared-schema migration version, NULL when none.';
