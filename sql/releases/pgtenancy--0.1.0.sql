\echo Use "CREATE EXTENSION pgtenancy VERSION '0.1.0'" to load this file. \quit
-- pgtenancy 0.1.0, the first release (the core of issue 2), frozen: the
-- base that upgrade scripts and upgrade tests start from. Never edit it.
-- pgtenancy 0.1.0 — 001: the tenancy schema and its tables.
--
-- Every file in sql/ is idempotent: the installer runs all of them, in name
-- order, in one transaction, and a second run changes nothing.  Tables use
-- IF NOT EXISTS, functions CREATE OR REPLACE, triggers CREATE OR REPLACE.
--
-- SQLSTATE class PT is pgtenancy's own:
--   PT001 invalid tenant slug        PT006 migration failed
--   PT002 tenant already exists      PT007 tenant schema missing
--   PT003 tenant not found           PT008 invalid migration
--   PT004 tenant suspended           PT009 tenants still registered
--   PT005 tenant deleted             PT010 immutable tenant column
--                                    PT011 consumer not found

CREATE SCHEMA IF NOT EXISTS tenancy;

COMMENT ON SCHEMA tenancy IS
    'pgtenancy: tenant registry, tenant migrations, lifecycle outbox and consumer cursors.';

-- Refuse to install over a newer version of the kit: a downgrade would
-- replace newer functions with older ones.
DO $$
DECLARE
    v_installed text;
BEGIN
    IF pg_catalog.to_regprocedure('tenancy.version()') IS NOT NULL THEN
        EXECUTE 'SELECT tenancy.version()' INTO v_installed;
        IF pg_catalog.string_to_array(v_installed, '.')::int[]
           > pg_catalog.string_to_array('0.1.0', '.')::int[] THEN
            RAISE EXCEPTION 'pgtenancy % is installed; refusing to install the older 0.1.0',
                v_installed
                USING ERRCODE = 'PT008';
        END IF;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.version()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT '0.1.0'::text
$$;

COMMENT ON FUNCTION tenancy.version() IS
    'Version of the installed pgtenancy SQL, as major.minor.patch text.';

-- The registry: one row per tenant.  The row is the truth about a tenant;
-- triggers on it provision schemas and emit lifecycle events, so every path
-- that changes it (functions, psql, other services) gets the same checks
-- and the same events.
CREATE TABLE IF NOT EXISTS tenancy.tenants (
    id                uuid        NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    slug              text        NOT NULL,
    schema_name       text        NOT NULL,
    status            text        NOT NULL DEFAULT 'active',
    isolation         text        NOT NULL DEFAULT 'schema',
    metadata          jsonb       NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    migration_version text COLLATE "C",
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_schema_name_key UNIQUE (schema_name),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_isolation_check CHECK (isolation IN ('schema')),
    CONSTRAINT tenants_metadata_check CHECK (pg_catalog.jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE tenancy.tenants IS
    'Tenant registry. Insert, update and delete go through triggers that validate, provision and emit events.';
COMMENT ON COLUMN tenancy.tenants.migration_version IS
    'Latest tenancy.migrations version applied to this tenant''s schema; NULL when none.';

-- Tenant migrations: DDL run inside every tenant schema, in version order
-- (C collation).  A tenant's state is the single migration_version above,
-- so checking whether a tenant is current is one comparison.
CREATE TABLE IF NOT EXISTS tenancy.migrations (
    version    text COLLATE "C" NOT NULL,
    sql        text        NOT NULL,
    checksum   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT migrations_pkey PRIMARY KEY (version)
);

COMMENT ON TABLE tenancy.migrations IS
    'Tenant DDL, applied inside each tenant schema in version order (C collation).';

-- The outbox: one row per lifecycle event, written in the transaction that
-- made the change.  xid is the writing transaction's id; consumers read only
-- below the oldest running transaction, ordered by (xid, id), so an event
-- that took a smaller id but committed later is never skipped.
CREATE TABLE IF NOT EXISTS tenancy.events (
    id            bigint      GENERATED ALWAYS AS IDENTITY,
    xid           xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    name          text        NOT NULL,
    tenant_id     uuid,
    tenant_slug   text,
    tenant_schema text,
    tenant_status text,
    payload       jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (id)
);

CREATE INDEX IF NOT EXISTS events_xid_id_idx ON tenancy.events (xid, id);

COMMENT ON TABLE tenancy.events IS
    'Outbox of tenant lifecycle events. id is unique and serves receivers as an idempotency key.';

-- Durable cursors, one per consumer name: the (xid, id) of the last event
-- whose receivers have all run.
CREATE TABLE IF NOT EXISTS tenancy.consumers (
    name       text        NOT NULL,
    last_xid   xid8        NOT NULL DEFAULT '0',
    last_id    bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT consumers_pkey PRIMARY KEY (name)
);

COMMENT ON TABLE tenancy.consumers IS
    'Outbox cursor per consumer name: (last_xid, last_id) of the last fully delivered event.';
-- pgtenancy 0.1.0 — 002: the outbox and its consumers.
--
-- NOTIFY is only a wake-up: events live in tenancy.events, and a consumer
-- that missed a notification catches up from its cursor.  The payload is
-- constant, so Postgres folds all notifications of one transaction into one.

CREATE OR REPLACE FUNCTION tenancy.events_channel()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT 'tenancy_events_v1'::text
$$;

COMMENT ON FUNCTION tenancy.events_channel() IS
    'Name of the LISTEN/NOTIFY channel that wakes outbox consumers (payload is always empty).';

CREATE OR REPLACE FUNCTION tenancy.emit_event(
    p_name    text,
    p_tenant  tenancy.tenants,
    p_payload jsonb DEFAULT '{}'
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO tenancy.events (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
    VALUES (p_name, p_tenant.id, p_tenant.slug, p_tenant.schema_name, p_tenant.status,
            coalesce(p_payload, '{}'))
    RETURNING id INTO v_id;
    PERFORM pg_notify(tenancy.events_channel(), '');
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.emit_event(text, tenancy.tenants, jsonb) IS
    'Append a lifecycle event for a tenant to the outbox in the current transaction and wake '
    'consumers (one NOTIFY per transaction). Returns the event id. Not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.emit_event(text, tenancy.tenants, jsonb) FROM PUBLIC;

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
    SELECT EXISTS (
        SELECT 1
          FROM tenancy.events AS e
          JOIN tenancy.consumers AS c ON c.name = p_consumer
         WHERE (e.xid, e.id) > (c.last_xid, c.last_id)
           AND e.xid >= pg_snapshot_xmin(pg_current_snapshot())
    )
$$;

COMMENT ON FUNCTION tenancy.events_held_back(text) IS
    'True when committed events after the cursor of p_consumer wait for an older transaction '
    'to finish before they may be read; a consumer then polls again shortly.';

CREATE OR REPLACE FUNCTION tenancy.advance_consumer(p_consumer text, p_xid xid8, p_id bigint)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tenancy.consumers
       SET last_xid = p_xid, last_id = p_id, updated_at = now()
     WHERE name = p_consumer
       AND (last_xid, last_id) < (p_xid, p_id);
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

COMMENT ON FUNCTION tenancy.advance_consumer(text, xid8, bigint) IS
    'Move the cursor of p_consumer forward to (p_xid, p_id); never backward. True when it moved. '
    'Raises PT011 for an unknown consumer.';
-- pgtenancy 0.1.0 — 003: tenant slugs, tenant migrations, provisioning and
-- the lifecycle functions, with the registry triggers that emit events.
--
-- Functions that create or drop schemas are SECURITY DEFINER, owned by the
-- installing role, and pin search_path; they are not granted to PUBLIC.

CREATE OR REPLACE FUNCTION tenancy.schema_prefix()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT 'tenant_'::text
$$;

COMMENT ON FUNCTION tenancy.schema_prefix() IS
    'Prefix of every tenant schema name: schema_name = schema_prefix() || slug.';

CREATE OR REPLACE FUNCTION tenancy.validate_slug(p_slug text)
    RETURNS text
    LANGUAGE plpgsql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer := 63 - octet_length(tenancy.schema_prefix());
BEGIN
    IF p_slug IS NULL THEN
        RAISE EXCEPTION 'invalid tenant slug: NULL'
            USING ERRCODE = 'PT001';
    END IF;
    IF p_slug !~ '^[a-z][a-z0-9_]*$' THEN
        RAISE EXCEPTION 'invalid tenant slug %: use a lowercase letter, then lowercase letters, digits or "_"',
            quote_literal(p_slug)
            USING ERRCODE = 'PT001';
    END IF;
    IF octet_length(p_slug) > v_max THEN
        RAISE EXCEPTION 'invalid tenant slug %: longer than % characters', quote_literal(p_slug), v_max
            USING ERRCODE = 'PT001',
                  DETAIL = 'The schema name, prefix included, must fit in 63 bytes.';
    END IF;
    IF p_slug IN ('public', 'tenancy', 'information_schema') OR p_slug LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'invalid tenant slug %: the name is reserved', quote_literal(p_slug)
            USING ERRCODE = 'PT001';
    END IF;
    RETURN p_slug;
END
$$;

COMMENT ON FUNCTION tenancy.validate_slug(text) IS
    'Return p_slug when it is a valid tenant slug: ^[a-z][a-z0-9_]*$, at most 63 bytes minus the '
    'schema prefix, not public, tenancy, information_schema or pg_*. Raises PT001 otherwise.';

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
BEGIN
    FOR v_migration IN
        SELECT * FROM tenancy.migrations AS m
         WHERE p_from IS NULL OR m.version > p_from
         ORDER BY m.version
    LOOP
        -- The migration sees the tenant schema first; the function's own
        -- SET clause restores search_path when it returns.
        PERFORM set_config('search_path', format('%I, public, pg_temp', p_schema), true);
        BEGIN
            EXECUTE v_migration.sql;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
            RAISE EXCEPTION 'migration % failed in schema %: %', v_migration.version, p_schema, v_message
                USING ERRCODE = 'PT006',
                      DETAIL = format('SQLSTATE %s', v_state),
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

CREATE OR REPLACE FUNCTION tenancy.add_migration(p_version text, p_sql text)
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

    INSERT INTO tenancy.migrations (version, sql, checksum)
    VALUES (p_version, p_sql, v_checksum)
    RETURNING * INTO v_row;

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

COMMENT ON FUNCTION tenancy.add_migration(text, text) IS
    'Register tenant DDL p_sql as migration p_version, which must sort after every registered '
    'version. The whole chain is first tried in a scratch schema and rolled back. Re-adding the '
    'same version with the same SQL is a no-op. Raises PT008 for a bad version, changed SQL, '
    'out-of-order version or SQL that fails; nothing is registered then.';

REVOKE ALL ON FUNCTION tenancy.add_migration(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.latest_migration()
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT max(version) FROM tenancy.migrations
$$;

COMMENT ON FUNCTION tenancy.latest_migration() IS
    'Latest registered migration version, NULL when none is registered.';

-- Registry triggers ---------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.tenants_before_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.slug := tenancy.validate_slug(NEW.slug);
    -- Serialize creations of one slug so a concurrent duplicate gets PT002.
    PERFORM pg_advisory_xact_lock(hashtext('tenancy.tenant'), hashtext(NEW.slug));
    IF EXISTS (SELECT 1 FROM tenancy.tenants WHERE slug = NEW.slug) THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(NEW.slug)
            USING ERRCODE = 'PT002';
    END IF;
    NEW.schema_name := tenancy.schema_prefix() || NEW.slug;
    IF to_regnamespace(quote_ident(NEW.schema_name)) IS NOT NULL THEN
        RAISE EXCEPTION 'schema % already exists but is not a registered tenant', quote_ident(NEW.schema_name)
            USING ERRCODE = 'PT002',
                  HINT = 'Rename or drop that schema, or choose another slug.';
    END IF;
    NEW.status := coalesce(NEW.status, 'active');
    NEW.created_at := now();
    NEW.updated_at := now();
    EXECUTE format('CREATE SCHEMA %I', NEW.schema_name);
    NEW.migration_version := tenancy.apply_migrations(NEW.schema_name, NULL);
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_before_insert() IS
    'Trigger: validate the slug (PT001), refuse a duplicate slug or an existing schema (PT002), '
    'derive schema_name, create the schema and apply every migration (PT006 on failure).';

CREATE OR REPLACE FUNCTION tenancy.tenants_before_update()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.slug IS DISTINCT FROM OLD.slug
       OR NEW.schema_name IS DISTINCT FROM OLD.schema_name
       OR NEW.isolation IS DISTINCT FROM OLD.isolation
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'tenant %: id, slug, schema_name, isolation and created_at cannot change',
            quote_literal(OLD.slug)
            USING ERRCODE = 'PT010';
    END IF;
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_before_update() IS
    'Trigger: refuse changes to immutable tenant columns (PT010) and stamp updated_at.';

CREATE OR REPLACE FUNCTION tenancy.tenants_after_change()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_gone tenancy.tenants;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tenancy.emit_event('tenant_created', NEW,
            jsonb_build_object('migration_version', NEW.migration_version, 'metadata', NEW.metadata));
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        -- The row is the truth: a tenant whose row is gone has no data.
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', OLD.schema_name);
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
    'drops its tenant schema.';

CREATE OR REPLACE TRIGGER tenants_before_insert
    BEFORE INSERT ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_before_insert();

CREATE OR REPLACE TRIGGER tenants_before_update
    BEFORE UPDATE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_before_update();

CREATE OR REPLACE TRIGGER tenants_after_change
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_after_change();

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

CREATE OR REPLACE FUNCTION tenancy.create_tenant(p_slug text, p_metadata jsonb DEFAULT '{}')
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
    INSERT INTO tenancy.tenants (slug, metadata)
    VALUES (p_slug, coalesce(p_metadata, '{}'))
    RETURNING * INTO v_row;
    RETURN v_row;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(p_slug)
            USING ERRCODE = 'PT002';
END
$$;

COMMENT ON FUNCTION tenancy.create_tenant(text, jsonb) IS
    'Create tenant p_slug: validate the slug, create schema schema_prefix()||slug, apply every '
    'migration, register the row and emit tenant_created, all in the caller''s transaction. '
    'Raises PT001 (invalid slug), PT002 (exists), PT006 (a migration failed), 22023 (metadata '
    'not an object); on error nothing is left behind.';

REVOKE ALL ON FUNCTION tenancy.create_tenant(text, jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.get_tenant(p_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    STABLE
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
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.get_tenant(text) IS
    'Registry row of tenant p_slug. Raises PT003 when no such tenant exists.';

CREATE OR REPLACE FUNCTION tenancy.suspend_tenant(p_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants := tenancy.lock_tenant(p_slug);
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(p_slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_row.status = 'active' THEN
        UPDATE tenancy.tenants SET status = 'suspended' WHERE id = v_row.id RETURNING * INTO v_row;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.suspend_tenant(text) IS
    'Suspend tenant p_slug: entering it fails with PT004 from then on; emits tenant_suspended. '
    'A no-op for a suspended tenant. Raises PT003 (not found), PT005 (deleted).';

REVOKE ALL ON FUNCTION tenancy.suspend_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.resume_tenant(p_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants := tenancy.lock_tenant(p_slug);
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(p_slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_row.status = 'suspended' THEN
        UPDATE tenancy.tenants SET status = 'active' WHERE id = v_row.id RETURNING * INTO v_row;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.resume_tenant(text) IS
    'Make suspended tenant p_slug active again; emits tenant_resumed. A no-op for an active '
    'tenant. Raises PT003 (not found), PT005 (deleted).';

REVOKE ALL ON FUNCTION tenancy.resume_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_tenant(p_slug text, p_destroy_data boolean DEFAULT false)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.tenants := tenancy.lock_tenant(p_slug);
BEGIN
    IF p_destroy_data THEN
        DELETE FROM tenancy.tenants WHERE id = v_row.id;
        v_row.status := 'deleted';
    ELSIF v_row.status <> 'deleted' THEN
        UPDATE tenancy.tenants SET status = 'deleted' WHERE id = v_row.id RETURNING * INTO v_row;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.drop_tenant(text, boolean) IS
    'Delete tenant p_slug. By default a soft delete: status becomes deleted, the schema is kept '
    'and entry fails with PT005. With p_destroy_data the schema and the row are dropped. Emits '
    'tenant_deleted (payload destroyed true/false). Raises PT003 (not found).';

REVOKE ALL ON FUNCTION tenancy.drop_tenant(text, boolean) FROM PUBLIC;

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
    -- Current tenants cost one comparison, not a replay.
    IF v_row.migration_version IS NOT DISTINCT FROM tenancy.latest_migration() THEN
        RETURN v_row;
    END IF;
    IF to_regnamespace(quote_ident(v_row.schema_name)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_row.schema_name),
            quote_literal(p_slug)
            USING ERRCODE = 'PT007';
    END IF;
    v_version := tenancy.apply_migrations(v_row.schema_name, v_row.migration_version);
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
-- pgtenancy 0.1.0 — 004: entering a tenant.
--
-- Tenant context is per transaction: enter_tenant() sets search_path and
-- app.tenant_id with set_config(..., true), so both vanish at COMMIT or
-- ROLLBACK and a pooled connection carries nothing of the tenant.
-- enter_tenant() must not have a SET clause (the clause would undo its
-- set_config calls on return), so it is SECURITY INVOKER and qualifies
-- every name instead.

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
    SELECT t.id, t.schema_name, t.status
      INTO v_id, v_schema, v_status
      FROM tenancy.tenants AS t
     WHERE t.slug = p_slug;
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
    IF pg_catalog.to_regnamespace(pg_catalog.quote_ident(v_schema)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', pg_catalog.quote_ident(v_schema),
            pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT007';
    END IF;
    PERFORM pg_catalog.set_config('search_path',
                                  pg_catalog.quote_ident(v_schema) || ', public', true);
    PERFORM pg_catalog.set_config('app.tenant_id', v_id::text, true);
    PERFORM pg_catalog.set_config('app.tenant', p_slug, true);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant(text) IS
    'Put the current transaction into tenant p_slug: search_path = tenant schema, public; '
    'app.tenant_id = tenant id; app.tenant = slug; all transaction-local. Returns the tenant id. '
    'Raises PT003 (unknown), PT004 (suspended), PT005 (deleted), PT007 (schema missing) before '
    'anything is set. Call it inside a transaction block.';

CREATE OR REPLACE FUNCTION tenancy.current_tenant_id()
    RETURNS uuid
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT nullif(pg_catalog.current_setting('app.tenant_id', true), '')::uuid
$$;

COMMENT ON FUNCTION tenancy.current_tenant_id() IS
    'Id of the tenant the current transaction entered, NULL outside a tenant (a custom setting '
    'reads back as an empty string after the transaction that set it).';

CREATE OR REPLACE FUNCTION tenancy.current_tenant()
    RETURNS text
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT nullif(pg_catalog.current_setting('app.tenant', true), '')
$$;

COMMENT ON FUNCTION tenancy.current_tenant() IS
    'Slug of the tenant the current transaction entered, NULL outside a tenant.';

-- extension only: configuration tables dumped by pg_dump.
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.migrations', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.events', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.consumers', '');
