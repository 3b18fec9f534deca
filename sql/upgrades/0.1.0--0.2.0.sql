-- pgtenancy upgrade 0.1.0 -> 0.2.0: shared tenants and guarded tables (RLS),
-- application and listener roles, the doctor, consumer leases, heartbeats,
-- retention, parking, the inbox, row-change tracking, no-transaction
-- migrations.
--
-- A delta: run once over a 0.1.0 install (by pgtenancy install, or as the
-- extension's pgtenancy--0.1.0--0.2.0.sql by ALTER EXTENSION pgtenancy
-- UPDATE), in one transaction. Objects 0.2.0 left as 0.1.0 had them are not
-- repeated here. The version placeholder in tenancy.version() is stamped
-- with the version this file upgrades to (the installer and sql/Makefile
-- do it).

CREATE OR REPLACE FUNCTION tenancy.version()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT '@PGTENANCY_VERSION@'::text
$$;

COMMENT ON FUNCTION tenancy.version() IS
    'Version of the installed pgtenancy SQL, as major.minor.patch text.';

-- Shared tenants have no schema.
ALTER TABLE tenancy.tenants
    ALTER COLUMN schema_name DROP NOT NULL,
    DROP CONSTRAINT tenants_isolation_check,
    ADD CONSTRAINT tenants_isolation_check CHECK (isolation IN ('schema', 'shared')),
    ADD CONSTRAINT tenants_schema_name_check
        CHECK ((isolation = 'schema') = (schema_name IS NOT NULL));

COMMENT ON TABLE tenancy.tenants IS
    'Tenant registry. Insert, update and delete go through triggers that validate, provision and emit events.';

COMMENT ON COLUMN tenancy.tenants.isolation IS
    'schema: the tenant has its own schema; shared: its rows live in RLS-guarded shared tables.';

COMMENT ON COLUMN tenancy.tenants.schema_name IS
    'The tenant''s schema (schema_prefix() || slug); NULL for a shared tenant.';

COMMENT ON COLUMN tenancy.tenants.migration_version IS
    'Latest tenancy.migrations version applied to this tenant''s schema; NULL when none.';

ALTER TABLE tenancy.migrations
    ADD COLUMN outside_transaction boolean NOT NULL DEFAULT false;

COMMENT ON TABLE tenancy.migrations IS
    'Tenant DDL, applied inside each tenant schema in version order (C collation).';

COMMENT ON TABLE tenancy.events IS
    'Outbox of tenant lifecycle events. id is unique and serves receivers as an idempotency key.';

COMMENT ON TABLE tenancy.consumers IS
    'Outbox cursor per consumer name: (last_xid, last_id) of the last fully delivered event.';

-- Shared tables guarded by RLS on a tenant column (tenancy.enable_rls).
CREATE TABLE tenancy.guarded_tables (
    table_name    regclass    NOT NULL,
    tenant_column name        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT guarded_tables_pkey PRIMARY KEY (table_name)
);

COMMENT ON TABLE tenancy.guarded_tables IS
    'Shared tables whose rows belong to tenants, guarded by an RLS policy on tenant_column.';

-- Application roles granted tenant access (tenancy.grant_app_role): every
-- new tenant schema and guarded table is granted to them as it appears.
CREATE TABLE tenancy.app_roles (
    role_name  name        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT app_roles_pkey PRIMARY KEY (role_name)
);

COMMENT ON TABLE tenancy.app_roles IS
    'Roles that use tenants without owning tables and without BYPASSRLS.';

CREATE OR REPLACE FUNCTION tenancy.register_consumer(p_consumer text)
    RETURNS tenancy.consumers
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.consumers;
BEGIN
    IF p_consumer IS NULL OR p_consumer !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid consumer name %', coalesce(quote_literal(p_consumer), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use 1 to 128 letters, digits, "_", ".", ":" or "-".';
    END IF;
    INSERT INTO tenancy.consumers (name) VALUES (p_consumer) ON CONFLICT (name) DO NOTHING;
    SELECT * INTO v_row FROM tenancy.consumers WHERE name = p_consumer;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.register_consumer(text) IS
    'Create the cursor of consumer p_consumer at the start of the outbox unless it exists; '
    'return the cursor row. Raises 22023 for an invalid name.';

CREATE OR REPLACE FUNCTION tenancy.next_events(p_consumer text, p_limit integer DEFAULT 100)
    RETURNS SETOF tenancy.events
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor tenancy.consumers;
BEGIN
    SELECT * INTO v_cursor FROM tenancy.consumers WHERE name = p_consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(p_consumer)
            USING ERRCODE = 'PT011';
    END IF;
    -- Only transactions below the snapshot's xmin are finished for every
    -- snapshot: nothing can commit there any more, so the cursor may pass.
    RETURN QUERY
        SELECT e.*
          FROM tenancy.events AS e
         WHERE (e.xid, e.id) > (v_cursor.last_xid, v_cursor.last_id)
           AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.xid, e.id
         LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION tenancy.next_events(text, integer) IS
    'Up to p_limit outbox events after the cursor of p_consumer, ordered by (xid, id), only from '
    'transactions that no snapshot can still see as running. Raises PT011 for an unknown consumer.';

CREATE OR REPLACE FUNCTION tenancy.events_held_back(p_consumer text)
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Held-back events (xid >= xmin) sort after every readable one, so the
    -- newest event alone decides, found by a backward scan of the (xid, id)
    -- index whatever the table's statistics.
    SELECT EXISTS (
        SELECT 1
          FROM (SELECT e.xid, e.id FROM tenancy.events AS e
                 ORDER BY e.xid DESC, e.id DESC LIMIT 1) AS newest
          JOIN tenancy.consumers AS c ON c.name = p_consumer
         WHERE (newest.xid, newest.id) > (c.last_xid, c.last_id)
           AND newest.xid >= pg_snapshot_xmin(pg_current_snapshot())
    )
$$;

COMMENT ON FUNCTION tenancy.events_held_back(text) IS
    'True when committed events after the cursor of p_consumer wait for an older transaction '
    'to finish before they may be read; a consumer then polls again shortly.';

-- advance_consumer gets a fourth argument, the lease holder.
DROP FUNCTION IF EXISTS tenancy.advance_consumer(text, xid8, bigint);

CREATE OR REPLACE FUNCTION tenancy.advance_consumer(
    p_consumer text,
    p_xid      xid8,
    p_id       bigint,
    p_holder   text DEFAULT NULL
)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor tenancy.consumers;
BEGIN
    SELECT * INTO v_cursor FROM tenancy.consumers WHERE name = p_consumer FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(p_consumer)
            USING ERRCODE = 'PT011';
    END IF;
    -- A listener whose lease was taken over must not move the cursor of the
    -- one that took over; a lease that merely expired during a long event,
    -- with nobody taking over, is still its own.
    IF p_holder IS NOT NULL AND v_cursor.lease_holder IS DISTINCT FROM p_holder THEN
        RAISE EXCEPTION 'consumer %: the lease of % is lost', quote_literal(p_consumer), p_holder
            USING ERRCODE = 'PT015';
    END IF;
    -- Only to a delivered position: an event that exists and is readable.
    IF NOT EXISTS (SELECT 1 FROM tenancy.events
                    WHERE xid = p_xid AND id = p_id
                      AND xid < pg_snapshot_xmin(pg_current_snapshot())) THEN
        RAISE EXCEPTION 'no readable outbox event at (%, %)', p_xid, p_id
            USING ERRCODE = '22023';
    END IF;
    -- Delivering counts as being seen (prune_events keeps what it needs).
    UPDATE tenancy.consumers
       SET last_xid = CASE WHEN (last_xid, last_id) < (p_xid, p_id) THEN p_xid ELSE last_xid END,
           last_id  = CASE WHEN (last_xid, last_id) < (p_xid, p_id) THEN p_id ELSE last_id END,
           updated_at = now(), seen_at = now()
     WHERE name = p_consumer;
    RETURN (v_cursor.last_xid, v_cursor.last_id) < (p_xid, p_id);
END
$$;

COMMENT ON FUNCTION tenancy.advance_consumer(text, xid8, bigint, text) IS
    'Move the cursor of p_consumer forward to (p_xid, p_id), which must be a readable event; never '
    'backward. With p_holder, only while no other holder has taken the consumer''s lease. Marks '
    'the consumer seen. True when it moved. '
    'Raises PT011 (unknown consumer), PT015 (lease lost), 22023 (not a readable event).';

-- The outbox functions are for listeners: the kit's owner, or roles granted
-- with tenancy.grant_listener_role().
REVOKE ALL ON FUNCTION tenancy.register_consumer(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.next_events(text, integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.events_held_back(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.advance_consumer(text, xid8, bigint, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.grant_listener_role(p_role name)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(p_role)
            USING ERRCODE = '42704';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.events_channel(), '
                   'tenancy.register_consumer(text), tenancy.next_events(text, integer), '
                   'tenancy.events_held_back(text), tenancy.advance_consumer(text, xid8, bigint, text), '
                   'tenancy.version() TO %I', p_role);
    -- Defined in a later file; granted when present.
    IF to_regprocedure('tenancy.consumer_heartbeat(text)') IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.consumer_heartbeat(text), '
                       'tenancy.acquire_lease(text, text, interval), '
                       'tenancy.release_lease(text, text), '
                       'tenancy.park_event(text, bigint, text, integer, text), '
                       'tenancy.unpark_event(text, bigint, text), tenancy.parked_events(text), '
                       'tenancy.inbox_claim(text, bigint) '
                       'TO %I', p_role);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.grant_listener_role(name) IS
    'Let role p_role run outbox consumers (pgtenancy listen): register a consumer, read events, '
    'move its cursor. Raises 42704 when the role does not exist.';

REVOKE ALL ON FUNCTION tenancy.grant_listener_role(name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.apply_migrations(p_schema text, p_from text)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_migration tenancy.migrations;
    v_version   text := p_from;
    v_state     text;
    v_message   text;
    -- Computed while search_path is pinned.
    v_path      text := format('%I, pg_catalog, public, pg_temp', p_schema);
BEGIN
    FOR v_migration IN
        SELECT * FROM tenancy.migrations AS m
         WHERE p_from IS NULL OR m.version > p_from
         ORDER BY m.version
    LOOP
        -- It cannot run in this transaction: the fleet runner applies it
        -- outside one, then everything after it.
        EXIT WHEN v_migration.outside_transaction;
        -- The migration sees the tenant schema first. Everything this
        -- function calls while that path is set is schema-qualified, and the
        -- pinned path comes back right after: an object in public (say a
        -- better-matching format()) must never run with this function's rights.
        PERFORM pg_catalog.set_config('search_path', v_path, true);
        BEGIN
            EXECUTE v_migration.sql;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        EXCEPTION WHEN OTHERS THEN
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
            RAISE EXCEPTION 'migration % failed in schema %: %', v_migration.version, p_schema, v_message
                USING ERRCODE = 'PT006',
                      DETAIL = pg_catalog.format('SQLSTATE %s', v_state),
                      HINT = 'The tenant stays at its previous migration version.';
        END;
        v_version := v_migration.version;
    END LOOP;
    RETURN v_version;
END
$$;

COMMENT ON FUNCTION tenancy.apply_migrations(text, text) IS
    'Run, inside schema p_schema, every registered migration after version p_from (all when NULL), '
    'in version order; return the last version applied (p_from when none). Raises PT006 with the '
    'failing migration''s SQLSTATE in DETAIL. Internal: not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.apply_migrations(text, text) FROM PUBLIC;

-- add_migration gets a third argument, outside_transaction.
DROP FUNCTION IF EXISTS tenancy.add_migration(text, text);

CREATE OR REPLACE FUNCTION tenancy.add_migration(
    p_version             text,
    p_sql                 text,
    p_outside_transaction boolean DEFAULT false
)
    RETURNS tenancy.migrations
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row      tenancy.migrations;
    v_checksum text;
    v_scratch  text;
    v_state    text;
    v_message  text;
    v_detail   text;
BEGIN
    IF p_version IS NULL OR p_version !~ '^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid migration version %', coalesce(quote_literal(p_version), 'NULL')
            USING ERRCODE = 'PT008',
                  HINT = 'Use letters, digits, "_", "." or "-", such as 0001 or 0002_add_invoices.';
    END IF;
    IF p_sql IS NULL OR btrim(p_sql) = '' THEN
        RAISE EXCEPTION 'migration % has no SQL', p_version
            USING ERRCODE = 'PT008';
    END IF;
    v_checksum := encode(sha256(convert_to(p_sql, 'UTF8')), 'hex');

    PERFORM pg_advisory_xact_lock(hashtext('tenancy.migrations'));
    SELECT * INTO v_row FROM tenancy.migrations WHERE version = p_version;
    IF FOUND THEN
        IF v_row.checksum = v_checksum THEN
            RETURN v_row;
        END IF;
        RAISE EXCEPTION 'migration % is already registered with different SQL', p_version
            USING ERRCODE = 'PT008',
                  HINT = 'Registered migrations never change: add a new version instead.';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.migrations WHERE version > p_version) THEN
        RAISE EXCEPTION 'migration % sorts before the latest registered version %', p_version,
            (SELECT max(version) FROM tenancy.migrations)
            USING ERRCODE = 'PT008',
                  HINT = 'Versions are applied in C-collation order: use a later version.';
    END IF;

    INSERT INTO tenancy.migrations (version, sql, checksum, outside_transaction)
    VALUES (p_version, p_sql, v_checksum, coalesce(p_outside_transaction, false))
    RETURNING * INTO v_row;
    IF v_row.outside_transaction THEN
        -- Statements such as CREATE INDEX CONCURRENTLY cannot be tried in a
        -- scratch schema inside this transaction.
        RETURN v_row;
    END IF;

    -- Try every migration, the new one included, in a scratch schema, and
    -- undo it all: broken SQL is refused here, before any tenant sees it.
    v_scratch := format('tenancy_check_%s', pg_current_xact_id());
    BEGIN
        EXECUTE format('CREATE SCHEMA %I', v_scratch);
        PERFORM tenancy.apply_migrations(v_scratch, NULL);
        RAISE EXCEPTION 'scratch check passed' USING ERRCODE = 'PTZ00';
    EXCEPTION
        WHEN SQLSTATE 'PTZ00' THEN
            NULL;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_detail = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION 'migration % does not apply to an empty tenant schema: %', p_version, v_message
                USING ERRCODE = 'PT008',
                      DETAIL = CASE WHEN v_state = 'PT006' THEN v_detail
                                    ELSE format('SQLSTATE %s', v_state) END,
                      HINT = 'Nothing was registered.';
    END;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.add_migration(text, text, boolean) IS
    'Register tenant DDL p_sql as migration p_version, which must sort after every registered '
    'version. The whole chain is first tried in a scratch schema and rolled back. Re-adding the '
    'same version with the same SQL is a no-op. With p_outside_transaction it is not tried and '
    'the fleet runner applies it outside a transaction (CREATE INDEX CONCURRENTLY, say); '
    'transactional paths stop before it. Raises PT008 for a bad version, changed SQL, '
    'out-of-order version or SQL that fails; nothing is registered then.';

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
    -- Serialize creations of one slug so a concurrent duplicate gets PT002.
    PERFORM pg_advisory_xact_lock(hashtext('tenancy.tenant'), hashtext(NEW.slug));
    IF EXISTS (SELECT 1 FROM tenancy.tenants WHERE slug = NEW.slug) THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(NEW.slug)
            USING ERRCODE = 'PT002';
    END IF;
    NEW.isolation := coalesce(NEW.isolation, 'schema');
    NEW.status := coalesce(NEW.status, 'active');
    NEW.created_at := now();
    NEW.updated_at := now();
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
    NEW.migration_version := tenancy.apply_migrations(NEW.schema_name, NULL);
    PERFORM tenancy.grant_schema_to_app_roles(NEW.schema_name);
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_before_insert() IS
    'Trigger: validate the slug (PT001), refuse a duplicate slug or an existing schema (PT002); '
    'for a schema tenant derive schema_name, create the schema, apply every migration (PT006 on '
    'failure) and grant it to the application roles; a shared tenant gets no schema.';

CREATE OR REPLACE FUNCTION tenancy.tenants_before_update()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.slug IS DISTINCT FROM OLD.slug
       OR NEW.schema_name IS DISTINCT FROM OLD.schema_name
       OR NEW.isolation IS DISTINCT FROM OLD.isolation
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'tenant %: id, slug, schema_name, isolation and created_at cannot change',
            quote_literal(OLD.slug)
            USING ERRCODE = 'PT010';
    END IF;
    IF OLD.status = 'deleted' AND NEW.status <> 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(OLD.slug)
            USING ERRCODE = 'PT005',
                  HINT = 'A deleted tenant stays deleted; create a new one.';
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
    'Trigger: refuse changes to immutable tenant columns or a migration_version that is not a '
    'later registered version (PT010), refuse bringing a deleted tenant back (PT005), and stamp '
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
    IF TG_OP = 'INSERT' THEN
        PERFORM tenancy.emit_event('tenant_created', NEW,
            jsonb_build_object('migration_version', NEW.migration_version, 'metadata', NEW.metadata,
                               'isolation', NEW.isolation));
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        -- The row is the truth: a tenant whose row is gone has no data.
        IF OLD.schema_name IS NOT NULL THEN
            EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', OLD.schema_name);
        END IF;
        PERFORM tenancy.delete_shared_rows(OLD.id);
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
    'tenant_migrated for every change of the registry, whoever makes it; a deleted row also '
    'drops its tenant schema and deletes its rows from every guarded shared table.';

CREATE OR REPLACE TRIGGER tenants_refuse_truncate
    BEFORE TRUNCATE ON tenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenants_refuse_truncate();

-- Trigger functions run without an EXECUTE check when they fire; CREATE
-- TRIGGER needs EXECUTE, so nobody can attach them elsewhere.
REVOKE ALL ON FUNCTION tenancy.tenants_before_insert() FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.tenants_before_update() FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.tenants_after_change() FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.tenants_refuse_truncate() FROM PUBLIC;

-- create_tenant gets a third argument, isolation.
DROP FUNCTION IF EXISTS tenancy.create_tenant(text, jsonb);

CREATE OR REPLACE FUNCTION tenancy.create_tenant(
    p_slug      text,
    p_metadata  jsonb DEFAULT '{}',
    p_isolation text DEFAULT 'schema'
)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants;
BEGIN
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %', jsonb_typeof(p_metadata)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO tenancy.tenants (slug, metadata, isolation)
    VALUES (p_slug, coalesce(p_metadata, '{}'), coalesce(p_isolation, 'schema'))
    RETURNING * INTO v_row;
    RETURN v_row;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(p_slug)
            USING ERRCODE = 'PT002';
END
$$;

COMMENT ON FUNCTION tenancy.create_tenant(text, jsonb, text) IS
    'Create tenant p_slug: validate the slug; with p_isolation schema (default) create schema '
    'schema_prefix()||slug and apply every migration; with shared the tenant''s rows live in '
    'guarded shared tables. Registers the row and emits tenant_created, all in the caller''s '
    'transaction. Raises PT001 (invalid slug), PT002 (exists), PT006 (a migration failed), 22023 '
    '(metadata not an object, unknown isolation); on error nothing is left behind.';

REVOKE ALL ON FUNCTION tenancy.create_tenant(text, jsonb, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.migrate_tenant(p_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row     tenancy.tenants := tenancy.lock_tenant(p_slug);
    v_version text;
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(p_slug)
            USING ERRCODE = 'PT005';
    END IF;
    -- Current tenants cost one comparison, not a replay; shared tenants
    -- have no schema to migrate.
    IF v_row.isolation = 'shared'
       OR v_row.migration_version IS NOT DISTINCT FROM tenancy.latest_migration() THEN
        RETURN v_row;
    END IF;
    IF to_regnamespace(quote_ident(v_row.schema_name)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_row.schema_name),
            quote_literal(p_slug)
            USING ERRCODE = 'PT007';
    END IF;
    v_version := tenancy.apply_migrations(v_row.schema_name, v_row.migration_version);
    PERFORM tenancy.grant_schema_to_app_roles(v_row.schema_name);
    UPDATE tenancy.tenants SET migration_version = v_version WHERE id = v_row.id RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.migrate_tenant(text) IS
    'Apply to tenant p_slug the registered migrations it lacks, in order, in the caller''s '
    'transaction (the row lock serializes concurrent runs); emits tenant_migrated with the '
    'versions applied. Raises PT003 (not found), PT005 (deleted), PT007 (schema missing), '
    'PT006 (a migration failed: the tenant stays at its previous version).';

REVOKE ALL ON FUNCTION tenancy.migrate_tenant(text) FROM PUBLIC;

-- 004: entering a tenant. Tenant context is per transaction: enter_tenant() sets search_path and
-- app.tenant_id with set_config(..., true), so both vanish at COMMIT or
-- ROLLBACK and a pooled connection carries nothing of the tenant.
-- enter_tenant() must not have a SET clause (the clause would undo its
-- set_config calls on return), so it is SECURITY INVOKER and qualifies
-- every name instead.
-- What enter_tenant() reads of the registry. A view (not a SECURITY DEFINER
-- function, whose call costs more than the lookup) that application roles
-- may read: no metadata, nothing they could not enter anyway.
CREATE OR REPLACE VIEW tenancy.tenant_directory AS
    SELECT t.slug, t.id, t.schema_name, t.status FROM tenancy.tenants AS t;

COMMENT ON VIEW tenancy.tenant_directory IS
    'Slug, id, schema and status of every tenant: what entering a tenant needs, readable by '
    'application roles that have no access to tenancy.tenants.';

CREATE OR REPLACE FUNCTION tenancy.enter_tenant(p_slug text)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    v_id     uuid;
    v_schema text;
    v_status text;
BEGIN
    SELECT d.id, d.schema_name, d.status
      INTO v_id, v_schema, v_status
      FROM tenancy.tenant_directory AS d
     WHERE d.slug = p_slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(pg_catalog.quote_literal(p_slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    IF v_status = 'suspended' THEN
        RAISE EXCEPTION 'tenant % is suspended', pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT004';
    END IF;
    IF v_status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT005';
    END IF;
    -- Fail closed: never fall back to public when the schema is gone.
    IF v_schema IS NOT NULL
       AND pg_catalog.to_regnamespace(pg_catalog.quote_ident(v_schema)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', pg_catalog.quote_ident(v_schema),
            pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- A shared tenant sees the shared schema, guarded by RLS on app.tenant_id.
    PERFORM pg_catalog.set_config('search_path',
                                  CASE WHEN v_schema IS NULL THEN 'public'
                                       ELSE pg_catalog.quote_ident(v_schema) || ', public' END,
                                  true);
    PERFORM pg_catalog.set_config('app.tenant_id', v_id::text, true);
    PERFORM pg_catalog.set_config('app.tenant', p_slug, true);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant(text) IS
    'Put the current transaction into tenant p_slug: search_path = tenant schema, public (public '
    'alone for a shared tenant); '
    'app.tenant_id = tenant id; app.tenant = slug; all transaction-local. Returns the tenant id. '
    'Raises PT003 (unknown), PT004 (suspended), PT005 (deleted), PT007 (schema missing) before '
    'anything is set. Call it inside a transaction block.';

-- 005: shared tables guarded by row-level security. A guarded table has a tenant column (uuid) whose default is the current
-- tenant, an index led by it, ENABLE and FORCE ROW LEVEL SECURITY, and one
-- policy for all commands in the InitPlan form, so current_tenant_id() is
-- evaluated once per query, not once per row:
--     tenant_id = (SELECT tenancy.current_tenant_id())
-- With no tenant in the transaction the policy matches nothing (fail closed)
-- and the column default raises PT012. Superusers and roles with BYPASSRLS
-- skip every policy: the application must connect as a role that owns
-- nothing and has neither (tenancy.grant_app_role refuses such roles).
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
    'sequences. Run after provisioning and after each migration. Internal.';

REVOKE ALL ON FUNCTION tenancy.grant_schema_to_app_roles(text) FROM PUBLIC;

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

CREATE OR REPLACE FUNCTION tenancy.grant_app_role(p_role name)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role   pg_roles;
    v_schema text;
    v_table  regclass;
BEGIN
    SELECT * INTO v_role FROM pg_roles WHERE rolname = p_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(p_role)
            USING ERRCODE = '42704';
    END IF;
    IF v_role.rolsuper OR v_role.rolbypassrls THEN
        RAISE EXCEPTION 'role % is a superuser or has BYPASSRLS: row-level security would not apply',
            quote_ident(p_role)
            USING ERRCODE = 'PT013',
                  HINT = 'Use a role with NOSUPERUSER NOBYPASSRLS for the application.';
    END IF;
    SELECT g.table_name INTO v_table
      FROM tenancy.guarded_tables AS g
      JOIN pg_class AS c ON c.oid = g.table_name
     WHERE pg_has_role(p_role, c.relowner, 'USAGE')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'role % owns guarded table %: an owner can turn row-level security off',
            quote_ident(p_role), v_table
            USING ERRCODE = 'PT013',
                  HINT = 'Let the application role own nothing; tables belong to the kit''s owner.';
    END IF;

    PERFORM tenancy.forget_dropped_tables();
    INSERT INTO tenancy.app_roles (role_name) VALUES (p_role) ON CONFLICT (role_name) DO NOTHING;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', p_role);
    EXECUTE format('GRANT SELECT ON TABLE tenancy.guarded_tables, tenancy.tenant_directory TO %I',
                   p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.enter_tenant(text), '
                   'tenancy.current_tenant_id(), '
                   'tenancy.current_tenant(), tenancy.require_tenant_id(), tenancy.version(), '
                   'tenancy.check_isolation(), tenancy.check_registry() TO %I', p_role);
    IF to_regprocedure('tenancy.inbox_claim(text, bigint)') IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.inbox_claim(text, bigint) TO %I', p_role);
    END IF;
    FOR v_schema IN SELECT schema_name FROM tenancy.tenants WHERE schema_name IS NOT NULL LOOP
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            PERFORM tenancy.grant_schema_to_app_roles(v_schema);
        END IF;
    END LOOP;
    FOR v_table IN SELECT table_name FROM tenancy.guarded_tables LOOP
        PERFORM tenancy.grant_table_to_app_roles(v_table);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.grant_app_role(name) IS
    'Let role p_role use tenants: enter them, and read and write every tenant '
    'schema and guarded table, now and as new ones appear, without owning any table. Raises 42704 '
    '(no such role) and PT013 (superuser, BYPASSRLS, or owner of a guarded table). Idempotent.';

REVOKE ALL ON FUNCTION tenancy.grant_app_role(name) FROM PUBLIC;

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
    FOR v_guard IN SELECT * FROM tenancy.guarded_tables LOOP
        EXECUTE format('DELETE FROM %s WHERE %I = $1', v_guard.table_name, v_guard.tenant_column)
            USING p_tenant;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_total := v_total + v_count;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(v_before, ''), true);
    RETURN v_total;
END
$$;

COMMENT ON FUNCTION tenancy.delete_shared_rows(uuid) IS
    'Delete the rows of tenant p_tenant from every guarded table; return how many. Run by the '
    'registry trigger when a tenant is destroyed. Internal.';

REVOKE ALL ON FUNCTION tenancy.delete_shared_rows(uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.enable_rls(p_table regclass, p_tenant_column name DEFAULT 'tenant_id')
    RETURNS tenancy.guarded_tables
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_class   pg_class;
    v_schema  name;
    v_type    regtype;
    v_attnum  smallint;
    v_guard   tenancy.guarded_tables;
    v_nulls   boolean;
    v_check   text := format('%I = (SELECT tenancy.current_tenant_id())', p_tenant_column);
BEGIN
    SELECT * INTO v_class FROM pg_class WHERE oid = p_table;
    SELECT nspname INTO v_schema FROM pg_namespace WHERE oid = v_class.relnamespace;
    IF v_class.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', p_table
            USING ERRCODE = 'PT014';
    END IF;
    IF v_schema = 'tenancy' OR EXISTS (SELECT 1 FROM tenancy.tenants WHERE schema_name = v_schema) THEN
        RAISE EXCEPTION '% is in schema %, which is not shared', p_table, quote_ident(v_schema)
            USING ERRCODE = 'PT014',
                  HINT = 'Guard tables of shared schemas; a tenant schema is isolated already.';
    END IF;
    PERFORM tenancy.forget_dropped_tables();
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = p_table;
    IF FOUND AND v_guard.tenant_column <> p_tenant_column THEN
        RAISE EXCEPTION '% is already guarded on column %', p_table, quote_ident(v_guard.tenant_column)
            USING ERRCODE = 'PT014';
    END IF;

    SELECT a.atttypid::regtype, a.attnum INTO v_type, v_attnum
      FROM pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attname = p_tenant_column AND NOT a.attisdropped;
    IF NOT FOUND THEN
        -- Existing rows get NULL: they belong to no tenant and nobody sees them.
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I uuid', p_table, p_tenant_column);
        SELECT a.attnum INTO v_attnum FROM pg_attribute AS a
         WHERE a.attrelid = p_table AND a.attname = p_tenant_column;
    ELSIF v_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'tenant column %.% is %, not uuid', p_table, quote_ident(p_tenant_column), v_type
            USING ERRCODE = 'PT014';
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.require_tenant_id()',
                   p_table, p_tenant_column);
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I IS NULL)', p_table, p_tenant_column)
        INTO v_nulls;
    IF NOT v_nulls THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', p_table, p_tenant_column);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = p_table AND indkey[0] = v_attnum) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', p_table, p_tenant_column);
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', p_table);
    -- The tenant check is RESTRICTIVE, so it is ANDed with every other
    -- policy: a permissive policy added later (USING (true), say) cannot
    -- open other tenants' rows. Restrictive policies need a permissive one
    -- to grant access at all: tenancy_tenant_rows, USING (true).
    IF NOT EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = p_table AND polname = 'tenancy_tenant_isolation') THEN
        EXECUTE format('CREATE POLICY tenancy_tenant_isolation ON %s AS RESTRICTIVE FOR ALL '
                       'USING (%s) WITH CHECK (%s)', p_table, v_check, v_check);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = p_table AND polname = 'tenancy_tenant_rows') THEN
        EXECUTE format('CREATE POLICY tenancy_tenant_rows ON %s AS PERMISSIVE FOR ALL '
                       'USING (true) WITH CHECK (true)', p_table);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = p_table AND tgname = 'tenancy_guard_write') THEN
        EXECUTE format('CREATE TRIGGER tenancy_guard_write BEFORE INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION tenancy.guard_write()', p_table);
    END IF;
    INSERT INTO tenancy.guarded_tables (table_name, tenant_column)
    VALUES (p_table, p_tenant_column)
    ON CONFLICT (table_name) DO NOTHING;
    PERFORM tenancy.grant_table_to_app_roles(p_table);
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = p_table;
    RETURN v_guard;
END
$$;

COMMENT ON FUNCTION tenancy.enable_rls(regclass, name) IS
    'Guard shared table p_table by tenant: add uuid column p_tenant_column if missing (existing rows '
    'get NULL and stay invisible), default it to the current tenant, index it, ENABLE and FORCE ROW '
    'LEVEL SECURITY, create the RESTRICTIVE policy tenancy_tenant_isolation FOR ALL with USING and '
    'WITH CHECK p_tenant_column = (SELECT tenancy.current_tenant_id()) and its permissive companion '
    'tenancy_tenant_rows (true), and statement trigger '
    'tenancy_guard_write refusing writes without a tenant (PT012). Grants DML to application roles. '
    'Idempotent. Raises PT014 (not a table, tenant or tenancy schema, column not uuid, guarded on '
    'another column). The kit''s owner must own the table.';

REVOKE ALL ON FUNCTION tenancy.enable_rls(regclass, name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.disable_rls(p_table regclass)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_guard tenancy.guarded_tables;
BEGIN
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = p_table;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_isolation ON %s', p_table);
    EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_rows ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_guard_write ON %s', p_table);
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', p_table, v_guard.tenant_column);
    DELETE FROM tenancy.guarded_tables WHERE table_name = p_table;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.disable_rls(regclass) IS
    'Undo enable_rls on p_table: drop the policies and the write trigger, NO FORCE and DISABLE ROW '
    'LEVEL SECURITY, drop the column default; the column, its data and its index stay. True when the table was guarded; a '
    'no-op otherwise.';

REVOKE ALL ON FUNCTION tenancy.disable_rls(regclass) FROM PUBLIC;

-- 006: the isolation doctor. tenancy.check_isolation() runs as the calling role (SECURITY INVOKER), so
-- run it as the application's role: most of what can break isolation is a
-- property of the role that queries.
CREATE OR REPLACE FUNCTION tenancy.check_registry()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_latest text;
BEGIN
    RETURN QUERY
        SELECT 'error'::text, 'tenant_schema_missing'::text, t.slug,
               format('tenant %s is registered but its schema %I does not exist', t.slug, t.schema_name),
               format('restore the schema, or SELECT tenancy.drop_tenant(%L, true)', t.slug)
          FROM tenancy.tenants AS t
         WHERE t.schema_name IS NOT NULL AND t.status <> 'deleted'
           AND to_regnamespace(quote_ident(t.schema_name)) IS NULL;

    RETURN QUERY
        SELECT 'warning'::text, 'unregistered_tenant_schema'::text, n.nspname::text,
               format('schema %I has the tenant prefix but is not a registered tenant', n.nspname),
               'drop or rename it, or register it (schemas are never adopted silently)'::text
          FROM pg_namespace AS n
         WHERE starts_with(n.nspname, tenancy.schema_prefix())
           AND NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = n.nspname);

    v_latest := tenancy.latest_migration();
    RETURN QUERY
        SELECT 'warning'::text, 'migration_lag'::text, t.slug,
               format('tenant %s is at migration %s, the latest is %s', t.slug,
                      coalesce(t.migration_version, 'none'), v_latest),
               format('SELECT tenancy.migrate_tenant(%L)', t.slug)
          FROM tenancy.tenants AS t
         WHERE t.isolation = 'schema' AND t.status <> 'deleted' AND v_latest IS NOT NULL
           AND t.migration_version IS DISTINCT FROM v_latest;

    -- Only when the operations functions are installed (007 comes later).
    IF to_regclass('tenancy.consumers') IS NOT NULL THEN
        RETURN QUERY
            SELECT 'warning'::text, 'consumer_inactive'::text, c.name,
                   format('consumer %s has not been seen since %s and has undelivered events; '
                          'prune_events no longer waits for it',
                          c.name, coalesce(c.seen_at, c.updated_at)),
                   format('run its listener again, or DELETE FROM tenancy.consumers WHERE name = %L',
                          c.name)
              FROM tenancy.consumers AS c
             WHERE coalesce(c.seen_at, c.updated_at) < now() - tenancy.consumer_inactive_after()
               AND EXISTS (SELECT 1 FROM tenancy.events AS e
                            WHERE (e.xid, e.id) > (c.last_xid, c.last_id));
    END IF;

END
$$;

COMMENT ON FUNCTION tenancy.check_registry() IS
    'Registry findings of the doctor, readable without access to the registry: tenant schemas '
    'missing (error), prefixed schemas not registered, tenants behind the latest migration '
    '(warnings), consumers unseen for consumer_inactive_after() with undelivered events '
    '(warning). Called by '
    'check_isolation().';

REVOKE ALL ON FUNCTION tenancy.check_registry() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.check_isolation()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_me     pg_roles;
    r        record;
BEGIN
    SELECT * INTO v_me FROM pg_roles WHERE rolname = current_user;
    IF v_me.rolsuper OR v_me.rolbypassrls THEN
        RETURN QUERY SELECT 'error'::text, 'role_bypasses_rls'::text, current_user::text,
            format('role %s is %s: row-level security policies do not apply to it',
                   current_user, CASE WHEN v_me.rolsuper THEN 'a superuser' ELSE 'BYPASSRLS' END),
            format('connect the application as a NOSUPERUSER NOBYPASSRLS role granted with '
                   'tenancy.grant_app_role()')::text;
    END IF;

    FOR r IN
        SELECT g.table_name, g.tenant_column, c.relowner, c.relrowsecurity, c.relforcerowsecurity,
               (SELECT a.attnum FROM pg_attribute AS a
                 WHERE a.attrelid = g.table_name AND a.attname = g.tenant_column) AS attnum
          FROM tenancy.guarded_tables AS g
          JOIN pg_class AS c ON c.oid = g.table_name::oid
    LOOP
        IF pg_has_role(current_user, r.relowner, 'USAGE') THEN
            RETURN QUERY SELECT 'error'::text, 'role_owns_guarded_table'::text, r.table_name::text,
                format('role %s owns guarded table %s and can switch its row-level security off',
                       current_user, r.table_name),
                format('ALTER TABLE %s OWNER TO <the kit''s owner role>', r.table_name);
        END IF;
        IF NOT r.relrowsecurity THEN
            RETURN QUERY SELECT 'error'::text, 'rls_disabled'::text, r.table_name::text,
                format('row-level security is disabled on guarded table %s', r.table_name),
                format('SELECT tenancy.enable_rls(%L)', r.table_name::text);
        END IF;
        IF NOT r.relforcerowsecurity THEN
            RETURN QUERY SELECT 'error'::text, 'rls_not_forced'::text, r.table_name::text,
                format('guarded table %s lacks FORCE ROW LEVEL SECURITY: its owner bypasses the policy',
                       r.table_name),
                format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.table_name);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policy
                        WHERE polrelid = r.table_name AND polname = 'tenancy_tenant_isolation') THEN
            RETURN QUERY SELECT 'error'::text, 'policy_missing'::text, r.table_name::text,
                format('guarded table %s has no tenancy_tenant_isolation policy', r.table_name),
                format('SELECT tenancy.enable_rls(%L, %L)', r.table_name::text, r.tenant_column);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_index
                        WHERE indrelid = r.table_name AND indkey[0] = r.attnum) THEN
            RETURN QUERY SELECT 'warning'::text, 'tenant_index_missing'::text, r.table_name::text,
                format('guarded table %s has no index led by %I: every tenant query scans it all',
                       r.table_name, r.tenant_column),
                format('CREATE INDEX ON %s (%I)', r.table_name, r.tenant_column);
        END IF;
    END LOOP;

    -- A setting read outside an InitPlan is evaluated once per row.
    FOR r IN
        SELECT p.polname, p.polrelid::regclass AS tbl,
               coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
               || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') AS expr
          FROM pg_policy AS p
    LOOP
        IF regexp_replace(r.expr, '\(\s*SELECT\s+[^()]*(\([^()]*\)[^()]*)*\)', '', 'gi')
           ~* '(current_setting|tenancy\.current_tenant_id|tenancy\.current_tenant)\s*\(' THEN
            RETURN QUERY SELECT 'warning'::text, 'policy_not_initplan'::text,
                format('%s on %s', r.polname, r.tbl),
                format('policy %s on %s calls the tenant setting outside a sub-select, so it is '
                       'evaluated for every row', r.polname, r.tbl),
                'wrap it in a sub-select: tenant_id = (SELECT tenancy.current_tenant_id())'::text;
        END IF;
    END LOOP;

    RETURN QUERY SELECT * FROM tenancy.check_registry();

    IF NOT EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE datname = current_database()
                      AND application_name LIKE 'pgtenancy-listener:%') THEN
        RETURN QUERY SELECT 'warning'::text, 'no_listener'::text, tenancy.events_channel(),
            format('no pgtenancy listener is connected to this database: lifecycle events wait '
                   'in the outbox'),
            'run pgtenancy listen --consumer NAME --handlers MODULE'::text;
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.check_isolation() IS
    'Isolation findings for the current role and database, one row each: severity (error or '
    'warning), check_name, object, message, fix. Checks: role is superuser or BYPASSRLS; role owns '
    'a guarded table; guarded table without ENABLE or FORCE RLS, without its policy, without an '
    'index led by the tenant column; policies reading the tenant setting outside an InitPlan; '
    'tenant schemas missing; prefixed schemas not registered; tenants behind the latest migration; '
    'no listener connected. Run it as the application role.';

-- 007: consumer leases and heartbeats, retention, parking and the inbox.
ALTER TABLE tenancy.consumers ADD COLUMN lease_holder text;

ALTER TABLE tenancy.consumers ADD COLUMN lease_until timestamptz;

ALTER TABLE tenancy.consumers ADD COLUMN seen_at timestamptz;

-- Several listeners may run one consumer name: the one holding the lease
-- dispatches, the others wait and take over when it expires.
CREATE OR REPLACE FUNCTION tenancy.acquire_lease(p_consumer text, p_holder text, p_ttl interval)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_holder IS NULL OR p_ttl IS NULL OR p_ttl <= interval '0' THEN
        RAISE EXCEPTION 'acquire_lease needs a holder and a positive ttl'
            USING ERRCODE = '22023';
    END IF;
    UPDATE tenancy.consumers
       SET lease_holder = p_holder, lease_until = clock_timestamp() + p_ttl
     WHERE name = p_consumer
       AND (lease_holder IS NULL OR lease_holder = p_holder OR lease_until < clock_timestamp());
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.consumers WHERE name = p_consumer) THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(p_consumer)
            USING ERRCODE = 'PT011';
    END IF;
    RETURN false;
END
$$;

COMMENT ON FUNCTION tenancy.acquire_lease(text, text, interval) IS
    'Take or renew the lease of consumer p_consumer for p_holder until now + p_ttl; true when '
    'p_holder holds it now, false when another holder''s lease is still valid. Raises PT011 '
    '(unknown consumer), 22023 (no holder, ttl not positive).';

REVOKE ALL ON FUNCTION tenancy.acquire_lease(text, text, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.release_lease(p_consumer text, p_holder text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE tenancy.consumers SET lease_holder = NULL, lease_until = NULL
     WHERE name = p_consumer AND lease_holder = p_holder
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.release_lease(text, text) IS
    'Give up the lease of p_consumer if p_holder holds it (a clean stop), so a waiting listener '
    'takes over at once. True when released, NULL otherwise.';

REVOKE ALL ON FUNCTION tenancy.release_lease(text, text) FROM PUBLIC;

COMMENT ON COLUMN tenancy.consumers.seen_at IS
    'Last heartbeat of a listener running this consumer; NULL when none ever ran.';

CREATE OR REPLACE FUNCTION tenancy.consumer_heartbeat(p_consumer text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tenancy.consumers SET seen_at = now() WHERE name = p_consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(p_consumer)
            USING ERRCODE = 'PT011';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.consumer_heartbeat(text) IS
    'Record that a listener of consumer p_consumer is alive (listeners call it every few '
    'seconds). Raises PT011 for an unknown consumer.';

REVOKE ALL ON FUNCTION tenancy.consumer_heartbeat(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.consumer_inactive_after()
    RETURNS interval
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(nullif(current_setting('pgtenancy.consumer_inactive_after', true), ''),
                    '1 day')::interval
$$;

COMMENT ON FUNCTION tenancy.consumer_inactive_after() IS
    'How long a consumer may go without a heartbeat before it stops holding events back: the '
    'setting pgtenancy.consumer_inactive_after (e.g. ALTER DATABASE ... SET '
    'pgtenancy.consumer_inactive_after = ''6 hours''), default 1 day.';

CREATE OR REPLACE FUNCTION tenancy.prune_events(
    p_older_than     interval,
    p_inactive_after interval DEFAULT NULL
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count    bigint;
    v_inactive interval := coalesce(p_inactive_after, tenancy.consumer_inactive_after());
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'prune_events needs a non-negative age, not %', p_older_than
            USING ERRCODE = '22023';
    END IF;
    -- An active consumer (heartbeat within p_inactive_after) holds back
    -- every event it has not passed; an inactive one no longer does.
    DELETE FROM tenancy.events AS e
     WHERE e.created_at < now() - p_older_than
       AND NOT EXISTS (
           SELECT 1 FROM tenancy.consumers AS c
            WHERE (coalesce(c.seen_at, c.updated_at) > now() - v_inactive
                   OR c.lease_until > now())
              AND (e.xid, e.id) > (c.last_xid, c.last_id))
       AND NOT EXISTS (SELECT 1 FROM tenancy.parked_events AS p WHERE p.event_id = e.id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    -- A pruned event is never redelivered: its inbox claims are done with.
    IF to_regclass('tenancy.inbox') IS NOT NULL THEN
        DELETE FROM tenancy.inbox AS i
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.events AS e WHERE e.id = i.event_id);
    END IF;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.prune_events(interval, interval) IS
    'Delete outbox events older than p_older_than that every active consumer has passed and no '
    'receiver has parked; a consumer not seen for p_inactive_after (default: '
    'consumer_inactive_after()) stops holding events back. Returns how many were '
    'deleted. Raises 22023 for a negative or NULL age.';

REVOKE ALL ON FUNCTION tenancy.prune_events(interval, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.consumer_status()
    RETURNS TABLE (
        consumer        text,
        last_id         bigint,
        lag_events      bigint,
        lag_seconds     double precision,
        seen_at         timestamptz,
        listeners       bigint,
        lease_holder    text
    )
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.name,
           c.last_id,
           (SELECT count(*) FROM tenancy.events AS e WHERE (e.xid, e.id) > (c.last_xid, c.last_id)),
           coalesce(extract(epoch FROM now() - (
               SELECT min(e.created_at) FROM tenancy.events AS e
                WHERE (e.xid, e.id) > (c.last_xid, c.last_id))), 0)::double precision,
           c.seen_at,
           (SELECT count(*) FROM pg_stat_activity AS a
             WHERE a.datname = current_database()
               AND a.application_name = 'pgtenancy-listener:' || c.name),
           CASE WHEN c.lease_until > now() THEN c.lease_holder END
      FROM tenancy.consumers AS c
     ORDER BY c.name
$$;

COMMENT ON FUNCTION tenancy.consumer_status() IS
    'Per consumer: cursor (last_id), events not yet delivered, age in seconds of the oldest of '
    'them, last heartbeat, listeners connected now, and the holder of a valid lease.';

REVOKE ALL ON FUNCTION tenancy.consumer_status() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.outbox_health(
    OUT notification_queue_usage double precision,
    OUT oldest_transaction_seconds double precision,
    OUT events bigint
)
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_notification_queue_usage(),
           coalesce((SELECT extract(epoch FROM now() - min(a.xact_start))
                       FROM pg_stat_activity AS a
                      WHERE (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
                        AND a.pid <> pg_backend_pid()), 0)::double precision,
           (SELECT count(*) FROM tenancy.events)
$$;

COMMENT ON FUNCTION tenancy.outbox_health() IS
    'Fill of the NOTIFY queue (0 to 1), age in seconds of the oldest open transaction (which '
    'holds back every consumer), and events kept in the outbox.';

REVOKE ALL ON FUNCTION tenancy.outbox_health() FROM PUBLIC;

-- Events parked for one receiver: it kept failing, the consumer went on.
CREATE TABLE tenancy.parked_events (
    consumer  text        NOT NULL,
    event_id  bigint      NOT NULL,
    receiver  text        NOT NULL,
    attempts  integer     NOT NULL,
    error     text        NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT parked_events_pkey PRIMARY KEY (consumer, event_id, receiver)
);

COMMENT ON TABLE tenancy.parked_events IS
    'Events a receiver (by dispatch_uid or module.qualname) failed on after its retries; '
    'pgtenancy events retry delivers them again to that receiver only.';

CREATE OR REPLACE FUNCTION tenancy.park_event(
    p_consumer text, p_event_id bigint, p_receiver text, p_attempts integer, p_error text
)
    RETURNS void
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tenancy.parked_events AS p (consumer, event_id, receiver, attempts, error)
    VALUES (p_consumer, p_event_id, p_receiver, p_attempts, p_error)
    ON CONFLICT (consumer, event_id, receiver) DO UPDATE
       SET attempts = p.attempts + excluded.attempts, error = excluded.error, parked_at = now()
$$;

COMMENT ON FUNCTION tenancy.park_event(text, bigint, text, integer, text) IS
    'Park event p_event_id of consumer p_consumer for receiver p_receiver with its last error; '
    'parking it again adds the attempts.';

REVOKE ALL ON FUNCTION tenancy.park_event(text, bigint, text, integer, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.unpark_event(p_consumer text, p_event_id bigint, p_receiver text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM tenancy.parked_events
     WHERE consumer = p_consumer AND event_id = p_event_id AND receiver = p_receiver
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.unpark_event(text, bigint, text) IS
    'Forget a parked event once its receiver has run it; true when one was removed.';

REVOKE ALL ON FUNCTION tenancy.unpark_event(text, bigint, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.parked_events(p_consumer text DEFAULT NULL)
    RETURNS TABLE (
        consumer text, receiver text, attempts integer, error text, parked_at timestamptz,
        id bigint, xid text, name text, tenant_id uuid, tenant_slug text, tenant_schema text,
        tenant_status text, payload jsonb, created_at timestamptz
    )
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.consumer, p.receiver, p.attempts, p.error, p.parked_at,
           e.id, e.xid::text, e.name, e.tenant_id, e.tenant_slug, e.tenant_schema,
           e.tenant_status, e.payload, e.created_at
      FROM tenancy.parked_events AS p
      JOIN tenancy.events AS e ON e.id = p.event_id
     WHERE p_consumer IS NULL OR p.consumer = p_consumer
     ORDER BY p.consumer, e.xid, e.id, p.receiver
$$;

COMMENT ON FUNCTION tenancy.parked_events(text) IS
    'Parked events (of p_consumer, or all), with their receiver, attempts, last error and the '
    'event itself, in delivery order.';

REVOKE ALL ON FUNCTION tenancy.parked_events(text) FROM PUBLIC;

-- The inbox: effectively-once effects in this database. A receiver claims
-- (receiver, event) in the same transaction as its own writes; a redelivered
-- event finds the claim and is skipped, and a rolled-back transaction takes
-- its claim with it.
CREATE TABLE tenancy.inbox (
    receiver     text        NOT NULL,
    event_id     bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (receiver, event_id)
);

COMMENT ON TABLE tenancy.inbox IS
    'Events each receiver (dispatch_uid) has applied, written in the receiver''s own transaction.';

CREATE OR REPLACE FUNCTION tenancy.inbox_claim(p_receiver text, p_event_id bigint)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Only an event that exists and is readable can be claimed: nobody can
    -- claim future events to make a receiver skip them.
    WITH claimed AS (
        INSERT INTO tenancy.inbox (receiver, event_id)
        SELECT p_receiver, e.id FROM tenancy.events AS e
         WHERE e.id = p_event_id AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
        ON CONFLICT (receiver, event_id) DO NOTHING
        RETURNING true
    )
    SELECT coalesce((SELECT true FROM claimed), false)
$$;

COMMENT ON FUNCTION tenancy.inbox_claim(text, bigint) IS
    'Claim event p_event_id for receiver p_receiver in the current transaction: true the first '
    'time (apply the effect), false when already applied (skip it) or when no readable event has '
    'that id. Call it in the transaction that makes the effect.';

REVOKE ALL ON FUNCTION tenancy.inbox_claim(text, bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.record_migration_failure(
    p_slug text, p_version text, p_sqlstate text, p_message text
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants;
BEGIN
    SELECT * INTO v_row FROM tenancy.tenants WHERE slug = p_slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(p_slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    RETURN tenancy.emit_event('tenant_migration_failed', v_row,
        jsonb_build_object('from_version', v_row.migration_version, 'to_version', p_version,
                           'sqlstate', p_sqlstate, 'message', p_message));
END
$$;

COMMENT ON FUNCTION tenancy.record_migration_failure(text, text, text, text) IS
    'Emit tenant_migration_failed for tenant p_slug (payload: from_version, to_version, sqlstate, '
    'message), in its own transaction after the failed migration rolled back. Raises PT003.';

REVOKE ALL ON FUNCTION tenancy.record_migration_failure(text, text, text, text) FROM PUBLIC;

-- 008: row-change events. tenancy.track_changes(table) adds three statement-level triggers with
-- transition tables, so bulk UPDATE ... WHERE, DELETE, INSERT ... SELECT and
-- COPY are caught like single-row writes. Each statement writes one outbox
-- event per 1000 rows ('rows_changed': table, op, and per row its primary
-- key and, for updates, the changed columns), in the writing transaction.
-- Row changes never NOTIFY: NOTIFY takes a global lock at commit and would
-- serialize writers; listeners poll at a short interval while events flow.
-- The trigger function is generated per table with static SQL, so its plans
-- are cached.
CREATE OR REPLACE FUNCTION tenancy.changes_function(p_table regclass)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('tenancy.%I', 'changes_' || p_table::oid)
$$;

COMMENT ON FUNCTION tenancy.changes_function(regclass) IS
    'Name of the generated trigger function that records the changes of p_table.';

CREATE OR REPLACE FUNCTION tenancy.track_changes(p_table regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pk      name[];
    v_key     text;
    v_join    text;
    v_fn      text := tenancy.changes_function(p_table);
    v_table   text;
    v_child   regclass;
BEGIN
    -- The sender of row signals: schema.table, unquoted.
    SELECT n.nspname || '.' || c.relname INTO v_table
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table AND c.relkind IN ('r', 'p');
    IF v_table IS NULL THEN
        RAISE EXCEPTION '% is not a table', p_table
            USING ERRCODE = 'PT016';
    END IF;
    SELECT array_agg(a.attname ORDER BY k.ord) INTO v_pk
      FROM pg_index AS i
     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = p_table AND i.indisprimary;
    IF v_pk IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key: row-change events identify rows by it', p_table
            USING ERRCODE = 'PT016';
    END IF;
    SELECT string_agg(format('%L, r.%I', c, c), ', '),
           string_agg(format('o.%I = r.%I', c, c), ' AND ')
      INTO v_key, v_join
      FROM unnest(v_pk) AS c;

    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %s()
            RETURNS trigger
            LANGUAGE plpgsql
            SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
        AS $body$
        DECLARE
            v_tenant tenancy.tenants;
        BEGIN
            SELECT * INTO v_tenant FROM tenancy.tenants WHERE schema_name = TG_TABLE_SCHEMA;
            IF NOT FOUND THEN
                SELECT * INTO v_tenant FROM tenancy.tenants
                 WHERE id = tenancy.current_tenant_id();
            END IF;
            IF TG_OP = 'TRUNCATE' THEN
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                VALUES ('rows_changed', v_tenant.id, v_tenant.slug, v_tenant.schema_name,
                        v_tenant.status,
                        jsonb_build_object('table', %L, 'op', 'TRUNCATE', 'rows', '[]'::jsonb));
            ELSIF TG_OP = 'UPDATE' THEN
                -- Rows whose key is unchanged, with the columns that changed.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', v_tenant.id, v_tenant.slug, v_tenant.schema_name,
                       v_tenant.status,
                       jsonb_build_object('table', %L, 'op', 'UPDATE', 'rows', jsonb_agg(s.row))
                  FROM (SELECT jsonb_build_object(
                                   'key', jsonb_build_object(%s),
                                   'columns', (SELECT coalesce(jsonb_agg(e.key), '[]'::jsonb)
                                                 FROM jsonb_each(to_jsonb(r)) AS e
                                                WHERE to_jsonb(o) -> e.key IS DISTINCT FROM e.value)
                               ) AS row,
                               (row_number() OVER () - 1) / 1000 AS chunk
                          FROM new_rows AS r JOIN old_rows AS o ON %s) AS s
                 GROUP BY s.chunk
                 ORDER BY s.chunk;
                -- An update that changed a key: the old key went, the new one came.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', v_tenant.id, v_tenant.slug, v_tenant.schema_name,
                       v_tenant.status,
                       jsonb_build_object('table', %L, 'op', s.op, 'rows', jsonb_agg(s.row))
                  FROM (SELECT 'DELETE' AS op, jsonb_build_object('key', jsonb_build_object(%s)) AS row
                          FROM old_rows AS r
                         WHERE NOT EXISTS (SELECT 1 FROM new_rows AS o WHERE %s)
                        UNION ALL
                        SELECT 'INSERT', jsonb_build_object('key', jsonb_build_object(%s))
                          FROM new_rows AS r
                         WHERE NOT EXISTS (SELECT 1 FROM old_rows AS o WHERE %s)) AS s
                 GROUP BY s.op
                 ORDER BY s.op;
            ELSE
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', v_tenant.id, v_tenant.slug, v_tenant.schema_name,
                       v_tenant.status,
                       jsonb_build_object('table', %L, 'op', TG_OP, 'rows', jsonb_agg(s.row))
                  FROM (SELECT jsonb_build_object('key', jsonb_build_object(%s)) AS row,
                               (row_number() OVER () - 1) / 1000 AS chunk
                          FROM changed_rows AS r) AS s
                 GROUP BY s.chunk
                 ORDER BY s.chunk;
            END IF;
            RETURN NULL;
        END
        $body$
    $f$, v_fn, v_table, v_table, v_key, v_join, v_table, v_key, v_join, v_key, v_join, v_table, v_key);
    EXECUTE format('COMMENT ON FUNCTION %s() IS %L', v_fn,
                   format('Records row changes of %s as rows_changed events (tenancy.track_changes).',
                          v_table));
    EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', v_fn);

    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', p_table);
    EXECUTE format('CREATE TRIGGER tenancy_changes_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   p_table, v_fn);
    EXECUTE format('CREATE TRIGGER tenancy_changes_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', p_table, v_fn);
    EXECUTE format('CREATE TRIGGER tenancy_changes_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   p_table, v_fn);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', p_table);
    EXECUTE format('CREATE TRIGGER tenancy_changes_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', p_table, v_fn);
    -- Statements aimed at a partition fire the partition's triggers only.
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = p_table LOOP
        PERFORM tenancy.track_changes(v_child);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.track_changes(regclass) IS
    'Record every INSERT, UPDATE and DELETE of p_table (a tenant-schema table or a guarded shared '
    'table; bulk statements and COPY included) and TRUNCATE as rows_changed outbox events '
    'carrying the tenant, the table (schema.table), the operation, each row''s primary key and, '
    'for updates, the changed columns; an update that changes a key is reported as the old key '
    'deleted and the new one inserted. Partitions present now are tracked too. Statement-level '
    'triggers with transition tables; no NOTIFY. Idempotent. Raises PT016 when p_table is not a '
    'table or has no primary key.';

REVOKE ALL ON FUNCTION tenancy.track_changes(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.untrack_changes(p_table regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_child regclass;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', p_table);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', tenancy.changes_function(p_table));
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = p_table LOOP
        PERFORM tenancy.untrack_changes(v_child);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.untrack_changes(regclass) IS
    'Stop recording row changes of p_table (drops its triggers and generated function). '
    'Idempotent.';

REVOKE ALL ON FUNCTION tenancy.untrack_changes(regclass) FROM PUBLIC;

-- The extension's new configuration tables: pg_dump keeps their rows
-- (pg_extension_config_dump works only inside ALTER EXTENSION ... UPDATE).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.guarded_tables', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.app_roles', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.parked_events', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.inbox', '');
    END IF;
END
$$;
