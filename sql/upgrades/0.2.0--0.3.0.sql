-- pgtenancy upgrade 0.2.0 -> 0.3.0: the SQL functions answer to the
-- parameter names the README documents (slug, isolation, destroy_data,
-- consumer, ...), in named notation too; the role grants and the doctor no
-- longer look for functions of later files.
--
-- A delta: run once over a 0.2.0 install (by pgtenancy install, or as the
-- extension's pgtenancy--0.2.0--0.3.0.sql by ALTER EXTENSION pgtenancy
-- UPDATE), in one transaction. The version placeholder in tenancy.version()
-- is stamped with the version this file upgrades to (the installer and
-- sql/Makefile do it).

-- CREATE OR REPLACE cannot rename parameters: the functions are dropped and
-- created again, which loses their grants. Keep every role's EXECUTE grant
-- on the kit's functions (grant_app_role, grant_listener_role, or made by
-- hand) to give it back at the end. Objects of your own that depend on a
-- dropped function make the upgrade fail, and nothing is changed.
SELECT pg_catalog.set_config('pgtenancy.upgrade_grants', coalesce((
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
               p.oid::pg_catalog.regprocedure::text, a.grantee::pg_catalog.regrole::text,
               a.is_grantable))
      FROM pg_catalog.pg_proc AS p
     CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
     WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner),
    '[]'::pg_catalog.jsonb)::text, true);

DROP FUNCTION tenancy.register_consumer(text);
DROP FUNCTION tenancy.next_events(text, integer);
DROP FUNCTION tenancy.events_held_back(text);
DROP FUNCTION tenancy.advance_consumer(text, xid8, bigint, text);
DROP FUNCTION tenancy.validate_slug(text);
DROP FUNCTION tenancy.add_migration(text, text, boolean);
DROP FUNCTION tenancy.create_tenant(text, jsonb, text);
DROP FUNCTION tenancy.get_tenant(text);
DROP FUNCTION tenancy.suspend_tenant(text);
DROP FUNCTION tenancy.resume_tenant(text);
DROP FUNCTION tenancy.drop_tenant(text, boolean);
DROP FUNCTION tenancy.migrate_tenant(text);
DROP FUNCTION tenancy.enter_tenant(text);
DROP FUNCTION tenancy.enable_rls(regclass, name);
DROP FUNCTION tenancy.disable_rls(regclass);
DROP FUNCTION tenancy.acquire_lease(text, text, interval);
DROP FUNCTION tenancy.release_lease(text, text);
DROP FUNCTION tenancy.consumer_heartbeat(text);
DROP FUNCTION tenancy.prune_events(interval, interval);
DROP FUNCTION tenancy.park_event(text, bigint, text, integer, text);
DROP FUNCTION tenancy.unpark_event(text, bigint, text);
DROP FUNCTION tenancy.parked_events(text);
DROP FUNCTION tenancy.inbox_claim(text, bigint);
DROP FUNCTION tenancy.record_migration_failure(text, text, text, text);
DROP FUNCTION tenancy.track_changes(regclass);
DROP FUNCTION tenancy.untrack_changes(regclass);
DROP FUNCTION tenancy.grant_app_role(name);
DROP FUNCTION tenancy.grant_listener_role(name);

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

CREATE OR REPLACE FUNCTION tenancy.register_consumer(consumer text)
    RETURNS tenancy.consumers
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.consumers;
BEGIN
    IF register_consumer.consumer IS NULL OR register_consumer.consumer !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid consumer name %', coalesce(quote_literal(register_consumer.consumer), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use 1 to 128 letters, digits, "_", ".", ":" or "-".';
    END IF;
    INSERT INTO tenancy.consumers (name) VALUES (register_consumer.consumer) ON CONFLICT (name) DO NOTHING;
    SELECT * INTO v_row FROM tenancy.consumers WHERE name = register_consumer.consumer;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.register_consumer(text) IS
    'Create the cursor of the named consumer at the start of the outbox unless it exists; '
    'return the cursor row. Raises 22023 for an invalid name.';

REVOKE ALL ON FUNCTION tenancy.register_consumer(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.next_events(consumer text, max_events integer DEFAULT 100)
    RETURNS SETOF tenancy.events
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor tenancy.consumers;
BEGIN
    SELECT * INTO v_cursor FROM tenancy.consumers WHERE name = next_events.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(next_events.consumer)
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
         LIMIT next_events.max_events;
END
$$;

COMMENT ON FUNCTION tenancy.next_events(text, integer) IS
    'Up to max_events outbox events after the cursor of consumer, ordered by (xid, id), only from '
    'transactions that no snapshot can still see as running. Raises PT011 for an unknown consumer.';

REVOKE ALL ON FUNCTION tenancy.next_events(text, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.events_held_back(consumer text)
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
          JOIN tenancy.consumers AS c ON c.name = events_held_back.consumer
         WHERE (newest.xid, newest.id) > (c.last_xid, c.last_id)
           AND newest.xid >= pg_snapshot_xmin(pg_current_snapshot())
    )
$$;

COMMENT ON FUNCTION tenancy.events_held_back(text) IS
    'True when committed events after the cursor of consumer wait for an older transaction '
    'to finish before they may be read; a consumer then polls again shortly.';

REVOKE ALL ON FUNCTION tenancy.events_held_back(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.advance_consumer(
    consumer text,
    xid      xid8,
    id       bigint,
    holder   text DEFAULT NULL
)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_cursor tenancy.consumers;
BEGIN
    SELECT * INTO v_cursor FROM tenancy.consumers WHERE name = advance_consumer.consumer FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(advance_consumer.consumer)
            USING ERRCODE = 'PT011';
    END IF;
    -- A listener whose lease was taken over must not move the cursor of the
    -- one that took over; a lease that merely expired during a long event,
    -- with nobody taking over, is still its own.
    IF advance_consumer.holder IS NOT NULL AND v_cursor.lease_holder IS DISTINCT FROM advance_consumer.holder THEN
        RAISE EXCEPTION 'consumer %: the lease of % is lost', quote_literal(advance_consumer.consumer), advance_consumer.holder
            USING ERRCODE = 'PT015';
    END IF;
    -- Only to a delivered position: an event that exists and is readable.
    IF NOT EXISTS (SELECT 1 FROM tenancy.events
                    WHERE xid = advance_consumer.xid AND id = advance_consumer.id
                      AND xid < pg_snapshot_xmin(pg_current_snapshot())) THEN
        RAISE EXCEPTION 'no readable outbox event at (%, %)', advance_consumer.xid, advance_consumer.id
            USING ERRCODE = '22023';
    END IF;
    -- Delivering counts as being seen (prune_events keeps what it needs).
    UPDATE tenancy.consumers
       SET last_xid = CASE WHEN (last_xid, last_id) < (advance_consumer.xid, advance_consumer.id) THEN advance_consumer.xid ELSE last_xid END,
           last_id  = CASE WHEN (last_xid, last_id) < (advance_consumer.xid, advance_consumer.id) THEN advance_consumer.id ELSE last_id END,
           updated_at = now(), seen_at = now()
     WHERE name = advance_consumer.consumer;
    RETURN (v_cursor.last_xid, v_cursor.last_id) < (advance_consumer.xid, advance_consumer.id);
END
$$;

COMMENT ON FUNCTION tenancy.advance_consumer(text, xid8, bigint, text) IS
    'Move the cursor of consumer forward to (xid, id), which must be a readable event; never '
    'backward. With holder, only while no other holder has taken the consumer''s lease. Marks '
    'the consumer seen. True when it moved. '
    'Raises PT011 (unknown consumer), PT015 (lease lost), 22023 (not a readable event).';

REVOKE ALL ON FUNCTION tenancy.advance_consumer(text, xid8, bigint, text) FROM PUBLIC;

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
#variable_conflict use_column
DECLARE
    p_version ALIAS FOR version;
    p_sql ALIAS FOR sql;
    p_outside_transaction ALIAS FOR outside_transaction;
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
    'Register tenant DDL (sql) as migration version, which must sort after every registered '
    'version. The whole chain is first tried in a scratch schema and rolled back. Re-adding the '
    'same version with the same SQL is a no-op. With outside_transaction it is not tried and '
    'the fleet runner applies it outside a transaction (CREATE INDEX CONCURRENTLY, say); '
    'transactional paths stop before it. Raises PT008 for a bad version, changed SQL, '
    'out-of-order version or SQL that fails; nothing is registered then.';

REVOKE ALL ON FUNCTION tenancy.add_migration(text, text, boolean) FROM PUBLIC;

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
    v_row tenancy.tenants;
BEGIN
    IF create_tenant.metadata IS NOT NULL AND jsonb_typeof(create_tenant.metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %', jsonb_typeof(create_tenant.metadata)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO tenancy.tenants (slug, metadata, isolation)
    VALUES (create_tenant.slug, coalesce(create_tenant.metadata, '{}'), coalesce(create_tenant.isolation, 'schema'))
    RETURNING * INTO v_row;
    RETURN v_row;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(create_tenant.slug)
            USING ERRCODE = 'PT002';
END
$$;

COMMENT ON FUNCTION tenancy.create_tenant(text, jsonb, text) IS
    'Create tenant slug: validate the slug; with isolation schema (default) create schema '
    'schema_prefix()||slug and apply every migration; with shared the tenant''s rows live in '
    'guarded shared tables. Registers the row and emits tenant_created, all in the caller''s '
    'transaction. Raises PT001 (invalid slug), PT002 (exists), PT006 (a migration failed), 22023 '
    '(metadata not an object, unknown isolation); on error nothing is left behind.';

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
    IF drop_tenant.destroy_data THEN
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
    IF v_row.isolation = 'shared'
       OR v_row.migration_version IS NOT DISTINCT FROM tenancy.latest_migration() THEN
        RETURN v_row;
    END IF;
    IF to_regnamespace(quote_ident(v_row.schema_name)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_row.schema_name),
            quote_literal(migrate_tenant.slug)
            USING ERRCODE = 'PT007';
    END IF;
    v_version := tenancy.apply_migrations(v_row.schema_name, v_row.migration_version);
    PERFORM tenancy.grant_schema_to_app_roles(v_row.schema_name);
    UPDATE tenancy.tenants SET migration_version = v_version WHERE id = v_row.id RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.migrate_tenant(text) IS
    'Apply to tenant slug the registered migrations it lacks, in order, in the caller''s '
    'transaction (the row lock serializes concurrent runs); emits tenant_migrated with the '
    'versions applied. Raises PT003 (not found), PT005 (deleted), PT007 (schema missing), '
    'PT006 (a migration failed: the tenant stays at its previous version).';

REVOKE ALL ON FUNCTION tenancy.migrate_tenant(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.enter_tenant(slug text)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    p_slug ALIAS FOR slug;
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
    'Put the current transaction into tenant slug: search_path = tenant schema, public (public '
    'alone for a shared tenant); '
    'app.tenant_id = tenant id; app.tenant = slug; all transaction-local. Returns the tenant id. '
    'Raises PT003 (unknown), PT004 (suspended), PT005 (deleted), PT007 (schema missing) before '
    'anything is set. Call it inside a transaction block.';

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
    v_check   text := format('%I = (SELECT tenancy.current_tenant_id())', enable_rls.tenant_column);
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
    PERFORM tenancy.forget_dropped_tables();
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
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.require_tenant_id()',
                   enable_rls.table_name, enable_rls.tenant_column);
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
    IF NOT EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = enable_rls.table_name AND polname = 'tenancy_tenant_isolation') THEN
        EXECUTE format('CREATE POLICY tenancy_tenant_isolation ON %s AS RESTRICTIVE FOR ALL '
                       'USING (%s) WITH CHECK (%s)', enable_rls.table_name, v_check, v_check);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policy
                    WHERE polrelid = enable_rls.table_name AND polname = 'tenancy_tenant_rows') THEN
        EXECUTE format('CREATE POLICY tenancy_tenant_rows ON %s AS PERMISSIVE FOR ALL '
                       'USING (true) WITH CHECK (true)', enable_rls.table_name);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = enable_rls.table_name AND tgname = 'tenancy_guard_write') THEN
        EXECUTE format('CREATE TRIGGER tenancy_guard_write BEFORE INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION tenancy.guard_write()', enable_rls.table_name);
    END IF;
    INSERT INTO tenancy.guarded_tables (table_name, tenant_column)
    VALUES (enable_rls.table_name, enable_rls.tenant_column)
    ON CONFLICT (table_name) DO NOTHING;
    PERFORM tenancy.grant_table_to_app_roles(enable_rls.table_name);
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = enable_rls.table_name;
    RETURN v_guard;
END
$$;

COMMENT ON FUNCTION tenancy.enable_rls(regclass, name) IS
    'Guard shared table table_name by tenant: add uuid column tenant_column if missing (existing rows '
    'get NULL and stay invisible), default it to the current tenant, index it, ENABLE and FORCE ROW '
    'LEVEL SECURITY, create the RESTRICTIVE policy tenancy_tenant_isolation FOR ALL with USING and '
    'WITH CHECK tenant_column = (SELECT tenancy.current_tenant_id()) and its permissive companion '
    'tenancy_tenant_rows (true), and statement trigger '
    'tenancy_guard_write refusing writes without a tenant (PT012). Grants DML to application roles. '
    'Idempotent. Raises PT014 (not a table, tenant or tenancy schema, column not uuid, guarded on '
    'another column). The kit''s owner must own the table.';

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
BEGIN
    SELECT * INTO v_guard FROM tenancy.guarded_tables WHERE table_name = disable_rls.table_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_isolation ON %s', disable_rls.table_name);
    EXECUTE format('DROP POLICY IF EXISTS tenancy_tenant_rows ON %s', disable_rls.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_guard_write ON %s', disable_rls.table_name);
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', disable_rls.table_name);
    EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', disable_rls.table_name);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', disable_rls.table_name, v_guard.tenant_column);
    DELETE FROM tenancy.guarded_tables WHERE table_name = disable_rls.table_name;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.disable_rls(regclass) IS
    'Undo enable_rls on table_name: drop the policies and the write trigger, NO FORCE and DISABLE ROW '
    'LEVEL SECURITY, drop the column default; the column, its data and its index stay. True when the table was guarded; a '
    'no-op otherwise.';

REVOKE ALL ON FUNCTION tenancy.disable_rls(regclass) FROM PUBLIC;

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
END
$$;

COMMENT ON FUNCTION tenancy.check_registry() IS
    'Registry findings of the doctor, readable without access to the registry: tenant schemas '
    'missing (error), prefixed schemas not registered, tenants behind the latest migration '
    '(warnings), consumers unseen for consumer_inactive_after() with undelivered events '
    '(warning). Called by '
    'check_isolation().';

REVOKE ALL ON FUNCTION tenancy.check_registry() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.acquire_lease(consumer text, holder text, ttl interval)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF acquire_lease.holder IS NULL OR acquire_lease.ttl IS NULL OR acquire_lease.ttl <= interval '0' THEN
        RAISE EXCEPTION 'acquire_lease needs a holder and a positive ttl'
            USING ERRCODE = '22023';
    END IF;
    UPDATE tenancy.consumers
       SET lease_holder = acquire_lease.holder, lease_until = clock_timestamp() + acquire_lease.ttl
     WHERE name = acquire_lease.consumer
       AND (lease_holder IS NULL OR lease_holder = acquire_lease.holder OR lease_until < clock_timestamp());
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.consumers WHERE name = acquire_lease.consumer) THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(acquire_lease.consumer)
            USING ERRCODE = 'PT011';
    END IF;
    RETURN false;
END
$$;

COMMENT ON FUNCTION tenancy.acquire_lease(text, text, interval) IS
    'Take or renew the lease of the consumer for holder until now + ttl; true when '
    'holder holds it now, false when another holder''s lease is still valid. Raises PT011 '
    '(unknown consumer), 22023 (no holder, ttl not positive).';

REVOKE ALL ON FUNCTION tenancy.acquire_lease(text, text, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.release_lease(consumer text, holder text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE tenancy.consumers SET lease_holder = NULL, lease_until = NULL
     WHERE name = release_lease.consumer AND lease_holder = release_lease.holder
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.release_lease(text, text) IS
    'Give up the lease of consumer if holder holds it (a clean stop), so a waiting listener '
    'takes over at once. True when released, NULL otherwise.';

REVOKE ALL ON FUNCTION tenancy.release_lease(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.consumer_heartbeat(consumer text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tenancy.consumers SET seen_at = now() WHERE name = consumer_heartbeat.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(consumer_heartbeat.consumer)
            USING ERRCODE = 'PT011';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.consumer_heartbeat(text) IS
    'Record that a listener of the consumer is alive (listeners call it every few '
    'seconds). Raises PT011 for an unknown consumer.';

REVOKE ALL ON FUNCTION tenancy.consumer_heartbeat(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.prune_events(
    older_than     interval,
    inactive_after interval DEFAULT NULL
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count    bigint;
    v_inactive interval := coalesce(prune_events.inactive_after, tenancy.consumer_inactive_after());
BEGIN
    IF prune_events.older_than IS NULL OR prune_events.older_than < interval '0' THEN
        RAISE EXCEPTION 'prune_events needs a non-negative age, not %', prune_events.older_than
            USING ERRCODE = '22023';
    END IF;
    -- An active consumer (heartbeat within prune_events.inactive_after) holds back
    -- every event it has not passed; an inactive one no longer does.
    DELETE FROM tenancy.events AS e
     WHERE e.created_at < now() - prune_events.older_than
       AND NOT EXISTS (
           SELECT 1 FROM tenancy.consumers AS c
            WHERE (coalesce(c.seen_at, c.updated_at) > now() - v_inactive
                   OR c.lease_until > now())
              AND (e.xid, e.id) > (c.last_xid, c.last_id))
       AND NOT EXISTS (SELECT 1 FROM tenancy.parked_events AS p WHERE p.event_id = e.id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    -- A pruned event is never redelivered: its inbox claims are done with.
    DELETE FROM tenancy.inbox AS i
     WHERE NOT EXISTS (SELECT 1 FROM tenancy.events AS e WHERE e.id = i.event_id);
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.prune_events(interval, interval) IS
    'Delete outbox events older than older_than that every active consumer has passed and no '
    'receiver has parked; a consumer not seen for inactive_after (default: '
    'consumer_inactive_after()) stops holding events back. Returns how many were '
    'deleted. Raises 22023 for a negative or NULL age.';

REVOKE ALL ON FUNCTION tenancy.prune_events(interval, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.park_event(
    consumer text, event_id bigint, receiver text, attempts integer, error text
)
    RETURNS void
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tenancy.parked_events AS p (consumer, event_id, receiver, attempts, error)
    VALUES (park_event.consumer, park_event.event_id, park_event.receiver, park_event.attempts, park_event.error)
    ON CONFLICT (consumer, event_id, receiver) DO UPDATE
       SET attempts = p.attempts + excluded.attempts, error = excluded.error, parked_at = now()
$$;

COMMENT ON FUNCTION tenancy.park_event(text, bigint, text, integer, text) IS
    'Park event event_id of the consumer for the receiver with its last error; '
    'parking it again adds the attempts.';

REVOKE ALL ON FUNCTION tenancy.park_event(text, bigint, text, integer, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.unpark_event(consumer text, event_id bigint, receiver text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM tenancy.parked_events
     WHERE consumer = unpark_event.consumer AND event_id = unpark_event.event_id AND receiver = unpark_event.receiver
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.unpark_event(text, bigint, text) IS
    'Forget a parked event once its receiver has run it; true when one was removed.';

REVOKE ALL ON FUNCTION tenancy.unpark_event(text, bigint, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.parked_events(consumer_name text DEFAULT NULL)
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
     WHERE parked_events.consumer_name IS NULL OR p.consumer = parked_events.consumer_name
     ORDER BY p.consumer, e.xid, e.id, p.receiver
$$;

COMMENT ON FUNCTION tenancy.parked_events(text) IS
    'Parked events (of consumer_name, or all), with their receiver, attempts, last error and the '
    'event itself, in delivery order.';

REVOKE ALL ON FUNCTION tenancy.parked_events(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.inbox_claim(receiver text, event_id bigint)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Only an event that exists and is readable can be claimed: nobody can
    -- claim future events to make a receiver skip them.
    WITH claimed AS (
        INSERT INTO tenancy.inbox (receiver, event_id)
        SELECT inbox_claim.receiver, e.id FROM tenancy.events AS e
         WHERE e.id = inbox_claim.event_id AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
        ON CONFLICT (receiver, event_id) DO NOTHING
        RETURNING true
    )
    SELECT coalesce((SELECT true FROM claimed), false)
$$;

COMMENT ON FUNCTION tenancy.inbox_claim(text, bigint) IS
    'Claim event event_id for the receiver in the current transaction: true the first '
    'time (apply the effect), false when already applied (skip it) or when no readable event has '
    'that id. Call it in the transaction that makes the effect.';

REVOKE ALL ON FUNCTION tenancy.inbox_claim(text, bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.record_migration_failure(
    slug text, version text, sqlstate text, message text
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row tenancy.tenants;
BEGIN
    SELECT * INTO v_row FROM tenancy.tenants WHERE slug = record_migration_failure.slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(record_migration_failure.slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    RETURN tenancy.emit_event('tenant_migration_failed', v_row,
        jsonb_build_object('from_version', v_row.migration_version, 'to_version', record_migration_failure.version,
                           'sqlstate', record_migration_failure.sqlstate, 'message', record_migration_failure.message));
END
$$;

COMMENT ON FUNCTION tenancy.record_migration_failure(text, text, text, text) IS
    'Emit tenant_migration_failed for tenant slug (payload: from_version, to_version, sqlstate, '
    'message), in its own transaction after the failed migration rolled back. Raises PT003.';

REVOKE ALL ON FUNCTION tenancy.record_migration_failure(text, text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.track_changes(table_name regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pk      name[];
    v_key     text;
    v_join    text;
    v_fn      text := tenancy.changes_function(track_changes.table_name);
    v_table   text;
    v_child   regclass;
BEGIN
    -- The sender of row signals: schema.table, unquoted.
    SELECT n.nspname || '.' || c.relname INTO v_table
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = track_changes.table_name AND c.relkind IN ('r', 'p');
    IF v_table IS NULL THEN
        RAISE EXCEPTION '% is not a table', track_changes.table_name
            USING ERRCODE = 'PT016';
    END IF;
    SELECT array_agg(a.attname ORDER BY k.ord) INTO v_pk
      FROM pg_index AS i
     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = track_changes.table_name AND i.indisprimary;
    IF v_pk IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key: row-change events identify rows by it', track_changes.table_name
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

    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', track_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', track_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', track_changes.table_name);
    EXECUTE format('CREATE TRIGGER tenancy_changes_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   track_changes.table_name, v_fn);
    EXECUTE format('CREATE TRIGGER tenancy_changes_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', track_changes.table_name, v_fn);
    EXECUTE format('CREATE TRIGGER tenancy_changes_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   track_changes.table_name, v_fn);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', track_changes.table_name);
    EXECUTE format('CREATE TRIGGER tenancy_changes_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', track_changes.table_name, v_fn);
    -- Statements aimed at a partition fire the partition's triggers only.
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = track_changes.table_name LOOP
        PERFORM tenancy.track_changes(v_child);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.track_changes(regclass) IS
    'Record every INSERT, UPDATE and DELETE of table_name (a tenant-schema table or a guarded shared '
    'table; bulk statements and COPY included) and TRUNCATE as rows_changed outbox events '
    'carrying the tenant, the table (schema.table), the operation, each row''s primary key and, '
    'for updates, the changed columns; an update that changes a key is reported as the old key '
    'deleted and the new one inserted. Partitions present now are tracked too. Statement-level '
    'triggers with transition tables; no NOTIFY. Idempotent. Raises PT016 when table_name is not a '
    'table or has no primary key.';

REVOKE ALL ON FUNCTION tenancy.track_changes(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.untrack_changes(table_name regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_child regclass;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', untrack_changes.table_name);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', tenancy.changes_function(untrack_changes.table_name));
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = untrack_changes.table_name LOOP
        PERFORM tenancy.untrack_changes(v_child);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.untrack_changes(regclass) IS
    'Stop recording row changes of table_name (drops its triggers and generated function). '
    'Idempotent.';

REVOKE ALL ON FUNCTION tenancy.untrack_changes(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.grant_app_role(role name)
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
    SELECT * INTO v_role FROM pg_roles WHERE rolname = grant_app_role.role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(grant_app_role.role)
            USING ERRCODE = '42704';
    END IF;
    IF v_role.rolsuper OR v_role.rolbypassrls THEN
        RAISE EXCEPTION 'role % is a superuser or has BYPASSRLS: row-level security would not apply',
            quote_ident(grant_app_role.role)
            USING ERRCODE = 'PT013',
                  HINT = 'Use a role with NOSUPERUSER NOBYPASSRLS for the application.';
    END IF;
    SELECT g.table_name INTO v_table
      FROM tenancy.guarded_tables AS g
      JOIN pg_class AS c ON c.oid = g.table_name
     WHERE pg_has_role(grant_app_role.role, c.relowner, 'USAGE')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'role % owns guarded table %: an owner can turn row-level security off',
            quote_ident(grant_app_role.role), v_table
            USING ERRCODE = 'PT013',
                  HINT = 'Let the application role own nothing; tables belong to the kit''s owner.';
    END IF;

    PERFORM tenancy.forget_dropped_tables();
    INSERT INTO tenancy.app_roles (role_name) VALUES (grant_app_role.role) ON CONFLICT (role_name) DO NOTHING;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', grant_app_role.role);
    EXECUTE format('GRANT SELECT ON TABLE tenancy.guarded_tables, tenancy.tenant_directory TO %I',
                   grant_app_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.enter_tenant(text), '
                   'tenancy.current_tenant_id(), '
                   'tenancy.current_tenant(), tenancy.require_tenant_id(), tenancy.version(), '
                   'tenancy.check_isolation(), tenancy.check_registry() TO %I', grant_app_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.inbox_claim(text, bigint) TO %I', grant_app_role.role);
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
    'Let role role use tenants: enter them, and read and write every tenant '
    'schema and guarded table, now and as new ones appear, without owning any table. Raises 42704 '
    '(no such role) and PT013 (superuser, BYPASSRLS, or owner of a guarded table). Idempotent.';

REVOKE ALL ON FUNCTION tenancy.grant_app_role(name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.grant_listener_role(role name)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = grant_listener_role.role) THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(grant_listener_role.role)
            USING ERRCODE = '42704';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', grant_listener_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.events_channel(), '
                   'tenancy.register_consumer(text), tenancy.next_events(text, integer), '
                   'tenancy.events_held_back(text), tenancy.advance_consumer(text, xid8, bigint, text), '
                   'tenancy.version() TO %I', grant_listener_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.consumer_heartbeat(text), '
                   'tenancy.acquire_lease(text, text, interval), '
                   'tenancy.release_lease(text, text), '
                   'tenancy.park_event(text, bigint, text, integer, text), '
                   'tenancy.unpark_event(text, bigint, text), tenancy.parked_events(text), '
                   'tenancy.inbox_claim(text, bigint) '
                   'TO %I', grant_listener_role.role);
END
$$;

COMMENT ON FUNCTION tenancy.grant_listener_role(name) IS
    'Let role role run outbox consumers (pgtenancy listen): register a consumer, read events, '
    'move its cursor. Raises 42704 when the role does not exist.';

REVOKE ALL ON FUNCTION tenancy.grant_listener_role(name) FROM PUBLIC;

DO $$
DECLARE
    v_grant jsonb;
BEGIN
    FOR v_grant IN
        SELECT g FROM pg_catalog.jsonb_array_elements(
            pg_catalog.current_setting('pgtenancy.upgrade_grants')::jsonb) AS g
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', v_grant->>0, v_grant->>1,
                                  CASE WHEN (v_grant->>2)::boolean THEN ' WITH GRANT OPTION' END);
    END LOOP;
END
$$;
