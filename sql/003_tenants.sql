-- pgtenancy — 003: tenant slugs, tenant migrations, provisioning and
-- the lifecycle functions, with the registry triggers that emit events.
--
-- Functions that create or drop schemas are SECURITY DEFINER, owned by the
-- installing role, and pin search_path; they are not granted to PUBLIC.

CREATE OR REPLACE FUNCTION tenancy.validate_slug(slug text)
    RETURNS text
    LANGUAGE plpgsql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer := 63 - octet_length(tenancy.schema_prefix());
BEGIN
    IF validate_slug.slug IS NULL THEN
        RAISE EXCEPTION 'invalid tenant slug: NULL'
            USING ERRCODE = 'PT001';
    END IF;
    IF validate_slug.slug !~ '^[a-z][a-z0-9_]*$' THEN
        RAISE EXCEPTION 'invalid tenant slug %: use a lowercase letter, then lowercase letters, digits or "_"',
            quote_literal(validate_slug.slug)
            USING ERRCODE = 'PT001';
    END IF;
    IF octet_length(validate_slug.slug) > v_max THEN
        RAISE EXCEPTION 'invalid tenant slug %: longer than % characters', quote_literal(validate_slug.slug), v_max
            USING ERRCODE = 'PT001',
                  DETAIL = 'The schema name, prefix included, must fit in 63 bytes.';
    END IF;
    IF validate_slug.slug IN ('public', 'tenancy', 'information_schema') OR validate_slug.slug LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'invalid tenant slug %: the name is reserved', quote_literal(validate_slug.slug)
            USING ERRCODE = 'PT001';
    END IF;
    RETURN validate_slug.slug;
END
$$;

COMMENT ON FUNCTION tenancy.validate_slug(text) IS
    'Return slug when it is a valid tenant slug: ^[a-z][a-z0-9_]*$, at most 63 bytes minus the '
    'schema prefix, not public, tenancy, information_schema or pg_*. Raises PT001 otherwise.';

-- Citus: the node a distributed tenant sat on before a migration made its
-- schema local (tenancy.citus_undistribute_schema). Citus places a schema
-- distributed again by its colocation id, not where it was, and
-- citus_schema_move cannot run in the migration's transaction: the fleet
-- runner and Tenancy.migrate_tenant move the tenant back after the commit
-- (tenancy.move_tenant, which clears the row); the doctor reports a row
-- whose tenant sits elsewhere. A row exists only while the tenant is (or
-- may be) away from its node.
CREATE TABLE IF NOT EXISTS tenancy.tenant_placements (
    tenant_id   uuid        NOT NULL,
    node_name   text        NOT NULL,
    node_port   integer     NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- No foreign key: the registry refuses TRUNCATE with its own error;
    -- readers join the registry, so a row of a dropped tenant is inert.
    CONSTRAINT tenant_placements_pkey PRIMARY KEY (tenant_id)
);

COMMENT ON TABLE tenancy.tenant_placements IS
    'Citus: the node (node_name, node_port) each distributed schema tenant belongs on while a '
    'migration may have left it elsewhere; cleared when it is moved back.';

-- Citus: a tenant schema is a distributed schema (schema-based sharding),
-- all its tables in one colocation group on one node. Tables created inside
-- a function are never distributed by Citus itself (whatever
-- citus.enable_schema_based_sharding says), so provisioning and every
-- migration end here. Plain PostgreSQL pays one catalog lookup.
CREATE OR REPLACE FUNCTION tenancy.citus_distribute_schema(p_schema text)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sibling regclass;
    v_table   regclass;
    v_count   integer;
    v_done    boolean;
    -- Citus's catalogs exist only with Citus: named through format(), so
    -- these statements are planned only when they run.
    v_local   text := format('SELECT c.oid::regclass FROM pg_class AS c
                               WHERE c.relnamespace = $1::regnamespace AND c.relkind IN (''r'', ''p'')
                                 AND NOT c.relispartition
                                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.%I AS p
                                                  WHERE p.logicalrelid = c.oid)
                               ORDER BY c.oid', 'pg_dist_partition');
BEGIN
    -- Not for add_migration's scratch schemas (rolled back anyway).
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
       OR p_schema LIKE 'tenancy\_check\_%' THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT min(p.logicalrelid::oid)::regclass FROM pg_catalog.%I AS p
                      JOIN pg_class AS c ON c.oid = p.logicalrelid
                     WHERE c.relnamespace = $1::regnamespace', 'pg_dist_partition')
        INTO v_sibling USING p_schema;
    EXECUTE format('SELECT count(*)::integer FROM (%s) AS l', v_local) INTO v_count USING p_schema;
    IF v_count = 0 AND v_sibling IS NOT NULL THEN
        RETURN 0;
    END IF;
    IF v_sibling IS NULL THEN
        -- Nothing distributed yet: distribute the whole schema, which creates
        -- its colocation group and places it on a node. create_tenant turns
        -- citus.enable_schema_based_sharding off while it provisions: a
        -- schema distributed at CREATE SCHEMA keeps the tables a function
        -- creates local, and Citus offers no way to move them in.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM pg_catalog.%I WHERE schemaid = $1::regnamespace)',
                       'pg_dist_schema')
            INTO v_done USING p_schema;
        IF v_done AND v_count > 0 THEN
            RAISE EXCEPTION 'schema % was distributed when it was created, its tables were not', p_schema
                USING ERRCODE = '0A000',
                      HINT = 'Create tenants with tenancy.create_tenant, which distributes the schema '
                             'after creating its tables, or SET citus.enable_schema_based_sharding = off.';
        END IF;
        IF v_done THEN
            RETURN 0;
        END IF;
        EXECUTE format('SELECT pg_catalog.%I($1::regnamespace)', 'citus_schema_distribute') USING p_schema;
        -- Back on the node it was recorded on (tenancy.tenant_placements):
        -- nothing left to move after the commit.
        DELETE FROM tenancy.tenant_placements AS pl
         USING tenancy.tenants AS t
         WHERE t.id = pl.tenant_id AND t.schema_name = p_schema
           AND tenancy.tenant_node(t.slug) = pl.node_name || ':' || pl.node_port;
        -- Tables that held rows (a schema made local again for a migration,
        -- see tenancy.citus_undistribute_schema) keep them on the
        -- coordinator's disk, out of sight: drop that copy.
        FOR v_table IN SELECT c.oid::regclass FROM pg_class AS c
                        WHERE c.relnamespace = p_schema::regnamespace AND c.relkind = 'r'
                          AND pg_relation_size(c.oid) > 0 LOOP
            EXECUTE format('SELECT pg_catalog.%I($1)', 'truncate_local_data_after_distributing_table')
                USING v_table;
        END LOOP;
        RETURN v_count;
    END IF;
    -- Tables a migration added to a distributed schema join its colocation group.
    FOR v_table IN EXECUTE v_local USING p_schema LOOP
        EXECUTE format('SELECT pg_catalog.%I($1, NULL, colocate_with => $2)', 'create_distributed_table')
            USING v_table, v_sibling::text;
    END LOOP;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.citus_distribute_schema(text) IS
    'With Citus in the database: make tenant schema p_schema a distributed schema '
    '(citus_schema_distribute) and put tables added since into its colocation group; return how '
    'many tables were distributed. Clears the row of tenancy.tenant_placements of a tenant back on '
    'its recorded node. A no-op (0) without Citus. Internal.';

REVOKE ALL ON FUNCTION tenancy.citus_distribute_schema(text) FROM PUBLIC;

-- Citus runs the DDL of a distributed table on the workers over one
-- connection per user, and refuses to touch placements that another user
-- changed in the same transaction (placement_connection.c: "modified in this
-- transaction by a different user"). A migration runs as the migrator after
-- the owner handed it the schema in that transaction, so it could change no
-- distributed table of its tenant. The runner therefore makes the schema
-- local again first (citus_schema_undistribute: the tenant's rows come to
-- the coordinator), the migration runs there as confined as on plain
-- PostgreSQL, and tenancy.citus_distribute_schema distributes it again
-- before the transaction ends. Nothing is left local if anything fails.
CREATE OR REPLACE FUNCTION tenancy.citus_undistribute_schema(p_schema text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_done boolean;
    v_id   uuid;
    v_node text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM pg_catalog.%I WHERE schemaid = $1::regnamespace)',
                   'pg_dist_schema')
        INTO v_done USING p_schema;
    IF NOT v_done THEN
        RETURN false;
    END IF;
    -- Distributed again by citus_distribute_schema, Citus picks a node by
    -- the new colocation id: remember this one (tenancy.tenant_placements).
    -- A row left by an earlier migration not yet moved back keeps its node.
    -- A tenant still provisioning (one migration per transaction) has no
    -- placement anyone chose yet: moving it back would only copy its rows.
    SELECT t.id, tenancy.tenant_node(t.slug) INTO v_id, v_node
      FROM tenancy.tenants AS t WHERE t.schema_name = p_schema AND t.status <> 'provisioning';
    IF v_node IS NOT NULL THEN
        INSERT INTO tenancy.tenant_placements AS pl (tenant_id, node_name, node_port)
        VALUES (v_id, substring(v_node FROM '^(.*):[0-9]+$'),
                substring(v_node FROM ':([0-9]+)$')::integer)
        ON CONFLICT (tenant_id) DO NOTHING;
    END IF;
    EXECUTE format('SELECT pg_catalog.%I($1::regnamespace)', 'citus_schema_undistribute') USING p_schema;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.citus_undistribute_schema(text) IS
    'With Citus in the database: turn distributed tenant schema p_schema back into a local one '
    '(citus_schema_undistribute, which copies its rows to the coordinator) so a migration can '
    'change its tables as the migrator, recording its node in tenancy.tenant_placements (kept '
    'when a row is there already; not for a tenant still provisioning); true when it did, false (nothing done) otherwise. The '
    'runner distributes it again in the same transaction. Internal.';

REVOKE ALL ON FUNCTION tenancy.citus_undistribute_schema(text) FROM PUBLIC;

-- Citus: where a schema tenant lives, and moving it (citus_schema_move,
-- online: the tenant stays usable while its shards are copied).
CREATE OR REPLACE FUNCTION tenancy.tenant_node(slug text)
    RETURNS text
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text;
    v_node   text;
BEGIN
    SELECT t.schema_name INTO v_schema FROM tenancy.tenants AS t WHERE t.slug = tenant_node.slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(tenant_node.slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    IF v_schema IS NULL OR NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
       OR to_regnamespace(quote_ident(v_schema)) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'SELECT min(n.nodename || '':'' || n.nodeport)
           FROM pg_catalog.%I AS s
           JOIN pg_catalog.%I AS p ON p.colocationid = s.colocationid
           JOIN pg_catalog.%I AS sh ON sh.logicalrelid = p.logicalrelid
           JOIN pg_catalog.%I AS pl ON pl.shardid = sh.shardid
           JOIN pg_catalog.%I AS n ON n.groupid = pl.groupid
          WHERE s.schemaid = $1::regnamespace',
        'pg_dist_schema', 'pg_dist_partition', 'pg_dist_shard', 'pg_dist_placement', 'pg_dist_node')
        INTO v_node USING v_schema;
    RETURN v_node;
END
$$;

COMMENT ON FUNCTION tenancy.tenant_node(text) IS
    'host:port of the Citus node holding schema tenant slug; NULL for a shared tenant, without '
    'Citus, or for a schema that is not distributed. Raises PT003 (not found).';

REVOKE ALL ON FUNCTION tenancy.tenant_node(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.move_tenant(slug text, node_host text, node_port integer)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants;
BEGIN
    SELECT * INTO v_row FROM tenancy.tenants AS t WHERE t.slug = move_tenant.slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(move_tenant.slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'moving a tenant needs Citus in this database'
            USING ERRCODE = '0A000';
    END IF;
    IF v_row.schema_name IS NULL THEN
        RAISE EXCEPTION 'tenant % is shared: its rows move with the shards of the shared tables',
            quote_literal(move_tenant.slug)
            USING ERRCODE = '22023',
                  HINT = 'Move shards with citus_move_shard_placement or citus_rebalance_start.';
    END IF;
    IF tenancy.tenant_node(move_tenant.slug) IS DISTINCT FROM move_tenant.node_host || ':' || move_tenant.node_port THEN
        EXECUTE format('SELECT pg_catalog.%I($1::regnamespace, $2, $3)', 'citus_schema_move')
            USING v_row.schema_name, move_tenant.node_host, move_tenant.node_port;
    END IF;
    -- Where it is now is where it belongs: nothing left to move back.
    DELETE FROM tenancy.tenant_placements AS pl WHERE pl.tenant_id = v_row.id;
    RETURN tenancy.tenant_node(move_tenant.slug);
END
$$;

COMMENT ON FUNCTION tenancy.move_tenant(text, text, integer) IS
    'Citus: move schema tenant slug to node node_host:node_port (citus_schema_move; the tenant '
    'stays usable while its shards are copied); return its node afterwards. A no-op when it is '
    'there already. Clears its row of tenancy.tenant_placements. Raises PT003 (not found), 22023 (shared tenant), 0A000 (no Citus).';

REVOKE ALL ON FUNCTION tenancy.move_tenant(text, text, integer) FROM PUBLIC;

-- Provisioning: a new tenant whose history needs commits between migrations
-- (an enum value added and used later, a no-transaction migration) is
-- registered in status provisioning and migrated one migration per
-- transaction; its last failure is kept here until it becomes active.
CREATE TABLE IF NOT EXISTS tenancy.provisioning_failures (
    tenant_id uuid        NOT NULL,
    version   text COLLATE "C",
    sqlstate  text,
    message   text,
    failed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- No foreign key: the registry refuses TRUNCATE with its own error, and
    -- the row goes with the tenant's (tenants_after_change).
    CONSTRAINT provisioning_failures_pkey PRIMARY KEY (tenant_id)
);

COMMENT ON TABLE tenancy.provisioning_failures IS
    'Last failure of each tenant in status provisioning: the migration version, SQLSTATE and message.';

-- The scratch schema registration checks a new migration in: kept at the
-- latest registered version, so registering a migration applies that one
-- migration only.
CREATE TABLE IF NOT EXISTS tenancy.scratch (
    singleton boolean NOT NULL DEFAULT true,
    version   text COLLATE "C",
    CONSTRAINT scratch_pkey PRIMARY KEY (singleton),
    CONSTRAINT scratch_singleton_check CHECK (singleton)
);

COMMENT ON TABLE tenancy.scratch IS
    'Version the scratch schema tenancy_scratch is at (one row; none before the first registration).';

CREATE OR REPLACE FUNCTION tenancy.needs_commit_boundaries(from_version text)
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    -- An enum value added by one migration cannot be used before it commits;
    -- a no-transaction migration runs between transactions.
    SELECT EXISTS (
        SELECT 1 FROM tenancy.migrations AS m
         WHERE (needs_commit_boundaries.from_version IS NULL
                OR m.version > needs_commit_boundaries.from_version)
           AND (m.outside_transaction
                OR (m.sql ~* '\mALTER\s+TYPE\M.*\mADD\s+VALUE\M'
                    AND m.version < (SELECT max(l.version) FROM tenancy.migrations AS l))))
$$;

COMMENT ON FUNCTION tenancy.needs_commit_boundaries(text) IS
    'True when the migrations after from_version (all when NULL) need a commit between '
    'migrations: one adds an enum value (ALTER TYPE ... ADD VALUE) and others follow it, or '
    'one runs outside a transaction. Internal.';

REVOKE ALL ON FUNCTION tenancy.needs_commit_boundaries(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.check_scratch_schema(schema_name text, version text)
    RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nsp oid := to_regnamespace(quote_ident(check_scratch_schema.schema_name))::oid;
BEGIN
    -- The checks of a hand-back (tenancy.hand_over_schema) for the scratch
    -- schema, whose objects stay the migrator's: what a tenant could not
    -- take back is refused in the migration that made it.
    -- The schema's functions through its namespace dependencies (indexed;
    -- pg_proc has no index on the namespace alone).
    IF EXISTS (SELECT 1 FROM pg_depend AS d JOIN pg_proc AS p ON p.oid = d.objid
                WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp
                  AND d.deptype = 'n' AND d.classid = 'pg_proc'::regclass
                  AND p.prosecdef) THEN
        RAISE EXCEPTION 'unsafe migration % (schema %): unsafe migration: a SECURITY DEFINER function in a tenant schema would run with the owner''s rights',
            check_scratch_schema.version, check_scratch_schema.schema_name
            USING ERRCODE = 'PT017',
                  HINT = 'Declare it SECURITY INVOKER (the default). Nothing was changed.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_rewrite AS r JOIN pg_class AS c ON c.oid = r.ev_class
                WHERE c.relnamespace = v_nsp AND r.rulename <> '_RETURN') THEN
        RAISE EXCEPTION 'unsafe migration % (schema %): unsafe migration: a rule would run with the owner''s rights',
            check_scratch_schema.version, check_scratch_schema.schema_name
            USING ERRCODE = 'PT017',
                  HINT = 'Use a trigger instead of a rule. Nothing was changed.';
    END IF;
    PERFORM tenancy.check_tenant_grants(check_scratch_schema.schema_name);
END
$$;

COMMENT ON FUNCTION tenancy.check_scratch_schema(text, text) IS
    'After migration version ran on the scratch schema schema_name: raise PT017 for a SECURITY '
    'DEFINER function, a rule or a grant a tenant could not take back (the checks of '
    'tenancy.hand_over_schema, whose objects the scratch schema keeps). Internal.';

REVOKE ALL ON FUNCTION tenancy.check_scratch_schema(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.apply_migrations(
    p_schema  text,
    p_from    text,
    p_max     integer DEFAULT NULL,
    p_scratch boolean DEFAULT false
)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_migration tenancy.migrations;
    v_version   text := p_from;
    v_state     text;
    v_message   text;
    v_context   text;
    v_role      name := tenancy.migrator_role();
    -- The migration sees the tenant schema first (where it creates), then
    -- the system catalogs, then public (references to shared objects), and
    -- temporary objects last.
    v_path      text := format('%I, pg_catalog, public, pg_temp', p_schema);
    v_granted   boolean := false;
    v_applied   integer := 0;
BEGIN
    FOR v_migration IN
        SELECT * FROM tenancy.migrations AS m
         WHERE p_from IS NULL OR m.version > p_from
         ORDER BY m.version
    LOOP
        EXIT WHEN v_applied >= p_max;
        -- It cannot run in this transaction: the fleet runner applies it
        -- outside one, then everything after it.
        EXIT WHEN v_migration.outside_transaction AND NOT p_scratch;
        IF NOT v_granted THEN
            -- The migrator may create in this schema for the rest of this
            -- transaction only; nobody else ever sees the grant committed.
            EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', p_schema, v_role);
            -- Taking the schema's objects locks them all for the rest of the
            -- transaction: a busy tenant fails here under lock_timeout. The
            -- scratch schema's objects are the migrator's already.
            BEGIN
                IF NOT p_scratch THEN
                    -- Its owner at rest, made with the tenant's first
                    -- migration (or adopted by a tenant made without one).
                    PERFORM tenancy.ensure_tenant_role(p_schema);
                    -- Citus: the migrator can change no distributed table
                    -- here (tenancy.citus_undistribute_schema); distributed
                    -- again below.
                    PERFORM tenancy.citus_undistribute_schema(p_schema);
                    PERFORM tenancy.hand_over_schema(p_schema, true);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
                RAISE EXCEPTION 'migration % failed in schema %: %', v_migration.version, p_schema,
                    v_message
                    USING ERRCODE = 'PT006',
                          DETAIL = format('SQLSTATE %s', v_state),
                          HINT = 'The tenant stays at its previous migration version.';
            END;
            v_granted := true;
        END IF;
        -- The migration runs as the migrator, confined to this schema (see
        -- 003_confinement.sql); the fence reads the target schema from here.
        PERFORM set_config('pgtenancy.migration_schema', p_schema, true);
        -- The runner must still run as the migrator: refuse to go on if an
        -- earlier migration managed to change that.
        IF NOT EXISTS (SELECT 1 FROM pg_proc AS p
                        WHERE p.oid = 'tenancy.execute_migration(text,text)'::regprocedure
                          AND p.prosecdef
                          AND p.proowner = (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = v_role)) THEN
            RAISE EXCEPTION 'the migration runner tenancy.execute_migration was changed: it no longer runs as the migrator role'
                USING ERRCODE = 'PT017',
                      HINT = 'Install the kit again (pgtenancy install) to restore it.';
        END IF;
        IF v_migration.outside_transaction THEN
            -- The scratch schema (empty tables) takes a no-transaction
            -- migration in this transaction: CREATE/DROP INDEX without
            -- CONCURRENTLY; VACUUM and the like change no catalog and fail
            -- here harmlessly. The fleet runner checks and runs the real one.
            BEGIN
                PERFORM tenancy.execute_migration(
                    regexp_replace(v_migration.sql, '\mCONCURRENTLY\M', '', 'gi'), v_path);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
            PERFORM set_config('pgtenancy.migration_schema', '', true);
            PERFORM tenancy.check_scratch_schema(p_schema, v_migration.version);
            v_version := v_migration.version;
            v_applied := v_applied + 1;
            CONTINUE;
        END IF;
        BEGIN
            PERFORM tenancy.execute_migration(v_migration.sql, v_path);
            IF p_scratch THEN
                -- What its commit would check (deferred constraints), checked
                -- here: a scratch try applies several migrations in one
                -- transaction (tenancy.add_migrations).
                SET CONSTRAINTS ALL IMMEDIATE;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_context = PG_EXCEPTION_CONTEXT;
            PERFORM set_config('pgtenancy.migration_schema', '', true);
            IF v_state IN ('PT017', '42501')
               OR (v_state = '25001'
                   AND v_message ~ '^(ALTER SYSTEM|CREATE DATABASE|DROP DATABASE|CREATE TABLESPACE|DROP TABLESPACE|ALTER DATABASE|DISCARD|REINDEX (SCHEMA|DATABASE|SYSTEM))')
               OR (v_state = '0A000' AND v_message LIKE 'EXECUTE of transaction commands%') THEN
                -- Out of its tenant schema: the fence (PT017) or the missing
                -- privilege (42501) stopped it, or a statement on the whole
                -- server, database or session that could never run in a
                -- transaction (25001), or transaction control (0A000).
                RAISE EXCEPTION 'unsafe migration % (schema %): %', v_migration.version, p_schema,
                    v_message
                    USING ERRCODE = 'PT017',
                          DETAIL = format('SQLSTATE %s; %s', v_state,
                                          coalesce(substring(v_context FROM 'SQL statement "(.*?)"'),
                                                   'at the migration''s top level')),
                          HINT = 'A tenant migration may change its own tenant schema only. '
                                 'Change shared schemas with a shared migration '
                                 '(pgtenancy migrate --shared-dir). Nothing was changed.';
            END IF;
            RAISE EXCEPTION 'migration % failed in schema %: %', v_migration.version, p_schema, v_message
                USING ERRCODE = 'PT006',
                      DETAIL = format('SQLSTATE %s', v_state),
                      HINT = 'The tenant stays at its previous migration version.';
        END;
        PERFORM set_config('pgtenancy.migration_schema', '', true);
        -- DROP OWNED BY the migrator would take the kit's runner and the
        -- migrator's privileges with it (the fence, where installed, stops it
        -- earlier).
        IF NOT EXISTS (SELECT 1 FROM pg_proc AS p
                        WHERE p.proname = 'execute_migration'
                          AND p.pronamespace = 'tenancy'::regnamespace)
           OR NOT has_schema_privilege(v_role, 'tenancy', 'USAGE') THEN
            RAISE EXCEPTION 'unsafe migration % (schema %): it dropped the migrator role''s own objects or privileges',
                v_migration.version, p_schema
                USING ERRCODE = 'PT017',
                      HINT = 'A tenant migration may change its own tenant schema only. Nothing was changed.';
        END IF;
        IF p_scratch THEN
            PERFORM tenancy.check_scratch_schema(p_schema, v_migration.version);
        END IF;
        v_version := v_migration.version;
        v_applied := v_applied + 1;
    END LOOP;
    IF v_granted AND p_scratch THEN
        -- The scratch schema's objects stay the migrator's (it holds no
        -- data and nobody reads it), so the next registration re-owns
        -- nothing and registering stays linear; the checks of a hand-back
        -- ran after each migration (tenancy.check_scratch_schema).
        -- USAGE stays: foreign-key checks and actions from shared tables
        -- into the scratch schema's (empty) tables run as their owner.
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM %I', p_schema, v_role);
    ELSIF v_granted THEN
        -- At rest the tenant's own role owns everything again and the
        -- migrator nothing.
        BEGIN
            PERFORM tenancy.hand_over_schema(p_schema, false);
        EXCEPTION WHEN SQLSTATE 'PT017' THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            RAISE EXCEPTION 'unsafe migration % (schema %): %', v_version, p_schema, v_message
                USING ERRCODE = 'PT017',
                      HINT = 'A tenant migration may change its own tenant schema only. Nothing was changed.';
        END;
        EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA %I FROM %I', p_schema, v_role);
    END IF;
    -- The scratch schema holds no data and is read by nobody: never distributed.
    IF NOT p_scratch THEN
        PERFORM tenancy.citus_distribute_schema(p_schema);
    END IF;
    RETURN v_version;
END
$$;

COMMENT ON FUNCTION tenancy.apply_migrations(text, text, integer, boolean) IS
    'Run, inside schema p_schema, the registered migrations after version p_from (all when NULL; '
    'at most p_max when given), in version order, each as the migrator role confined to that '
    'schema, stopping before a no-transaction migration (p_scratch: the scratch schema tries it '
    'without CONCURRENTLY instead, and its objects stay the migrator''s); return the last version applied (p_from when none). Raises '
    'PT017 when a migration reaches outside its schema, PT006 with the failing migration''s '
    'SQLSTATE in DETAIL for any other error. Internal: not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.apply_migrations(text, text, integer, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.add_migrations(
    versions            text[],
    sqls                text[],
    outside_transaction boolean[] DEFAULT NULL
)
    RETURNS SETOF tenancy.migrations
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_versions ALIAS FOR versions;
    p_sqls ALIAS FOR sqls;
    p_outside ALIAS FOR outside_transaction;
    v_row      tenancy.migrations;
    v_rows     tenancy.migrations[] := '{}'::tenancy.migrations[];
    v_version  text;
    v_sql      text;
    v_checksum text;
    v_scratch  text := 'tenancy_scratch';
    v_previous text;
    v_new      boolean := false;
    v_from     text;
    v_at       text;
    v_state    text;
    v_message  text;
    v_detail   text;
BEGIN
    IF p_versions IS NULL OR p_sqls IS NULL
       OR cardinality(p_versions) <> cardinality(p_sqls)
       OR cardinality(p_versions) <> coalesce(cardinality(p_outside), cardinality(p_versions)) THEN
        RAISE EXCEPTION 'versions, sqls and outside_transaction must be arrays of one length'
            USING ERRCODE = 'PT008';
    END IF;
    -- Serialize registrations with a lock the application role cannot take
    -- (it has no privilege on the table; an advisory lock anyone can hold).
    LOCK TABLE tenancy.migrations IN SHARE ROW EXCLUSIVE MODE;
    v_previous := (SELECT max(m.version) FROM tenancy.migrations AS m);
    FOR i IN 1 .. cardinality(p_versions) LOOP
        v_version := p_versions[i];
        v_sql := p_sqls[i];
        IF v_version IS NULL OR v_version !~ '^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$' THEN
            RAISE EXCEPTION 'invalid migration version %', coalesce(quote_literal(v_version), 'NULL')
                USING ERRCODE = 'PT008',
                      HINT = 'Use letters, digits, "_", "." or "-", such as 0001 or 0002_add_invoices.';
        END IF;
        IF v_sql IS NULL OR btrim(v_sql) = '' THEN
            RAISE EXCEPTION 'migration % has no SQL', v_version
                USING ERRCODE = 'PT008';
        END IF;
        v_checksum := encode(sha256(convert_to(v_sql, 'UTF8')), 'hex');
        SELECT * INTO v_row FROM tenancy.migrations WHERE version = v_version;
        IF FOUND THEN
            IF v_row.checksum = v_checksum THEN
                v_rows := v_rows || v_row;  -- registered already: a no-op
                CONTINUE;
            END IF;
            RAISE EXCEPTION 'migration % is already registered with different SQL', v_version
                USING ERRCODE = 'PT008',
                      HINT = 'Registered migrations never change: add a new version instead.';
        END IF;
        IF EXISTS (SELECT 1 FROM tenancy.migrations WHERE version > v_version) THEN
            RAISE EXCEPTION 'migration % sorts before the latest registered version %', v_version,
                (SELECT max(version) FROM tenancy.migrations)
                USING ERRCODE = 'PT008',
                      HINT = 'Versions are applied in C-collation order: use a later version.';
        END IF;
        INSERT INTO tenancy.migrations (version, sql, checksum, outside_transaction)
        VALUES (v_version, v_sql, v_checksum, coalesce(p_outside[i], false))
        RETURNING * INTO v_row;
        v_rows := v_rows || v_row;
        v_new := true;
    END LOOP;
    IF NOT v_new THEN
        RETURN QUERY SELECT * FROM unnest(v_rows);
        RETURN;
    END IF;

    -- Try the new migrations on the scratch schema, kept at the latest
    -- registered version: broken SQL is refused here, before any tenant sees
    -- it, and the scratch schema moves on with the registration (the new
    -- migrations applied, each checked as it is, not the chain; earlier ones
    -- committed, so an enum value an earlier call added is usable). A
    -- missing or stale scratch schema is rebuilt by replaying the chain, once.
    SELECT s.version INTO v_at FROM tenancy.scratch AS s;
    IF FOUND AND v_at IS NOT DISTINCT FROM v_previous
       AND to_regnamespace(quote_ident(v_scratch)) IS NOT NULL THEN
        v_from := v_previous;
    ELSE
        IF to_regnamespace(quote_ident(v_scratch)) IS NOT NULL THEN
            EXECUTE format('DROP SCHEMA %I CASCADE', v_scratch);
        END IF;
        EXECUTE format('CREATE SCHEMA %I', v_scratch);
        v_from := NULL;
    END IF;
    BEGIN
        v_at := tenancy.apply_migrations(v_scratch, v_from, NULL, true);
    EXCEPTION
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_detail = PG_EXCEPTION_DETAIL;
            IF v_state = 'PT017' THEN
                RAISE EXCEPTION '%', v_message
                    USING ERRCODE = 'PT017',
                          DETAIL = v_detail,
                          HINT = 'A tenant migration may change its own tenant schema only; '
                                 'change shared schemas with a shared migration. Nothing was registered.';
            END IF;
            -- The migration of this call that failed (apply_migrations names
            -- it), or the first new one when an older one failed a replay.
            v_version := substring(v_message FROM '^migration (\S+) failed in schema ');
            IF v_version IS NULL OR v_version <> ALL (p_versions)
               OR v_version COLLATE "C" <= v_previous THEN
                v_version := (SELECT min(u.v COLLATE "C") FROM unnest(p_versions) AS u(v)
                               WHERE v_previous IS NULL OR u.v COLLATE "C" > v_previous);
            END IF;
            RAISE EXCEPTION 'migration % does not apply after the registered migrations: %', v_version, v_message
                USING ERRCODE = 'PT008',
                      DETAIL = CASE WHEN v_state = 'PT006' THEN v_detail
                                    ELSE format('SQLSTATE %s', v_state) END,
                      HINT = 'Nothing was registered.';
    END;
    INSERT INTO tenancy.scratch AS s (singleton, version) VALUES (true, v_at)
        ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version;
    RETURN QUERY SELECT * FROM unnest(v_rows);
END
$$;

COMMENT ON FUNCTION tenancy.add_migrations(text[], text[], boolean[]) IS
    'Register the migrations versions[i] (tenant DDL sqls[i], no-transaction when '
    'outside_transaction[i]; NULL: none) in array order, in this one transaction, all or '
    'nothing: each exactly as tenancy.add_migration would one after the other (same checks, '
    'same errors), then tried on the scratch schema in one go, each migration checked as it '
    'is applied (fence, session state, deferred constraints, functions, rules, grants). Returns '
    'one row per element. A migration that uses an enum value an earlier one of the same call '
    'adds fails (PT008, SQLSTATE 55P04 in DETAIL): register it in a later call. Raises PT008 '
    'for unequal array lengths, bad versions, changed SQL, out-of-order versions or SQL that '
    'fails, PT017 for SQL that reaches outside its tenant schema; nothing is registered then.';

REVOKE ALL ON FUNCTION tenancy.add_migrations(text[], text[], boolean[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.add_migration(
    version             text,
    sql                 text,
    outside_transaction boolean DEFAULT false
)
    RETURNS tenancy.migrations
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.migrations;
BEGIN
    -- One migration: the same checks and errors as several.
    SELECT * INTO v_row
      FROM tenancy.add_migrations(ARRAY[add_migration.version], ARRAY[add_migration.sql],
                                  ARRAY[coalesce(add_migration.outside_transaction, false)]);
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.add_migration(text, text, boolean) IS
    'Register tenant DDL (sql) as migration version, which must sort after every registered '
    'version. It is first applied to the scratch schema tenancy_scratch, kept at the latest '
    'registered version (rebuilt by a replay when missing). Re-adding the same version with the '
    'same SQL is a no-op. With outside_transaction the fleet runner applies it outside a '
    'transaction (CREATE INDEX CONCURRENTLY, say; the scratch schema takes it without '
    'CONCURRENTLY); transactional paths stop before it. Raises PT017 for SQL that reaches outside '
    'its tenant schema, PT008 for a bad version, changed SQL, out-of-order version or SQL that '
    'fails; nothing is registered then. Several at once: tenancy.add_migrations.';

REVOKE ALL ON FUNCTION tenancy.add_migration(text, text, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.latest_migration()
    RETURNS text
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT max(version) FROM tenancy.migrations
$$;

COMMENT ON FUNCTION tenancy.latest_migration() IS
    'Latest registered migration version, NULL when none is registered.';

-- Application roles and guarded shared tables, as provisioning and the
-- registry triggers need them (enable_rls and grant_app_role come later).

CREATE OR REPLACE FUNCTION tenancy.forget_dropped_tables()
    RETURNS void
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM tenancy.guarded_tables AS g
     WHERE NOT EXISTS (SELECT 1 FROM pg_class AS c WHERE c.oid = g.table_name::oid)
$$;

COMMENT ON FUNCTION tenancy.forget_dropped_tables() IS
    'Remove guarded_tables rows whose table was dropped (a regclass keeps the dead oid). Called '
    'before every loop over guarded tables. Internal.';

REVOKE ALL ON FUNCTION tenancy.forget_dropped_tables() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.grant_schema_to_app_roles(p_schema text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name;
BEGIN
    -- A suspended or deleted tenant's schema is out of every application
    -- role's reach, whatever route skips enter_tenant (qualified names,
    -- search_path); resume_tenant grants it back.
    IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = p_schema AND t.status <> 'active') THEN
        FOR v_role IN
            SELECT a.role_name FROM tenancy.app_roles AS a
              JOIN pg_roles AS r ON r.rolname = a.role_name
        LOOP
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', p_schema, v_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', p_schema, v_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', p_schema, v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', p_schema, v_role);
        END LOOP;
        RETURN;
    END IF;
    FOR v_role IN
        SELECT a.role_name FROM tenancy.app_roles AS a
          JOIN pg_roles AS r ON r.rolname = a.role_name
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', p_schema, v_role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                       p_schema, v_role);
        EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', p_schema, v_role);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.grant_schema_to_app_roles(text) IS
    'Grant every application role usage of tenant schema p_schema and DML on its tables and '
    'sequences; when the schema''s tenant is not active (suspended, deleted), revoke them all '
    'instead. Run after provisioning, after each migration and on every status change. Internal.';

REVOKE ALL ON FUNCTION tenancy.grant_schema_to_app_roles(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.delete_shared_rows(p_tenant uuid)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_guard   tenancy.guarded_tables;
    v_count   bigint;
    v_total   bigint := 0::bigint;
    v_before  text := current_setting('app.tenant_id', true);
BEGIN
    PERFORM tenancy.forget_dropped_tables();
    -- FORCE ROW LEVEL SECURITY applies to the owner too: delete as the tenant.
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    -- Citus: the shards' policies read the setting on the workers (see enter_tenant).
    IF current_setting('citus.propagate_set_commands', true) IS NOT NULL THEN
        PERFORM set_config('citus.propagate_set_commands', 'local', true);
        EXECUTE format('SET LOCAL app.tenant_id = %L', p_tenant::text);
    END IF;
    FOR v_guard IN SELECT * FROM tenancy.guarded_tables LOOP
        EXECUTE format('DELETE FROM %s WHERE %I = $1', v_guard.table_name, v_guard.tenant_column)
            USING p_tenant;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_total := v_total + v_count;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(v_before, ''), true);
    IF current_setting('citus.propagate_set_commands', true) IS NOT NULL THEN
        EXECUTE format('SET LOCAL app.tenant_id = %L', coalesce(v_before, ''));
    END IF;
    RETURN v_total;
END
$$;

COMMENT ON FUNCTION tenancy.delete_shared_rows(uuid) IS
    'Delete the rows of tenant p_tenant from every guarded table; return how many. Run by the '
    'registry trigger when a tenant is destroyed. Internal.';

REVOKE ALL ON FUNCTION tenancy.delete_shared_rows(uuid) FROM PUBLIC;

-- Registry triggers ---------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.assert_registry_trigger(p_relid oid)
    RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The registry triggers are SECURITY DEFINER: refuse to run them on any
    -- table but the registry, where someone could feed them forged rows.
    IF p_relid <> 'tenancy.tenants'::regclass THEN
        RAISE EXCEPTION 'pgtenancy registry triggers run on tenancy.tenants only, not on %',
            p_relid::regclass
            USING ERRCODE = '42501';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.assert_registry_trigger(oid) IS
    'Raise 42501 unless p_relid is tenancy.tenants; the first statement of every registry trigger.';

CREATE OR REPLACE FUNCTION tenancy.restoring()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT current_setting('row_security') = 'off'
$$;

COMMENT ON FUNCTION tenancy.restoring() IS
    'True while a pg_dump script is being restored (pg_dump sets row_security = off): the '
    'registry triggers then load rows as they were, without provisioning or events. Rows of '
    'the extension''s configuration tables are restored after CREATE EXTENSION, so its '
    'triggers are active during the restore.';

CREATE OR REPLACE FUNCTION tenancy.tenants_refuse_truncate()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of tenancy.tenants would orphan every tenant schema and emit no event'
        USING ERRCODE = '42501',
              HINT = 'Drop tenants with tenancy.drop_tenant(slug, true), or uninstall with --drop-tenants.';
END
$$;

COMMENT ON FUNCTION tenancy.tenants_refuse_truncate() IS
    'Trigger: refuse TRUNCATE of the registry (42501).';

CREATE OR REPLACE FUNCTION tenancy.tenants_before_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    -- A restore of a pg_dump (which sets row_security = off) loads registry
    -- rows of tenants whose schemas it restores too: take them as they were.
    IF tenancy.restoring() THEN
        RETURN NEW;
    END IF;
    NEW.slug := tenancy.validate_slug(NEW.slug);
    NEW.metadata := tenancy.check_metadata(coalesce(NEW.metadata, '{}'));
    IF NEW.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % cannot be created deleted', quote_literal(NEW.slug)
            USING ERRCODE = '22023';
    END IF;
    -- Serialize creations of one slug so a concurrent duplicate gets PT002:
    -- a row lock the application role cannot take (it could hold an advisory lock).
    INSERT INTO tenancy.slug_locks AS l (slug) VALUES (NEW.slug)
        ON CONFLICT (slug) DO UPDATE SET slug = l.slug;
    IF EXISTS (SELECT 1 FROM tenancy.tenants WHERE slug = NEW.slug) THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(NEW.slug)
            USING ERRCODE = 'PT002';
    END IF;
    NEW.isolation := coalesce(NEW.isolation, 'schema');
    NEW.status := coalesce(NEW.status, 'active');
    NEW.created_at := now();
    NEW.updated_at := now();
    -- Entry tokens issued before this moment are for the slug's previous
    -- holder (strict entry refuses them): the clock now, after the slug lock
    -- above, not the transaction's start, which may precede the commit that
    -- freed the slug.
    NEW.slug_assigned_at := clock_timestamp();
    IF NEW.isolation = 'shared' THEN
        -- Rows in guarded shared tables; no schema, no migrations.
        NEW.schema_name := NULL;
        NEW.migration_version := NULL;
        RETURN NEW;
    ELSIF NEW.isolation <> 'schema' THEN
        RAISE EXCEPTION 'invalid isolation %: use schema or shared', quote_literal(NEW.isolation)
            USING ERRCODE = '22023';
    END IF;
    NEW.schema_name := tenancy.schema_prefix() || NEW.slug;
    IF to_regnamespace(quote_ident(NEW.schema_name)) IS NOT NULL THEN
        RAISE EXCEPTION 'schema % already exists but is not a registered tenant', quote_ident(NEW.schema_name)
            USING ERRCODE = 'PT002',
                  HINT = 'Rename or drop that schema, or choose another slug.';
    END IF;
    EXECUTE format('CREATE SCHEMA %I', NEW.schema_name);
    -- The newest baseline (the history squashed up to its version), in this
    -- transaction; then the migrations after it.
    NEW.migration_version := (SELECT max(b.through_version) FROM tenancy.baselines AS b);
    IF NEW.migration_version IS NOT NULL THEN
        NEW.migration_version := tenancy.apply_baseline(NEW.schema_name, NEW.migration_version);
    END IF;
    IF tenancy.needs_commit_boundaries(NEW.migration_version) THEN
        -- One migration per transaction: the first one here, the others by
        -- migrate_tenant (the fleet runner, or create_tenant rerun).
        NEW.status := 'provisioning';
        NEW.migration_version := tenancy.apply_migrations(NEW.schema_name, NEW.migration_version, 1);
    ELSE
        NEW.migration_version := tenancy.apply_migrations(NEW.schema_name, NEW.migration_version);
    END IF;
    PERFORM tenancy.grant_schema_to_app_roles(NEW.schema_name);
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_before_insert() IS
    'Trigger: validate the slug (PT001), refuse a duplicate slug or an existing schema (PT002), '
    'stamp created_at and slug_assigned_at (clock_timestamp(), after the slug lock); '
    'for a schema tenant derive schema_name, create the schema, run the newest baseline (if any) '
    'and apply every migration after it (PT006 on failure; when they need commit boundaries '
    'only the first, in status provisioning) '
    'and grant it to the application roles; a shared tenant gets no schema.';

CREATE OR REPLACE FUNCTION tenancy.tenants_before_update()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    IF NEW.id IS DISTINCT FROM OLD.id
       OR ((NEW.slug IS DISTINCT FROM OLD.slug OR NEW.schema_name IS DISTINCT FROM OLD.schema_name)
           -- tenancy.rename_tenant renames the schema and then the row.
           AND current_setting('pgtenancy.renaming', true) IS DISTINCT FROM OLD.id::text)
       OR NEW.isolation IS DISTINCT FROM OLD.isolation
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR (NEW.slug_assigned_at IS DISTINCT FROM OLD.slug_assigned_at AND NEW.slug = OLD.slug) THEN
        RAISE EXCEPTION 'tenant %: id, slug, schema_name, isolation, created_at and slug_assigned_at cannot change',
            quote_literal(OLD.slug)
            USING ERRCODE = 'PT010';
    END IF;
    -- A new slug (rename_tenant): entry tokens issued before now were for
    -- the slug's previous holder, or for this tenant under its old slug.
    IF NEW.slug <> OLD.slug THEN
        NEW.slug_assigned_at := clock_timestamp();
    END IF;
    IF NEW.metadata IS DISTINCT FROM OLD.metadata THEN
        PERFORM tenancy.check_metadata(NEW.metadata);
    END IF;
    IF OLD.status = 'deleted' AND NEW.status <> 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(OLD.slug)
            USING ERRCODE = 'PT005',
                  HINT = 'A deleted tenant stays deleted; create a new one.';
    END IF;
    IF NEW.status = 'provisioning' AND OLD.status <> 'provisioning' THEN
        RAISE EXCEPTION 'tenant %: status provisioning is only for new tenants', quote_literal(OLD.slug)
            USING ERRCODE = 'PT010';
    END IF;
    IF OLD.status = 'provisioning' AND NEW.status = 'suspended' THEN
        RAISE EXCEPTION 'tenant % is being provisioned', quote_literal(OLD.slug)
            USING ERRCODE = 'PT019',
                  HINT = 'Finish it first (rerun create_tenant or pgtenancy migrate), or drop it.';
    END IF;
    IF NEW.migration_version IS DISTINCT FROM OLD.migration_version
       AND (NEW.isolation <> 'schema'
            OR NEW.migration_version IS NULL
            OR NOT EXISTS (SELECT 1 FROM tenancy.migrations WHERE version = NEW.migration_version)
            OR NEW.migration_version < coalesce(OLD.migration_version, '')) THEN
        RAISE EXCEPTION 'tenant %: migration_version % is not a registered version after %',
            quote_literal(OLD.slug), coalesce(quote_literal(NEW.migration_version), 'NULL'),
            coalesce(quote_literal(OLD.migration_version), 'none')
            USING ERRCODE = 'PT010',
                  HINT = 'Use tenancy.migrate_tenant(slug).';
    END IF;
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_before_update() IS
    'Trigger: refuse changes to immutable tenant columns (slug and schema_name change through '
    'rename_tenant of 010_tenant_operations.sql only, which stamps slug_assigned_at; '
    'slug_assigned_at never changes by hand), a migration_version that is not a later '
    'registered version or a return to status provisioning (PT010), refuse bringing a deleted '
    'tenant back (PT005) and suspending one being provisioned (PT019), and stamp '
    'updated_at.';

CREATE OR REPLACE FUNCTION tenancy.tenants_after_change()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_gone tenancy.tenants;
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    IF tenancy.restoring() THEN
        RETURN NULL;  -- the dump brings the outbox as it was
    END IF;
    IF TG_OP = 'INSERT' AND NEW.status = 'provisioning' THEN
        RETURN NULL;  -- tenant_created comes when it becomes active
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'provisioning' THEN
        -- Its migrations so far were provisioning, not migrations of a tenant.
        IF NEW.status = 'active' THEN
            PERFORM tenancy.emit_event('tenant_created', NEW,
                jsonb_build_object('migration_version', NEW.migration_version, 'metadata', NEW.metadata,
                                   'isolation', NEW.isolation));
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM tenancy.emit_event('tenant_created', NEW,
            jsonb_build_object('migration_version', NEW.migration_version, 'metadata', NEW.metadata,
                               'isolation', NEW.isolation)
            -- clone_tenant and imports say where the tenant came from.
            || coalesce(nullif(current_setting('pgtenancy.created_payload', true), '')::jsonb,
                        '{}'::jsonb));
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        -- The row is the truth: a tenant whose row is gone has no data.
        IF OLD.schema_name IS NOT NULL THEN
            EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', OLD.schema_name);
            PERFORM tenancy.drop_tenant_role(OLD.schema_name);
        END IF;
        PERFORM tenancy.delete_shared_rows(OLD.id);
        DELETE FROM tenancy.provisioning_failures AS f WHERE f.tenant_id = OLD.id;
        IF OLD.status = 'provisioning' THEN
            RETURN NULL;  -- never created: nothing to announce
        END IF;
        v_gone := OLD;
        v_gone.status := 'deleted';
        PERFORM tenancy.emit_event('tenant_deleted', v_gone,
            jsonb_build_object('previous_status', OLD.status, 'destroyed', true));
        RETURN NULL;
    END IF;

    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM tenancy.emit_event(
            CASE NEW.status
                WHEN 'suspended' THEN 'tenant_suspended'
                WHEN 'deleted' THEN 'tenant_deleted'
                ELSE 'tenant_resumed'
            END,
            NEW,
            jsonb_build_object('previous_status', OLD.status, 'destroyed', false));
    END IF;
    IF NEW.migration_version IS DISTINCT FROM OLD.migration_version THEN
        PERFORM tenancy.emit_event('tenant_migrated', NEW,
            jsonb_build_object(
                'from_version', OLD.migration_version,
                'to_version', NEW.migration_version,
                'versions', coalesce((
                    SELECT jsonb_agg(m.version ORDER BY m.version)
                      FROM tenancy.migrations AS m
                     WHERE (OLD.migration_version IS NULL OR m.version > OLD.migration_version)
                       AND m.version <= NEW.migration_version), '[]'::jsonb)));
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_after_change() IS
    'Trigger: emit tenant_created, tenant_suspended, tenant_resumed, tenant_deleted and '
    'tenant_migrated for every change of the registry, whoever makes it (a tenant in status '
    'provisioning emits tenant_created once, when it becomes active, and nothing before); a '
    'deleted row also drops its tenant schema (and its owner role, tenancy.drop_tenant_role) and '
    'deletes its rows from every guarded shared table.';

CREATE OR REPLACE TRIGGER tenants_before_insert
    BEFORE INSERT ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_before_insert();

CREATE OR REPLACE TRIGGER tenants_before_update
    BEFORE UPDATE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_before_update();

CREATE OR REPLACE TRIGGER tenants_after_change
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_after_change();

CREATE OR REPLACE TRIGGER tenants_refuse_truncate
    BEFORE TRUNCATE ON tenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenants_refuse_truncate();

-- Trigger functions run without an EXECUTE check when they fire; CREATE
-- TRIGGER needs EXECUTE, so nobody can attach them elsewhere.
REVOKE ALL ON FUNCTION tenancy.tenants_before_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenants_before_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenants_after_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenants_refuse_truncate() FROM PUBLIC;

-- Lifecycle functions -------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.lock_tenant(p_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants;
BEGIN
    SELECT * INTO v_row FROM tenancy.tenants WHERE slug = p_slug FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(p_slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.lock_tenant(text) IS
    'Lock and return the registry row of p_slug. Raises PT003 when no such tenant exists. Internal.';

REVOKE ALL ON FUNCTION tenancy.lock_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.create_tenant(
    slug      text,
    metadata  jsonb DEFAULT '{}',
    isolation text DEFAULT 'schema'
)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row      tenancy.tenants;
    -- Citus: NULL without it.
    v_sharding text := current_setting('citus.enable_schema_based_sharding', true);
BEGIN
    PERFORM tenancy.check_metadata(coalesce(create_tenant.metadata, '{}'));
    -- A tenant left in provisioning by a failure or a killed run: go on.
    IF EXISTS (SELECT 1 FROM tenancy.tenants AS t
                WHERE t.slug = create_tenant.slug AND t.status = 'provisioning') THEN
        RETURN tenancy.migrate_tenant(create_tenant.slug);
    END IF;
    IF create_tenant.metadata IS NOT NULL AND jsonb_typeof(create_tenant.metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %', jsonb_typeof(create_tenant.metadata)
            USING ERRCODE = '22023';
    END IF;
    -- Citus: provisioning creates the schema's tables first, then
    -- distributes the schema (tenancy.citus_distribute_schema).
    IF v_sharding IS NOT NULL THEN
        PERFORM set_config('citus.enable_schema_based_sharding', 'off', true);
    END IF;
    INSERT INTO tenancy.tenants (slug, metadata, isolation)
    VALUES (create_tenant.slug, coalesce(create_tenant.metadata, '{}'), coalesce(create_tenant.isolation, 'schema'))
    RETURNING * INTO v_row;
    IF v_sharding IS NOT NULL THEN
        PERFORM set_config('citus.enable_schema_based_sharding', v_sharding, true);
    END IF;
    RETURN v_row;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(create_tenant.slug)
            USING ERRCODE = 'PT002';
END
$$;

COMMENT ON FUNCTION tenancy.create_tenant(text, jsonb, text) IS
    'Create tenant slug: validate the slug; with isolation schema (default) create schema '
    'schema_prefix()||slug and apply every migration (from the newest baseline on, when one is '
    'registered); with shared the tenant''s rows live in '
    'guarded shared tables. Registers the row and emits tenant_created, all in the caller''s '
    'transaction. When the history needs commit boundaries the tenant is registered in status '
    'provisioning with its first migration applied; each further call (or migrate_tenant) applies '
    'the next one in its own transaction, and the last makes it active (tenant_created then). '
    'Raises PT001 (invalid slug), PT002 (exists), PT006 (a migration failed), PT029 (metadata not '
    'a JSON object or over 65536 bytes), 22023 (unknown isolation); on error nothing is left behind. With Citus the new schema is distributed (citus_schema_distribute).';

REVOKE ALL ON FUNCTION tenancy.create_tenant(text, jsonb, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.get_tenant(slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row tenancy.tenants;
BEGIN
    SELECT * INTO v_row FROM tenancy.tenants WHERE slug = get_tenant.slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(get_tenant.slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.get_tenant(text) IS
    'Registry row of tenant slug. Raises PT003 when no such tenant exists.';

CREATE OR REPLACE FUNCTION tenancy.suspend_tenant(slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants := tenancy.lock_tenant(suspend_tenant.slug);
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(suspend_tenant.slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_row.status = 'active' THEN
        UPDATE tenancy.tenants SET status = 'suspended' WHERE id = v_row.id RETURNING * INTO v_row;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.suspend_tenant(text) IS
    'Suspend tenant slug: entering it fails with PT004 from then on; emits tenant_suspended. '
    'A no-op for a suspended tenant. Raises PT003 (not found), PT005 (deleted).';

REVOKE ALL ON FUNCTION tenancy.suspend_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.resume_tenant(slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants := tenancy.lock_tenant(resume_tenant.slug);
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(resume_tenant.slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_row.status = 'suspended' THEN
        UPDATE tenancy.tenants SET status = 'active' WHERE id = v_row.id RETURNING * INTO v_row;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.resume_tenant(text) IS
    'Make suspended tenant slug active again; emits tenant_resumed. A no-op for an active '
    'tenant. Raises PT003 (not found), PT005 (deleted).';

REVOKE ALL ON FUNCTION tenancy.resume_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_tenant(slug text, destroy_data boolean DEFAULT false)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants := tenancy.lock_tenant(drop_tenant.slug);
BEGIN
    IF drop_tenant.destroy_data OR v_row.status = 'provisioning' THEN
        DELETE FROM tenancy.tenants WHERE id = v_row.id;
        v_row.status := 'deleted';
    ELSIF v_row.status <> 'deleted' THEN
        UPDATE tenancy.tenants SET status = 'deleted' WHERE id = v_row.id RETURNING * INTO v_row;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.drop_tenant(text, boolean) IS
    'Delete tenant slug. By default a soft delete: status becomes deleted, the schema is kept '
    'and entry fails with PT005. With destroy_data the schema and the row are dropped. Emits '
    'tenant_deleted (payload destroyed true/false). Raises PT003 (not found).';

REVOKE ALL ON FUNCTION tenancy.drop_tenant(text, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.migrate_tenant(slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row     tenancy.tenants := tenancy.lock_tenant(migrate_tenant.slug);
    v_version text;
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(migrate_tenant.slug)
            USING ERRCODE = 'PT005';
    END IF;
    -- Current tenants cost one comparison, not a replay; shared tenants
    -- have no schema to migrate.
    IF v_row.isolation = 'shared' THEN
        RETURN v_row;
    END IF;
    IF v_row.migration_version IS NOT DISTINCT FROM tenancy.latest_migration() THEN
        IF v_row.status = 'provisioning' THEN
            -- Its last migration ran outside a transaction: it is done.
            UPDATE tenancy.tenants SET status = 'active' WHERE id = v_row.id RETURNING * INTO v_row;
            DELETE FROM tenancy.provisioning_failures AS f WHERE f.tenant_id = v_row.id;
        END IF;
        RETURN v_row;
    END IF;
    IF to_regnamespace(quote_ident(v_row.schema_name)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_row.schema_name),
            quote_literal(migrate_tenant.slug)
            USING ERRCODE = 'PT007';
    END IF;
    v_version := tenancy.apply_migrations(
        v_row.schema_name, v_row.migration_version,
        CASE WHEN v_row.status = 'provisioning'
                   OR tenancy.needs_commit_boundaries(v_row.migration_version) THEN 1 END);
    PERFORM tenancy.grant_schema_to_app_roles(v_row.schema_name);
    UPDATE tenancy.tenants
       SET migration_version = v_version,
           status = CASE WHEN status = 'provisioning'
                          AND v_version IS NOT DISTINCT FROM tenancy.latest_migration()
                         THEN 'active' ELSE status END
     WHERE id = v_row.id RETURNING * INTO v_row;
    IF v_row.status <> 'provisioning' THEN
        DELETE FROM tenancy.provisioning_failures AS f WHERE f.tenant_id = v_row.id;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.migrate_tenant(text) IS
    'Apply to tenant slug the registered migrations it lacks, in order, in the caller''s '
    'transaction (the row lock serializes concurrent runs); emits tenant_migrated with the '
    'versions applied. When they need commit boundaries (an enum value added and used later, a '
    'no-transaction migration) only the next one is applied: call it until current (the fleet '
    'runner does). A tenant in status provisioning becomes active with its last migration '
    '(tenant_created). Stops before a no-transaction migration. Raises PT003 (not found), PT005 '
    '(deleted), PT007 (schema missing), PT006 (a migration failed: the tenant stays at its '
    'previous version).';

REVOKE ALL ON FUNCTION tenancy.migrate_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.record_provisioning_failure(
    slug text, version text, sqlstate text, message text
)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id uuid;
BEGIN
    SELECT t.id INTO v_id FROM tenancy.tenants AS t
     WHERE t.slug = record_provisioning_failure.slug AND t.status = 'provisioning';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO tenancy.provisioning_failures AS f (tenant_id, version, sqlstate, message)
    VALUES (v_id, record_provisioning_failure.version, record_provisioning_failure.sqlstate,
            record_provisioning_failure.message)
        ON CONFLICT (tenant_id) DO UPDATE
       SET version = EXCLUDED.version, sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message,
           failed_at = pg_catalog.now();
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.record_provisioning_failure(text, text, text, text) IS
    'Record why tenant slug, in status provisioning, failed (the migration version, SQLSTATE and '
    'message; replaces the previous record) and return true; false (nothing recorded) when the '
    'tenant is not being provisioned. Call it in its own transaction after the failed one.';

REVOKE ALL ON FUNCTION tenancy.record_provisioning_failure(text, text, text, text) FROM PUBLIC;
