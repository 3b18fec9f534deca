-- pgtenancy upgrade 0.2.0 -> 0.3.0: the SQL functions answer to the
-- parameter names the README documents (slug, isolation, destroy_data,
-- consumer, ...), in named notation too; the role grants and the doctor no
-- longer look for functions of later files; tenant migrations are confined
-- to their tenant schema (the migrator role, the event-trigger fence) and
-- shared-schema migrations are recorded.
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
            IF v_state = 'PT017' THEN
                RAISE EXCEPTION '%', v_message
                    USING ERRCODE = 'PT017',
                          DETAIL = v_detail,
                          HINT = 'A tenant migration may change its own tenant schema only; '
                                 'change shared schemas with a shared migration. Nothing was registered.';
            END IF;
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
    'transactional paths stop before it. Raises PT017 for SQL that reaches outside its tenant '
    'schema, PT008 for a bad version, changed SQL, out-of-order version or SQL that fails; '
    'nothing is registered then.';

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
    v_row      tenancy.tenants;
    -- Citus: NULL without it.
    v_sharding text := current_setting('citus.enable_schema_based_sharding', true);
BEGIN
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
    'schema_prefix()||slug and apply every migration; with shared the tenant''s rows live in '
    'guarded shared tables. Registers the row and emits tenant_created, all in the caller''s '
    'transaction. Raises PT001 (invalid slug), PT002 (exists), PT006 (a migration failed), 22023 '
    '(metadata not an object, unknown isolation); on error nothing is left behind. With Citus '
    'the new schema is distributed (citus_schema_distribute) whatever '
    'citus.enable_schema_based_sharding says.';

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
    v_id         uuid;
    v_schema     text;
    v_status     text;
    v_has_schema boolean;
BEGIN
    SELECT d.id, d.schema_name, d.status, n.oid IS NOT NULL
      INTO v_id, v_schema, v_status, v_has_schema
      FROM tenancy.tenant_directory AS d
      LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = d.schema_name
     WHERE d.slug = enter_tenant.slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(pg_catalog.quote_literal(enter_tenant.slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    IF v_status <> 'active' THEN
        IF v_status = 'suspended' THEN
            RAISE EXCEPTION 'tenant % is suspended', pg_catalog.quote_literal(enter_tenant.slug)
                USING ERRCODE = 'PT004';
        END IF;
        IF v_status = 'deleted' THEN
            RAISE EXCEPTION 'tenant % is deleted', pg_catalog.quote_literal(enter_tenant.slug)
                USING ERRCODE = 'PT005';
        END IF;
        -- Any status added later (provisioning, ...) is refused too: fail closed.
        RAISE EXCEPTION 'tenant % is not active (status %)', pg_catalog.quote_literal(enter_tenant.slug),
            v_status
            USING ERRCODE = 'PT004';
    END IF;
    -- Fail closed: never fall back to public when the schema is gone.
    IF v_schema IS NOT NULL AND NOT v_has_schema THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', pg_catalog.quote_ident(v_schema),
            pg_catalog.quote_literal(enter_tenant.slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- A shared tenant sees the shared schema, guarded by RLS on app.tenant_id.
    -- pg_temp is named last, so a temporary table (left on a pooled
    -- connection by an earlier request) never shadows a tenant table.
    PERFORM pg_catalog.set_config('search_path',
                                  CASE WHEN v_schema IS NULL THEN 'public, pg_temp'
                                       ELSE pg_catalog.quote_ident(v_schema) || ', public, pg_temp'
                                  END,
                                  true),
            pg_catalog.set_config('app.tenant_id', v_id::text, true),
            pg_catalog.set_config('app.tenant', enter_tenant.slug, true);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant(text) IS
    'Put the current transaction into tenant slug: search_path = tenant schema, public, pg_temp '
    '(public, pg_temp for a shared tenant); app.tenant_id = tenant id; app.tenant = slug; all '
    'transaction-local (set_config(..., true)); with Citus, tenancy.prepare_citus() adds SET LOCAL '
    'statements so every node of the transaction has them. Returns the tenant id. Raises PT003 (unknown), '
    'PT004 (suspended, or any status but active), PT005 (deleted), PT007 (schema missing) before '
    'anything is set. Call it as the first statement of a transaction block.';

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
    v_citus   boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
    v_dist    boolean := false;
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
    'tenancy_guard_write refusing writes without a tenant (PT012). With Citus in the database: one '
    'PERMISSIVE policy tenancy_tenant_isolation (tenant_column = app.tenant_id, no subquery), no '
    'companion, no trigger, no new default on an already distributed table. Grants DML to application roles. '
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

    -- A shared schema others may create in: code planted there could
    -- shadow what the application or its migrations call.
    RETURN QUERY
        SELECT 'warning'::text, 'shared_schema_writable'::text, n.nspname::text,
               format('schema %I can be created in by %s, not only by its owner %s', n.nspname,
                      string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                      ELSE quote_ident(pg_get_userbyid(a.grantee)) END, ', '
                                 ORDER BY a.grantee),
                      quote_ident(pg_get_userbyid(n.nspowner))),
               format('REVOKE CREATE ON SCHEMA %I FROM %s', n.nspname,
                      string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                      ELSE quote_ident(pg_get_userbyid(a.grantee)) END, ', '
                                 ORDER BY a.grantee))
          FROM pg_namespace AS n
         CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
         WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy')
           AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
           AND NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = n.nspname)
           -- The database owner's role and the migrator are the kit's own.
           AND a.grantee <> (SELECT oid FROM pg_roles WHERE rolname = tenancy.migrator_role())
         GROUP BY n.nspname, n.nspowner;

    -- Without the event-trigger fence only privileges confine migrations.
    RETURN QUERY
        SELECT 'warning'::text, 'migration_fence_missing'::text, 'tenancy'::text,
               'the event-trigger fence of tenant migrations is not installed (the kit was '
               'installed without superuser rights): migrations are confined by the migrator '
               'role''s privileges alone, so a create in a schema everybody may create in is '
               'not refused'::text,
               'install the kit again as a superuser (make install-sql), or REVOKE CREATE ON '
               'SCHEMA public FROM PUBLIC'::text
         WHERE (SELECT count(*) FROM pg_event_trigger
                 WHERE evtname IN ('pgtenancy_fence_ddl_start', 'pgtenancy_fence_ddl_end',
                                   'pgtenancy_fence_sql_drop')
                   AND evtenabled <> 'D') < 3;

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
    '(warning), shared schemas that roles other than their owner may create in (warning), the '
    'migration fence missing (warning). Called by '
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
    v_in_migration boolean := tenancy.called_from_migration();
    v_fence        text;
    v_pk      name[];
    v_key     text;
    v_join    text;
    v_fn      text := tenancy.changes_function(track_changes.table_name);
    v_table   text;
    v_child   regclass;
    v_dist    boolean;
BEGIN
    -- From a tenant migration: its own tenant's tables only, and the kit's
    -- own DDL (the generated function lives in tenancy) passes the fence.
    IF v_in_migration THEN
        IF NOT tenancy.is_migration_target(
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE c.oid = track_changes.table_name)) THEN
            RAISE EXCEPTION 'unsafe migration: %(%) is outside its tenant schema', 'track_changes', track_changes.table_name
                USING ERRCODE = 'PT017';
        END IF;
        v_fence := current_setting('pgtenancy.migration_schema', true);
        PERFORM set_config('pgtenancy.migration_schema', '', true);
    END IF;
    -- The sender of row signals: schema.table, unquoted.
    SELECT n.nspname || '.' || c.relname INTO v_table
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = track_changes.table_name AND c.relkind IN ('r', 'p');
    IF v_table IS NULL THEN
        RAISE EXCEPTION '% is not a table', track_changes.table_name
            USING ERRCODE = 'PT016';
    END IF;
    -- Citus: triggers of a distributed table run on the workers, where the
    -- registry and the outbox are not; tenant schemas are distributed.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM pg_catalog.%I WHERE logicalrelid = $1)', 'pg_dist_partition')
            INTO v_dist USING track_changes.table_name;
        IF v_dist OR EXISTS (SELECT 1 FROM tenancy.tenants AS t
                               JOIN pg_namespace AS n ON n.nspname = t.schema_name
                               JOIN pg_class AS c ON c.relnamespace = n.oid
                              WHERE c.oid = track_changes.table_name) THEN
            RAISE EXCEPTION 'table % is distributed by Citus: its change triggers would run on the workers, '
                            'where the outbox is not', track_changes.table_name
                USING ERRCODE = 'PT016',
                      HINT = 'track_changes works on tables local to the coordinator only.';
        END IF;
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
    IF v_in_migration THEN
        PERFORM set_config('pgtenancy.migration_schema', v_fence, true);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.track_changes(regclass) IS
    'Record every INSERT, UPDATE and DELETE of table_name (a tenant-schema table or a guarded shared '
    'table; bulk statements and COPY included) and TRUNCATE as rows_changed outbox events '
    'carrying the tenant, the table (schema.table), the operation, each row''s primary key and, '
    'for updates, the changed columns; an update that changes a key is reported as the old key '
    'deleted and the new one inserted. Partitions present now are tracked too. Statement-level '
    'triggers with transition tables; no NOTIFY. Idempotent. Raises PT016 when table_name is not a '
    'table or has no primary key, or with Citus when it is distributed or in a tenant schema.';

REVOKE ALL ON FUNCTION tenancy.track_changes(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.untrack_changes(table_name regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_in_migration boolean := tenancy.called_from_migration();
    v_fence        text;
    v_child regclass;
BEGIN
    -- From a tenant migration: its own tenant's tables only, and the kit's
    -- own DDL (the generated function lives in tenancy) passes the fence.
    IF v_in_migration THEN
        IF NOT tenancy.is_migration_target(
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE c.oid = untrack_changes.table_name)) THEN
            RAISE EXCEPTION 'unsafe migration: %(%) is outside its tenant schema', 'untrack_changes', untrack_changes.table_name
                USING ERRCODE = 'PT017';
        END IF;
        v_fence := current_setting('pgtenancy.migration_schema', true);
        PERFORM set_config('pgtenancy.migration_schema', '', true);
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', untrack_changes.table_name);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', tenancy.changes_function(untrack_changes.table_name));
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = untrack_changes.table_name LOOP
        PERFORM tenancy.untrack_changes(v_child);
    END LOOP;
    IF v_in_migration THEN
        PERFORM set_config('pgtenancy.migration_schema', v_fence, true);
    END IF;
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

-- Migration confinement (new in 0.3.0): the migrator role, its runner, the
-- event-trigger fence and shared-schema migrations, as in
-- sql/003_confinement.sql; then apply_migrations runs migrations as the
-- migrator, and tenant migrations may track their own tables.

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
    v_path_after text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', migration_path, true);
    EXECUTE migration_sql;
    -- Read before anything else resolves a name through the migration's path.
    v_path_after := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF v_path_after OPERATOR(pg_catalog.<>) migration_path THEN
        RAISE EXCEPTION 'unsafe migration: it changed search_path to %', v_path_after
            USING ERRCODE = 'PT017',
                  HINT = 'A tenant migration runs in its tenant schema; qualify names instead.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_default_acl AS d
                WHERE d.defaclrole OPERATOR(pg_catalog.=)
                      (SELECT r.oid FROM pg_catalog.pg_roles AS r
                        WHERE r.rolname OPERATOR(pg_catalog.=) current_user)) THEN
        RAISE EXCEPTION 'unsafe migration: ALTER DEFAULT PRIVILEGES changes privileges beyond its tenant schema'
            USING ERRCODE = 'PT017',
                  HINT = 'Grant on the tenant''s own objects instead.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata AS l
                WHERE l.lomowner OPERATOR(pg_catalog.=)
                      (SELECT r.oid FROM pg_catalog.pg_roles AS r
                        WHERE r.rolname OPERATOR(pg_catalog.=) current_user)) THEN
        RAISE EXCEPTION 'unsafe migration: it created a large object, which lies outside its tenant schema'
            USING ERRCODE = 'PT017',
                  HINT = 'Store the data in a table of the tenant schema.';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.execute_migration(text, text) IS
    'Run migration_sql as the migrator role with search_path = migration_path (pinned again '
    'right after); raise PT017 when the migration changed search_path, set default privileges '
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
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- The schema the runner opened to the migrator in this transaction: a
    -- schema of the kit's owner the migrator may create in (that grant never
    -- commits), neither tenancy nor public nor one everybody may create in.
    SELECT schema_name NOT IN ('tenancy', 'public')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace AS n
                    WHERE n.nspname = schema_name
                      AND n.nspowner = (SELECT s.nspowner FROM pg_catalog.pg_namespace AS s
                                         WHERE s.nspname = 'tenancy')
                      AND pg_catalog.has_schema_privilege(
                              (SELECT c.migrator_role FROM tenancy.confinement AS c), n.oid, 'CREATE')
                      AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) AS a
                                       WHERE a.grantee = 0 AND a.privilege_type = 'CREATE'))
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

CREATE OR REPLACE FUNCTION tenancy.fence_target()
    RETURNS text
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target  text := tenancy.migration_schema();
    v_outside text := nullif(pg_catalog.current_setting('pgtenancy.outside_migration_schema', true), '');
    v_role    name := (SELECT c.migrator_role FROM tenancy.confinement AS c);
BEGIN
    -- The fleet runner applies a no-transaction migration statement by
    -- statement on its own connection, as the owner (each statement checked
    -- to be CREATE INDEX CONCURRENTLY or the like); its objects must lie in
    -- that tenant's schema. The migrator itself never reaches this branch.
    IF v_outside IS NOT NULL AND current_user IS DISTINCT FROM v_role THEN
        IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = v_outside) THEN
            RETURN v_outside;
        END IF;
        RETURN '';
    END IF;
    -- Outside a migration the fence stays out of the way of everyone's DDL.
    IF v_target IS NULL
       AND session_user IS DISTINCT FROM v_role
       AND current_user IS DISTINCT FROM v_role THEN
        RETURN NULL;
    END IF;
    -- The migration itself could have rewritten the setting: trust it only
    -- when it names the schema the runner opened to the migrator.
    IF v_target IS NOT NULL AND tenancy.is_migration_target(v_target) THEN
        RETURN v_target;
    END IF;
    RETURN '';  -- in a migration, but no schema it may change
END
$$;

COMMENT ON FUNCTION tenancy.fence_target() IS
    'For the migration fence: NULL outside a migration; inside one, the tenant schema it may '
    'change, or the empty string when the setting names no tenant schema (everything refused).';

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
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Temporary objects vanish with the session: allowed.
    SELECT object_schema = target
        OR object_schema = 'pg_temp'
        OR object_schema LIKE 'pg\_temp\_%'
        OR object_schema LIKE 'pg\_toast\_temp\_%'
$$;

COMMENT ON FUNCTION tenancy.fence_in_target(text, text) IS
    'True when an object in schema object_schema is the current migration''s to change.';

CREATE OR REPLACE FUNCTION tenancy.fence_ddl_start()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target text := tenancy.fence_target();
BEGIN
    IF v_target IS NULL THEN
        RETURN;
    END IF;
    IF TG_TAG IN ('CREATE EXTENSION', 'ALTER EXTENSION', 'DROP EXTENSION',
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
                  'DROP ACCESS METHOD', 'SECURITY LABEL') THEN
        PERFORM tenancy.fence_refuse(TG_TAG, NULL, v_target);
    END IF;
    IF v_target = '' THEN
        PERFORM tenancy.fence_refuse(TG_TAG, 'an object', v_target);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.fence_ddl_start() IS
    'Event trigger (ddl_command_start): during a tenant migration refuse, with PT017, commands '
    'that are never a tenant''s (extensions, schemas, default privileges, foreign servers, '
    'publications, casts, languages, security labels) and all DDL when no tenant schema is set.';

CREATE OR REPLACE FUNCTION tenancy.fence_ddl_end()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target text := tenancy.fence_target();
    v_cmd    record;
BEGIN
    IF v_target IS NULL THEN
        RETURN;
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
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.fence_ddl_end() IS
    'Event trigger (ddl_command_end): during a tenant migration refuse, with PT017, any command '
    'whose objects lie outside the tenant schema being migrated.';

CREATE OR REPLACE FUNCTION tenancy.fence_sql_drop()
    RETURNS event_trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target text := tenancy.fence_target();
    v_obj    record;
BEGIN
    IF v_target IS NULL THEN
        RETURN;
    END IF;
    FOR v_obj IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
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
REVOKE ALL ON FUNCTION tenancy.fence_ddl_start() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.fence_ddl_end() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.fence_sql_drop() FROM PUBLIC;

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
    CREATE EVENT TRIGGER pgtenancy_fence_ddl_start ON ddl_command_start
        EXECUTE FUNCTION tenancy.fence_ddl_start();
    CREATE EVENT TRIGGER pgtenancy_fence_ddl_end ON ddl_command_end
        EXECUTE FUNCTION tenancy.fence_ddl_end();
    CREATE EVENT TRIGGER pgtenancy_fence_sql_drop ON sql_drop
        EXECUTE FUNCTION tenancy.fence_sql_drop();
    UPDATE tenancy.confinement SET fence = true;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.hand_over_schema(schema_name text, to_migrator boolean)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_migrator oid := (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = tenancy.migrator_role());
    v_owner    oid := (SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
    v_from     oid;
    v_to       name;
    v_nsp      oid := to_regnamespace(quote_ident(schema_name))::oid;
    v_obj      record;
    v_count    integer := 0;
BEGIN
    IF v_nsp IS NULL THEN
        RETURN 0;
    END IF;
    IF to_migrator THEN
        v_from := v_owner;
        v_to := tenancy.migrator_role();
    ELSE
        v_from := v_migrator;
        v_to := (SELECT r.rolname FROM pg_roles AS r WHERE r.oid = v_owner);
        -- Given back to the owner, these would run with the owner's rights
        -- for whoever calls them: never from a tenant migration.
        SELECT p.oid::regprocedure::text AS name INTO v_obj
          FROM pg_proc AS p
         WHERE p.pronamespace = v_nsp AND p.prosecdef AND p.proowner = v_migrator
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
    -- Everything in the schema, found through its namespace dependencies
    -- (indexed), not a scan of the catalogs.
    FOR v_obj IN
        SELECT d.classid, d.objid FROM pg_depend AS d
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp AND d.deptype = 'n'
    LOOP
        IF v_obj.classid = 'pg_class'::regclass THEN
            PERFORM 1 FROM pg_class AS c
             WHERE c.oid = v_obj.objid AND c.relowner = v_from
               AND (c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
                    OR (c.relkind = 'S' AND NOT EXISTS (
                            SELECT 1 FROM pg_depend AS o
                             WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid
                               AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i'))));
            CONTINUE WHEN NOT FOUND;
            EXECUTE format('ALTER %s %s OWNER TO %I',
                (SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                       WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                       WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END
                   FROM pg_class AS c WHERE c.oid = v_obj.objid),
                CASE WHEN (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_obj.objid) = 'c'
                     THEN v_obj.objid::regclass::text::regtype::text
                     ELSE v_obj.objid::regclass::text END,
                v_to);
            -- A view given back to the owner reads with its caller's rights,
            -- so it never lends the owner's to the application.
            IF NOT to_migrator
               AND (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_obj.objid) = 'v' THEN
                EXECUTE format('ALTER VIEW %s SET (security_invoker = true)', v_obj.objid::regclass);
            END IF;
        ELSIF v_obj.classid = 'pg_proc'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_proc AS p
                                       WHERE p.oid = v_obj.objid AND p.proowner = v_from);
            EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_obj.objid::regprocedure, v_to);
        ELSIF v_obj.classid = 'pg_type'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_type AS t
                                       WHERE t.oid = v_obj.objid AND t.typowner = v_from
                                         AND t.typtype IN ('d', 'e', 'r'));
            EXECUTE format('ALTER %s %s OWNER TO %I',
                CASE (SELECT t.typtype FROM pg_type AS t WHERE t.oid = v_obj.objid)
                     WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                v_obj.objid::regtype, v_to);
        ELSIF v_obj.classid = 'pg_operator'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_operator AS o
                                       WHERE o.oid = v_obj.objid AND o.oprowner = v_from);
            EXECUTE format('ALTER OPERATOR %s OWNER TO %I', v_obj.objid::regoperator, v_to);
        ELSIF v_obj.classid = 'pg_collation'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_collation AS o
                                       WHERE o.oid = v_obj.objid AND o.collowner = v_from);
            EXECUTE format('ALTER COLLATION %s OWNER TO %I', v_obj.objid::regcollation, v_to);
        ELSIF v_obj.classid = 'pg_statistic_ext'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_statistic_ext AS o
                                       WHERE o.oid = v_obj.objid AND o.stxowner = v_from);
            EXECUTE format('ALTER STATISTICS %I.%I OWNER TO %I', schema_name,
                           (SELECT o.stxname FROM pg_statistic_ext AS o WHERE o.oid = v_obj.objid), v_to);
        ELSIF v_obj.classid = 'pg_ts_config'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_ts_config AS o
                                       WHERE o.oid = v_obj.objid AND o.cfgowner = v_from);
            EXECUTE format('ALTER TEXT SEARCH CONFIGURATION %s OWNER TO %I', v_obj.objid::regconfig, v_to);
        ELSIF v_obj.classid = 'pg_ts_dict'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_ts_dict AS o
                                       WHERE o.oid = v_obj.objid AND o.dictowner = v_from);
            EXECUTE format('ALTER TEXT SEARCH DICTIONARY %s OWNER TO %I', v_obj.objid::regdictionary, v_to);
        ELSIF v_obj.classid = 'pg_conversion'::regclass THEN
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_conversion AS o
                                       WHERE o.oid = v_obj.objid AND o.conowner = v_from);
            EXECUTE format('ALTER CONVERSION %I.%I OWNER TO %I', schema_name,
                           (SELECT o.conname FROM pg_conversion AS o WHERE o.oid = v_obj.objid), v_to);
        ELSE
            CONTINUE;
        END IF;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.hand_over_schema(text, boolean) IS
    'Give the objects of tenant schema schema_name to the migrator role (to_migrator) for the '
    'span of a migration, or back to the kit''s owner afterwards, so at rest the migrator owns '
    'nothing and a migration reaches no other tenant. Giving back raises PT017 for a SECURITY '
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
    v_role   name := tenancy.migrator_role();
    v_schema record;
    v_table  record;
BEGIN
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
END
$$;

COMMENT ON FUNCTION tenancy.grant_shared_to_migrator() IS
    'Let tenant migrations use the shared schemas (every schema of the owner''s that is no '
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
    -- One runner at a time per database; the caller's own lock space.
    PERFORM pg_advisory_xact_lock(hashtext('tenancy.shared_migrations'));
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
    v_context   text;
    v_role      name := tenancy.migrator_role();
    -- The migration sees the tenant schema first, then the system catalogs,
    -- then public (references to shared objects), and temporary objects
    -- last, so a temporary table never shadows a tenant table.
    v_path      text := format('%I, pg_catalog, public, pg_temp', p_schema);
    v_granted   boolean := false;
BEGIN
    FOR v_migration IN
        SELECT * FROM tenancy.migrations AS m
         WHERE p_from IS NULL OR m.version > p_from
         ORDER BY m.version
    LOOP
        -- It cannot run in this transaction: the fleet runner applies it
        -- outside one, then everything after it.
        EXIT WHEN v_migration.outside_transaction;
        IF NOT v_granted THEN
            -- The migrator may create in this schema for the rest of this
            -- transaction only; nobody else ever sees the grant committed.
            EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', p_schema, v_role);
            -- Taking the schema's objects locks them all for the rest of the
            -- transaction: a busy tenant fails here under lock_timeout.
            BEGIN
                PERFORM tenancy.hand_over_schema(p_schema, true);
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
        BEGIN
            PERFORM tenancy.execute_migration(v_migration.sql, v_path);
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
        v_version := v_migration.version;
    END LOOP;
    IF v_granted THEN
        -- At rest the owner owns everything again and the migrator nothing.
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
    PERFORM tenancy.citus_distribute_schema(p_schema);
    RETURN v_version;
END
$$;

COMMENT ON FUNCTION tenancy.apply_migrations(text, text) IS
    'Run, inside schema p_schema, every registered migration after version p_from (all when NULL), '
    'in version order, each as the migrator role confined to that schema; return the last '
    'version applied (p_from when none). Raises PT017 when a migration reaches outside its '
    'schema, PT006 with the failing migration''s SQLSTATE in DETAIL for any other error. '
    'Internal: not granted to PUBLIC.';

-- Tenant migrations may track their own tables (the functions check that).
DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.track_changes(regclass) TO %I',
                              tenancy.migrator_role());
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.untrack_changes(regclass) TO %I',
                              tenancy.migrator_role());
END
$$;

-- The extension's new configuration table: pg_dump keeps its rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.shared_migrations', '');
    END IF;
END
$$;

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
    'many tables were distributed. A no-op (0) without Citus. Internal.';
REVOKE ALL ON FUNCTION tenancy.citus_distribute_schema(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.prepare_citus()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_src   text;
    v_end   text := E'\n    RETURN v_id;\nEND\n';
    v_citus text := E'\n    -- Citus (added by tenancy.prepare_citus()): SET LOCAL reaches every node.'
                    || E'\n    PERFORM pg_catalog.set_config(''citus.propagate_set_commands'', ''local'', true);'
                    || E'\n    EXECUTE pg_catalog.format(''SET LOCAL app.tenant_id = %L'', v_id::text);'
                    || E'\n    EXECUTE pg_catalog.format(''SET LOCAL app.tenant = %L'', enter_tenant.slug);';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN false;
    END IF;
    SELECT p.prosrc INTO v_src FROM pg_proc AS p WHERE p.oid = 'tenancy.enter_tenant(text)'::regprocedure;
    IF pg_catalog.strpos(v_src, 'citus.propagate_set_commands') > 0 THEN
        RETURN true;
    END IF;
    IF pg_catalog.strpos(v_src, v_end) = 0 THEN
        RAISE EXCEPTION 'tenancy.enter_tenant() does not end as expected: cannot add the Citus statements'
            USING ERRCODE = 'XX000';
    END IF;
    v_src := pg_catalog.replace(v_src, v_end, v_citus || v_end);
    EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION tenancy.enter_tenant(slug text) RETURNS uuid '
                              'LANGUAGE plpgsql VOLATILE AS %L', v_src);
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.prepare_citus() IS
    'With Citus in the database: add literal SET LOCAL app.tenant_id/app.tenant statements (and '
    'citus.propagate_set_commands = local) to tenancy.enter_tenant(), so the tenant reaches every '
    'worker of the transaction; true when Citus is there, false (nothing changed) without it. '
    'Idempotent. Run by install and enable_rls; run it after CREATE EXTENSION citus in a database '
    'where the kit is installed already.';
REVOKE ALL ON FUNCTION tenancy.prepare_citus() FROM PUBLIC;

SELECT tenancy.prepare_citus();

CREATE OR REPLACE FUNCTION tenancy.check_citus()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_table        regclass;
    v_slug         text;
    v_schema       text;
    v_bad          bigint;
    v_restrictive  name[];
    v_cmd          text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOR v_table IN EXECUTE format(
        'SELECT g.table_name FROM tenancy.guarded_tables AS g
           JOIN pg_catalog.%I AS p ON p.logicalrelid = g.table_name', 'pg_dist_partition')
    LOOP
        -- A policy that is permissive on a shard but restrictive on the
        -- coordinator, or the USING (true) companion: either opens the rows.
        SELECT coalesce(array_agg(c.polname), '{}') INTO v_restrictive
          FROM pg_policy AS c WHERE c.polrelid = v_table AND NOT c.polpermissive;
        v_cmd := format('SELECT count(*) FROM pg_policy AS p WHERE p.polrelid = ''%%s''::regclass '
                        'AND p.polpermissive AND (p.polname = ''tenancy_tenant_rows'' '
                        'OR p.polname = ANY (%L::name[]))', v_restrictive::text);
        EXECUTE format('SELECT count(*) FROM pg_catalog.%I($1, $2) AS s '
                       'WHERE s.success AND s.result::bigint > 0', 'run_command_on_shards')
            INTO v_bad USING v_table, v_cmd;
        IF v_bad > 0 THEN
            RETURN QUERY SELECT 'error'::text, 'citus_shard_policy_permissive'::text, v_table::text,
                format('%s shards of %s carry a permissive copy of a restrictive policy or the '
                       'USING (true) companion: tenants read each other''s rows there',
                       v_bad, v_table),
                format('SELECT tenancy.enable_rls(%L)', v_table::text);
        END IF;
    END LOOP;
    FOR v_slug, v_schema IN EXECUTE format(
        'SELECT t.slug, t.schema_name FROM tenancy.tenant_directory AS t
           JOIN pg_namespace AS n ON n.nspname = t.schema_name
          WHERE t.status <> $d$deleted$d$
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.%I AS s WHERE s.schemaid = n.oid)', 'pg_dist_schema')
    LOOP
        RETURN QUERY SELECT 'warning'::text, 'citus_schema_not_distributed'::text, v_slug::text,
            format('schema %I of tenant %s is not distributed: it lives on the coordinator',
                   v_schema, v_slug),
            format('SELECT citus_schema_distribute(%L)', v_schema);
    END LOOP;
    FOR v_table IN EXECUTE format(
        'SELECT c.oid::regclass AS tbl FROM pg_class AS c
           JOIN pg_catalog.%I AS s ON s.schemaid = c.relnamespace
          WHERE c.relkind IN ($k$r$k$, $k$p$k$) AND NOT c.relispartition
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.%I AS p WHERE p.logicalrelid = c.oid)',
        'pg_dist_schema', 'pg_dist_partition')
    LOOP
        RETURN QUERY SELECT 'error'::text, 'citus_local_table_in_distributed_schema'::text, v_table::text,
            format('table %s is local in a distributed schema: its rows stay on the coordinator', v_table),
            format('SELECT create_distributed_table(%L, NULL, colocate_with => <a table of its schema>)',
                   v_table::text);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.check_citus() IS
    'Citus findings of the isolation doctor (none without Citus): shards of guarded tables carrying '
    'a permissive copy of a restrictive policy or the USING (true) companion (error), tenant '
    'schemas not distributed (warning), local tables in distributed schemas (error). Internal: '
    'called by check_isolation(), as the calling role (reads tenant_directory, guarded_tables and '
    'the catalogs).';

CREATE OR REPLACE FUNCTION tenancy.check_isolation()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_me     pg_roles;
    r        record;
    v_citus  boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
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

    -- A setting read outside an InitPlan is evaluated once per row (not
    -- said on Citus, which refuses sub-selects in policies of distributed tables).
    FOR r IN
        SELECT p.polname, p.polrelid::regclass AS tbl,
               coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
               || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') AS expr
          FROM pg_policy AS p
         WHERE NOT v_citus
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
    IF v_citus THEN
        RETURN QUERY SELECT * FROM tenancy.check_citus();
    END IF;

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
    'no listener connected; with Citus, tenancy.check_citus() (and no InitPlan advice). Run it as '
    'the application role.';

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
    RETURN tenancy.tenant_node(move_tenant.slug);
END
$$;

COMMENT ON FUNCTION tenancy.move_tenant(text, text, integer) IS
    'Citus: move schema tenant slug to node node_host:node_port (citus_schema_move; the tenant '
    'stays usable while its shards are copied); return its node afterwards. A no-op when it is '
    'there already. Raises PT003 (not found), 22023 (shared tenant), 0A000 (no Citus).';
REVOKE ALL ON FUNCTION tenancy.move_tenant(text, text, integer) FROM PUBLIC;
