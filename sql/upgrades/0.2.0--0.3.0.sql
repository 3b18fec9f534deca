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
    SELECT '@PGTENANCY_VERSION@'::pg_catalog.text
$$;

COMMENT ON FUNCTION tenancy.version() IS
    'Version of the installed pgtenancy SQL, as major.minor.patch text.';

-- Functions that run with the caller's search_path qualify every name (issue 13 attack run).
CREATE OR REPLACE FUNCTION tenancy.schema_prefix()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT 'tenant_'::pg_catalog.text
$$;

COMMENT ON FUNCTION tenancy.schema_prefix() IS
    'Prefix of every tenant schema name: schema_name = schema_prefix() || slug.';


CREATE OR REPLACE FUNCTION tenancy.events_channel()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT 'tenancy_events_v1'::pg_catalog.text
$$;

COMMENT ON FUNCTION tenancy.events_channel() IS
    'Name of the LISTEN/NOTIFY channel that wakes outbox consumers (payload is always empty).';


CREATE OR REPLACE FUNCTION tenancy.current_tenant_id()
    RETURNS uuid
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('app.tenant_id', true) OPERATOR(pg_catalog.=) ''
                THEN NULL
                ELSE pg_catalog.current_setting('app.tenant_id', true)::pg_catalog.uuid
           END
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
    SELECT CASE WHEN pg_catalog.current_setting('app.tenant', true) OPERATOR(pg_catalog.=) ''
                THEN NULL
                ELSE pg_catalog.current_setting('app.tenant', true)
           END
$$;

COMMENT ON FUNCTION tenancy.current_tenant() IS
    'Slug of the tenant the current transaction entered, NULL outside a tenant.';


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

-- issue 15: tenant limits in the registry, old slugs of renamed tenants,
-- and the directory enter_tenant reads.
ALTER TABLE tenancy.tenants ADD COLUMN IF NOT EXISTS limits text[];

COMMENT ON COLUMN tenancy.tenants.limits IS
    'Resource limits as (setting, value) pairs, applied transaction-locally at entry '
    '(set by the limits function of 010_tenant_operations.sql); NULL when none.';

CREATE TABLE IF NOT EXISTS tenancy.tenant_renames (
    old_slug   text        NOT NULL,
    tenant_id  uuid        NOT NULL,
    new_slug   text        NOT NULL,
    renamed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT tenant_renames_pkey PRIMARY KEY (old_slug)
);

COMMENT ON TABLE tenancy.tenant_renames IS
    'Slugs tenants had before a rename, with the slug each tenant has now; '
    'enter_tenant reads it to fail with PT020 under an old slug. Readable by everyone.';

-- enter_tenant runs as the calling (application) role.
GRANT SELECT ON TABLE tenancy.tenant_renames TO PUBLIC;

-- issue 13: when each tenant got its slug (strict entry refuses entry tokens
-- issued before it). Existing tenants: their last rename, else their
-- creation. The registry's update trigger would stamp updated_at (and
-- refuses the change once replaced below): off for the backfill.
ALTER TABLE tenancy.tenants ADD COLUMN IF NOT EXISTS slug_assigned_at timestamptz;
ALTER TABLE tenancy.tenants DISABLE TRIGGER tenants_before_update;
UPDATE tenancy.tenants AS t
   SET slug_assigned_at = greatest(t.created_at, (SELECT max(r.renamed_at) FROM tenancy.tenant_renames AS r
                                                   WHERE r.tenant_id = t.id))
 WHERE t.slug_assigned_at IS NULL;
ALTER TABLE tenancy.tenants ENABLE TRIGGER tenants_before_update;
ALTER TABLE tenancy.tenants
    ALTER COLUMN slug_assigned_at SET DEFAULT pg_catalog.clock_timestamp(),
    ALTER COLUMN slug_assigned_at SET NOT NULL;

COMMENT ON COLUMN tenancy.tenants.slug_assigned_at IS
    'When the tenant got its slug (clock_timestamp() at creation and at each rename, set by the '
    'registry triggers, never by hand): strict entry refuses tokens issued before it, so a token '
    'for the slug''s previous holder (renamed or destroyed) does not enter this tenant.';

CREATE OR REPLACE VIEW tenancy.tenant_directory AS
    SELECT t.slug, t.id, t.schema_name, t.status, t.limits FROM tenancy.tenants AS t;

COMMENT ON VIEW tenancy.tenant_directory IS
    'Slug, id, schema, status and limits of every tenant: what entering a tenant needs, readable by '
    'application roles that have no access to tenancy.tenants.';

CREATE OR REPLACE FUNCTION tenancy.enter_tenant(slug text)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    -- The parameter by position, not as enter_tenant.slug: the accelerator
    -- (011_accelerator.sql) keeps this body under another name too.
    v_slug    ALIAS FOR $1;
    v_id      pg_catalog.uuid;
    v_schema  pg_catalog.text;
    v_status  pg_catalog.text;
    v_limits  pg_catalog.text[];
    v_ok      boolean;
    v_set     pg_catalog.text;
    v_renamed pg_catalog.text;
BEGIN
    SELECT d.id, d.schema_name, d.status, d.limits,
           d.status OPERATOR(pg_catalog.=) 'active'
           AND (d.schema_name IS NULL
                OR pg_catalog.to_regnamespace(pg_catalog.quote_ident(d.schema_name)) IS NOT NULL)
      INTO v_id, v_schema, v_status, v_limits, v_ok
      FROM tenancy.tenant_directory AS d
     -- The registry's own collation: under a nondeterministic one given with
     -- the argument ('ACME' COLLATE <case-insensitive>) another spelling of
     -- the slug would match, and app.tenant would get that spelling.
     WHERE d.slug OPERATOR(pg_catalog.=) (v_slug COLLATE pg_catalog."default");
    IF v_ok IS NOT TRUE THEN
        IF NOT FOUND THEN
            -- A renamed tenant's old slug says where the tenant went.
            SELECT r.new_slug INTO v_renamed
              FROM tenancy.tenant_renames AS r
             WHERE r.old_slug OPERATOR(pg_catalog.=) (v_slug COLLATE pg_catalog."default");
            IF FOUND THEN
                RAISE EXCEPTION 'tenant % was renamed to %', pg_catalog.quote_literal(v_slug),
                    pg_catalog.quote_literal(v_renamed)
                    USING ERRCODE = 'PT020',
                          DETAIL = pg_catalog.format('new slug: %s', v_renamed);
            END IF;
            RAISE EXCEPTION 'tenant % not found', coalesce(pg_catalog.quote_literal(v_slug), 'NULL')
                USING ERRCODE = 'PT003';
        END IF;
        IF v_status OPERATOR(pg_catalog.=) 'suspended' THEN
            RAISE EXCEPTION 'tenant % is suspended', pg_catalog.quote_literal(v_slug)
                USING ERRCODE = 'PT004';
        END IF;
        IF v_status OPERATOR(pg_catalog.=) 'deleted' THEN
            RAISE EXCEPTION 'tenant % is deleted', pg_catalog.quote_literal(v_slug)
                USING ERRCODE = 'PT005';
        END IF;
        IF v_status OPERATOR(pg_catalog.=) 'provisioning' THEN
            RAISE EXCEPTION 'tenant % is being provisioned', pg_catalog.quote_literal(v_slug)
                USING ERRCODE = 'PT019',
                      HINT = 'Its migrations are not all applied yet: rerun create_tenant or pgtenancy migrate.';
        END IF;
        IF v_status OPERATOR(pg_catalog.<>) 'active' THEN
            -- Any status added later is refused too: fail closed.
            RAISE EXCEPTION 'tenant % is not active (status %)', pg_catalog.quote_literal(v_slug),
                v_status
                USING ERRCODE = 'PT004';
        END IF;
        -- Fail closed: never fall back to public when the schema is gone.
        RAISE EXCEPTION 'schema % of tenant % is missing', pg_catalog.quote_ident(v_schema),
            pg_catalog.quote_literal(v_slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- The tenant's resource limits (tenancy.set_tenant_limits), as
    -- (setting, value) pairs, transaction-local too; nothing for most tenants.
    IF v_limits IS NOT NULL THEN
        PERFORM pg_catalog.set_config(v_limits[i], v_limits[i OPERATOR(pg_catalog.+) 1], true)
           FROM pg_catalog.generate_series(1, pg_catalog.cardinality(v_limits), 2) AS i;
    END IF;
    -- Settings: nothing with a cached plan may follow this assignment.
    -- A shared tenant sees the shared schema, guarded by RLS on app.tenant_id.
    -- pg_temp is named last, so a temporary table (left on a pooled
    -- connection by an earlier request) never shadows a tenant table.
    v_set := pg_catalog.set_config('app.tenant_id', v_id::pg_catalog.text, true)
             OPERATOR(pg_catalog.||) pg_catalog.set_config('app.tenant', v_slug, true)
             OPERATOR(pg_catalog.||) pg_catalog.set_config('search_path',
                                      CASE WHEN v_schema IS NULL THEN 'public, pg_temp'
                                           ELSE pg_catalog.quote_ident(v_schema)
                                                OPERATOR(pg_catalog.||) ', public, pg_temp'
                                      END,
                                      true);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant(text) IS
    'Put the current transaction into tenant slug: search_path = tenant schema, public, pg_temp '
    '(public, pg_temp for a shared tenant); app.tenant_id = tenant id; app.tenant = slug; the '
    'tenant''s limits (tenancy.tenants.limits); all transaction-local (set_config(..., true)); '
    'with Citus, tenancy.prepare_citus() adds SET LOCAL statements so every node of the '
    'transaction has the tenant. Returns the tenant id. Raises PT003 (unknown), PT020 (renamed: '
    'DETAIL names the new slug), PT004 (suspended, or any status but active), PT005 (deleted), '
    'PT019 (being provisioned), PT007 (schema missing) before anything is set. Call it as the '
    'first statement of a transaction block.';

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

    -- Citus: a migration re-distributed the tenant's schema on another node
    -- and nothing moved it back yet (tenancy.tenant_placements).
    RETURN QUERY
        SELECT 'warning'::text, 'citus_tenant_placement'::text, t.slug,
               format('tenant %s sits on %s, it belongs on %s:%s (a migration placed it again)',
                      t.slug, coalesce(tenancy.tenant_node(t.slug), 'no node'), p.node_name, p.node_port),
               format('pgtenancy move %s %s %s', t.slug, p.node_name, p.node_port)
          FROM tenancy.tenant_placements AS p
          JOIN tenancy.tenants AS t ON t.id = p.tenant_id
         WHERE t.status <> 'deleted'
           AND tenancy.tenant_node(t.slug) IS DISTINCT FROM p.node_name || ':' || p.node_port;

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

    -- Whoever owns a tenant table can switch its privileges and policies
    -- off; the tenant's own role owns them at rest (tenancy.rest_owner), the
    -- migrator only for the span of one migration (so one left at rest
    -- means an interrupted hand-over).
    RETURN QUERY
        SELECT 'error'::text, 'tenant_object_foreign_owner'::text,
               format('%I.%I', n.nspname, c.relname),
               format('%s %I.%I of tenant %s is owned by %s, not by its owner at rest %s%s',
                      CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                                     WHEN 'm' THEN 'materialized view' ELSE 'table' END,
                      n.nspname, c.relname, t.slug, quote_ident(pg_get_userbyid(c.relowner)),
                      quote_ident(tenancy.rest_owner(t.schema_name)),
                      CASE WHEN pg_get_userbyid(c.relowner) = tenancy.migrator_role()
                           THEN ' (the migrator role owns nothing at rest)' ELSE '' END),
               format('ALTER TABLE %I.%I OWNER TO %I', n.nspname, c.relname, tenancy.rest_owner(t.schema_name))
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_class AS c ON c.relnamespace = n.oid
         WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
           AND pg_get_userbyid(c.relowner) <> tenancy.rest_owner(t.schema_name);

    -- Without a role of its own, a tenant's objects are the owner's at rest:
    -- code its migrations planted in them (foreign-key actions, expression
    -- indexes under ANALYZE, REFRESH) runs with the owner's rights.
    RETURN QUERY
        SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension AS e WHERE e.extname = 'citus')
                    THEN 'info' ELSE 'warning' END::text, 'tenant_without_owner_role'::text, t.slug,
               format('the objects of tenant %s belong to the kit''s owner at rest, not to a role '
                      'of its own (%s): code its migrations attached to them may run with the '
                      'owner''s rights', t.slug, tenancy.tenant_role(t.schema_name)),
               CASE WHEN EXISTS (SELECT 1 FROM pg_extension AS e WHERE e.extname = 'citus')
                    THEN 'none with Citus: it moves shards as the table owner, which must log in '
                         '(see the README, Citus)'
                    WHEN NOT EXISTS (SELECT 1 FROM pg_roles AS g WHERE g.rolname = tenancy.tenant_group_role())
                    THEN format('as a superuser: CREATE ROLE %I NOLOGIN; then install the kit again '
                                'and run pgtenancy migrate', tenancy.tenant_group_role())
                    ELSE 'give the kit''s owner CREATEROLE, then run pgtenancy migrate' END
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = tenancy.tenant_role(t.schema_name))
           AND EXISTS (SELECT 1 FROM pg_class AS c WHERE c.relnamespace = n.oid);

    -- A tenant table's foreign key to a table outside its schema with an
    -- action runs the tenant's triggers inside whoever deletes or updates
    -- the referenced row, the AFTER ones with that role's rights (a
    -- migration may no longer make one: these are from before, or by hand).
    RETURN QUERY
        SELECT 'error'::text, 'tenant_fk_action'::text, format('%I.%I', n.nspname, c.relname),
               format('foreign key %I of %I.%I (tenant %s) references %s with an action (ON '
                      'DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT): deleting or updating a row '
                      'of %s runs the tenant''s triggers with the rights of whoever does it',
                      k.conname, n.nspname, c.relname, t.slug, k.confrelid::regclass,
                      k.confrelid::regclass),
               'make it ON DELETE/UPDATE RESTRICT (or NO ACTION) in a tenant migration: drop the '
               'constraint and add it again'::text
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
          JOIN pg_constraint AS k ON k.conrelid = c.oid AND k.contype = 'f'
          JOIN pg_class AS r ON r.oid = k.confrelid
         WHERE r.relnamespace <> n.oid
           AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
           AND k.conparentid = 0;

    -- A member of the owner's role has the owner's rights: every tenant,
    -- every policy, the registry.
    RETURN QUERY
        SELECT CASE WHEN EXISTS (SELECT 1 FROM tenancy.app_roles AS a WHERE a.role_name = r.rolname)
                    THEN 'error' ELSE 'warning' END::text,
               'owner_role_member'::text, r.rolname::text,
               format('role %s is a member of the kit''s owner %s and has all its rights (every '
                      'tenant''s data, the registry, the policies)', quote_ident(r.rolname),
                      quote_ident(pg_get_userbyid(k.nspowner))),
               format('REVOKE %I FROM %I', pg_get_userbyid(k.nspowner), r.rolname)
          FROM (SELECT nspowner FROM pg_namespace WHERE nspname = 'tenancy') AS k
          JOIN pg_roles AS r ON r.oid <> k.nspowner AND pg_has_role(r.oid, k.nspowner, 'MEMBER')
         WHERE NOT r.rolsuper;

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
               format('run its listener again, or pgtenancy events drop-consumer %s', c.name)
          FROM tenancy.consumers AS c
         WHERE coalesce(c.seen_at, c.updated_at) < now() - tenancy.consumer_inactive_after()
           AND EXISTS (SELECT 1 FROM tenancy.events AS e
                        WHERE (e.xid, e.id) > (c.last_xid, c.last_id));

    -- Stale: nobody listens, and undelivered events wait longer than the
    -- setting pgtenancy.consumer_stale_after (default 15 minutes), well
    -- before consumer_inactive_after().
    RETURN QUERY
        SELECT 'warning'::text, 'consumer_stale'::text, c.name,
               format('consumer %s has no listener (last seen %s) and %s undelivered events, '
                      'the oldest %s old',
                      c.name, coalesce(c.seen_at::text, 'never'), s.lag_events,
                      date_trunc('second', now() - s.oldest)),
               format('start its listener (pgtenancy listen --consumer %s), or drop it: '
                      'pgtenancy events drop-consumer %s', c.name, c.name)
          FROM tenancy.consumers AS c
         CROSS JOIN LATERAL (
             SELECT count(*) AS lag_events, min(e.created_at) AS oldest
               FROM tenancy.events AS e
              WHERE (e.xid, e.id) > (c.last_xid, c.last_id)) AS s
         WHERE s.lag_events > 0
           AND s.oldest < now() - coalesce(nullif(current_setting('pgtenancy.consumer_stale_after', true),
                                                  ''), '15 minutes')::interval
           AND coalesce(c.seen_at, c.updated_at) >= now() - tenancy.consumer_inactive_after()
           AND (c.lease_until IS NULL OR c.lease_until < now())
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                            WHERE a.datname = current_database()
                              AND a.application_name = 'pgtenancy-listener:' || c.name);

    -- An orphaned prepared transaction (its transaction manager gone) holds
    -- the snapshot xmin of the whole cluster back until someone finishes it:
    -- no consumer passes it, whatever database it was prepared in. Older
    -- than the setting pgtenancy.prepared_stale_after (default 5 minutes,
    -- the default stall limit of the listener health check).
    RETURN QUERY
        SELECT 'warning'::text, 'prepared_transaction'::text, p.gid,
               format('prepared transaction %L (database %s, role %s) has been waiting for '
                      'COMMIT PREPARED or ROLLBACK PREPARED since %s (%s): it holds the snapshot '
                      'xmin back, so no consumer gets events committed after it began (%s held '
                      'back now) and VACUUM cannot clean up behind it',
                      p.gid, p.database, p.owner, date_trunc('second', p.prepared),
                      date_trunc('second', now() - p.prepared),
                      (SELECT count(*) FROM tenancy.events AS e
                        WHERE e.xid >= pg_snapshot_xmin(pg_current_snapshot()))),
               format('COMMIT PREPARED %L or ROLLBACK PREPARED %L, in database %s as %s or a '
                      'superuser (ask its transaction manager which one first)',
                      p.gid, p.gid, p.database, p.owner)
          FROM pg_prepared_xacts AS p
         WHERE p.prepared < now() - coalesce(nullif(current_setting('pgtenancy.prepared_stale_after',
                                                                    true), ''),
                                             '5 minutes')::interval;

    -- Defaults stored for an application role (ALTER ROLE ... SET, which the
    -- role can run on itself and PostgreSQL cannot forbid), for every role
    -- or for the database: every session starts with them again, RESET ALL
    -- included, so a pooled connection carries them into every tenant's
    -- requests. Errors: row_security (off: every tenant query fails),
    -- search_path, app.* and the kit's internal settings (a default
    -- app.tenant_id is a tenant without entry); warnings: settings that make
    -- requests fail or behave otherwise.
    RETURN QUERY
        SELECT CASE WHEN s.name IN ('row_security', 'search_path') OR starts_with(s.name, 'app.')
                         OR starts_with(s.name, 'pgtenancy.') THEN 'error' ELSE 'warning' END::text,
               'weakening_default_setting'::text,
               format('%s: %s', s.target, s.name),
               format('%s is set to %L by default for %s: every session starts with it, and '
                      'RESET ALL (pool reset) returns to it, so it reaches every tenant''s requests',
                      s.name, s.value, s.target),
               format('%s RESET %s', s.alter, s.name)
          FROM (SELECT lower(split_part(c.cfg, '=', 1)) AS name,
                       substr(c.cfg, strpos(c.cfg, '=') + 1) AS value,
                       CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN 'every role in every database'
                            WHEN d.setrole = 0 THEN format('database %I', current_database())
                            WHEN d.setdatabase = 0 THEN format('application role %I', pg_get_userbyid(d.setrole))
                            ELSE format('application role %I in database %I', pg_get_userbyid(d.setrole),
                                        current_database()) END AS target,
                       CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN 'ALTER ROLE ALL'
                            WHEN d.setrole = 0 THEN format('ALTER DATABASE %I', current_database())
                            WHEN d.setdatabase = 0 THEN format('ALTER ROLE %I', pg_get_userbyid(d.setrole))
                            ELSE format('ALTER ROLE %I IN DATABASE %I', pg_get_userbyid(d.setrole),
                                        current_database()) END AS alter
                  FROM pg_db_role_setting AS d
                 CROSS JOIN LATERAL unnest(d.setconfig) AS c(cfg)
                 WHERE d.setdatabase IN (0, (SELECT b.oid FROM pg_database AS b
                                              WHERE b.datname = current_database()))
                   AND (d.setrole = 0
                        OR EXISTS (SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r
                                       ON r.rolname = a.role_name WHERE r.oid = d.setrole))) AS s
         WHERE (s.name IN ('row_security', 'search_path', 'session_replication_role', 'statement_timeout',
                          'lock_timeout', 'idle_in_transaction_session_timeout', 'idle_session_timeout',
                          'default_transaction_isolation', 'default_transaction_read_only',
                          'default_transaction_deferrable', 'standard_conforming_strings',
                          'plpgsql.variable_conflict', 'transaction_timeout')
            OR starts_with(s.name, 'app.')
            -- The kit's settings, but for its configuration (the doctor's ages).
            OR (starts_with(s.name, 'pgtenancy.')
                AND s.name NOT IN ('pgtenancy.consumer_inactive_after', 'pgtenancy.consumer_stale_after',
                                   'pgtenancy.prepared_stale_after')))
           -- Values that weaken nothing.
           AND NOT (s.name, lower(trim(both '''"' FROM s.value))) IN (
                   ('row_security', 'on'), ('default_transaction_isolation', 'read committed'),
                   ('default_transaction_read_only', 'off'), ('default_transaction_deferrable', 'off'),
                   ('standard_conforming_strings', 'on'), ('session_replication_role', 'origin'),
                   ('statement_timeout', '0'), ('lock_timeout', '0'), ('transaction_timeout', '0'),
                   ('idle_in_transaction_session_timeout', '0'), ('idle_session_timeout', '0'),
                   ('plpgsql.variable_conflict', 'error'))
         ORDER BY 3;
END
$$;

COMMENT ON FUNCTION tenancy.check_registry() IS
    'Registry findings of the doctor, readable without access to the registry: tenant schemas '
    'missing (error), prefixed schemas not registered, tenants behind the latest migration, '
    'Citus tenants a migration left off the node recorded in tenant_placements (warnings), consumers unseen for consumer_inactive_after() with undelivered events '
    '(warning), consumers without a listener whose undelivered events are older than '
    'the setting pgtenancy.consumer_stale_after, default 15 minutes (warning), prepared '
    'transactions older than the setting pgtenancy.prepared_stale_after, default 5 minutes, '
    'which stall every consumer (warning, the fix names COMMIT/ROLLBACK PREPARED), shared schemas '
    'that roles other than their owner may create in (warning), the migration fence missing '
    '(warning), objects of tenant schemas owned by a role other than their owner at rest '
    '(tenancy.rest_owner; error), tenants whose objects have no owner role of their own (warning), '
    'members of the owner''s role (error for an application role, warning otherwise), defaults '
    'stored with ALTER ROLE/DATABASE ... SET for application roles, every role or this database '
    '(weakening_default_setting: error for row_security, search_path, app.* and pgtenancy.* but '
    'the *_after ages; '
    'warning for session_replication_role, the timeouts, default_transaction_isolation, '
    'default_transaction_read_only, default_transaction_deferrable, standard_conforming_strings, '
    'plpgsql.variable_conflict; the fix is ALTER ... RESET). Called by check_isolation().';

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
    v_body    text;
    v_table   text;
    v_child   regclass;
    v_dist    boolean;
    v_gcol    name;
    v_tmpl    text;
    v_tenant_r text;
    v_tenant_o text;
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
    -- The kit's own tables: tracking the outbox would write events about
    -- writing events, without end.
    IF starts_with(v_table, 'tenancy.') THEN
        RAISE EXCEPTION '% is a table of the kit', track_changes.table_name
            USING ERRCODE = 'PT016',
                  HINT = 'Lifecycle changes of the registry are events already.';
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

    -- The tenant of row r (and o): read at run time from guarded_tables, so
    -- a table guarded (or unguarded) after tracking is attributed right; the
    -- column guarded now is read directly (to_jsonb of every row costs a
    -- DELETE about twice its time), any other through jsonb.
    v_gcol := (SELECT g.tenant_column FROM tenancy.guarded_tables AS g
                WHERE g.table_name = track_changes.table_name);
    v_tmpl := CASE WHEN v_gcol IS NULL
        THEN 'CASE WHEN v_column IS NULL THEN v_tenant.id ELSE (to_jsonb(%1$s) ->> v_column)::uuid END'
        ELSE 'CASE WHEN v_column IS NULL THEN v_tenant.id WHEN v_column = %2$L THEN %1$s.%3$I '
             'ELSE (to_jsonb(%1$s) ->> v_column)::uuid END' END;
    v_tenant_r := format(v_tmpl, 'r', v_gcol, v_gcol);
    v_tenant_o := format(v_tmpl, 'o', v_gcol, v_gcol);

    -- The body is built first and then given to CREATE FUNCTION as one
    -- quoted literal (%L): a table or column name holding a dollar-quote
    -- tag (an attack run named a table "x$body$;...;SELECT $body$") can
    -- then never end the body early and run the rest as the owner.
    v_body := format($f$
        DECLARE
            v_tenant tenancy.tenants;
            v_column name;
        BEGIN
            -- Whose rows these are: the tenant whose schema holds the table,
            -- else, on a guarded shared table, each row's tenant column (what
            -- the policy's WITH CHECK enforced). Never a setting: RETURNING
            -- set_config('app.tenant_id', ...) changes it after the policy
            -- check and before this trigger runs. Rows are grouped by tenant;
            -- other tables' rows belong to no tenant.
            SELECT * INTO v_tenant FROM tenancy.tenants WHERE schema_name = TG_TABLE_SCHEMA;
            IF NOT FOUND THEN
                SELECT g.tenant_column INTO v_column FROM tenancy.guarded_tables AS g
                 WHERE g.table_name = TG_RELID;
            END IF;
            IF TG_OP = 'TRUNCATE' THEN
                -- A shared table's TRUNCATE empties every tenant's rows: no tenant.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                VALUES ('rows_changed', v_tenant.id, v_tenant.slug, v_tenant.schema_name,
                        v_tenant.status,
                        jsonb_build_object('table', %1$L, 'op', 'TRUNCATE', 'rows', '[]'::jsonb));
            ELSIF TG_OP = 'UPDATE' THEN
                -- Rows whose key and tenant are unchanged, with the columns that changed.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', s.tenant, t.slug, t.schema_name, t.status,
                       jsonb_build_object('table', %1$L, 'op', 'UPDATE', 'rows', jsonb_agg(s.row ORDER BY s.n))
                  FROM (SELECT c.*, (row_number() OVER (PARTITION BY c.tenant ORDER BY c.n) - 1) / 1000 AS chunk
                          FROM (SELECT %4$s AS tenant,
                                       jsonb_build_object(
                                           'key', jsonb_build_object(%2$s),
                                           'columns', (SELECT coalesce(jsonb_agg(e.key), '[]'::jsonb)
                                                         FROM jsonb_each(to_jsonb(r)) AS e
                                                        WHERE to_jsonb(o) -> e.key IS DISTINCT FROM e.value)
                                       ) AS row,
                                       row_number() OVER () AS n
                                  FROM new_rows AS r JOIN old_rows AS o
                                    ON %3$s AND %4$s IS NOT DISTINCT FROM %5$s) AS c) AS s
                  LEFT JOIN tenancy.tenants AS t ON t.id = s.tenant
                 GROUP BY s.tenant, s.chunk, t.id
                 ORDER BY min(s.n);
                -- An update that changed a key (or the tenant): the old key
                -- went from its tenant, the new one came to its tenant.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', s.tenant, t.slug, t.schema_name, t.status,
                       jsonb_build_object('table', %1$L, 'op', s.op, 'rows', jsonb_agg(s.row ORDER BY s.n))
                  FROM (SELECT 'DELETE' AS op, %4$s AS tenant,
                               jsonb_build_object('key', jsonb_build_object(%2$s)) AS row,
                               row_number() OVER () AS n
                          FROM old_rows AS r
                         WHERE NOT EXISTS (SELECT 1 FROM new_rows AS o
                                            WHERE %3$s AND %4$s IS NOT DISTINCT FROM %5$s)
                        UNION ALL
                        SELECT 'INSERT', %4$s, jsonb_build_object('key', jsonb_build_object(%2$s)),
                               row_number() OVER ()
                          FROM new_rows AS r
                         WHERE NOT EXISTS (SELECT 1 FROM old_rows AS o
                                            WHERE %3$s AND %4$s IS NOT DISTINCT FROM %5$s)) AS s
                  LEFT JOIN tenancy.tenants AS t ON t.id = s.tenant
                 GROUP BY s.op, s.tenant, t.id
                 ORDER BY s.op, min(s.n);
            ELSE
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', s.tenant, t.slug, t.schema_name, t.status,
                       jsonb_build_object('table', %1$L, 'op', TG_OP, 'rows', jsonb_agg(s.row ORDER BY s.n))
                  FROM (SELECT c.*, (row_number() OVER (PARTITION BY c.tenant ORDER BY c.n) - 1) / 1000 AS chunk
                          FROM (SELECT %4$s AS tenant,
                                       jsonb_build_object('key', jsonb_build_object(%2$s)) AS row,
                                       row_number() OVER () AS n
                                  FROM changed_rows AS r) AS c) AS s
                  LEFT JOIN tenancy.tenants AS t ON t.id = s.tenant
                 GROUP BY s.tenant, s.chunk, t.id
                 ORDER BY min(s.n);
            END IF;
            RETURN NULL;
        END
    $f$, v_table, v_key, v_join, v_tenant_r, v_tenant_o);
    EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
                   'SET search_path = pg_catalog, pg_temp AS %L', v_fn, v_body);
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
    'carrying the tenant (the one whose schema holds the table, or on a guarded shared table each '
    'row''s tenant column, one event per tenant; never a setting; none for other tables and for a '
    'shared table''s TRUNCATE), the table (schema.table), the operation, each row''s primary key and, '
    'for updates, the changed columns; an update that changes a key is reported as the old key '
    'deleted and the new one inserted. Partitions present now are tracked too. Statement-level '
    'triggers with transition tables; no NOTIFY. Idempotent. Raises PT016 when table_name is not a '
    'table, is a table of the tenancy schema, or has no primary key, or with Citus when it is '
    'distributed or in a tenant schema.';

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
    -- A role already recorded is updated (to itself), not skipped: strict
    -- mode's trigger on app_roles takes back at commit what the grants
    -- below give on materialized views and sequences, every time.
    INSERT INTO tenancy.app_roles (role_name) VALUES (grant_app_role.role)
        ON CONFLICT (role_name) DO UPDATE SET role_name = EXCLUDED.role_name;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', grant_app_role.role);
    EXECUTE format('GRANT SELECT ON TABLE tenancy.guarded_tables, tenancy.tenant_directory TO %I',
                   grant_app_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.enter_tenant(text), '
                   'tenancy.current_tenant_id(), '
                   'tenancy.current_tenant(), tenancy.require_tenant_id(), tenancy.version(), '
                   'tenancy.check_isolation(), tenancy.check_registry() TO %I', grant_app_role.role);
    EXECUTE format('GRANT EXECUTE ON PROCEDURE tenancy.enter(text, text), tenancy.enter_known(text, text) TO %I',
                   grant_app_role.role);
    -- No outbox function: the application role could pre-claim events
    -- (inbox_claim) or move cursors; receivers run as listener roles.
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.tenant_info(), tenancy.resolve_domain(text) TO %I',
                   grant_app_role.role);
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
    'Let role role use tenants: enter them, read the public fields of the entered tenant '
    '(tenant_info) and resolve host names (resolve_domain), and read and write every tenant '
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
    -- For `pgtenancy events status` and `events health` run as the listener.
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.consumer_status(), tenancy.outbox_health(), '
                   'tenancy.start_consumer(text, text) TO %I', grant_listener_role.role);
END
$$;

COMMENT ON FUNCTION tenancy.grant_listener_role(name) IS
    'Let role role run outbox consumers (pgtenancy listen): register a consumer, read events, '
    'move its cursor (start_consumer: from now or the oldest event), read consumer_status and '
    'outbox_health. Raises 42704 when the role does '
    'not exist.';

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

-- Runs one migration's SQL as the migrator. SECURITY DEFINER owned by the
-- migrator role (re-owned below), so the server refuses SET ROLE and SET
-- SESSION AUTHORIZATION inside; called only by apply_migrations.
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

-- issue 15: rename, clone, resource limits and size accounting.
CREATE TABLE IF NOT EXISTS tenancy.limit_maxima (
    setting    text        NOT NULL,
    maximum    text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT limit_maxima_pkey PRIMARY KEY (setting),
    CONSTRAINT limit_maxima_setting_check CHECK (setting IN ('work_mem'))
);

COMMENT ON TABLE tenancy.limit_maxima IS
    'Largest value a tenant limit may set, per setting (work_mem), for the whole database.';

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

CREATE OR REPLACE FUNCTION tenancy.rename_tenant(slug text, new_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    tenancy.tenants := tenancy.lock_tenant(rename_tenant.slug);
    v_new    text := tenancy.validate_slug(rename_tenant.new_slug);
    v_schema text;
    v_old_schema text := v_row.schema_name;
    v_table  regclass;
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(rename_tenant.slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_new = v_row.slug THEN
        RETURN v_row;
    END IF;
    -- The same lock as creation (a row of tenancy.slug_locks, which the
    -- application role cannot take; it could hold an advisory lock): a
    -- concurrent create of new_slug waits.
    INSERT INTO tenancy.slug_locks AS l (slug) VALUES (v_new)
        ON CONFLICT ON CONSTRAINT slug_locks_pkey DO UPDATE SET slug = l.slug;
    IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.slug = v_new) THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(v_new)
            USING ERRCODE = 'PT002';
    END IF;
    IF v_row.schema_name IS NOT NULL THEN
        v_schema := tenancy.schema_prefix() || v_new;
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            RAISE EXCEPTION 'schema % already exists but is not a registered tenant', quote_ident(v_schema)
                USING ERRCODE = 'PT002',
                      HINT = 'Rename or drop that schema, or choose another slug.';
        END IF;
        IF to_regnamespace(quote_ident(v_row.schema_name)) IS NULL THEN
            RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_row.schema_name),
                quote_literal(v_row.slug)
                USING ERRCODE = 'PT007';
        END IF;
        -- Wait for the transactions using the tenant's tables (bounded by the
        -- caller's lock_timeout): none of them finds its tables gone midway.
        -- LOCK TABLE takes tables and views only (materialized views and
        -- foreign tables raise 42809).
        FOR v_table IN
            SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = to_regnamespace(quote_ident(v_row.schema_name))
               AND c.relkind IN ('r', 'p', 'v')
             ORDER BY c.oid
        LOOP
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_table);
        END LOOP;
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', v_row.schema_name, v_schema);
        -- The owner role's name follows the schema's.
        IF EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = tenancy.tenant_role(v_old_schema)) THEN
            PERFORM tenancy.ensure_tenant_role(v_schema);
            EXECUTE format('REASSIGN OWNED BY %I TO %I', tenancy.tenant_role(v_old_schema),
                           tenancy.tenant_role(v_schema));
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', v_schema, tenancy.tenant_role(v_old_schema));
            PERFORM tenancy.drop_tenant_role(v_old_schema);
        END IF;
    END IF;
    -- The registry trigger lets slug and schema_name change for this row only.
    PERFORM set_config('pgtenancy.renaming', v_row.id::text, true);
    UPDATE tenancy.tenants AS t SET slug = v_new, schema_name = v_schema
     WHERE t.id = v_row.id RETURNING * INTO v_row;
    PERFORM set_config('pgtenancy.renaming', '', true);
    -- Old slugs of this tenant now point to the new one; the new slug is no
    -- longer an old name of anybody.
    DELETE FROM tenancy.tenant_renames AS r WHERE r.old_slug = v_new;
    UPDATE tenancy.tenant_renames AS r SET new_slug = v_new WHERE r.tenant_id = v_row.id;
    INSERT INTO tenancy.tenant_renames (old_slug, tenant_id, new_slug)
    VALUES (rename_tenant.slug, v_row.id, v_new)
    ON CONFLICT (old_slug) DO UPDATE
        SET tenant_id = EXCLUDED.tenant_id, new_slug = EXCLUDED.new_slug, renamed_at = now();
    PERFORM tenancy.emit_event('tenant_renamed', v_row,
        jsonb_build_object('old_slug', rename_tenant.slug, 'old_schema', v_old_schema,
                           'new_slug', v_new, 'new_schema', v_schema));
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.rename_tenant(text, text) IS
    'Give tenant slug the slug new_slug and, for a schema tenant, the schema '
    'schema_prefix()||new_slug, atomically: it waits for the transactions using the tenant''s '
    'tables (ACCESS EXCLUSIVE locks, bounded by lock_timeout). Entering under the old slug then '
    'fails with PT020 naming the new slug (tenancy.tenant_renames). Emits tenant_renamed '
    '(payload old_slug, old_schema, new_slug, new_schema). A no-op when new_slug is the slug. '
    'Raises PT003 (not found), PT005 (deleted), PT001 (invalid new slug), PT002 (new slug or '
    'schema taken), PT007 (schema missing).';

REVOKE ALL ON FUNCTION tenancy.rename_tenant(text, text) FROM PUBLIC;

-- Clone ----------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.fk_order(p_tables regclass[])
    RETURNS regclass[]
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_done regclass[] := '{}'::regclass[];
    v_left regclass[] := coalesce(p_tables, '{}'::regclass[]);
    v_next regclass[];
BEGIN
    WHILE cardinality(v_left) > 0 LOOP
        -- Tables whose foreign keys (to the others still left) are all satisfied;
        -- a self-reference is checked at the end of the one INSERT of the table.
        SELECT coalesce(array_agg(t.rel ORDER BY t.rel::text), '{}'::regclass[]) INTO v_next
          FROM unnest(v_left) AS t(rel)
         WHERE NOT EXISTS (SELECT 1 FROM pg_constraint AS c
                            WHERE c.contype = 'f' AND c.conrelid = t.rel
                              AND c.confrelid <> t.rel AND c.confrelid = ANY (v_left));
        IF cardinality(v_next) = 0 THEN
            RAISE EXCEPTION 'foreign keys between % form a cycle', v_left::text
                USING ERRCODE = 'PT022',
                      HINT = 'Cloning copies table by table, referenced tables first.';
        END IF;
        v_done := v_done || v_next;
        v_left := ARRAY(SELECT t.rel FROM unnest(v_left) AS t(rel) WHERE t.rel <> ALL (v_next));
    END LOOP;
    RETURN v_done;
END
$$;

COMMENT ON FUNCTION tenancy.fk_order(regclass[]) IS
    'The tables p_tables ordered so that every table comes after the tables its foreign keys '
    'reference (self-references aside). Raises PT022 when foreign keys form a cycle. Internal.';

CREATE OR REPLACE FUNCTION tenancy.copy_columns(p_table regclass)
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
      FROM pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
$$;

COMMENT ON FUNCTION tenancy.copy_columns(regclass) IS
    'Comma-separated quoted names of the columns of p_table an INSERT may write (not dropped, '
    'not generated), in column order. Internal.';

CREATE OR REPLACE FUNCTION tenancy.clone_schema_data(p_source text, p_target text)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tables regclass[];
    v_table  regclass;
    v_dest   regclass;
    v_cols   text;
    v_count  bigint;
    v_total  bigint := 0::bigint;
    v_seq    record;
    v_from   text;
    v_forced boolean;
    v_role   name := tenancy.rest_owner(p_target);
    v_owner  name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
BEGIN
    SELECT coalesce(array_agg(c.oid::regclass), '{}'::regclass[]) INTO v_tables
      FROM pg_class AS c
     WHERE c.relnamespace = to_regnamespace(quote_ident(p_source))
       AND c.relkind IN ('r', 'p') AND NOT c.relispartition;
    -- In READ COMMITTED every statement sees a new snapshot: hold the
    -- source's writers back so the copies of all tables agree.
    IF current_setting('transaction_isolation') = 'read committed' THEN
        FOREACH v_table IN ARRAY v_tables LOOP
            EXECUTE format('LOCK TABLE %s IN SHARE MODE', v_table);
        END LOOP;
    END IF;
    IF v_role <> v_owner THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', p_source, v_role);
    END IF;
    FOREACH v_table IN ARRAY tenancy.fk_order(v_tables) LOOP
        SELECT d.oid::regclass INTO v_dest
          FROM pg_class AS s JOIN pg_class AS d ON d.relname = s.relname
         WHERE s.oid = v_table AND d.relnamespace = to_regnamespace(quote_ident(p_target));
        IF v_dest IS NULL THEN
            RAISE EXCEPTION 'table % has no counterpart in the clone: the migrations do not create it',
                v_table
                USING ERRCODE = 'PT022',
                      HINT = 'A clone gets its schema from the registered migrations; create tables of '
                             'tenant schemas through migrations only.';
        END IF;
        v_cols := tenancy.copy_columns(v_dest);
        -- Triggers of the application (audit, change tracking) do not see
        -- the copy: the rows are not new, they are the source's.
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER USER', v_dest);
        -- FORCE ROW LEVEL SECURITY (strict mode's, or a migration's own)
        -- binds the clone's owner, whose copy runs with row_security off
        -- (an error, not fewer rows): lifted for the copy, put back after.
        v_forced := (SELECT c.relforcerowsecurity FROM pg_class AS c WHERE c.oid = v_dest);
        IF v_forced THEN
            EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', v_dest);
        END IF;
        -- The rows are written as the clone's own role (its check
        -- constraints, index expressions and generated columns run as it,
        -- not as the owner), which may read this source table for the copy
        -- only; a table under row security goes through a copy the owner
        -- reads in full.
        v_from := v_table::text;
        IF (SELECT c.relrowsecurity FROM pg_class AS c WHERE c.oid = v_table)
           AND v_role <> v_owner THEN
            v_from := format('pg_temp.%I', 'pgtenancy_clone_' || v_table::oid);
            EXECUTE format('CREATE TEMPORARY TABLE %s ON COMMIT DROP AS SELECT %s FROM %s',
                           v_from, v_cols, v_table);
            EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_from, v_role);
        ELSIF v_role <> v_owner THEN
            EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_table, v_role);
        END IF;
        v_count := tenancy.run_as_rest_owner(p_target,
            format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s',
                   v_dest, v_cols, v_cols, v_from));
        IF v_from <> v_table::text THEN
            EXECUTE format('DROP TABLE %s', v_from);
        ELSIF v_role <> v_owner THEN
            EXECUTE format('REVOKE SELECT ON TABLE %s FROM %I', v_table, v_role);
        END IF;
        IF v_forced THEN
            EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', v_dest);
        END IF;
        EXECUTE format('ALTER TABLE %s ENABLE TRIGGER USER', v_dest);
        v_total := v_total + v_count;
    END LOOP;
    IF v_role <> v_owner THEN
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM %I', p_source, v_role);
    END IF;
    -- Sequences (serial and identity ones too) continue from the source's values.
    FOR v_seq IN
        SELECT c.relname FROM pg_class AS c JOIN pg_class AS d ON d.relname = c.relname
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_source)) AND c.relkind = 'S'
           AND d.relnamespace = to_regnamespace(quote_ident(p_target)) AND d.relkind = 'S'
    LOOP
        EXECUTE format('SELECT setval(%L, s.last_value, s.is_called) FROM %I.%I AS s',
                       format('%I.%I', p_target, v_seq.relname), p_source, v_seq.relname);
    END LOOP;
    FOR v_seq IN
        SELECT c.relname FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_source)) AND c.relkind = 'm'
           AND c.relispopulated
    LOOP
        EXECUTE format('REFRESH MATERIALIZED VIEW %I.%I', p_target, v_seq.relname);
    END LOOP;
    RETURN v_total;
END
$$;

COMMENT ON FUNCTION tenancy.clone_schema_data(text, text) IS
    'Copy every table of schema p_source into the table of the same name in p_target, referenced '
    'tables first, with user triggers disabled and FORCE ROW LEVEL SECURITY lifted for the copy, '
    'written as p_target''s owner at rest '
    '(tenancy.run_as_rest_owner), which may read the source for the copy only; set every sequence of p_target to its '
    'counterpart''s value; refresh populated materialized views. Returns the rows copied. '
    'Raises PT022 (a table without counterpart, a foreign-key cycle). Internal.';

REVOKE ALL ON FUNCTION tenancy.clone_schema_data(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.clone_shared_rows(p_source uuid, p_target uuid)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tables regclass[];
    v_table  regclass;
    v_column name;
    v_cols   text;
    v_count  bigint;
    v_total  bigint := 0::bigint;
    v_maps   jsonb := '{}'::jsonb;
    v_own    jsonb;
    v_n      integer := 0;
    v_tmp    text;
    v_map    text;
    v_attr   record;
    v_fk     record;
    v_before text := current_setting('app.tenant_id', true);
BEGIN
    PERFORM tenancy.forget_dropped_tables();
    SELECT coalesce(array_agg(g.table_name), '{}'::regclass[]) INTO v_tables FROM tenancy.guarded_tables AS g;
    FOREACH v_table IN ARRAY tenancy.fk_order(v_tables) LOOP
        v_n := v_n + 1;
        v_column := (SELECT g.tenant_column FROM tenancy.guarded_tables AS g WHERE g.table_name = v_table);
        v_tmp := format('pgtenancy_clone_%s', v_n);
        -- The policy (FORCE ROW LEVEL SECURITY binds the owner too) shows the
        -- source's rows to the source only and takes new rows from the clone
        -- only: read as the source into a temporary table, write as the clone.
        PERFORM set_config('app.tenant_id', p_source::text, true);
        EXECUTE format('CREATE TEMPORARY TABLE %I ON COMMIT DROP AS SELECT * FROM %s WHERE %I = $1',
                       v_tmp, v_table, v_column)
            USING p_source;
        -- Columns drawn from sequences get new values (the source's are
        -- taken): a map old -> new per column, then foreign keys follow the
        -- maps (self-references too), then the columns themselves.
        v_own := '{}';
        FOR v_attr IN
            SELECT a.attnum, a.attname, pg_get_serial_sequence(v_table::text, a.attname) AS seq
              FROM pg_attribute AS a
             WHERE a.attrelid = v_table AND a.attnum > 0 AND NOT a.attisdropped
               AND pg_get_serial_sequence(v_table::text, a.attname) IS NOT NULL
        LOOP
            v_map := format('%s_map_%s', v_tmp, v_attr.attnum);
            EXECUTE format('CREATE TEMPORARY TABLE %I ON COMMIT DROP AS '
                           'SELECT DISTINCT t.%I AS old, NULL::bigint AS new FROM %I AS t',
                           v_map, v_attr.attname, v_tmp);
            EXECUTE format('UPDATE %I SET new = nextval(%L)', v_map, v_attr.seq);
            v_maps := v_maps || jsonb_build_object(format('%s:%s', v_table::oid, v_attr.attnum), v_map);
            v_own := v_own || jsonb_build_object(v_attr.attname, v_map);
        END LOOP;
        FOR v_fk IN
            SELECT c.confrelid, a.attname, k.refcol
              FROM pg_constraint AS c
             CROSS JOIN LATERAL unnest(c.conkey, c.confkey) AS k(col, refcol)
              JOIN pg_attribute AS a ON a.attrelid = v_table AND a.attnum = k.col
             WHERE c.contype = 'f' AND c.conrelid = v_table
        LOOP
            v_map := v_maps ->> format('%s:%s', v_fk.confrelid, v_fk.refcol);
            IF v_map IS NOT NULL AND NOT v_own ? v_fk.attname THEN
                EXECUTE format('UPDATE %I AS t SET %I = m.new FROM %I AS m WHERE t.%I = m.old',
                               v_tmp, v_fk.attname, v_map, v_fk.attname);
            END IF;
        END LOOP;
        FOR v_attr IN SELECT e.key AS attname, e.value AS map FROM jsonb_each_text(v_own) AS e LOOP
            EXECUTE format('UPDATE %I AS t SET %I = m.new FROM %I AS m WHERE t.%I = m.old',
                           v_tmp, v_attr.attname, v_attr.map, v_attr.attname);
        END LOOP;
        EXECUTE format('UPDATE %I SET %I = $1', v_tmp, v_column) USING p_target;
        PERFORM set_config('app.tenant_id', p_target::text, true);
        v_cols := tenancy.copy_columns(v_table);
        EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %I',
                       v_table, v_cols, v_cols, v_tmp);
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_total := v_total + v_count;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(v_before, ''), true);
    RETURN v_total;
END
$$;

COMMENT ON FUNCTION tenancy.clone_shared_rows(uuid, uuid) IS
    'Copy the rows of tenant p_source in every guarded table to tenant p_target, referenced '
    'tables first; columns drawn from a sequence (serial, identity) get new values and foreign '
    'keys between guarded tables follow them. Returns the rows copied. Internal.';

REVOKE ALL ON FUNCTION tenancy.clone_shared_rows(uuid, uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.clone_tenant(source text, new_slug text, metadata jsonb DEFAULT NULL)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_src   tenancy.tenants := tenancy.lock_tenant(clone_tenant.source);
    v_row   tenancy.tenants;
BEGIN
    IF v_src.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(clone_tenant.source)
            USING ERRCODE = 'PT005';
    END IF;
    IF clone_tenant.metadata IS NOT NULL AND jsonb_typeof(clone_tenant.metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %', jsonb_typeof(clone_tenant.metadata)
            USING ERRCODE = '22023';
    END IF;
    IF v_src.isolation = 'schema'
       AND to_regnamespace(quote_ident(v_src.schema_name)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_src.schema_name),
            quote_literal(v_src.slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- Creation provisions the clone as any tenant (schema, migrations run
    -- confined, grants); tenant_created says where it came from.
    PERFORM set_config('pgtenancy.created_payload',
                       jsonb_build_object('cloned_from', jsonb_build_object(
                           'slug', v_src.slug, 'id', v_src.id))::text, true);
    INSERT INTO tenancy.tenants (slug, metadata, isolation)
    VALUES (clone_tenant.new_slug, coalesce(clone_tenant.metadata, v_src.metadata), v_src.isolation)
    RETURNING * INTO v_row;
    PERFORM set_config('pgtenancy.created_payload', '', true);
    IF v_row.migration_version IS DISTINCT FROM v_src.migration_version THEN
        RAISE EXCEPTION 'tenant % is at migration %, a new tenant at %', quote_literal(v_src.slug),
            coalesce(v_src.migration_version, 'none'), coalesce(v_row.migration_version, 'none')
            USING ERRCODE = 'PT022',
                  HINT = 'Migrate the source tenant first (pgtenancy migrate). Nothing was created.';
    END IF;
    IF v_src.isolation = 'schema' THEN
        PERFORM tenancy.clone_schema_data(v_src.schema_name, v_row.schema_name);
    ELSE
        PERFORM tenancy.clone_shared_rows(v_src.id, v_row.id);
    END IF;
    RETURN v_row;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'cannot clone tenant %: %', quote_literal(clone_tenant.source), SQLERRM
            USING ERRCODE = 'PT022',
                  HINT = 'A unique key of a shared table does not include the tenant column and is '
                         'not drawn from a sequence. Nothing was created.';
END
$$;

COMMENT ON FUNCTION tenancy.clone_tenant(text, text, jsonb) IS
    'Create tenant new_slug as a copy of tenant source, in the caller''s transaction: the same '
    'isolation and metadata (unless metadata is given), its own id; a schema tenant gets its '
    'schema from the registered migrations and then every table''s rows (referenced tables '
    'first, user triggers off) and sequences at the source''s values; a shared tenant gets a '
    'copy of its rows of every guarded table (sequence-drawn keys renumbered). Emits '
    'tenant_created with payload cloned_from {slug, id}. In READ COMMITTED the source''s tables '
    'are locked in SHARE mode for the copy (writers wait); in REPEATABLE READ the copy is of the '
    'transaction''s snapshot. Raises PT003, PT005, PT007, PT001/PT002 (new slug), PT022 (source '
    'not at the migration a new tenant gets, a table the migrations do not create, a '
    'foreign-key cycle, a unique key the copy would break); nothing is created then.';

REVOKE ALL ON FUNCTION tenancy.clone_tenant(text, text, jsonb) FROM PUBLIC;

-- Resource limits ------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.max_work_mem()
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT m.maximum FROM tenancy.limit_maxima AS m WHERE m.setting = 'work_mem'),
                    (SELECT s.reset_val || coalesce(s.unit, '') FROM pg_settings AS s
                      WHERE s.name = 'work_mem'))
$$;

COMMENT ON FUNCTION tenancy.max_work_mem() IS
    'Largest work_mem a tenant limit may set: the maximum set with '
    'tenancy.set_max_work_mem, else the database''s default work_mem (so without one, '
    'limits can only lower work_mem).';

CREATE OR REPLACE FUNCTION tenancy.set_max_work_mem(maximum text)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_value text;
BEGIN
    IF set_max_work_mem.maximum IS NULL THEN
        DELETE FROM tenancy.limit_maxima AS m WHERE m.setting = 'work_mem';
        RETURN tenancy.max_work_mem();
    END IF;
    -- Parsed and normalized by the server, in a subtransaction always undone.
    BEGIN
        PERFORM set_config('work_mem', set_max_work_mem.maximum, true);
        v_value := current_setting('work_mem');
        RAISE EXCEPTION 'checked' USING ERRCODE = 'PTZ00';
    EXCEPTION
        WHEN SQLSTATE 'PTZ00' THEN
            NULL;
        WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid work_mem maximum %: %', quote_literal(set_max_work_mem.maximum),
                SQLERRM
                USING ERRCODE = 'PT021';
    END;
    INSERT INTO tenancy.limit_maxima AS m (setting, maximum) VALUES ('work_mem', v_value)
    ON CONFLICT (setting) DO UPDATE SET maximum = EXCLUDED.maximum, updated_at = now();
    RETURN v_value;
END
$$;

COMMENT ON FUNCTION tenancy.set_max_work_mem(text) IS
    'Set the largest work_mem a tenant limit may set in this database (NULL: back to the '
    'database''s default work_mem); returns the maximum now in force. Limits set earlier are '
    'not changed. Raises PT021 for a value the server refuses.';

REVOKE ALL ON FUNCTION tenancy.set_max_work_mem(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.set_tenant_limits(
    slug                                text,
    statement_timeout                   text DEFAULT NULL,
    lock_timeout                        text DEFAULT NULL,
    idle_in_transaction_session_timeout text DEFAULT NULL,
    work_mem                            text DEFAULT NULL
)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    tenancy.tenants := tenancy.lock_tenant(set_tenant_limits.slug);
    v_given  text[] := ARRAY[
        'statement_timeout', set_tenant_limits.statement_timeout,
        'lock_timeout', set_tenant_limits.lock_timeout,
        'idle_in_transaction_session_timeout', set_tenant_limits.idle_in_transaction_session_timeout,
        'work_mem', set_tenant_limits.work_mem];
    v_limits text[] := '{}'::text[];
    v_bad    text;
    v_max    bigint;
    v_mem    bigint;
    v_max_text text := tenancy.max_work_mem();
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(set_tenant_limits.slug)
            USING ERRCODE = 'PT005';
    END IF;
    -- Try every value with set_config in a subtransaction that is always
    -- undone: the server parses and normalizes it ('0.05s' -> '50ms').
    BEGIN
        FOR v_i IN 1 .. cardinality(v_given) BY 2 LOOP
            CONTINUE WHEN v_given[v_i + 1] IS NULL;
            v_bad := format('%s = %s', v_given[v_i], quote_literal(v_given[v_i + 1]));
            PERFORM set_config(v_given[v_i], v_given[v_i + 1], true);
            v_limits := v_limits || ARRAY[v_given[v_i], current_setting(v_given[v_i])];
            IF v_given[v_i] = 'work_mem' THEN
                v_mem := (SELECT s.setting::bigint FROM pg_settings AS s WHERE s.name = 'work_mem');
                v_bad := format('maximum work_mem = %s', quote_literal(v_max_text));
                PERFORM set_config('work_mem', v_max_text, true);
                v_max := (SELECT s.setting::bigint FROM pg_settings AS s WHERE s.name = 'work_mem');
            END IF;
        END LOOP;
        RAISE EXCEPTION 'limits checked' USING ERRCODE = 'PTZ00';
    EXCEPTION
        WHEN SQLSTATE 'PTZ00' THEN
            NULL;
        WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid tenant limit %: %', v_bad, SQLERRM
                USING ERRCODE = 'PT021',
                      HINT = 'Timeouts take units (50ms, 2s, 1min), work_mem sizes (4MB). Nothing was changed.';
    END;
    IF v_mem IS NOT NULL AND v_mem > v_max THEN
        RAISE EXCEPTION 'invalid tenant limit work_mem = %: above the maximum %',
            quote_literal(set_tenant_limits.work_mem), v_max_text
            USING ERRCODE = 'PT021',
                  HINT = 'The kit''s owner raises the maximum with tenancy.set_max_work_mem(...). '
                         'Nothing was changed.';
    END IF;
    UPDATE tenancy.tenants AS t SET limits = nullif(v_limits, '{}')
     WHERE t.id = v_row.id RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.set_tenant_limits(text, text, text, text, text) IS
    'Set the resource limits of tenant slug, applied transaction-locally by enter_tenant: '
    'statement_timeout, lock_timeout, idle_in_transaction_session_timeout, work_mem (text with '
    'units, as SET takes them). The call gives the whole set: a NULL (or omitted) limit is '
    'cleared, so the tenant runs with the session''s setting. work_mem may not exceed '
    'tenancy.max_work_mem(). Stored normalized in tenancy.tenants.limits as (setting, value) '
    'pairs. Raises PT003 (not found), PT005 (deleted), PT021 (a value the server refuses, '
    'work_mem above the maximum); nothing is changed then.';

REVOKE ALL ON FUNCTION tenancy.set_tenant_limits(text, text, text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.apply_tenant_limits(limits text[])
    RETURNS void
    LANGUAGE sql
    VOLATILE
AS $$
    SELECT pg_catalog.count(pg_catalog.set_config(apply_tenant_limits.limits[i],
                                       apply_tenant_limits.limits[i OPERATOR(pg_catalog.+) 1], true))::integer
      FROM pg_catalog.generate_series(1, pg_catalog.cardinality(apply_tenant_limits.limits), 2) AS i;
$$;

COMMENT ON FUNCTION tenancy.apply_tenant_limits(text[]) IS
    'Apply the (setting, value) pairs of limits (tenancy.tenants.limits) transaction-locally, '
    'as enter_tenant does when the tenant has limits. No SET clause, so the settings outlive '
    'the call until the end of the transaction.';

-- Size accounting ------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.tenant_sizes()
    RETURNS TABLE (slug text, bytes bigint, "rows" bigint)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_guard  record;
    v_tenant uuid;
    v_count  bigint;
    v_ids    uuid[] := '{}'::uuid[];
    v_bytes  numeric[] := '{}'::numeric[];
    v_rows   bigint[] := '{}'::bigint[];
    v_before text := current_setting('app.tenant_id', true);
BEGIN
    -- Shared tenants: rows counted through the tenant column's index, under
    -- the tenant's own policy (FORCE ROW LEVEL SECURITY binds the owner
    -- too); bytes are the tenant's share of the table's rows times the
    -- table's total size.
    PERFORM tenancy.forget_dropped_tables();
    FOR v_guard IN
        SELECT g.table_name, g.tenant_column, pg_total_relation_size(g.table_name) AS total,
               greatest(c.reltuples, 0::real)::numeric AS tuples
          FROM tenancy.guarded_tables AS g JOIN pg_class AS c ON c.oid = g.table_name::oid
    LOOP
        FOR v_tenant IN SELECT t.id FROM tenancy.tenants AS t WHERE t.isolation = 'shared' LOOP
            PERFORM set_config('app.tenant_id', v_tenant::text, true);
            EXECUTE format('SELECT count(*) FROM %s WHERE %I = $1', v_guard.table_name,
                           v_guard.tenant_column)
                INTO v_count USING v_tenant;
            IF v_count > 0 THEN
                v_ids := v_ids || v_tenant;
                v_rows := v_rows || v_count;
                v_bytes := v_bytes || (v_guard.total * v_count / greatest(v_guard.tuples, v_count::numeric));
            END IF;
        END LOOP;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(v_before, ''), true);
    -- Schema tenants: what the catalog says of every table of the schema, its
    -- indexes and TOAST included; rows are the planner's estimates.
    RETURN QUERY
        WITH schema_sizes AS (
            SELECT t.id, coalesce(sum(pg_total_relation_size(c.oid)), 0) AS bytes,
                   coalesce(sum(greatest(c.reltuples, 0::real)), 0) AS row_count
              FROM tenancy.tenants AS t
              JOIN pg_namespace AS n ON n.nspname = t.schema_name
              JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
             WHERE t.isolation = 'schema'
             GROUP BY t.id
        ), shared_sizes AS (
            SELECT u.id, sum(u.bytes) AS bytes, sum(u.row_count) AS row_count
              FROM unnest(v_ids, v_bytes, v_rows) AS u(id, bytes, row_count)
             GROUP BY u.id
        )
        SELECT t.slug, coalesce(s.bytes, h.bytes, 0)::bigint,
               coalesce(s.row_count, h.row_count, 0)::bigint
          FROM tenancy.tenants AS t
          LEFT JOIN schema_sizes AS s ON s.id = t.id
          LEFT JOIN shared_sizes AS h ON h.id = t.id
         ORDER BY t.slug;
END
$$;

COMMENT ON FUNCTION tenancy.tenant_sizes() IS
    'Size of every tenant: slug, bytes, rows. A schema tenant: pg_total_relation_size of every '
    'table and materialized view of its schema (indexes and TOAST included), rows from '
    'pg_class.reltuples (estimates, as fresh as the last VACUUM or ANALYZE; 0 for a table '
    'never analyzed). A shared tenant: its rows of every guarded table, counted, and bytes '
    'estimated as its share of rows times the table''s total size (rows of equal width '
    'assumed).';

REVOKE ALL ON FUNCTION tenancy.tenant_sizes() FROM PUBLIC;

-- The extension's configuration table of issue 15: pg_dump keeps its rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.tenant_renames', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.limit_maxima', '');
    END IF;
END
$$;

-- Host names of tenants and tenant_info() (issue 12) -------------------------

CREATE TABLE IF NOT EXISTS tenancy.tenant_domains (
    domain     text        NOT NULL,
    tenant_id  uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT tenant_domains_pkey PRIMARY KEY (domain),
    CONSTRAINT tenant_domains_domain_check CHECK (
        pg_catalog.length(domain) <= 253
        AND domain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$')
);

CREATE INDEX IF NOT EXISTS tenant_domains_tenant_id_idx ON tenancy.tenant_domains (tenant_id);

-- No foreign key to tenancy.tenants: it would change how TRUNCATE of the
-- registry is refused. A row whose tenant is gone (drop_tenant with
-- destroy_data) matches nothing, and add_tenant_domain reuses its name.
COMMENT ON TABLE tenancy.tenant_domains IS
    'Host names of tenants (lowercase, no trailing dot, no port): what tenancy.resolve_domain() '
    'and the pgtenancy.fastapi subdomain resolver look up. Rows of removed tenants are ignored.';

CREATE OR REPLACE FUNCTION tenancy.normalize_domain(domain text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.rtrim(pg_catalog.lower(pg_catalog.btrim(normalize_domain.domain)), '.')
$$;

COMMENT ON FUNCTION tenancy.normalize_domain(text) IS
    'Host name domain as tenant_domains stores it: trimmed, lowercase, without trailing dots. '
    'NULL for NULL.';

CREATE OR REPLACE FUNCTION tenancy.add_tenant_domain(slug text, domain text)
    RETURNS tenancy.tenant_domains
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_domain text := tenancy.normalize_domain(add_tenant_domain.domain);
    v_tenant tenancy.tenants := tenancy.lock_tenant(add_tenant_domain.slug);
    v_row    tenancy.tenant_domains;
    v_owner  text;
BEGIN
    IF v_tenant.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(add_tenant_domain.slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_domain IS NULL OR length(v_domain) > 253
       OR v_domain !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$' THEN
        RAISE EXCEPTION 'invalid host name %', coalesce(quote_literal(add_tenant_domain.domain), 'NULL')
            USING ERRCODE = 'PT030',
                  HINT = 'A host name is dot-separated labels of letters, digits and inner '
                         'hyphens, 63 characters each, 253 in all, without port or scheme.';
    END IF;
    SELECT t.slug INTO v_owner
      FROM tenancy.tenant_domains AS d
      JOIN tenancy.tenants AS t ON t.id = d.tenant_id
     WHERE d.domain = v_domain;
    IF FOUND AND v_owner <> v_tenant.slug THEN
        RAISE EXCEPTION 'host name % belongs to tenant %', quote_literal(v_domain), quote_literal(v_owner)
            USING ERRCODE = 'PT031',
                  HINT = 'Remove it first: tenancy.remove_tenant_domain(domain).';
    END IF;
    -- A name left by a removed tenant is taken over.
    INSERT INTO tenancy.tenant_domains AS d (domain, tenant_id) VALUES (v_domain, v_tenant.id)
    ON CONFLICT ON CONSTRAINT tenant_domains_pkey DO UPDATE
       SET tenant_id = excluded.tenant_id, created_at = now()
     WHERE NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.id = d.tenant_id);
    SELECT * INTO v_row FROM tenancy.tenant_domains AS d WHERE d.domain = v_domain;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.add_tenant_domain(text, text) IS
    'Map host name domain (normalized by normalize_domain) to tenant slug; returns the row. '
    'Idempotent for the same tenant. Raises PT003 (no such tenant), PT005 (deleted tenant), '
    'PT030 (invalid host name), PT031 (the name belongs to another tenant).';

REVOKE ALL ON FUNCTION tenancy.add_tenant_domain(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.remove_tenant_domain(domain text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM tenancy.tenant_domains AS d
         WHERE d.domain = tenancy.normalize_domain(remove_tenant_domain.domain)
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

COMMENT ON FUNCTION tenancy.remove_tenant_domain(text) IS
    'Forget host name domain; true when it was mapped.';

REVOKE ALL ON FUNCTION tenancy.remove_tenant_domain(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.resolve_domain(domain text)
    RETURNS text
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.slug
      FROM tenancy.tenant_domains AS d
      JOIN tenancy.tenants AS t ON t.id = d.tenant_id
     WHERE d.domain = tenancy.normalize_domain(resolve_domain.domain)
$$;

COMMENT ON FUNCTION tenancy.resolve_domain(text) IS
    'Slug of the tenant host name domain is mapped to (whatever its status: entering it says '
    'whether it may be used), NULL when none. Granted by grant_app_role.';

REVOKE ALL ON FUNCTION tenancy.resolve_domain(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.tenant_info()
    RETURNS TABLE (id uuid, slug text, status text, public jsonb, slug_assigned_at timestamptz)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid := tenancy.current_tenant_id();
BEGIN
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'no tenant in this transaction'
            USING ERRCODE = 'PT012',
                  HINT = 'Call tenancy.tenant_info() in a transaction that entered a tenant '
                         '(tenancy.enter_tenant, tenant_session, tenant_connection).';
    END IF;
    RETURN QUERY
        SELECT t.id, t.slug, t.status, coalesce(t.metadata -> 'public', '{}'::jsonb),
               t.slug_assigned_at
          FROM tenancy.tenants AS t
         WHERE t.id = v_id;
END
$$;

COMMENT ON FUNCTION tenancy.tenant_info() IS
    'Id, slug, status, the public part of the metadata (metadata -> ''public'', {} when '
    'absent) and slug_assigned_at (when it got its slug: strict entry refuses entry tokens '
    'issued before it, PT034) of the tenant the current transaction entered; the rest of the '
    'metadata stays with the owner. Raises PT012 outside a tenant. Granted by grant_app_role.';

REVOKE ALL ON FUNCTION tenancy.tenant_info() FROM PUBLIC;

-- Listener operations (issue 12) -------------------------------------------

-- outbox_health() reports more columns: dropped and created again, keeping
-- its grants.
SELECT pg_catalog.set_config('pgtenancy.upgrade_outbox_health_acl', coalesce((
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
               a.grantee::pg_catalog.regrole::text, a.is_grantable))
      FROM pg_catalog.pg_proc AS p
     CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
     WHERE p.oid = 'tenancy.outbox_health()'::pg_catalog.regprocedure
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner),
    '[]'::pg_catalog.jsonb)::text, true);

DROP FUNCTION tenancy.outbox_health();

CREATE OR REPLACE FUNCTION tenancy.outbox_health(
    OUT notification_queue_usage double precision,
    OUT oldest_transaction_seconds double precision,
    OUT events bigint,
    OUT held_back_events bigint,
    OUT prepared_transactions bigint,
    OUT oldest_prepared_seconds double precision,
    OUT xid_holders jsonb
)
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- What holds the snapshot xmin back, so that no consumer may pass: open
    -- transactions that have an xid (any database of the cluster) and
    -- prepared transactions, which no pg_stat_activity row shows.
    WITH holders AS (
        SELECT 'transaction'::text AS kind, a.pid::text AS holder, a.datname::text AS database,
               a.usename::text AS role, a.state AS state,
               extract(epoch FROM now() - a.xact_start)::double precision AS age_seconds
          FROM pg_stat_activity AS a
         WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
        UNION ALL
        SELECT 'prepared', p.gid, p.database::text, p.owner::text, 'prepared',
               extract(epoch FROM now() - p.prepared)::double precision
          FROM pg_prepared_xacts AS p
    )
    SELECT pg_notification_queue_usage(),
           greatest(
               coalesce((SELECT extract(epoch FROM now() - min(a.xact_start))
                           FROM pg_stat_activity AS a
                          WHERE (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
                            AND a.pid <> pg_backend_pid()), 0),
               coalesce((SELECT max(h.age_seconds) FROM holders AS h WHERE h.kind = 'prepared'), 0)
           )::double precision,
           (SELECT count(*) FROM tenancy.events),
           (SELECT count(*) FROM tenancy.events AS e
             WHERE e.xid >= pg_snapshot_xmin(pg_current_snapshot())),
           (SELECT count(*) FROM holders AS h WHERE h.kind = 'prepared'),
           coalesce((SELECT max(h.age_seconds) FROM holders AS h WHERE h.kind = 'prepared'),
                    0)::double precision,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'kind', h.kind, 'holder', h.holder, 'database', h.database,
                                'role', h.role, 'state', h.state,
                                'age_seconds', round(h.age_seconds::numeric, 3))
                            ORDER BY h.age_seconds DESC)
                       FROM (SELECT * FROM holders ORDER BY age_seconds DESC LIMIT 20) AS h),
                    '[]'::jsonb)
$$;

COMMENT ON FUNCTION tenancy.outbox_health() IS
    'Fill of the NOTIFY queue (0 to 1); age in seconds of the oldest open or prepared '
    'transaction (which holds back every consumer); events kept in the outbox; events '
    'committed or running but held back by an older transaction; prepared transactions and '
    'the age of the oldest; the 20 oldest xid holders (open transactions with an xid in any '
    'database, prepared transactions) as [{kind, holder (pid or gid), database, role, state, '
    'age_seconds}].';

REVOKE ALL ON FUNCTION tenancy.outbox_health() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.start_consumer(consumer text, start_from text DEFAULT 'oldest')
    RETURNS tenancy.consumers
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.consumers;
    v_xid xid8;
    v_id  bigint;
BEGIN
    IF start_consumer.start_from IS NULL OR start_consumer.start_from NOT IN ('oldest', 'now') THEN
        RAISE EXCEPTION 'start_from must be ''oldest'' or ''now'', not %',
            coalesce(quote_literal(start_consumer.start_from), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_row FROM tenancy.consumers AS c WHERE c.name = start_consumer.consumer;
    IF FOUND THEN
        RETURN v_row;
    END IF;
    v_row := tenancy.register_consumer(start_consumer.consumer);
    IF start_consumer.start_from = 'now' THEN
        -- After the newest event readable now; events of transactions still
        -- running sort after it and are delivered.
        SELECT e.xid, e.id INTO v_xid, v_id
          FROM tenancy.events AS e
         WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.xid DESC, e.id DESC
         LIMIT 1;
        IF FOUND THEN
            UPDATE tenancy.consumers AS c SET last_xid = v_xid, last_id = v_id
             WHERE c.name = start_consumer.consumer
            RETURNING * INTO v_row;
        END IF;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.start_consumer(text, text) IS
    'Register consumer unless it exists, with its cursor at the start of the outbox '
    '(start_from = oldest, as register_consumer) or after the newest event readable now '
    '(now: the retained history is not replayed); an existing consumer is returned unchanged. '
    'Raises 22023 for an invalid name or start_from.';

REVOKE ALL ON FUNCTION tenancy.start_consumer(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_consumer(consumer text)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM tenancy.parked_events AS p WHERE p.consumer = drop_consumer.consumer;
    DELETE FROM tenancy.consumers AS c WHERE c.name = drop_consumer.consumer;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION tenancy.drop_consumer(text) IS
    'Forget consumer: its cursor, lease and parked events; it no longer holds events back from '
    'prune_events. True when it existed. For the kit''s owner (pgtenancy events drop-consumer).';

REVOKE ALL ON FUNCTION tenancy.drop_consumer(text) FROM PUBLIC;

DO $$
DECLARE
    v_grant pg_catalog.jsonb;
BEGIN
    FOR v_grant IN SELECT pg_catalog.jsonb_array_elements(
                       pg_catalog.current_setting('pgtenancy.upgrade_outbox_health_acl')::pg_catalog.jsonb) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.outbox_health() TO %s%s',
                                  v_grant ->> 0,
                                  CASE WHEN (v_grant ->> 1)::boolean THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

-- Roles granted before this version get what grant_app_role and
-- grant_listener_role now grant.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                   WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = a.role_name) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.tenant_info(), '
                                  'tenancy.resolve_domain(text) TO %I', v_role);
    END LOOP;
    FOR v_role IN SELECT r.rolname FROM pg_catalog.pg_roles AS r
                   WHERE r.oid <> (SELECT p.proowner FROM pg_catalog.pg_proc AS p
                                    WHERE p.oid = 'tenancy.next_events(text, integer)'::pg_catalog.regprocedure)
                     AND pg_catalog.has_function_privilege(r.oid, 'tenancy.next_events(text, integer)', 'EXECUTE')
                     AND NOT r.rolsuper LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.consumer_status(), '
                                  'tenancy.outbox_health(), tenancy.start_consumer(text, text) '
                                  'TO %I', v_role);
    END LOOP;
END
$$;

-- The extension's new configuration table: pg_dump keeps its rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.tenant_domains', '');
    END IF;
END
$$;

-- Issue 10: a tenant whose migration history needs commits between
-- migrations is provisioned one migration per transaction (status
-- provisioning, PT019 on entry, failures kept); registration checks a new
-- migration on the scratch schema tenancy_scratch kept at the latest version;
-- the fence lets a migration drop its own tables' TOAST tables.
ALTER TABLE tenancy.tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenancy.tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('active', 'suspended', 'deleted', 'provisioning'));

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

CREATE TABLE IF NOT EXISTS tenancy.scratch (
    singleton boolean NOT NULL DEFAULT true,
    version   text COLLATE "C",
    CONSTRAINT scratch_pkey PRIMARY KEY (singleton),
    CONSTRAINT scratch_singleton_check CHECK (singleton)
);

COMMENT ON TABLE tenancy.scratch IS
    'Version the scratch schema tenancy_scratch is at (one row; none before the first registration).';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.provisioning_failures', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.scratch', '');
    END IF;
END
$$;

DROP FUNCTION tenancy.apply_migrations(text, text);

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

REVOKE ALL ON FUNCTION tenancy.apply_migrations(text, text, integer, boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.add_migration(text, text, boolean) FROM PUBLIC;

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

REVOKE ALL ON FUNCTION tenancy.create_tenant(text, jsonb, text) FROM PUBLIC;

REVOKE ALL ON FUNCTION tenancy.drop_tenant(text, boolean) FROM PUBLIC;

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

-- The attack run's gaps (issue 13): a suspended or deleted tenant out of the
-- application roles' reach (grants revoked on status changes; the shared
-- policy compares with active_tenant_id()), partitions and inheritance
-- children guarded, no outbox function for application roles, enable_rls
-- and track_changes refusals, admin locks the application role cannot
-- take, no tenant inserted deleted, metadata of at most 64 KiB (PT029).

CREATE TABLE IF NOT EXISTS tenancy.slug_locks (
    slug text NOT NULL,
    CONSTRAINT slug_locks_pkey PRIMARY KEY (slug)
);

COMMENT ON TABLE tenancy.slug_locks IS
    'Row locks serializing the creation of each tenant slug. Internal.';

CREATE OR REPLACE FUNCTION tenancy.check_metadata(metadata jsonb)
    RETURNS jsonb
    LANGUAGE plpgsql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF check_metadata.metadata IS NULL OR jsonb_typeof(check_metadata.metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %',
            coalesce(jsonb_typeof(check_metadata.metadata), 'NULL')
            USING ERRCODE = 'PT029';
    END IF;
    -- Metadata is copied into every tenant_created event: keep it small.
    IF octet_length(check_metadata.metadata::text) > 65536 THEN
        RAISE EXCEPTION 'tenant metadata is % bytes as JSON text, more than 65536',
            octet_length(check_metadata.metadata::text)
            USING ERRCODE = 'PT029',
                  HINT = 'Keep large data in your own tables, keyed by the tenant id.';
    END IF;
    -- Deeper JSON is no metadata (and recursive readers have limits:
    -- Python's json fails near 1,000 levels): a value at most 32 levels
    -- below the top.
    IF jsonb_path_exists(check_metadata.metadata, 'strict $.**{33 to last}') THEN
        RAISE EXCEPTION 'tenant metadata nests values more than 32 levels deep'
            USING ERRCODE = 'PT029',
                  HINT = 'Flatten it, or keep such data in your own tables.';
    END IF;
    RETURN check_metadata.metadata;
END
$$;

COMMENT ON FUNCTION tenancy.check_metadata(jsonb) IS
    'Return metadata when it is a JSON object of at most 65536 bytes as JSON text with no value '
    'more than 32 levels below the top; raise PT029 otherwise. Checked by the registry triggers '
    'on every insert and update.';

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
        -- An index not led by the tenant column lets the planner scan it with
        -- the caller's own condition (leakproof comparisons) while the
        -- tenant check runs as a filter over every tenant's entries: EXPLAIN
        -- ANALYZE ("Rows Removed by Filter") and pg_stat_get_xact_tuples_fetched
        -- then count other tenants' values in any range (binary search).
        -- Partitions' indexes are reported once, on the parent's index.
        RETURN QUERY
            SELECT 'warning'::text, 'index_not_led_by_tenant'::text, i.indexrelid::regclass::text,
                   format('index %s of guarded table %s is not led by %I: a tenant can count other '
                          'tenants'' rows in any range of its columns (EXPLAIN ANALYZE, '
                          'pg_stat_get_xact_tuples_fetched) and so read their values by binary search',
                          i.indexrelid::regclass, r.table_name, r.tenant_column),
                   format('lead it with the tenant column: CREATE INDEX ON %s (%I, %s), then DROP INDEX %s '
                          '(a primary key or unique constraint: make it (%I, %s), unique per tenant)',
                          r.table_name, r.tenant_column, k.cols, i.indexrelid::regclass, r.tenant_column, k.cols)
              FROM pg_index AS i
             CROSS JOIN LATERAL (SELECT string_agg(pg_get_indexdef(i.indexrelid, n, true), ', ' ORDER BY n) AS cols
                                   FROM generate_series(1, i.indnkeyatts::integer) AS n) AS k
             WHERE i.indrelid = r.table_name AND i.indkey[0] <> r.attnum
               AND NOT EXISTS (SELECT 1 FROM pg_inherits AS h WHERE h.inhrelid = i.indexrelid)
             ORDER BY i.indexrelid::regclass::text;
    END LOOP;

    -- A setting read outside an InitPlan is evaluated once per row (not
    -- said on Citus, which refuses sub-selects in policies of distributed tables).
    -- A partition or inheritance child is queried by name with its own
    -- policies: a child of a guarded table must be guarded itself.
    RETURN QUERY
        SELECT 'error'::text, 'unguarded_child'::text, i.inhrelid::regclass::text,
               format('%s is a partition or child of guarded table %s but is not guarded: read by '
                      'name it shows every tenant''s rows', i.inhrelid::regclass, g.table_name),
               format('SELECT tenancy.enable_rls(%L, %L)', i.inhrelid::regclass::text, g.tenant_column)
          FROM tenancy.guarded_tables AS g
          JOIN pg_inherits AS i ON i.inhparent = g.table_name
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS c WHERE c.table_name = i.inhrelid);
    -- The other way round: read through a parent, a guarded table's rows
    -- get the parent's policies, so its parents must be guarded too.
    RETURN QUERY
        SELECT 'error'::text, 'unguarded_parent'::text, i.inhparent::regclass::text,
               format('%s is a parent of guarded table %s but is not guarded: read through it, '
                      'the rows of %s show to every tenant', i.inhparent::regclass, g.table_name,
                      g.table_name),
               format('SELECT tenancy.enable_rls(%L, %L)', i.inhparent::regclass::text, g.tenant_column)
          FROM tenancy.guarded_tables AS g
          JOIN pg_inherits AS i ON i.inhrelid = g.table_name
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS p WHERE p.table_name = i.inhparent);

    -- A setting read outside an InitPlan is evaluated once per row.
    FOR r IN
        SELECT p.polname, p.polrelid::regclass AS tbl,
               coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
               || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') AS expr
          FROM pg_policy AS p
         WHERE NOT v_citus
    LOOP
        IF regexp_replace(r.expr, '\(\s*SELECT\s+[^()]*(\([^()]*\)[^()]*)*\)', '', 'gi')
           ~* '(current_setting|tenancy\.current_tenant_id|tenancy\.active_tenant_id|tenancy\.current_tenant)\s*\(' THEN
            RETURN QUERY SELECT 'warning'::text, 'policy_not_initplan'::text,
                format('%s on %s', r.polname, r.tbl),
                format('policy %s on %s calls the tenant setting outside a sub-select, so it is '
                       'evaluated for every row', r.polname, r.tbl),
                'wrap it in a sub-select: tenant_id = (SELECT tenancy.active_tenant_id())'::text;
        END IF;
    END LOOP;

    RETURN QUERY SELECT * FROM tenancy.check_registry();
    -- Findings of files installed later (strict entry, 012), by name: this
    -- file cannot refer to them.
    IF EXISTS (SELECT 1 FROM pg_proc AS p
                WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = 'check_strict'
                  AND p.pronargs = 0 AND has_function_privilege(p.oid, 'EXECUTE')) THEN
        RETURN QUERY EXECUTE format('SELECT * FROM %I.%I()', 'tenancy', 'check_strict');
    END IF;
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
    'Isolation findings for the current role and database, one row each: severity (error, warning '
    'or info), check_name, object, message, fix. Checks: role is superuser or BYPASSRLS; role owns '
    'a guarded table; guarded table without ENABLE or FORCE RLS, without its policy, without an '
    'index led by the tenant column, with an index not led by it (warning: a range-count side '
    'channel); partitions and children of guarded tables not guarded, and parents of guarded tables not guarded; policies reading the tenant setting outside an InitPlan; '
    'tenant schemas missing; prefixed schemas not registered; tenants behind the latest migration; '
    'no listener connected; with Citus, tenancy.check_citus() (and no InitPlan advice); the '
    'strict-entry findings (strict entry off with shared tenants: info; tables of tenant schemas '
    'without the strict guard: error in strict mode). Run it as the application role.';

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

REVOKE ALL ON FUNCTION tenancy.grant_schema_to_app_roles(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenants_before_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenants_before_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenants_sync_grants() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.guard_new_children() FROM PUBLIC;

CREATE OR REPLACE TRIGGER tenants_sync_grants
    AFTER INSERT OR UPDATE OF status ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_sync_grants();

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

-- Existing data: the policies of guarded tables test the tenant's status,
-- suspended and deleted schema tenants lose the application roles'
-- privileges, and application roles lose inbox_claim (0.2.0 granted it).
DO $$
DECLARE
    v_guard tenancy.guarded_tables;
    v_check text;
    v_role  name;
BEGIN
    FOR v_guard IN
        SELECT g.* FROM tenancy.guarded_tables AS g
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_policy AS p
                        WHERE p.polrelid = g.table_name AND p.polname = 'tenancy_tenant_isolation')
    LOOP
        v_check := pg_catalog.format('%I = (SELECT tenancy.active_tenant_id())', v_guard.tenant_column);
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_tenant_isolation ON %s USING (%s) WITH CHECK (%s)',
                                  v_guard.table_name, v_check, v_check);
    END LOOP;
    PERFORM tenancy.grant_schema_to_app_roles(t.schema_name)
       FROM tenancy.tenants AS t
      WHERE t.status <> 'active' AND t.schema_name IS NOT NULL
        AND pg_catalog.to_regnamespace(pg_catalog.quote_ident(t.schema_name)) IS NOT NULL;
    FOR v_role IN
        SELECT a.role_name FROM tenancy.app_roles AS a
          JOIN pg_catalog.pg_roles AS r ON r.rolname = a.role_name
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION tenancy.inbox_claim(text, bigint) FROM %I', v_role);
    END LOOP;
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

CREATE OR REPLACE FUNCTION tenancy.prepare_citus()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_src   text;
    v_own   boolean;
    v_end   text := E'\n    -- Settings: nothing with a cached plan may follow this assignment.\n';
    v_citus text := E'\n    -- Citus (added by tenancy.prepare_citus()): SET LOCAL reaches every node.'
                    || E'\n    PERFORM pg_catalog.set_config(''citus.propagate_set_commands'', ''local'', true);'
                    || E'\n    EXECUTE pg_catalog.format(''SET LOCAL app.tenant_id = %L'', v_id::pg_catalog.text);'
                    || E'\n    EXECUTE pg_catalog.format(''SET LOCAL app.tenant = %L'', v_slug);'
                    || E'\n';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN false;
    END IF;
    -- The PL/pgSQL body: enter_tenant's own, or, where the accelerator
    -- (011_accelerator.sql) made enter_tenant an SQL call of its C function,
    -- the copy it keeps as enter_tenant_plpgsql. Citus needs the PL/pgSQL:
    -- it takes enter_tenant's place below.
    SELECT p.prosrc, p.proname = 'enter_tenant' INTO v_src, v_own
      FROM pg_proc AS p
     WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname IN ('enter_tenant', 'enter_tenant_plpgsql')
       AND p.proargtypes = '25'::oidvector
       AND p.prolang = (SELECT l.oid FROM pg_language AS l WHERE l.lanname = 'plpgsql')
     ORDER BY p.proname
     LIMIT 1;
    IF v_own AND pg_catalog.strpos(v_src, 'citus.propagate_set_commands') > 0 THEN
        RETURN true;
    END IF;
    IF pg_catalog.strpos(v_src, v_end) = 0 THEN
        RAISE EXCEPTION 'tenancy.enter_tenant() lacks its settings comment: cannot add the Citus statements'
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

-- i10baseline: baselines (issue 10 item 4). New tenants run the newest
-- baseline, a squashed history checked against a replay, then the
-- migrations after it (tenants_before_insert above); see
-- sql/003_migration_baselines.sql and sql/012_baselines.sql.
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

CREATE OR REPLACE FUNCTION tenancy.schema_catalog(schema_name text)
    RETURNS TABLE (kind text, name text, definition text)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_nsp    oid := to_regnamespace(quote_ident(schema_catalog.schema_name))::oid;
    v_prefix text := quote_ident(schema_catalog.schema_name) || '.';
    -- Each tenant schema has its own owner role (tenancy.tenant_role): it
    -- prints as one token, so two schemas' owners and ACLs compare.
    v_role   text := tenancy.tenant_role(schema_catalog.schema_name)::text;
BEGIN
    IF v_nsp IS NULL THEN
        RAISE EXCEPTION 'schema % does not exist', coalesce(quote_ident(schema_catalog.schema_name), 'NULL')
            USING ERRCODE = '3F000';
    END IF;
    -- Names of the schema's own objects print unqualified (the schema is on
    -- the path, after the catalogs), so two schemas compare; the few
    -- deparsers that always qualify are stripped of the schema name.
    PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', schema_catalog.schema_name), true);
    RETURN QUERY
    SELECT x.kind, replace(x.name, v_prefix, ''),
           replace(replace(x.definition, v_prefix, ''), v_role, '(tenant owner role)')
      FROM (
        SELECT 'relation' AS kind, c.relname::text AS name,
               jsonb_build_array(c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
                   c.reloptions::text, pg_get_userbyid(c.relowner),
                   (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(c.relacl) AS a)::text,
                   obj_description(c.oid, 'pg_class'),
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                   pg_get_partkeydef(c.oid), pg_get_expr(c.relpartbound, c.oid),
                   (SELECT array_agg(i.inhparent::regclass::text ORDER BY i.inhseqno)
                      FROM pg_inherits AS i WHERE i.inhrelid = c.oid)::text)::text AS definition
          FROM pg_class AS c WHERE c.relnamespace = v_nsp
        UNION ALL
        -- Columns by their place among the live ones: a replay that dropped
        -- a column and a baseline without it agree.
        SELECT 'column', c.relname || '.' || a.attname,
               jsonb_build_array(row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                   format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
                   (SELECT co.collname FROM pg_collation AS co
                     WHERE co.oid = a.attcollation AND a.attcollation <> 100),
                   pg_get_expr(d.adbin, d.adrelid),
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) AS x)::text,
                   col_description(c.oid, a.attnum))::text
          FROM pg_attribute AS a
          JOIN pg_class AS c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = v_nsp AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
           AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'constraint', coalesce(c.relname, t.typname) || '.' || k.conname,
               jsonb_build_array(k.contype, pg_get_constraintdef(k.oid), k.condeferrable,
                   k.condeferred, k.convalidated, obj_description(k.oid, 'pg_constraint'))::text
          FROM pg_constraint AS k
          LEFT JOIN pg_class AS c ON c.oid = k.conrelid
          LEFT JOIN pg_type AS t ON t.oid = k.contypid
         WHERE k.connamespace = v_nsp
        UNION ALL
        SELECT 'index', c.relname, pg_get_indexdef(i.indexrelid)
          FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE c.relnamespace = v_nsp
        UNION ALL
        SELECT 'sequence', c.relname,
               jsonb_build_array(format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
                   s.seqmin, s.seqcache, s.seqcycle,
                   (SELECT d.deptype::text || ' ' || d.refobjid::regclass::text || '.' || a.attname
                      FROM pg_depend AS d
                      JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))::text
          FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
         WHERE c.relnamespace = v_nsp
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text,
               jsonb_build_array(CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
                   p.prokind, pg_get_userbyid(p.proowner),
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) AS x)::text,
                   obj_description(p.oid, 'pg_proc'))::text
          FROM pg_proc AS p WHERE p.pronamespace = v_nsp
        UNION ALL
        SELECT 'trigger', c.relname || '.' || t.tgname,
               jsonb_build_array(pg_get_triggerdef(t.oid), t.tgenabled,
                   obj_description(t.oid, 'pg_trigger'))::text
          FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
         WHERE c.relnamespace = v_nsp AND NOT t.tgisinternal
        UNION ALL
        SELECT 'policy', c.relname || '.' || p.polname,
               jsonb_build_array(p.polcmd, p.polpermissive,
                   (SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END
                                     ORDER BY 1) FROM unnest(p.polroles) AS r)::text,
                   pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))::text
          FROM pg_policy AS p JOIN pg_class AS c ON c.oid = p.polrelid
         WHERE c.relnamespace = v_nsp
        UNION ALL
        -- Enum labels in their order; domains with base type and default.
        SELECT 'type', t.typname,
               jsonb_build_array(t.typtype, pg_get_userbyid(t.typowner),
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(t.typacl) AS x)::text,
                   obj_description(t.oid, 'pg_type'),
                   (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                      FROM pg_enum AS e WHERE e.enumtypid = t.oid)::text,
                   CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
                   t.typnotnull, t.typdefault,
                   (SELECT format_type(r.rngsubtype, NULL) FROM pg_range AS r WHERE r.rngtypid = t.oid))::text
          FROM pg_type AS t WHERE t.typnamespace = v_nsp
        UNION ALL
        SELECT 'rule', c.relname || '.' || r.rulename, pg_get_ruledef(r.oid)
          FROM pg_rewrite AS r JOIN pg_class AS c ON c.oid = r.ev_class
         WHERE c.relnamespace = v_nsp AND r.rulename <> '_RETURN'
        UNION ALL
        SELECT 'statistics', s.stxname, pg_get_statisticsobjdef(s.oid)
          FROM pg_statistic_ext AS s WHERE s.stxnamespace = v_nsp
        UNION ALL
        -- Whatever else lives in the schema (operators, collations, text
        -- search objects, conversions ...), by kind and name.
        SELECT 'object', o.type || ' ' || o.identity, ''
          FROM pg_depend AS d, pg_identify_object(d.classid, d.objid, 0) AS o
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp AND d.deptype = 'n'
           AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_type'::regclass,
                                 'pg_constraint'::regclass, 'pg_statistic_ext'::regclass)
      ) AS x;
    PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
END
$$;

COMMENT ON FUNCTION tenancy.schema_catalog(text) IS
    'The objects of schema schema_name as (kind, name, definition) rows, keyed by names (never '
    'oids) with the schema''s own name left out, so two schemas compare: relations (kind, '
    'persistence, RLS flags, options, owner, ACL, comment, view query, partitioning, '
    'inheritance), columns of tables, views and composite types (position among live columns, '
    'type, NOT NULL, identity, generated, collation, default, ACL, comment), constraints, indexes, sequences (parameters, owning '
    'column), functions (full definition, owner, ACL, comment), triggers, policies, types (enum '
    'labels in order, domains, ranges), rules, statistics and any other object by name; the schema''s own owner role (tenancy.tenant_role) prints as one token. Raises '
    '3F000 for a missing schema.';

-- The reference the baseline is checked against: the version the scratch
-- schema tenancy_check_baseline has been replayed to, for which baseline.
CREATE TABLE IF NOT EXISTS tenancy.baseline_scratch (
    singleton       boolean NOT NULL DEFAULT true,
    through_version text COLLATE "C" NOT NULL,
    version         text COLLATE "C",
    CONSTRAINT baseline_scratch_pkey PRIMARY KEY (singleton),
    CONSTRAINT baseline_scratch_singleton_check CHECK (singleton)
);

COMMENT ON TABLE tenancy.baseline_scratch IS
    'Where the replay in schema tenancy_check_baseline stands (version) on its way to '
    'through_version, the version a baseline is being made for. One row at most.';

CREATE OR REPLACE FUNCTION tenancy.prepare_baseline(through_version text)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_through ALIAS FOR through_version;
    v_schema  text := 'tenancy_check_baseline';
    v_role    name := tenancy.migrator_role();
    v_state   tenancy.baseline_scratch;
    v_next    tenancy.migrations;
    v_at      text;
    v_count   integer;
    v_sqlstate text;
    v_message text;
BEGIN
    -- Registrations wait: the history up to p_through cannot change anyway,
    -- but the commit boundaries are read from the whole registry.
    LOCK TABLE tenancy.migrations IN SHARE ROW EXCLUSIVE MODE;
    IF NOT EXISTS (SELECT 1 FROM tenancy.migrations AS m WHERE m.version = p_through) THEN
        RAISE EXCEPTION 'cannot squash through %: no such migration is registered',
            coalesce(quote_literal(p_through), 'NULL')
            USING ERRCODE = 'PT032',
                  HINT = 'Name a registered version (pgtenancy migrate --dry-run lists them per tenant).';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.baselines AS b WHERE b.through_version = p_through) THEN
        RAISE EXCEPTION 'a baseline through % is registered already', quote_literal(p_through)
            USING ERRCODE = 'PT032',
                  HINT = 'Drop it first (tenancy.drop_baseline) to replace it.';
    END IF;
    SELECT * INTO v_state FROM tenancy.baseline_scratch AS s;
    IF FOUND AND v_state.through_version = p_through
       AND to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
        v_at := v_state.version;
    ELSE
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            EXECUTE format('DROP SCHEMA %I CASCADE', v_schema);
        END IF;
        EXECUTE format('CREATE SCHEMA %I', v_schema);
        v_at := NULL;
    END IF;
    IF v_at IS DISTINCT FROM p_through THEN
        SELECT * INTO v_next FROM tenancy.migrations AS m
         WHERE v_at IS NULL OR m.version > v_at
         ORDER BY m.version LIMIT 1;
        IF v_next.outside_transaction THEN
            -- A baseline is one transaction: the migration must run inside
            -- one (CREATE/DROP INDEX without CONCURRENTLY, ALTER TYPE ... ADD
            -- VALUE do; VACUUM does not).
            EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', v_schema, v_role);
            PERFORM tenancy.hand_over_schema(v_schema, true);
            PERFORM set_config('pgtenancy.migration_schema', v_schema, true);
            BEGIN
                PERFORM tenancy.execute_migration(
                    regexp_replace(v_next.sql, '\mCONCURRENTLY\M', '', 'gi'),
                    format('%I, pg_catalog, public, pg_temp', v_schema));
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
                RAISE EXCEPTION 'cannot squash through %: migration % runs outside a transaction and cannot be squashed: %',
                    quote_literal(p_through), v_next.version, v_message
                    USING ERRCODE = 'PT032',
                          DETAIL = format('Run inside a transaction (as a baseline is) it fails with SQLSTATE %s.', v_sqlstate),
                          HINT = 'Squash through a version before it.';
            END;
            PERFORM set_config('pgtenancy.migration_schema', '', true);
            PERFORM tenancy.hand_over_schema(v_schema, false);
            EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA %I FROM %I', v_schema, v_role);
            v_at := v_next.version;
        ELSE
            -- What a new tenant gets in one transaction: everything up to
            -- p_through, or the next migration when commits are needed.
            SELECT count(*)::integer INTO v_count FROM tenancy.migrations AS m
             WHERE (v_at IS NULL OR m.version > v_at) AND m.version <= p_through;
            v_at := tenancy.apply_migrations(
                v_schema, v_at, CASE WHEN tenancy.needs_commit_boundaries(v_at) THEN 1 ELSE v_count END);
        END IF;
    END IF;
    INSERT INTO tenancy.baseline_scratch AS s (singleton, through_version, version)
    VALUES (true, p_through, v_at)
        ON CONFLICT (singleton) DO UPDATE
       SET through_version = EXCLUDED.through_version, version = EXCLUDED.version;
    RETURN v_at;
END
$$;

COMMENT ON FUNCTION tenancy.prepare_baseline(text) IS
    'Replay the migrations up to through_version in the scratch schema tenancy_check_baseline, '
    'the reference a baseline through that version is made from and checked against: each call '
    'applies what one transaction of a new tenant''s provisioning applies (all of them, or the '
    'next one when the history needs commit boundaries) and returns the version reached; call it '
    'in transactions of their own until it returns through_version. A different through_version '
    'starts over. Raises PT032 for an unregistered version, a baseline registered through it '
    'already, or a no-transaction migration that cannot run in a transaction (VACUUM); PT006 '
    'when a migration fails. Owner only.';

REVOKE ALL ON FUNCTION tenancy.prepare_baseline(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.discard_baseline_scratch()
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_found boolean := to_regnamespace('tenancy_check_baseline') IS NOT NULL;
BEGIN
    DROP SCHEMA IF EXISTS tenancy_check_baseline CASCADE;
    -- Its owner role (made by the replay as for any tenant schema) with it.
    PERFORM tenancy.drop_tenant_role('tenancy_check_baseline');
    DELETE FROM tenancy.baseline_scratch;
    RETURN v_found;
END
$$;

COMMENT ON FUNCTION tenancy.discard_baseline_scratch() IS
    'Drop the reference schema of tenancy.prepare_baseline (after a refused squash) and its owner '
    'role; true when there was one. Owner only.';

REVOKE ALL ON FUNCTION tenancy.discard_baseline_scratch() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.add_baseline(through_version text, sql text)
    RETURNS tenancy.baselines
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_through ALIAS FOR through_version;
    p_sql     ALIAS FOR sql;
    v_ref     text := 'tenancy_check_baseline';
    v_try     text := 'tenancy_check_baseline_try';
    v_row     tenancy.baselines;
    v_at      text;
    v_table   regclass;
    v_used    text;
    v_diff    text;
    v_count   integer;
    v_state   text;
    v_message text;
    v_detail  text;
    v_role    name;
    v_rls     text;
BEGIN
    IF p_sql IS NULL OR btrim(p_sql) = '' THEN
        RAISE EXCEPTION 'baseline through % has no SQL', coalesce(quote_literal(p_through), 'NULL')
            USING ERRCODE = 'PT032';
    END IF;
    -- Registrations and other squashes wait: the reference cannot change
    -- under the check (prepare_baseline takes the same lock).
    LOCK TABLE tenancy.migrations IN SHARE ROW EXCLUSIVE MODE;
    -- The reference: ready when prepare_baseline reached p_through; else
    -- made here when one transaction can (no commit boundaries needed).
    -- prepare_baseline refuses unknown versions and existing baselines.
    SELECT s.version INTO v_at FROM tenancy.baseline_scratch AS s
     WHERE s.through_version = p_through AND to_regnamespace(quote_ident(v_ref)) IS NOT NULL;
    IF v_at IS DISTINCT FROM p_through THEN
        v_at := tenancy.prepare_baseline(p_through);
    ELSE
        IF EXISTS (SELECT 1 FROM tenancy.baselines AS b WHERE b.through_version = p_through) THEN
            RAISE EXCEPTION 'a baseline through % is registered already', quote_literal(p_through)
                USING ERRCODE = 'PT032',
                      HINT = 'Drop it first (tenancy.drop_baseline) to replace it.';
        END IF;
    END IF;
    IF v_at IS DISTINCT FROM p_through THEN
        RAISE EXCEPTION 'the migrations up to % need commits between them: the reference replay is at %',
            quote_literal(p_through), coalesce(quote_literal(v_at), 'none')
            USING ERRCODE = 'PT032',
                  HINT = 'Call tenancy.prepare_baseline(through_version) in transactions of their own '
                         'until it returns the version, then add_baseline (pgtenancy migrate squash does).';
    END IF;
    -- A baseline carries the rows the history leaves (pg_dump's data of the
    -- reference), but only rows every new tenant would get alike: a value
    -- naming the replay's own schema or role (current_schema(), a regclass
    -- printed qualified) or an object identifier depends on the tenant the
    -- migrations ran in, so such a history is refused. Row security off: a
    -- read that policies would filter fails instead of missing rows.
    v_rls := current_setting('row_security');
    PERFORM set_config('row_security', 'off', true);
    v_role := tenancy.tenant_role(v_ref);
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(v_ref)) AND c.relkind IN ('r', 'm')
           AND c.relispopulated
         ORDER BY c.relname
    LOOP
        BEGIN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s AS r WHERE strpos(r::text, %L) > 0 OR strpos(r::text, %L) > 0)',
                           v_table, v_ref, v_role)
               INTO STRICT v_used;
        EXCEPTION WHEN insufficient_privilege THEN
            -- A table whose row-level security is forced on its owner (the
            -- kit's owner here): with row security off the read is an
            -- error, as pg_dump's is when the owner squashes.
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            RAISE EXCEPTION 'cannot squash through %: the kit''s owner cannot read past the row-level security of table % to check its rows',
                quote_literal(p_through), replace(v_table::text, v_ref || '.', '')
                USING ERRCODE = 'PT032',
                      DETAIL = v_message,
                      HINT = 'A migration up to it forces row-level security on the table (FORCE ROW LEVEL SECURITY applies to the owner too): squash through a version before it, or install the kit as a role with BYPASSRLS. Nothing was registered.';
        END;
        IF v_used::boolean THEN
            RAISE EXCEPTION 'cannot squash through %: the migrations leave rows in table % that name the schema they ran in',
                quote_literal(p_through), replace(v_table::text, v_ref || '.', '')
                USING ERRCODE = 'PT032',
                      DETAIL = format('A value of a row holds %s (the replay''s schema) or its owner role: each tenant gets its own value from the migrations, a baseline would give every tenant the same one.', v_ref),
                      HINT = 'Squash through a version before the migration that writes them, or make the rows the same for every tenant.';
        END IF;
        SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
          INTO v_used
          FROM pg_attribute AS a
         WHERE a.attrelid = v_table AND a.attnum > 0 AND NOT a.attisdropped
           AND a.atttypid = ANY (ARRAY['oid'::regtype, 'regclass'::regtype, 'regtype'::regtype, 'regproc'::regtype,
                                       'regprocedure'::regtype, 'regoper'::regtype, 'regoperator'::regtype,
                                       'regconfig'::regtype, 'regdictionary'::regtype, 'regnamespace'::regtype,
                                       'regrole'::regtype, 'regcollation'::regtype, 'xid'::regtype, 'xid8'::regtype,
                                       'tid'::regtype, 'pg_lsn'::regtype]::oid[]);
        IF v_used IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s)', v_table) INTO STRICT v_diff;
            IF v_diff::boolean THEN
                RAISE EXCEPTION 'cannot squash through %: the migrations leave rows in table % with object identifiers (%)',
                    quote_literal(p_through), replace(v_table::text, v_ref || '.', ''), v_used
                    USING ERRCODE = 'PT032',
                          DETAIL = 'Object identifiers, transaction ids and row positions differ from one tenant to the next: a baseline cannot carry them.',
                          HINT = 'Squash through a version before the migration that writes them.';
            END IF;
        END IF;
    END LOOP;
    v_diff := NULL;
    PERFORM set_config('row_security', v_rls, true);

    INSERT INTO tenancy.baselines (through_version, sql, checksum)
    VALUES (p_through, p_sql, encode(sha256(convert_to(p_sql, 'UTF8')), 'hex'))
    RETURNING * INTO v_row;
    -- The baseline runs as it will for every new tenant.
    IF to_regnamespace(quote_ident(v_try)) IS NOT NULL THEN
        EXECUTE format('DROP SCHEMA %I CASCADE', v_try);
    END IF;
    EXECUTE format('CREATE SCHEMA %I', v_try);
    BEGIN
        PERFORM tenancy.apply_baseline(v_try, p_through);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        IF v_state = 'PT017' THEN
            RAISE EXCEPTION '%', v_message
                USING ERRCODE = 'PT017', DETAIL = v_detail, HINT = 'Nothing was registered.';
        END IF;
        RAISE EXCEPTION 'baseline through % does not apply to an empty schema: %', quote_literal(p_through), v_message
            USING ERRCODE = 'PT032', DETAIL = v_detail, HINT = 'Nothing was registered.';
    END;
    -- Equal to the replay, object by object.
    SELECT count(*)::integer,
           string_agg(d.side || ' ' || d.kind || ' ' || d.name || ': ' || left(d.definition, 300), E'\n'
                      ORDER BY d.kind, d.name, d.side)
      INTO v_count, v_diff
      FROM (
        (SELECT 'missing' AS side, * FROM tenancy.schema_catalog(v_ref)
         EXCEPT SELECT 'missing', * FROM tenancy.schema_catalog(v_try))
        UNION ALL
        (SELECT 'extra', * FROM tenancy.schema_catalog(v_try)
         EXCEPT SELECT 'extra', * FROM tenancy.schema_catalog(v_ref))
      ) AS d;
    IF v_count > 0 THEN
        RAISE EXCEPTION 'baseline through % differs from the migrations up to it in % object(s)',
            quote_literal(p_through), v_count
            USING ERRCODE = 'PT033',
                  DETAIL = v_diff,
                  HINT = '"missing": made by the migrations, not by the baseline; "extra": the other way. Nothing was registered.';
    END IF;
    -- Equal to the replay row by row (each table's own rows, as text) and
    -- sequence by sequence (last value, called or not).
    v_rls := current_setting('row_security');
    PERFORM set_config('row_security', 'off', true);
    v_count := 0;
    v_diff := NULL;
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(v_ref)) AND c.relkind IN ('r', 'm', 'S')
         ORDER BY c.relname
    LOOP
        v_used := (SELECT c.relname::text FROM pg_class AS c WHERE c.oid = v_table);
        IF (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_table) = 'S' THEN
            EXECUTE format('SELECT (SELECT s.last_value || CASE WHEN s.is_called THEN '' (called)'' ELSE '''' END FROM %s AS s), '
                           '(SELECT s.last_value || CASE WHEN s.is_called THEN '' (called)'' ELSE '''' END FROM %I.%I AS s)',
                           v_table, v_try, v_used)
               INTO v_state, v_message;
            IF v_state IS DISTINCT FROM v_message THEN
                v_count := v_count + 1;
                v_diff := concat_ws(E'\n', v_diff, format('sequence %s: %s after the migrations, %s after the baseline',
                                                          v_used, v_state, v_message));
            END IF;
        ELSIF (SELECT c.relispopulated FROM pg_class AS c WHERE c.oid = v_table)
              IS DISTINCT FROM (SELECT c.relispopulated FROM pg_class AS c
                                 WHERE c.relnamespace = to_regnamespace(quote_ident(v_try))
                                   AND c.relname = v_used) THEN
            v_count := v_count + 1;
            v_diff := concat_ws(E'\n', v_diff, format('materialized view %s: populated by one and not the other', v_used));
        ELSIF (SELECT c.relispopulated FROM pg_class AS c WHERE c.oid = v_table) THEN
            EXECUTE format('SELECT (SELECT count(*) FROM (SELECT r::text FROM ONLY %1$s AS r EXCEPT ALL '
                           'SELECT r::text FROM ONLY %2$I.%3$I AS r) AS m), '
                           '(SELECT count(*) FROM (SELECT r::text FROM ONLY %2$I.%3$I AS r EXCEPT ALL '
                           'SELECT r::text FROM ONLY %1$s AS r) AS e)',
                           v_table, v_try, v_used)
               INTO v_state, v_message;
            IF v_state::bigint > 0 OR v_message::bigint > 0 THEN
                v_count := v_count + 1;
                v_diff := concat_ws(E'\n', v_diff, format('rows of %s: %s missing, %s extra', v_used, v_state, v_message)
                    || CASE WHEN (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_table) = 'm'
                            THEN ' (a materialized view the migrations left stale: the baseline refreshes it; refresh it in a migration)'
                            ELSE '' END);
            END IF;
        END IF;
    END LOOP;
    PERFORM set_config('row_security', v_rls, true);
    IF v_count > 0 THEN
        RAISE EXCEPTION 'baseline through % leaves other rows or sequence values than the migrations up to it in % object(s)',
            quote_literal(p_through), v_count
            USING ERRCODE = 'PT033',
                  DETAIL = v_diff,
                  HINT = '"missing": left by the migrations, not by the baseline; "extra": the other way. Nothing was registered.';
    END IF;
    EXECUTE format('DROP SCHEMA %I CASCADE', v_try);
    PERFORM tenancy.drop_tenant_role(v_try);
    PERFORM tenancy.discard_baseline_scratch();
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.add_baseline(text, text) IS
    'Register sql as the baseline through migration through_version: new tenants run the newest '
    'baseline instead of the migrations up to its version, then the ones after it. It is checked '
    'first: applied to a scratch schema as any migration is (the migrator role, the fence), it '
    'must create what the migrations up to through_version create and leave the rows and '
    'sequence values they leave (tenancy.schema_catalog and the data of the '
    'reference replay of tenancy.prepare_baseline, made here when no commit boundaries are '
    'needed). Existing tenants are not touched. Raises PT032 (unregistered version, a baseline '
    'through it already, no SQL, a history that leaves rows naming the schema it ran in or '
    'holding object identifiers, or needs an unfinished prepare_baseline, SQL that fails), '
    'PT033 (it differs from the migrations in objects, in the rows of a table or in a '
    'sequence''s value; DETAIL lists them), PT017 (it reaches outside its schema); nothing is registered then. Owner only.';

REVOKE ALL ON FUNCTION tenancy.add_baseline(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_baseline(through_version text)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM tenancy.baselines AS b WHERE b.through_version = drop_baseline.through_version;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION tenancy.drop_baseline(text) IS
    'Remove the baseline through through_version; true when there was one. New tenants then '
    'start from the newest remaining baseline, or replay every migration; existing tenants are '
    'not touched (their state is their migration_version). To replace a baseline, drop it and '
    'squash again. Owner only.';

REVOKE ALL ON FUNCTION tenancy.drop_baseline(text) FROM PUBLIC;

-- The extension's new configuration table: pg_dump keeps its rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.baselines', '');
    END IF;
END
$$;
-- i11citus: migrations of distributed schema tenants run on the schema made local again.
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

-- i10speed: linear registration, batched. tenancy.check_scratch_schema (the
-- hand-back checks after each scratch migration) and tenancy.add_migrations
-- (several migrations in one transaction; tenancy.add_migration calls it).

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
-- i9owner: tenants' owner roles at rest (issue 9) ------------------------------

CREATE OR REPLACE FUNCTION tenancy.create_stage(p_table regclass)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stage text := format('pg_temp.%I', 'pgtenancy_stage_' || p_table::oid);
BEGIN
    -- Plain text columns: loading them runs no type's or domain's code of
    -- the tenant's (tenancy.load_stage casts them, as the tenant's role).
    EXECUTE format('CREATE TEMPORARY TABLE %s (%s) ON COMMIT DROP', v_stage,
                   (SELECT string_agg(format('%I text', a.attname), ', ' ORDER BY a.attnum)
                      FROM pg_attribute AS a
                     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attgenerated = ''));
    RETURN v_stage;
END
$$;

COMMENT ON FUNCTION tenancy.create_stage(regclass) IS
    'Create, for this transaction, a temporary table with a text column for each column of '
    'tenant table p_table an INSERT may write (tenancy.copy_columns), and return its name: an '
    'import COPYs into it, then tenancy.load_stage writes the rows as the tenant''s role. Internal.';

REVOKE ALL ON FUNCTION tenancy.create_stage(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.load_stage(p_table regclass)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stage  text := format('pg_temp.%I', 'pgtenancy_stage_' || p_table::oid);
    v_schema text := (SELECT n.nspname::text FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                       WHERE c.oid = p_table);
    v_role   name := tenancy.rest_owner(v_schema);
    v_count  bigint;
BEGIN
    EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_stage, v_role);
    v_count := tenancy.run_as_rest_owner(v_schema, format(
        'INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s', p_table,
        tenancy.copy_columns(p_table),
        (SELECT string_agg(format('%I::%s', a.attname, format_type(a.atttypid, a.atttypmod)), ', '
                           ORDER BY a.attnum)
           FROM pg_attribute AS a
          WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
        v_stage));
    EXECUTE format('DROP TABLE %s', v_stage);
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.load_stage(regclass) IS
    'Write the rows of p_table''s stage (tenancy.create_stage) into tenant table p_table, cast to '
    'its column types, as the tenant''s owner role (tenancy.run_as_rest_owner: its check '
    'constraints, domains, index expressions and triggers left on run with that role''s rights), '
    'drop the stage and return the rows written. Internal.';

REVOKE ALL ON FUNCTION tenancy.load_stage(regclass) FROM PUBLIC;

-- Existing schema tenants get their owner role, and their objects (the
-- kit's owner's until now) go to it; the tenants' group role gets what the
-- shared schemas lend to tenants.
DO $$
DECLARE
    v_schema text;
    v_owner  oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'tenancy');
    v_role   name;
BEGIN
    PERFORM tenancy.grant_shared_to_migrator();
    FOR v_schema IN
        SELECT t.schema_name FROM tenancy.tenants AS t
         WHERE t.schema_name IS NOT NULL
           AND pg_catalog.to_regnamespace(pg_catalog.quote_ident(t.schema_name)) IS NOT NULL
         ORDER BY t.schema_name
    LOOP
        v_role := tenancy.ensure_tenant_role(v_schema);
        IF v_role IS DISTINCT FROM pg_catalog.pg_get_userbyid(v_owner) THEN
            PERFORM tenancy.reown_schema(v_schema, ARRAY[v_owner], v_role, false);
        END IF;
    END LOOP;
END
$$;

-- i11node: Citus tenant placement kept across migrations. The node a
-- distributed tenant sat on before a migration made its schema local, moved
-- back after the commit by the fleet runner and Tenancy.migrate_tenant.
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

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.tenant_placements', '');
    END IF;
END
$$;
-- The check of the quiet procedures of entry (enter_known, and the token
-- one of 012_strict.sql), called in the same statement as the entry, after it: PT023
-- when the search_path the tenant got is not the one given (not checked
-- when given is NULL). A function of its own, pinned, so the procedures run
-- no statement of theirs after the entry changed search_path (one would be
-- planned again at every change of tenant). Quoted: at most 200 characters
-- of given (an attack run's 600-million-character path made the message
-- itself fail to allocate); compared byte for byte, as the C compares.
CREATE OR REPLACE FUNCTION tenancy.check_known_path(slug text, search_path text, given text, hint text)
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF given IS NOT NULL AND check_known_path.search_path <> (given COLLATE "C") THEN
        RAISE EXCEPTION 'tenant % has search_path %, not %', quote_literal(slug),
            quote_literal(check_known_path.search_path),
            concat(quote_literal(left(given, 200)), CASE WHEN length(given) > 200 THEN '...' END)
            USING ERRCODE = 'PT023', HINT = hint;
    END IF;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.check_known_path(text, text, text, text) IS
    'PT023 (with hint) when search_path, the one tenant slug got, is not given (NULL: not '
    'checked); else true. For the PL/pgSQL of the quiet procedures of entry. Internal.';

-- The quiet form of entry: CALL tenancy.enter_known('acme', <search_path>)
-- after BEGIN, for a client that learnt the tenant's search_path from an
-- earlier tenancy.enter on its connection. No output parameter, so the
-- server sends no row (the client parses none): the same entry otherwise.
-- The search_path given is checked against the one the tenant got (PT023
-- when they differ: the tenant's schema changed since the client learnt
-- it, and it enters with tenancy.enter again); NULL skips the check.
CREATE OR REPLACE FUNCTION tenancy.define_enter_known(p_c boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_c THEN
        -- The accelerator's C procedure (needs a superuser and the library).
        CREATE OR REPLACE PROCEDURE tenancy.enter_known(slug text, search_path text)
            LANGUAGE c
            AS '$libdir/pgtenancy_accel', 'pgtenancy_enter_known';
        RETURN;
    END IF;
    CREATE OR REPLACE PROCEDURE tenancy.enter_known(slug text, search_path text)
        LANGUAGE plpgsql
    AS $$
DECLARE
    v_id pg_catalog.uuid;
    v_ok pg_catalog.bool;
BEGIN
    -- One statement, planned under the caller's search_path before it
    -- changes, evaluated left to right: the entry, then the check of the
    -- path it set (tenancy.check_known_path).
    SELECT tenancy.enter_tenant($1),
           tenancy.check_known_path($1, pg_catalog.current_setting('search_path'), $2,
               'Its schema changed: enter with CALL tenancy.enter(slug) to learn its search_path.')
      INTO v_id, v_ok;
END
$$;
END
$fn$;

COMMENT ON FUNCTION tenancy.define_enter_known(boolean) IS
    'Create (or replace) the procedure tenancy.enter_known: its PL/pgSQL (p_c false) or the C '
    'accelerator''s procedure pgtenancy_enter_known (p_c true: a superuser, the library '
    'installed; raises 42501, 58P01 or 42883 otherwise). Grants and comment kept. Internal.';

REVOKE ALL ON FUNCTION tenancy.define_enter_known(boolean) FROM PUBLIC;

-- issue 16: the procedure form of entry (CALL tenancy.enter(slug) after BEGIN,
-- what the kit's connections and sessions send), as in sql/004_context.sql;
-- apply_accelerator below makes it the C procedure where enter_tenant runs its
-- C function. Application roles granted before get it as grant_app_role gives it.
CREATE OR REPLACE FUNCTION tenancy.define_enter(p_c boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_c THEN
        -- The accelerator's C procedure (needs a superuser and the library).
        CREATE OR REPLACE PROCEDURE tenancy.enter(slug text, INOUT search_path text DEFAULT NULL)
            LANGUAGE c
            AS '$libdir/pgtenancy_accel', 'pgtenancy_enter';
        PERFORM tenancy.define_enter_known(true);
        RETURN;
    END IF;
    PERFORM tenancy.define_enter_known(false);
    CREATE OR REPLACE PROCEDURE tenancy.enter(slug text, INOUT search_path text DEFAULT NULL)
        LANGUAGE plpgsql
    AS $$
DECLARE
    v_id pg_catalog.uuid;
BEGIN
    -- One statement, planned under the caller's search_path before it
    -- changes, evaluated left to right: the entry, then the path it set.
    SELECT tenancy.enter_tenant($1), pg_catalog.current_setting('search_path')
      INTO v_id, search_path;
END
$$;
END
$fn$;

COMMENT ON FUNCTION tenancy.define_enter(boolean) IS
    'Create (or replace) the procedures tenancy.enter and tenancy.enter_known '
    '(define_enter_known): their PL/pgSQL (p_c false) or the C accelerator''s procedures '
    'pgtenancy_enter and pgtenancy_enter_known (p_c true: a superuser, the library installed; '
    'raises 42501, 58P01 or 42883 otherwise). Grants and comments kept. Internal.';

REVOKE ALL ON FUNCTION tenancy.define_enter(boolean) FROM PUBLIC;

-- Install and upgrades leave the accelerator's C procedure in place (011
-- decides whether it stays).
SELECT tenancy.define_enter(false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
                     JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
                    WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
                      AND p.proname = 'enter' AND l.lanname = 'c');
-- An upgrade that keeps the C tenancy.enter gets enter_known's PL/pgSQL
-- (011 makes it C where it can).
SELECT tenancy.define_enter_known(false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
                    WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
                      AND p.proname = 'enter_known');

COMMENT ON PROCEDURE tenancy.enter(text, text) IS
    'CALL tenancy.enter(slug) after BEGIN: tenancy.enter_tenant(slug) as a procedure, which costs '
    'the server less than a SELECT of it; the same settings and refusals (PT003, PT020, PT004, '
    'PT005, PT019, PT007) as enter_tenant. Returns the search_path the tenant got (column '
    'search_path).';

COMMENT ON PROCEDURE tenancy.enter_known(text, text) IS
    'CALL tenancy.enter_known(slug, search_path) after BEGIN: tenancy.enter without output, for '
    'a client that knows the tenant''s search_path from an earlier tenancy.enter (no row sent '
    'back). The refusals of enter_tenant, and PT023 when the tenant''s search_path is not '
    'search_path (NULL: not checked).';

DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                   WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = a.role_name) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE tenancy.enter(text, text), '
                                  'tenancy.enter_known(text, text) TO %I', v_role);
    END LOOP;
END
$$;

-- cfast: the optional C accelerator of enter_tenant() and active_tenant_id(), as in
-- sql/011_accelerator.sql (before strict entry, whose apply_strict_entry uses it).

CREATE TABLE IF NOT EXISTS tenancy.accelerator (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled    boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenancy.accelerator IS
    'Whether the C accelerator is wanted in this database (one row; none means wanted). Set with '
    'tenancy.set_accelerator.';

REVOKE ALL ON TABLE tenancy.accelerator FROM PUBLIC;

-- Create the C function tenancy.<p_name>_c from the library, when it is not
-- there yet. False when that is not possible here: not a superuser (42501),
-- no library (58P01), a library without the symbol (42883). Made by a
-- superuser, owned then by the kit's owner like every other function.
CREATE OR REPLACE FUNCTION tenancy.accelerator_create_c(p_name text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sig   text;
    v_check text;
    v_ident text;
    v_attrs text;
    v_returns text := 'uuid';
    v_owner name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
BEGIN
    -- Names without their schema: tenancy.%s below.
    IF p_name = 'enter_tenant' THEN
        v_sig := 'enter_tenant_c(slug text)';
        v_ident := 'text';
        v_attrs := 'VOLATILE';
    ELSIF p_name = 'active_tenant_id' THEN
        v_sig := 'active_tenant_id_c()';
        v_ident := '';
        v_attrs := 'STABLE PARALLEL SAFE';
    ELSIF p_name = 'active_tenant_id_strict' THEN
        v_sig := 'active_tenant_id_strict_c()';
        v_ident := '';
        v_attrs := 'STABLE PARALLEL SAFE';
    ELSIF p_name = 'enter_tenant_token' THEN
        v_sig := 'enter_tenant_token_c(token text, slug text)';
        v_ident := 'text, text';
        v_attrs := 'VOLATILE';
    ELSIF p_name = 'verify_entry_token' THEN
        v_sig := 'verify_entry_token_c(token text, at_entry boolean)';
        v_ident := 'text, boolean';
        v_attrs := 'STABLE PARALLEL SAFE';
    ELSIF p_name = 'fence_target' THEN
        v_sig := 'fence_target_c(stack text)';
        v_ident := 'text';
        v_attrs := 'STABLE';
        v_returns := 'text';
    ELSE
        RAISE EXCEPTION 'no C accelerator for %', p_name USING ERRCODE = '22023';
    END IF;
    -- By argument types (the functions are made with named arguments): a kit
    -- owner that is not a superuser finds what a superuser made before.
    IF EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = p_name || '_c'
                  AND oidvectortypes(p.proargtypes) = v_ident AND l.lanname = 'c') THEN
        RETURN true;
    END IF;
    BEGIN
        -- The library is loaded and the symbol checked now, not at the
        -- first call (check_function_bodies may be off, as in a restore);
        -- the caller's setting back afterwards.
        v_check := current_setting('check_function_bodies');
        PERFORM set_config('check_function_bodies', 'on', true);
        EXECUTE format('CREATE OR REPLACE FUNCTION tenancy.%s RETURNS %s LANGUAGE c %s '
                       'AS %L, %L', v_sig, v_returns, v_attrs, '$libdir/pgtenancy_accel', 'pgtenancy_' || p_name);
        PERFORM set_config('check_function_bodies', v_check, true);
    EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_function THEN
        -- The subtransaction's rollback restored the setting.
        RETURN false;
    END;
    EXECUTE format('ALTER FUNCTION tenancy.%s_c(%s) OWNER TO %I', p_name, v_ident, v_owner);
    IF p_name = 'verify_entry_token' THEN
        -- Like verify_entry_token itself: not for every role (the parity
        -- test calls it; the other C functions verify tokens themselves).
        EXECUTE format('REVOKE ALL ON FUNCTION tenancy.%s_c(%s) FROM PUBLIC', p_name, v_ident);
    END IF;
    EXECUTE format('COMMENT ON FUNCTION tenancy.%s_c(%s) IS %L', p_name, v_ident,
                   format('C fast path of tenancy.%s (library pgtenancy_accel): the same result for an '
                          'active tenant, and tenancy.%s_plpgsql for every other case (so its errors). '
                          'Called by tenancy.%s while the accelerator is in use '
                          '(tenancy.set_accelerator).', p_name, p_name, p_name));
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.accelerator_create_c(text) IS
    'Create the C function <p_name>_c of the tenancy schema (enter_tenant, active_tenant_id, '
    'active_tenant_id_strict, enter_tenant_token, verify_entry_token, fence_target) from the library '
    'pgtenancy_accel when missing; true when it exists, false when it cannot be created here (not '
    'a superuser, no library). Raises 22023 for another name. Internal.';

REVOKE ALL ON FUNCTION tenancy.accelerator_create_c(text) FROM PUBLIC;

-- Point function p_fn (PL/pgSQL) at the C function tenancy.<p_impl>_c, or
-- (p_impl NULL) give it back its PL/pgSQL body. Pointing: the PL/pgSQL
-- definition is copied to tenancy.<p_impl>_plpgsql (the C function's
-- fallback; the bodies are written to work under either name), then p_fn
-- becomes `SELECT tenancy.<p_impl>_c(<p_args>)` in LANGUAGE sql, its other
-- attributes kept. Returns whether p_fn calls a C function afterwards.
CREATE OR REPLACE FUNCTION tenancy.accelerator_swap(p_fn regprocedure, p_impl text, p_args text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name name;
    v_src  text;
    v_def  text;
    v_lang name;
    v_stem text;
    v_head text;
    v_copy text;
BEGIN
    SELECT p.proname, p.prosrc, pg_get_functiondef(p.oid), l.lanname INTO v_name, v_src, v_def, v_lang
      FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang WHERE p.oid = p_fn;
    v_head := 'CREATE OR REPLACE FUNCTION tenancy.' || v_name || '(';
    v_stem := substring(v_src FROM E'^\\n    SELECT tenancy\\.(\\w+)_c\\(');
    IF v_lang = 'sql' AND v_stem IS NOT NULL THEN
        IF v_stem = p_impl THEN
            RETURN true;
        END IF;
        -- Back to the PL/pgSQL, from the copy the wrapper's C function uses.
        v_copy := 'CREATE OR REPLACE FUNCTION tenancy.' || v_stem || '_plpgsql(';
        SELECT pg_get_functiondef(p.oid) INTO v_def FROM pg_proc AS p
         WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = v_stem || '_plpgsql'
           AND p.proargtypes = (SELECT f.proargtypes FROM pg_proc AS f WHERE f.oid = p_fn);
        IF v_def IS NULL OR left(v_def, length(v_copy)) <> v_copy THEN
            RAISE EXCEPTION 'cannot restore %: its PL/pgSQL copy %_plpgsql is missing', p_fn, v_stem
                USING ERRCODE = 'XX000';
        END IF;
        EXECUTE v_head || substr(v_def, length(v_copy) + 1);
        SELECT p.prosrc, pg_get_functiondef(p.oid), l.lanname INTO v_src, v_def, v_lang
          FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang WHERE p.oid = p_fn;
    END IF;
    IF p_impl IS NULL OR v_lang <> 'plpgsql' THEN
        RETURN false;
    END IF;
    IF left(v_def, length(v_head)) <> v_head OR strpos(v_def, v_src) = 0
       OR strpos(v_def, E'\n LANGUAGE plpgsql\n') = 0 THEN
        RAISE EXCEPTION 'cannot accelerate %: unexpected definition', p_fn
            USING ERRCODE = 'XX000';
    END IF;
    EXECUTE 'CREATE OR REPLACE FUNCTION tenancy.' || p_impl || '_plpgsql(' || substr(v_def, length(v_head) + 1);
    -- Owned by the kit's owner like everything else: made by a superuser
    -- for an owner that is not one, the owner's next install replaces it.
    EXECUTE format('ALTER FUNCTION tenancy.%s_plpgsql(%s) OWNER TO %I', p_impl,
                   pg_get_function_identity_arguments(p_fn),
                   (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy'));
    EXECUTE format('COMMENT ON FUNCTION tenancy.%s_plpgsql(%s) IS %L', p_impl,
                   pg_get_function_identity_arguments(p_fn),
                   format('The PL/pgSQL body of tenancy.%s, copied by the accelerator '
                          '(tenancy.set_accelerator): tenancy.%s_c calls it for every case but the '
                          'common one. Internal.', v_name, p_impl));
    v_def := replace(replace(v_def, v_src, E'\n    SELECT tenancy.' || p_impl || '_c(' || p_args || E')\n'),
                     E'\n LANGUAGE plpgsql\n', E'\n LANGUAGE sql\n');
    -- An invoker function's pinned search_path goes: the call is qualified,
    -- and a SQL function with a SET clause is never inlined (each call
    -- would run the SQL function executor and set the path twice).
    IF NOT (SELECT p.prosecdef FROM pg_proc AS p WHERE p.oid = p_fn) THEN
        v_def := regexp_replace(v_def, E'\n SET search_path TO [^\n]*\n', E'\n');
    END IF;
    EXECUTE v_def;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.accelerator_swap(regprocedure, text, text) IS
    'Make PL/pgSQL function p_fn an inlinable SQL call of <p_impl>_c(p_args) after copying its '
    'definition to <p_impl>_plpgsql, or (p_impl NULL) restore its PL/pgSQL definition from that '
    'copy; OID, signature, attributes, grants and comment kept. Returns whether p_fn calls a C '
    'function afterwards. Raises XX000 when a definition is not as expected. Internal.';

REVOKE ALL ON FUNCTION tenancy.accelerator_swap(regprocedure, text, text) FROM PUBLIC;

-- The PL/pgSQL body in effect of function p_fn: its own, or for a function
-- the accelerator took over, that of the copy its C function falls back to.
CREATE OR REPLACE FUNCTION tenancy.accelerated_body(p_fn regprocedure)
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT c.prosrc FROM pg_proc AS c
                      WHERE c.pronamespace = 'tenancy'::regnamespace
                        AND c.proname = substring(p.prosrc FROM E'^\\n    SELECT tenancy\\.(\\w+)_c\\(')
                                        || '_plpgsql'
                        AND c.proargtypes = p.proargtypes),
                    p.prosrc)
      FROM pg_proc AS p WHERE p.oid = p_fn
$$;

COMMENT ON FUNCTION tenancy.accelerated_body(regprocedure) IS
    'The PL/pgSQL body in effect of function p_fn: its own source, or, while the C accelerator '
    'takes it over, the source of the PL/pgSQL copy its C function falls back to. Used by the '
    'doctor''s strict check. Internal.';

REVOKE ALL ON FUNCTION tenancy.accelerated_body(regprocedure) FROM PUBLIC;

-- The functions the accelerator may take over, each with the C function for
-- its plain body (impl) and for the body strict entry gives it (strict_impl,
-- NULL: that body stays PL/pgSQL). Later files add theirs (012).
CREATE TABLE IF NOT EXISTS tenancy.accelerated_functions (
    function    text PRIMARY KEY,
    impl        text NOT NULL,
    strict_impl text,
    args        text NOT NULL,
    with_citus  boolean NOT NULL
);

COMMENT ON TABLE tenancy.accelerated_functions IS
    'Functions the C accelerator takes over (apply_accelerator): function (regprocedure text), its '
    'C fast path <impl>_c for the plain body and <strict_impl>_c for the strict-entry body (NULL: '
    'none), the call''s arguments, and whether it may be accelerated with Citus. Written by the '
    'install files.';

REVOKE ALL ON TABLE tenancy.accelerated_functions FROM PUBLIC;

-- Not with Citus: enter_tenant, whose workers need the literal SET LOCAL
-- statements prepare_citus() writes into the PL/pgSQL.
INSERT INTO tenancy.accelerated_functions (function, impl, strict_impl, args, with_citus) VALUES
    ('tenancy.enter_tenant(text)', 'enter_tenant', 'enter_tenant', '$1', false),
    ('tenancy.active_tenant_id()', 'active_tenant_id', 'active_tenant_id_strict', '', true),
    ('tenancy.fence_target(text)', 'fence_target', 'fence_target', '$1', true)
ON CONFLICT (function) DO UPDATE
   SET impl = EXCLUDED.impl, strict_impl = EXCLUDED.strict_impl, args = EXCLUDED.args,
       with_citus = EXCLUDED.with_citus;

-- Procedures of entry that later files define (012's token entry), each
-- with the function that makes it (p_c true: the C procedure, false: its
-- PL/pgSQL): apply_accelerator makes them C while enter_tenant runs its C
-- function, as it makes tenancy.enter and tenancy.enter_known.
CREATE TABLE IF NOT EXISTS tenancy.entry_procedures (
    procedure text PRIMARY KEY,
    define    text NOT NULL
);

COMMENT ON TABLE tenancy.entry_procedures IS
    'Procedures of entry defined after the accelerator (procedure: regprocedure text) and the '
    'function that makes each (define: regprocedure text of a function taking p_c boolean), for '
    'apply_accelerator. Written by the install files.';

REVOKE ALL ON TABLE tenancy.entry_procedures FROM PUBLIC;

-- Put the recorded choice in place: accelerate what can be, where it can be.
CREATE OR REPLACE FUNCTION tenancy.apply_accelerator()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_on    boolean := coalesce((SELECT a.enabled FROM tenancy.accelerator AS a), true);
    v_citus boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
    v_fn    regprocedure;
    v_src   text;
    v_impl  text;
    v_c     boolean;
    v_any_c boolean;
    v_check text;
    -- Whether the loop made enter_tenant the call of its C function.
    v_entry_c boolean := false;
    v_swapped boolean;
    r       tenancy.accelerated_functions;
    r_proc  tenancy.entry_procedures;
BEGIN
    FOR r IN SELECT * FROM tenancy.accelerated_functions AS f ORDER BY f.function LOOP
        v_fn := r.function::regprocedure;
        -- The PL/pgSQL first: which body it has says which C function fits.
        PERFORM tenancy.accelerator_swap(v_fn, NULL, r.args);
        SELECT p.prosrc INTO v_src FROM pg_proc AS p WHERE p.oid = v_fn;
        v_impl := CASE WHEN strpos(v_src, '-- strict entry') > 0 THEN r.strict_impl ELSE r.impl END;
        IF v_on AND v_impl IS NOT NULL AND (r.with_citus OR NOT v_citus)
           AND strpos(v_src, 'citus.propagate_set_commands') = 0
           AND tenancy.accelerator_create_c(v_impl) THEN
            v_swapped := tenancy.accelerator_swap(v_fn, v_impl, r.args);
            v_entry_c := v_entry_c OR (v_swapped AND v_fn = 'tenancy.enter_tenant(text)'::regprocedure);
        END IF;
    END LOOP;
    -- The verifier's fast path on its own, for the parity test of the
    -- token checks (tests/integration/test_accelerator.py).
    IF v_on THEN
        PERFORM tenancy.accelerator_create_c('verify_entry_token');
    END IF;
    -- The procedure form of entry (tenancy.enter, 004_context.sql): C while
    -- enter_tenant runs its C function, PL/pgSQL otherwise (the accelerator
    -- off, Citus). Creating the C procedure needs a superuser: without one it
    -- stays PL/pgSQL, which enters the same way.
    -- Both procedures of entry (enter, enter_known) count: C only when both are.
    v_c := (SELECT count(*) FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
             WHERE p.oid IN ('tenancy.enter(text, text)'::regprocedure,
                             'tenancy.enter_known(text, text)'::regprocedure)
               AND l.lanname = 'c') = 2;
    v_any_c := EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                        WHERE p.oid IN ('tenancy.enter(text, text)'::regprocedure,
                                        'tenancy.enter_known(text, text)'::regprocedure)
                          AND l.lanname = 'c');
    IF v_entry_c THEN
        IF NOT v_c THEN
            BEGIN
                -- The symbol is checked now, whatever check_function_bodies
                -- says (as accelerator_create_c does).
                v_check := current_setting('check_function_bodies');
                PERFORM set_config('check_function_bodies', 'on', true);
                PERFORM tenancy.define_enter(true);
                PERFORM set_config('check_function_bodies', v_check, true);
            EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_function THEN
                NULL;
            END;
        END IF;
    ELSIF v_any_c THEN
        PERFORM tenancy.define_enter(false);
    END IF;
    FOR r_proc IN SELECT * FROM tenancy.entry_procedures AS e ORDER BY e.procedure LOOP
        BEGIN
            -- A procedure (or its define function) missing is one its own
            -- file makes again later in an install (undefined_function: the
            -- cast fails); not a superuser or no library: it stays as it is.
            v_c := EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                            WHERE p.oid = r_proc.procedure::regprocedure AND l.lanname = 'c');
            IF v_entry_c AND NOT v_c THEN
                v_check := current_setting('check_function_bodies');
                PERFORM set_config('check_function_bodies', 'on', true);
                EXECUTE format('SELECT %s(true)', r_proc.define::regprocedure::oid::regproc);
                PERFORM set_config('check_function_bodies', v_check, true);
            ELSIF v_c AND NOT v_entry_c THEN
                EXECUTE format('SELECT %s(false)', r_proc.define::regprocedure::oid::regproc);
            END IF;
        EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_function THEN
            NULL;
        END;
    END LOOP;
    RETURN tenancy.accelerator_in_use();
END
$$;

COMMENT ON FUNCTION tenancy.apply_accelerator() IS
    'Bring the functions of tenancy.accelerated_functions in line with tenancy.accelerator: wanted '
    '(the default), make each call its C function where that function exists or can be created (a '
    'superuser, the library pgtenancy_accel installed; not enter_tenant with Citus), and make the '
    'procedures tenancy.enter, tenancy.enter_known and those of tenancy.entry_procedures the C '
    'ones while enter_tenant runs its C function; not wanted, restore their PL/pgSQL. Returns accelerator_in_use(). Run by install, upgrades, '
    'set_accelerator and set_strict_entry. Owner only.';

REVOKE ALL ON FUNCTION tenancy.apply_accelerator() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.set_accelerator(enabled boolean)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF set_accelerator.enabled IS NULL THEN
        RAISE EXCEPTION 'set_accelerator needs true or false, not NULL'
            USING ERRCODE = '22004';
    END IF;
    INSERT INTO tenancy.accelerator (singleton, enabled) VALUES (true, set_accelerator.enabled)
    ON CONFLICT (singleton) DO UPDATE SET enabled = EXCLUDED.enabled, changed_at = now()
     WHERE tenancy.accelerator.enabled <> EXCLUDED.enabled;
    RETURN tenancy.apply_accelerator();
END
$$;

COMMENT ON FUNCTION tenancy.set_accelerator(boolean) IS
    'Want the C accelerator (true) or not (false) in this database, recorded for later installs '
    'and upgrades, and put in place (apply_accelerator). Returns whether it is in use afterwards: '
    'true needs the library pgtenancy_accel on the server and, the first time, a superuser. '
    'Raises 22004 (NULL). Owner only.';

REVOKE ALL ON FUNCTION tenancy.set_accelerator(boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.accelerator_in_use()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                    WHERE p.pronamespace = 'tenancy'::regnamespace AND l.lanname = 'sql'
                      AND p.prosrc ~ E'^\\n    SELECT tenancy\\.\\w+_c\\(')
$$;

COMMENT ON FUNCTION tenancy.accelerator_in_use() IS
    'True when a function of the kit (enter_tenant, active_tenant_id, enter_tenant_token) runs '
    'through its C function (the accelerator, tenancy.set_accelerator); false when the PL/pgSQL '
    'functions run.';

-- Its configuration table: pg_dump keeps its row.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.accelerator', '');
    END IF;
END
$$;

-- Install and upgrades recreate enter_tenant() and active_tenant_id() with
-- their PL/pgSQL bodies: accelerate them again, or not, as recorded. The
-- installer's --accelerator/--no-accelerator (pgtenancy.accelerator = on or
-- off in its transaction) records a choice; without one no row is written
-- (an extension's dump would restore a row its CREATE EXTENSION wrote too).
SELECT CASE pg_catalog.current_setting('pgtenancy.accelerator', true)
           WHEN 'on' THEN tenancy.set_accelerator(true)
           WHEN 'off' THEN tenancy.set_accelerator(false)
           ELSE tenancy.apply_accelerator()
       END;

-- i13strict: strict entry (issue 13 items 1, 2, 4): entry keys, signed entry tokens,
-- the verifying body of active_tenant_id() while strict mode is on, the guard of tenant
-- schemas, the doctor's strict findings. The text of sql/012_strict.sql.
CREATE TABLE IF NOT EXISTS tenancy.entry_keys (
    name       text PRIMARY KEY CHECK (name ~ '^[a-z0-9_-]{1,63}$'),
    inner_pad  bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad  bytea NOT NULL CHECK (length(outer_pad) = 64),
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenancy.entry_keys IS
    'Entry keys of strict mode, by name: the HMAC-SHA256 inner and outer pads (key XOR 0x36 and '
    'XOR 0x5c, RFC 2104) of each key. Readable by the kit''s owner only; add and drop with '
    'tenancy.add_entry_key and tenancy.drop_entry_key.';

REVOKE ALL ON TABLE tenancy.entry_keys FROM PUBLIC;

-- One row when strict entry was ever switched; no row means off. The plain
-- definitions of the functions strict mode specializes are kept here, to be
-- restored when it is switched off.
CREATE TABLE IF NOT EXISTS tenancy.strict_entry (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled   boolean NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenancy.strict_entry IS
    'Whether strict entry is on in this database (one row; none means off). Set with '
    'tenancy.set_strict_entry.';

REVOKE ALL ON TABLE tenancy.strict_entry FROM PUBLIC;

CREATE TABLE IF NOT EXISTS tenancy.strict_plain_functions (
    function   regprocedure PRIMARY KEY,
    definition text NOT NULL
);

COMMENT ON TABLE tenancy.strict_plain_functions IS
    'While strict entry is on: the plain definition (pg_get_functiondef) of each function whose '
    'body strict mode replaced, restored when it is switched off.';

REVOKE ALL ON TABLE tenancy.strict_plain_functions FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.strict_entry_enabled()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT s.enabled FROM tenancy.strict_entry AS s), false)
$$;

COMMENT ON FUNCTION tenancy.strict_entry_enabled() IS
    'True when strict entry is on in this database (tenancy.set_strict_entry). Owner only.';

REVOKE ALL ON FUNCTION tenancy.strict_entry_enabled() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.add_entry_key(name text, key bytea)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key   bytea := add_entry_key.key;
    v_inner bytea;
    v_outer bytea;
    v_old   tenancy.entry_keys;
BEGIN
    IF add_entry_key.name IS NULL OR add_entry_key.name !~ '^[a-z0-9_-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid entry key name %', coalesce(quote_literal(add_entry_key.name), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Key names are 1 to 63 characters of a-z, 0-9, _ and -.';
    END IF;
    IF v_key IS NULL OR length(v_key) < 32 THEN
        RAISE EXCEPTION 'entry key % is shorter than 32 bytes', quote_literal(add_entry_key.name)
            USING ERRCODE = '22023',
                  HINT = 'Use 32 random bytes or more (Python: secrets.token_bytes(32)).';
    END IF;
    -- RFC 2104: a key longer than the block (64 bytes) is hashed first,
    -- then padded with zeros to the block.
    IF length(v_key) > 64 THEN
        v_key := sha256(v_key);
    END IF;
    v_key := v_key || decode(repeat('00', 64 - length(v_key)), 'hex');
    v_inner := v_key;
    v_outer := v_key;
    FOR i IN 0 .. 63 LOOP
        v_inner := set_byte(v_inner, i, get_byte(v_key, i) # 54);   -- 0x36
        v_outer := set_byte(v_outer, i, get_byte(v_key, i) # 92);   -- 0x5c
    END LOOP;
    SELECT * INTO v_old FROM tenancy.entry_keys AS k WHERE k.name = add_entry_key.name;
    IF FOUND THEN
        IF v_old.inner_pad = v_inner THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'entry key % exists with another value', quote_literal(add_entry_key.name)
            USING ERRCODE = '22023',
                  HINT = 'Rotate by adding the new key under a new name, then drop the old one.';
    END IF;
    INSERT INTO tenancy.entry_keys (name, inner_pad, outer_pad)
    VALUES (add_entry_key.name, v_inner, v_outer);
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.add_entry_key(text, bytea) IS
    'Add entry key name (1-63 of a-z 0-9 _ -) with secret key (32 bytes or more): tokens signed '
    'with it (pgtenancy.sign_tenant_token(key, slug, ttl, key_name=name)) enter tenants. Several '
    'keys may be active at once (rotation: add the new one, sign with it, drop the old one). True '
    'when added, false when the same key is there already. Raises 22023 (bad name, short key, '
    'name taken by another key). Owner only.';

REVOKE ALL ON FUNCTION tenancy.add_entry_key(text, bytea) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_entry_key(name text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenancy.entry_keys AS k WHERE k.name = drop_entry_key.name) THEN
        RETURN false;
    END IF;
    IF tenancy.strict_entry_enabled()
       AND NOT EXISTS (SELECT 1 FROM tenancy.entry_keys AS k WHERE k.name <> drop_entry_key.name) THEN
        RAISE EXCEPTION 'entry key % is the last one and strict entry is on: no tenant could be entered',
            quote_literal(drop_entry_key.name)
            USING ERRCODE = '22023',
                  HINT = 'Add the next key first, or switch strict entry off.';
    END IF;
    DELETE FROM tenancy.entry_keys AS k WHERE k.name = drop_entry_key.name;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.drop_entry_key(text) IS
    'Drop entry key name: tokens signed with it are refused from the next statement on (PT025). '
    'True when dropped, false when there was no such key. Raises 22023 for the last key while '
    'strict entry is on. Owner only.';

REVOKE ALL ON FUNCTION tenancy.drop_entry_key(text) FROM PUBLIC;

-- The verifier. SECURITY DEFINER: it alone reads the keys. Called once per
-- statement (through active_tenant_id in the policies' InitPlan) and at
-- entry. The cost of a PL/pgSQL function is mostly per statement and per
-- expression, paid again in every transaction: one statement checks the
-- key, the tenant, the signature and the expiry; what was wrong is worked
-- out only for a token that fails.
CREATE OR REPLACE FUNCTION tenancy.verify_entry_token(token text, at_entry boolean DEFAULT true)
    RETURNS uuid
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token    text := verify_entry_token.token;
    v_parts    text[];
    v_ok       boolean;
    v_id       uuid;
    v_status   text;
    v_assigned timestamptz;
    v_now      bigint;
BEGIN
    -- HMAC-SHA256 (RFC 2104) under the named key over everything before the
    -- last dot, compared as hashes of the hex text: the time the comparison
    -- takes says nothing of the MAC. v_ok: true when it verifies and its
    -- times hold (issued no later than its expiry, nor more than 60 s ahead
    -- of this server's clock, nor before the tenant got its slug; expiry
    -- ahead), false when it verifies and a time fails, NULL when it does not
    -- verify (no row: no such key). CASE: the times of a malformed token are
    -- not even computed. The pattern has no bounded repetition ({64}): those
    -- make PostgreSQL's regular expressions many times slower.
    SELECT CASE WHEN v_token ~ '^pt2\.[a-z0-9_-]+\.[a-z0-9_-]+\.[0-9]+\.[0-9]+\.[0-9a-f]+\.[0-9a-f]+$'
                     AND length(split_part(v_token, '.', 4)) <= 16
                     AND length(split_part(v_token, '.', 5)) <= 16
                     AND length(split_part(v_token, '.', 6)) BETWEEN 16 AND 64
                     AND sha256(convert_to('.' || encode(sha256(k.outer_pad || sha256(k.inner_pad
                             || convert_to(left(v_token, length(v_token) - 65), 'UTF8'))), 'hex'), 'UTF8'))
                         = sha256(convert_to(right(v_token, 65), 'UTF8'))
                THEN split_part(v_token, '.', 5)::bigint
                         > (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                     AND split_part(v_token, '.', 4)::bigint <= split_part(v_token, '.', 5)::bigint
                     AND split_part(v_token, '.', 4)::bigint
                         <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000
                     AND split_part(v_token, '.', 4)::bigint
                         >= coalesce(floor(extract(epoch FROM t.slug_assigned_at) * 1000)::bigint, 0)
           END,
           t.id, t.status, t.slug_assigned_at
      INTO v_ok, v_id, v_status, v_assigned
      FROM tenancy.entry_keys AS k
      LEFT JOIN tenancy.tenants AS t ON t.slug = split_part(v_token, '.', 3)
     WHERE k.name = split_part(v_token, '.', 2);
    IF v_ok AND (v_status = 'active' OR (verify_entry_token.at_entry AND v_id IS NOT NULL)) THEN
        RETURN v_id;
    END IF;
    -- Refused, or a tenant that is not active: why.
    IF v_ok IS NULL THEN
        v_parts := string_to_array(v_token, '.');
        IF cardinality(v_parts) IS DISTINCT FROM 7 OR v_parts[1] <> 'pt2'
           OR length(v_parts[4]) NOT BETWEEN 1 AND 16 OR v_parts[4] !~ '^[0-9]+$'
           OR length(v_parts[5]) NOT BETWEEN 1 AND 16 OR v_parts[5] !~ '^[0-9]+$'
           OR length(v_parts[6]) NOT BETWEEN 16 AND 64 OR v_parts[6] !~ '^[0-9a-f]+$'
           OR length(v_parts[7]) <> 64 OR v_parts[7] !~ '^[0-9a-f]+$' THEN
            RAISE EXCEPTION 'entry token refused: not a pgtenancy token'
                USING ERRCODE = 'PT025',
                      HINT = 'Sign tokens with pgtenancy.sign_tenant_token (format pt2).';
        END IF;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'entry token refused: unknown key %', quote_literal(v_parts[2])
                USING ERRCODE = 'PT025';
        END IF;
        RAISE EXCEPTION 'entry token refused: bad signature'
            USING ERRCODE = 'PT025';
    END IF;
    IF NOT v_ok THEN
        v_parts := string_to_array(v_token, '.');
        v_now := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
        IF v_parts[4]::bigint > v_parts[5]::bigint THEN
            RAISE EXCEPTION 'entry token refused: issued at % after its expiry at %',
                to_timestamp(v_parts[4]::bigint / 1000.0), to_timestamp(v_parts[5]::bigint / 1000.0)
                USING ERRCODE = 'PT025';
        END IF;
        IF v_parts[4]::bigint > v_now + 60000 THEN
            RAISE EXCEPTION 'entry token refused: issued at %, more than 60 s ahead of the database''s clock',
                to_timestamp(v_parts[4]::bigint / 1000.0)
                USING ERRCODE = 'PT025',
                      HINT = 'Synchronize the clocks of the signing host and the database (NTP).';
        END IF;
        IF v_parts[4]::bigint < floor(extract(epoch FROM v_assigned) * 1000)::bigint THEN
            RAISE EXCEPTION 'entry token refused: issued at %, before tenant % got its slug (at %)',
                to_timestamp(v_parts[4]::bigint / 1000.0), quote_literal(v_parts[3]), v_assigned
                USING ERRCODE = 'PT034',
                      DETAIL = 'The token was signed for the slug''s previous holder (a tenant since '
                               'renamed or destroyed) or for this tenant under its previous slug.',
                      HINT = 'Sign a new token for the tenant.';
        END IF;
        IF verify_entry_token.at_entry THEN
            RAISE EXCEPTION 'entry token refused: expired at %',
                to_timestamp(v_parts[5]::bigint / 1000.0)
                USING ERRCODE = 'PT026';
        END IF;
        RAISE EXCEPTION 'entry token of this transaction expired at %: its tenant''s rows are out of reach',
            to_timestamp(v_parts[5]::bigint / 1000.0)
            USING ERRCODE = 'PT028',
                  HINT = 'Enter the tenant again with a fresh token.';
    END IF;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'tenant % not found', quote_literal(split_part(v_token, '.', 3))
            USING ERRCODE = 'PT003';
    END IF;
    -- A suspended or deleted tenant: enter_tenant says why at entry; later
    -- statements see no tenant.
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.verify_entry_token(text, boolean) IS
    'Id of the tenant entry token token (pt2.<key>.<slug>.<issued ms>.<expiry ms>.<nonce>.<mac>) '
    'is for, when its HMAC-SHA256 signature verifies under an entry key, it has not expired '
    '(against clock_timestamp()), it was issued no later than its expiry and at most 60 s '
    'ahead of this server''s clock, and not before the tenant got its slug '
    '(tenancy.tenants.slug_assigned_at: a token for a renamed or destroyed previous holder of the '
    'slug enters nothing). Raises PT025 (malformed, unknown key, bad signature, issued after its '
    'expiry or in the future), PT034 (issued before the tenant got its slug), PT026 (expired, '
    'at_entry), PT028 (expired, later statements: at_entry false), PT003 (no such tenant); with '
    'at_entry false NULL for a tenant that is not active. Reads the keys and the registry as the '
    'kit''s owner. Granted to application roles.';

REVOKE ALL ON FUNCTION tenancy.verify_entry_token(text, boolean) FROM PUBLIC;

-- Entry with a token. SECURITY INVOKER and no SET clause, like enter_tenant
-- (a SET clause would undo the transaction-local settings on return).
CREATE OR REPLACE FUNCTION tenancy.enter_tenant_token(token text, slug text DEFAULT NULL)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    -- The parameters by position, not as p_token: the
    -- accelerator (011_accelerator.sql) keeps this body under another name too.
    p_token ALIAS FOR $1;
    p_slug  ALIAS FOR $2;
    v_id   pg_catalog.uuid := tenancy.verify_entry_token(p_token, true);
    v_slug pg_catalog.text := pg_catalog.split_part(p_token, '.', 3);
BEGIN
    -- REPEATABLE READ and SERIALIZABLE: the snapshot's registry and keys can
    -- be older than the token (a slug renamed or destroyed and given to
    -- another tenant since resolves to its previous holder, whose rows the
    -- new holder's token would open). Only the C accelerator reads the
    -- committed state; without it such transactions are refused.
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
       AND tenancy.strict_without_c() THEN
        RAISE EXCEPTION 'strict entry in a % transaction needs the C accelerator',
            pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '0A000',
                  HINT = 'Use READ COMMITTED, or install the accelerator (make install-extension; tenancy.set_accelerator(true)).';
    END IF;
    IF p_slug IS NOT NULL AND p_slug OPERATOR(pg_catalog.<>) v_slug THEN
        RAISE EXCEPTION 'entry token is for tenant %, not %', pg_catalog.quote_literal(v_slug),
            pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT027';
    END IF;
    -- The token first: after enter_tenant has changed search_path, a
    -- statement with a cached plan would be planned again (an error in
    -- enter_tenant aborts the transaction, setting and all).
    PERFORM pg_catalog.set_config('app.tenant_token', p_token, true);
    PERFORM tenancy.enter_tenant(v_slug);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant_token(text, text) IS
    'Put the current transaction into the tenant of entry token token (pgtenancy.sign_tenant_token) '
    'after verifying it: enter_tenant(its slug), and the token in the transaction-local setting '
    'app.tenant_token, which every later statement re-verifies when strict entry is on. slug, '
    'when given, must be the token''s tenant. Returns the tenant id. Raises PT025 (forged, '
    'malformed, unknown key, issued after its expiry or in the future), PT026 (expired), PT027 '
    '(slug is another tenant), PT034 (issued before the tenant got its slug) and enter_tenant''s '
    'errors (PT003, PT004, PT005, PT007, PT019, PT020), before anything is set.';

-- Whether the C accelerator checks a strict transaction's token against the
-- committed state (REPEATABLE READ and SERIALIZABLE, whose snapshot can be
-- older than the token): true while active_tenant_id() is its SQL call of C.
CREATE OR REPLACE FUNCTION tenancy.strict_checked_in_c()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                    WHERE p.oid = 'tenancy.active_tenant_id()'::regprocedure AND l.lanname = 'sql')
$$;

COMMENT ON FUNCTION tenancy.strict_checked_in_c() IS
    'True while the C accelerator runs active_tenant_id() (its SQL call of the C function), which '
    'checks a REPEATABLE READ or SERIALIZABLE transaction''s entry token against the committed '
    'state; without it strict entry refuses such transactions (0A000). Internal.';

-- Token entry's test of the same: strict entry on and its checks not in C,
-- read off active_tenant_id() itself (its strict body in PL/pgSQL), which
-- every caller may read (enter_tenant_token runs as its caller, who may not
-- read the mode's table).
CREATE OR REPLACE FUNCTION tenancy.strict_without_c()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                    WHERE p.oid = 'tenancy.active_tenant_id()'::regprocedure
                      AND l.lanname = 'plpgsql' AND strpos(p.prosrc, '-- strict entry') > 0)
$$;

COMMENT ON FUNCTION tenancy.strict_without_c() IS
    'True when strict entry is on and the C accelerator does not run its checks '
    '(strict_checked_in_c): enter_tenant_token then refuses REPEATABLE READ and SERIALIZABLE '
    'transactions (0A000). Internal.';

-- The body of active_tenant_id() while strict entry is on. Kept as text:
-- set_strict_entry puts it in place of the plain body (same signature and
-- attributes, same OID, so every policy calling the function follows).
CREATE OR REPLACE FUNCTION tenancy.strict_active_tenant_body()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
AS $$
    SELECT $body$
-- strict entry (tenancy.set_strict_entry): only a verified tenant. Every
-- name qualified: this runs with the caller's search_path (tests/sql/
-- test_unpinned_names.py).
DECLARE
    v_token pg_catalog.text := pg_catalog.current_setting('app.tenant_token', true);
    v_id    pg_catalog.uuid := tenancy.current_tenant_id();
    v_ok    pg_catalog.uuid;
BEGIN
    IF v_token IS NULL OR v_token OPERATOR(pg_catalog.=) '' THEN
        -- The kit's owner (migrations, admin, delete_shared_rows) is trusted
        -- by its login role, which an application role cannot change.
        IF v_id IS NULL OR pg_catalog.pg_has_role(session_user,
               (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n
                 WHERE n.nspname OPERATOR(pg_catalog.=) 'tenancy'), 'MEMBER') THEN
            RETURN v_id;
        END IF;
        RAISE EXCEPTION 'strict entry: this transaction is in a tenant without an entry token'
            USING ERRCODE = 'PT025',
                  HINT = 'Enter with a token: tenant_session(engine, token=...) or tenancy.enter_tenant_token(token).';
    END IF;
    -- REPEATABLE READ and SERIALIZABLE: the snapshot's registry and keys can
    -- be older than the token (a slug renamed or destroyed and given to
    -- another tenant since resolves to its previous holder, whose rows the
    -- new holder's token would open). Only the C accelerator reads the
    -- committed state; without it such transactions are refused.
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
       AND NOT tenancy.strict_checked_in_c() THEN
        RAISE EXCEPTION 'strict entry in a % transaction needs the C accelerator',
            pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '0A000',
                  HINT = 'Use READ COMMITTED, or install the accelerator (make install-extension; tenancy.set_accelerator(true)).';
    END IF;
    v_ok := tenancy.verify_entry_token(v_token, false);
    IF v_ok IS NULL THEN
        RETURN NULL;   -- the tenant is no longer active
    END IF;
    IF v_id IS NULL OR v_id OPERATOR(pg_catalog.<>) v_ok THEN
        RAISE EXCEPTION 'strict entry: app.tenant_id is not the tenant of this transaction''s entry token'
            USING ERRCODE = 'PT027';
    END IF;
    RETURN v_ok;
END
$body$
$$;

COMMENT ON FUNCTION tenancy.strict_active_tenant_body() IS
    'The PL/pgSQL body tenancy.active_tenant_id() gets while strict entry is on: the tenant of the '
    'verified entry token (PT025 without one, PT027 when app.tenant_id names another, PT028 once it '
    'expired); sessions of the kit''s owner keep app.tenant_id. Internal.';

REVOKE ALL ON FUNCTION tenancy.strict_active_tenant_body() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.strict_owner_session()
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    PARALLEL SAFE
AS $$
BEGIN
    -- PL/pgSQL, not SQL: a SQL function with a sub-select is planned on
    -- every call; this plan is cached.
    RETURN pg_catalog.pg_has_role(session_user,
               (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n
                 WHERE n.nspname OPERATOR(pg_catalog.=) 'tenancy'), 'MEMBER');
END
$$;

COMMENT ON FUNCTION tenancy.strict_owner_session() IS
    'True when the session''s login role (session_user, which an application role cannot change) '
    'is a member of the kit''s owner: migrations, admin and the kit''s own functions pass the '
    'strict guard of tenant schemas.';

-- Tables of tenant schemas: what the strict policy asks. SQL without a
-- sub-select, so the planner inlines it into the policy's InitPlan: one
-- PL/pgSQL call (active_tenant_id) per statement, the owner test (a
-- catalog lookup) only when that is not the schema's tenant.
CREATE OR REPLACE FUNCTION tenancy.strict_schema_guard(tenant uuid)
    RETURNS boolean
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT coalesce(tenancy.active_tenant_id() OPERATOR(pg_catalog.=) strict_schema_guard.tenant, false)
           OR tenancy.strict_owner_session()
$$;

COMMENT ON FUNCTION tenancy.strict_schema_guard(uuid) IS
    'Policy check of tables of tenant schemas in strict mode: true for sessions of the kit''s owner '
    '(login role a member of it, strict_owner_session), otherwise only when the transaction''s '
    'verified tenant (active_tenant_id) is tenant. Inlined into the policy; evaluated once per '
    'statement (InitPlan).';

-- Guard one tenant schema: a RESTRICTIVE policy (and its permissive
-- companion) with ENABLE and FORCE ROW LEVEL SECURITY on every table,
-- security_invoker on every view, and no application-role access to what
-- row-level security cannot guard (materialized views, foreign tables,
-- sequence values).
CREATE OR REPLACE FUNCTION tenancy.strict_guard_schema(p_schema text)
    RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid;
    v_check  text;
    v_count  integer := 0;
    r        record;
    v_role   name;
BEGIN
    SELECT t.id INTO v_tenant FROM tenancy.tenants AS t WHERE t.schema_name = p_schema;
    IF NOT FOUND OR to_regnamespace(quote_ident(p_schema)) IS NULL THEN
        RETURN 0;
    END IF;
    v_check := format('(SELECT tenancy.strict_schema_guard(%L::uuid))', v_tenant);
    FOR r IN
        SELECT c.oid::regclass AS tbl, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               coalesce((SELECT o.option_value::boolean FROM pg_options_to_table(c.reloptions) AS o
                          WHERE o.option_name = 'security_invoker'), false) AS invoker,
               (SELECT pg_get_expr(p.polqual, p.polrelid) FROM pg_policy AS p
                 WHERE p.polrelid = c.oid AND p.polname = 'tenancy_strict_schema') AS qual,
               EXISTS (SELECT 1 FROM pg_policy AS p
                        WHERE p.polrelid = c.oid AND p.polname = 'tenancy_strict_rows') AS has_rows
          FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_schema))
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
         ORDER BY c.oid
    LOOP
        IF r.relkind IN ('r', 'p') THEN
            IF r.qual IS NULL THEN
                EXECUTE format('CREATE POLICY tenancy_strict_schema ON %s AS RESTRICTIVE FOR ALL '
                               'USING (%s) WITH CHECK (%s)', r.tbl, v_check, v_check);
                v_count := v_count + 1;
            ELSIF strpos(r.qual, v_tenant::text) = 0 THEN
                -- Copied from another tenant's table (clone): this tenant's id.
                EXECUTE format('ALTER POLICY tenancy_strict_schema ON %s USING (%s) WITH CHECK (%s)',
                               r.tbl, v_check, v_check);
                v_count := v_count + 1;
            END IF;
            IF NOT r.has_rows THEN
                EXECUTE format('CREATE POLICY tenancy_strict_rows ON %s AS PERMISSIVE FOR ALL '
                               'USING (true) WITH CHECK (true)', r.tbl);
            END IF;
            IF NOT r.relrowsecurity THEN
                EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', r.tbl);
            END IF;
            IF NOT r.relforcerowsecurity THEN
                EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.tbl);
            END IF;
        ELSIF r.relkind = 'v' THEN
            -- Only where needed: ALTER VIEW locks the view (ACCESS EXCLUSIVE),
            -- and a strict re-guard of every tenant (grant_app_role) would
            -- lock every view of every tenant schema.
            IF NOT r.invoker THEN
                EXECUTE format('ALTER VIEW %s SET (security_invoker = true)', r.tbl);
            END IF;
        ELSE
            FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                            JOIN pg_roles AS o ON o.rolname = a.role_name LOOP
                IF r.relkind = 'S' THEN
                    -- nextval for column defaults stays; reading and setting values goes.
                    EXECUTE format('REVOKE SELECT, UPDATE ON SEQUENCE %s FROM %I', r.tbl, v_role);
                ELSE
                    EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', r.tbl, v_role);
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    -- A SECURITY DEFINER function runs as its owner: owned by a superuser it
    -- skips every policy. Migrations refuse them; one made by hand is out
    -- of the application roles' reach.
    FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc AS p
              WHERE p.pronamespace = to_regnamespace(quote_ident(p_schema)) AND p.prosecdef LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', r.fn);
        FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                        JOIN pg_roles AS o ON o.rolname = a.role_name LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', r.fn, v_role);
        END LOOP;
    END LOOP;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.strict_guard_schema(text) IS
    'Strict mode for tenant schema p_schema: every table gets the RESTRICTIVE policy '
    'tenancy_strict_schema (rows only for the verified tenant owning the schema, or the kit''s '
    'owner), its permissive companion tenancy_strict_rows, ENABLE and FORCE ROW LEVEL SECURITY; '
    'views get security_invoker; application roles lose access to materialized views and foreign '
    'tables, SELECT and UPDATE (not USAGE) on sequences, and EXECUTE on SECURITY DEFINER functions '
    '(revoked from PUBLIC too). Returns how many policies it created '
    'or corrected. Idempotent. Internal.';

REVOKE ALL ON FUNCTION tenancy.strict_guard_schema(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.strict_unguard_schema(p_schema text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS tbl FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_schema))
           AND EXISTS (SELECT 1 FROM pg_policy AS p
                        WHERE p.polrelid = c.oid AND p.polname = 'tenancy_strict_schema')
    LOOP
        EXECUTE format('DROP POLICY tenancy_strict_schema ON %s', r.tbl);
        EXECUTE format('DROP POLICY IF EXISTS tenancy_strict_rows ON %s', r.tbl);
        -- Row-level security stays on where policies of the application remain.
        IF NOT EXISTS (SELECT 1 FROM pg_policy AS p WHERE p.polrelid = r.tbl) THEN
            EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', r.tbl);
            EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', r.tbl);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = p_schema) THEN
        PERFORM tenancy.grant_schema_to_app_roles(p_schema);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.strict_unguard_schema(text) IS
    'Undo strict_guard_schema on tenant schema p_schema: drop its policies (row-level security off '
    'where no other policy remains) and grant the schema to the application roles again '
    '(grant_schema_to_app_roles). Views keep security_invoker. Internal.';

REVOKE ALL ON FUNCTION tenancy.strict_unguard_schema(text) FROM PUBLIC;

-- Replace the body of function p_fn with p_body, or restore its plain
-- definition (p_body NULL). The plain definition is saved first.
CREATE OR REPLACE FUNCTION tenancy.strict_swap_body(p_fn regprocedure, p_body text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_src   text;
    v_def   text;
    v_plain text;
BEGIN
    SELECT p.prosrc, pg_get_functiondef(p.oid) INTO v_src, v_def FROM pg_proc AS p WHERE p.oid = p_fn;
    SELECT f.definition INTO v_plain FROM tenancy.strict_plain_functions AS f WHERE f.function = p_fn;
    IF p_body IS NULL THEN
        IF v_plain IS NOT NULL THEN
            EXECUTE v_plain;
            DELETE FROM tenancy.strict_plain_functions AS f WHERE f.function = p_fn;
        END IF;
        RETURN;
    END IF;
    IF v_src = p_body THEN
        RETURN;
    END IF;
    -- Not the strict body: the plain one (perhaps new, after an upgrade).
    INSERT INTO tenancy.strict_plain_functions (function, definition) VALUES (p_fn, v_def)
    ON CONFLICT (function) DO UPDATE SET definition = EXCLUDED.definition;
    IF strpos(v_def, v_src) = 0 THEN
        RAISE EXCEPTION 'cannot specialize %: its definition does not hold its body', p_fn
            USING ERRCODE = 'XX000';
    END IF;
    EXECUTE replace(v_def, v_src, p_body);
END
$$;

COMMENT ON FUNCTION tenancy.strict_swap_body(regprocedure, text) IS
    'Give function p_fn the body p_body (its signature, attributes, OID and comment kept), saving '
    'its plain definition in tenancy.strict_plain_functions; with p_body NULL restore that plain '
    'definition. Internal to set_strict_entry.';

REVOKE ALL ON FUNCTION tenancy.strict_swap_body(regprocedure, text) FROM PUBLIC;

-- Put strict mode in place (p_on) or take it away, from the recorded state.
-- Run by set_strict_entry, at the end of install and of upgrades (which
-- recreate the specialized functions with their plain bodies).
CREATE OR REPLACE FUNCTION tenancy.apply_strict_entry()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_on     boolean := tenancy.strict_entry_enabled();
    v_schema text;
    v_info   text;
BEGIN
    -- The accelerator (011) makes active_tenant_id() an SQL call of C: give
    -- it its PL/pgSQL back before its body is swapped or restored, and let
    -- the accelerator take it again after (the plain body only).
    PERFORM tenancy.accelerator_swap('tenancy.active_tenant_id()'::regprocedure, NULL, '');
    IF v_on THEN
        PERFORM tenancy.strict_swap_body('tenancy.active_tenant_id()'::regprocedure,
                                         tenancy.strict_active_tenant_body());
        -- tenant_info() shows the verified tenant, not app.tenant_id.
        SELECT p.prosrc INTO v_info FROM pg_proc AS p WHERE p.oid = 'tenancy.tenant_info()'::regprocedure;
        IF strpos(v_info, '-- strict entry') = 0 THEN
            PERFORM tenancy.strict_swap_body('tenancy.tenant_info()'::regprocedure,
                E'\n-- strict entry (tenancy.set_strict_entry): the verified tenant.'
                || replace(v_info, 'tenancy.current_tenant_id()', 'tenancy.active_tenant_id()'));
        END IF;
        FOR v_schema IN SELECT t.schema_name FROM tenancy.tenants AS t
                         WHERE t.schema_name IS NOT NULL ORDER BY t.schema_name LOOP
            PERFORM tenancy.strict_guard_schema(v_schema);
        END LOOP;
    ELSE
        PERFORM tenancy.strict_swap_body(f.function, NULL) FROM tenancy.strict_plain_functions AS f;
        FOR v_schema IN SELECT t.schema_name FROM tenancy.tenants AS t
                         WHERE t.schema_name IS NOT NULL ORDER BY t.schema_name LOOP
            PERFORM tenancy.strict_unguard_schema(v_schema);
        END LOOP;
    END IF;
    PERFORM tenancy.apply_accelerator();
    RETURN v_on;
END
$$;

COMMENT ON FUNCTION tenancy.apply_strict_entry() IS
    'Bring the database in line with tenancy.strict_entry: on, specialize active_tenant_id() and '
    'tenant_info() to the verified tenant and guard every tenant schema (strict_guard_schema); '
    'off, restore their plain definitions and unguard the schemas. Returns whether strict entry is '
    'on. Run by set_strict_entry, install and upgrades. Owner only.';

REVOKE ALL ON FUNCTION tenancy.apply_strict_entry() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.set_strict_entry(enabled boolean)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_was boolean := tenancy.strict_entry_enabled();
BEGIN
    IF set_strict_entry.enabled IS NULL THEN
        RAISE EXCEPTION 'set_strict_entry needs true or false, not NULL'
            USING ERRCODE = '22004';
    END IF;
    IF set_strict_entry.enabled THEN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
            RAISE EXCEPTION 'strict entry is not available with Citus'
                USING ERRCODE = '0A000',
                      DETAIL = 'Citus refuses sub-selects in policies of distributed tables, and the '
                               'workers could not read the entry keys.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM tenancy.entry_keys) THEN
            RAISE EXCEPTION 'strict entry needs an entry key first: no tenant could be entered'
                USING ERRCODE = '22023',
                      HINT = 'SELECT tenancy.add_entry_key(''k1'', <32 random bytes or more>)';
        END IF;
    END IF;
    -- One switch at a time: concurrent switches would save each other's bodies.
    LOCK TABLE tenancy.strict_entry IN EXCLUSIVE MODE;
    INSERT INTO tenancy.strict_entry (singleton, enabled) VALUES (true, set_strict_entry.enabled)
    ON CONFLICT (singleton) DO UPDATE SET enabled = EXCLUDED.enabled, changed_at = now();
    PERFORM tenancy.apply_strict_entry();
    RETURN v_was;
END
$$;

COMMENT ON FUNCTION tenancy.set_strict_entry(boolean) IS
    'Switch strict entry on (true) or off (false) for this database; returns the previous state. '
    'On: a transaction of a role outside the kit''s owner is in a tenant only with a verified entry '
    'token (enter_tenant_token); guarded shared tables and the tables of tenant schemas show only '
    'that tenant''s rows. Raises 22023 (no entry key yet), 0A000 (Citus), 22004 (NULL). Idempotent. '
    'Owner only.';

REVOKE ALL ON FUNCTION tenancy.set_strict_entry(boolean) FROM PUBLIC;

-- Migrations and provisioning end by updating the tenant's row: guard the
-- tables they created, in the same transaction.
CREATE OR REPLACE FUNCTION tenancy.tenants_sync_strict()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    IF NEW.schema_name IS NULL OR tenancy.restoring() OR NOT tenancy.strict_entry_enabled() THEN
        RETURN NULL;
    END IF;
    PERFORM tenancy.strict_guard_schema(NEW.schema_name);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_sync_strict() IS
    'Trigger: while strict entry is on, guard the tenant''s schema (strict_guard_schema) whenever '
    'its row is inserted or its status, schema or migration version changes, which is how '
    'provisioning and every migration end.';

REVOKE ALL ON FUNCTION tenancy.tenants_sync_strict() FROM PUBLIC;

-- Named to fire after tenants_sync_grants (triggers fire in name order),
-- which grants the schema again on a status change.
CREATE OR REPLACE TRIGGER tenants_sync_strict
    AFTER INSERT OR UPDATE OF status, schema_name, migration_version ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_sync_strict();

-- The doctor's strict findings, run by check_isolation (006) by name.
CREATE OR REPLACE FUNCTION tenancy.check_strict()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_on boolean := tenancy.strict_entry_enabled();
BEGIN
    RETURN QUERY
        SELECT 'info'::text, 'strict_entry_off'::text, current_database()::text,
               format('strict entry is off and %s tenants are shared: SQL run by the application '
                      'role can set app.tenant_id to any tenant', count(*)),
               'SELECT tenancy.add_entry_key(''k1'', <key>); SELECT tenancy.set_strict_entry(true)'::text
          FROM tenancy.tenants AS t
         WHERE t.isolation = 'shared' AND t.status <> 'deleted' AND NOT v_on
        HAVING count(*) > 0;

    IF v_on THEN
        RETURN QUERY
            SELECT 'error'::text, 'strict_entry_not_applied'::text, 'tenancy.active_tenant_id()'::text,
                   'strict entry is recorded as on but active_tenant_id() has its plain body (a '
                   'restore or a manual CREATE OR REPLACE): policies trust app.tenant_id'::text,
                   'SELECT tenancy.set_strict_entry(true)'::text
             -- The body in effect: the C accelerator (011) falls back to a copy.
             WHERE tenancy.accelerated_body('tenancy.active_tenant_id()'::regprocedure)
                   IS DISTINCT FROM tenancy.strict_active_tenant_body();
    END IF;

    -- Tables of tenant schemas without the strict policy, views without
    -- security_invoker, unguardable relations an application role can read.
    RETURN QUERY
        SELECT CASE WHEN v_on THEN 'error' ELSE 'info' END::text, 'strict_guard_missing'::text,
               format('%I.%I', n.nspname, c.relname),
               format('%s %I.%I of tenant %s %s', CASE c.relkind WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                          WHEN 'S' THEN 'sequence' ELSE 'table' END,
                      n.nspname, c.relname, t.slug,
                      CASE WHEN c.relkind IN ('r', 'p')
                           THEN 'lacks the strict guard (policy tenancy_strict_schema, FORCE ROW LEVEL SECURITY)'
                           WHEN c.relkind = 'v' THEN 'is not security_invoker: it reads as its owner'
                           ELSE 'cannot carry row-level security and an application role can read it' END),
               'SELECT tenancy.set_strict_entry(true)'::text
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_class AS c ON c.relnamespace = n.oid
         WHERE v_on AND (
               (c.relkind IN ('r', 'p') AND (NOT c.relforcerowsecurity OR NOT c.relrowsecurity
                   OR NOT EXISTS (SELECT 1 FROM pg_policy AS p WHERE p.polrelid = c.oid
                                     AND p.polname = 'tenancy_strict_schema' AND NOT p.polpermissive
                                     AND strpos(pg_get_expr(p.polqual, p.polrelid), t.id::text) > 0)))
            OR (c.relkind = 'v' AND NOT coalesce(c.reloptions @> ARRAY['security_invoker=true'], false))
            OR (c.relkind IN ('m', 'f') AND EXISTS (
                   SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
                    WHERE has_table_privilege(r.oid, c.oid, 'SELECT')))
            OR (c.relkind = 'S' AND EXISTS (
                   SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
                    WHERE has_sequence_privilege(r.oid, c.oid, 'SELECT')
                       OR has_sequence_privilege(r.oid, c.oid, 'UPDATE'))));

    -- SECURITY DEFINER functions an application role may call that run as
    -- a role bypassing row-level security (a superuser, BYPASSRLS, the
    -- owner of a guarded table): they read every tenant's rows.
    RETURN QUERY
        SELECT CASE WHEN v_on AND t.slug IS NOT NULL THEN 'error' ELSE 'warning' END::text,
               'definer_function_bypasses_rls'::text, p.oid::regprocedure::text,
               format('SECURITY DEFINER function %s runs as %s, which %s: an application role '
                      'calling it reads every tenant''s rows%s', p.oid::regprocedure,
                      quote_ident(o.rolname),
                      CASE WHEN o.rolsuper THEN 'is a superuser' WHEN o.rolbypassrls THEN 'has BYPASSRLS'
                           ELSE 'owns tables of tenants' END,
                      CASE WHEN t.slug IS NOT NULL THEN format(' (in the schema of tenant %s)', t.slug)
                           ELSE '' END),
               format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', p.oid::regprocedure)
          FROM pg_proc AS p
          JOIN pg_namespace AS n ON n.oid = p.pronamespace
          JOIN pg_roles AS o ON o.oid = p.proowner
          LEFT JOIN tenancy.tenants AS t ON t.schema_name = n.nspname
         WHERE p.prosecdef AND n.nspname NOT IN ('tenancy', 'pg_catalog', 'information_schema')
           AND (o.rolsuper OR o.rolbypassrls OR t.slug IS NOT NULL
                OR EXISTS (SELECT 1 FROM tenancy.guarded_tables AS g JOIN pg_class AS c ON c.oid = g.table_name
                            WHERE c.relowner = o.oid))
           AND EXISTS (SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
                        WHERE has_function_privilege(r.oid, p.oid, 'EXECUTE'));

    -- Owners of guarded shared tables other than the kit's owner: an owner
    -- can switch row-level security off (tenant schemas' objects are
    -- checked by tenant_object_foreign_owner).
    RETURN QUERY
        SELECT 'error'::text, 'guarded_table_foreign_owner'::text, g.table_name::text,
               format('guarded table %s is owned by %s, not by the kit''s owner %s: its owner can '
                      'switch row-level security off', g.table_name,
                      quote_ident(pg_get_userbyid(c.relowner)), quote_ident(pg_get_userbyid(k.nspowner))),
               format('ALTER TABLE %s OWNER TO %I', g.table_name, pg_get_userbyid(k.nspowner))
          FROM tenancy.guarded_tables AS g
          JOIN pg_class AS c ON c.oid = g.table_name
         CROSS JOIN (SELECT nspowner FROM pg_namespace WHERE nspname = 'tenancy') AS k
         WHERE c.relowner <> k.nspowner;
END
$$;

COMMENT ON FUNCTION tenancy.check_strict() IS
    'Strict-entry findings of the doctor: strict entry off while shared tenants exist (info); '
    'strict recorded on but not in effect (error); tables of tenant schemas without the strict '
    'guard, views without security_invoker, materialized views, foreign tables and sequence values '
    'an application role can read (error in strict mode); SECURITY DEFINER functions an application '
    'role may call that run as a role bypassing row-level security (error in a tenant schema in '
    'strict mode, warning otherwise); guarded shared tables owned by a role '
    'other than the kit''s owner (error). Called by check_isolation(); granted to application '
    'roles (they run the doctor).';

REVOKE ALL ON FUNCTION tenancy.check_strict() FROM PUBLIC;

-- Application roles call the verifier (in every policy check) and the
-- doctor's strict findings: granted as grant_app_role records each role.
CREATE OR REPLACE FUNCTION tenancy.app_roles_grant_strict()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID <> 'tenancy.app_roles'::regclass THEN
        RAISE EXCEPTION 'tenancy.app_roles_grant_strict runs on tenancy.app_roles only, not on %',
            TG_RELID::regclass
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = NEW.role_name) THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.verify_entry_token(text, boolean), '
                       'tenancy.check_strict() TO %I', NEW.role_name);
    END IF;
    -- At commit, after grant_app_role granted the tenant schemas: take back
    -- what strict mode keeps from application roles.
    IF tenancy.strict_entry_enabled() THEN
        PERFORM tenancy.strict_guard_schema(t.schema_name)
           FROM tenancy.tenants AS t WHERE t.schema_name IS NOT NULL ORDER BY t.schema_name;
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.app_roles_grant_strict() IS
    'Deferred trigger on tenancy.app_roles (grant_app_role, for a new role or one granted '
    'again), at commit: grant the application role EXECUTE on verify_entry_token (policies call '
    'it in strict mode) and check_strict (the doctor); in strict mode guard every tenant schema '
    'again (strict_guard_schema), taking back what grant_app_role granted on materialized '
    'views, sequences and definer functions.';

REVOKE ALL ON FUNCTION tenancy.app_roles_grant_strict() FROM PUBLIC;

-- A constraint trigger (deferrable) has no CREATE OR REPLACE.
DROP TRIGGER IF EXISTS app_roles_grant_strict ON tenancy.app_roles;
CREATE CONSTRAINT TRIGGER app_roles_grant_strict
    AFTER INSERT OR UPDATE ON tenancy.app_roles
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tenancy.app_roles_grant_strict();

-- Application roles granted before this file was installed.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                    JOIN pg_catalog.pg_roles AS r ON r.rolname = a.role_name LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.verify_entry_token(text, boolean), '
                                  'tenancy.check_strict() TO %I', v_role);
    END LOOP;
END
$$;

-- The extension's new configuration tables: pg_dump keeps their rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy') THEN
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.entry_keys', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.strict_entry', '');
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.strict_plain_functions', '');
    END IF;
END
$$;

-- The quiet form of token entry, what the kit's connections send (prepared,
-- the token a bind parameter) for a tenant whose search_path they learnt
-- from an earlier token entry: CALL tenancy.enter_token($1, $2, $3) after
-- BEGIN. No output parameter, so no row comes back: enter_tenant_token
-- otherwise, then PT023 when the search_path the tenant got is not the one
-- given (NULL: not checked), as tenancy.enter_known checks it.
CREATE OR REPLACE FUNCTION tenancy.define_enter_token(p_c boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_c THEN
        -- The accelerator's C procedure (needs a superuser and the library).
        CREATE OR REPLACE PROCEDURE tenancy.enter_token(token text, slug text, search_path text)
            LANGUAGE c
            AS '$libdir/pgtenancy_accel', 'pgtenancy_enter_token';
        RETURN;
    END IF;
    CREATE OR REPLACE PROCEDURE tenancy.enter_token(token text, slug text, search_path text)
        LANGUAGE plpgsql
    AS $$
DECLARE
    v_id pg_catalog.uuid;
    v_ok pg_catalog.bool;
BEGIN
    -- One statement, planned before search_path changes (as enter_known's).
    SELECT tenancy.enter_tenant_token($1, $2),
           tenancy.check_known_path(pg_catalog.current_setting('app.tenant'),
               pg_catalog.current_setting('search_path'), $3,
               'Its schema changed: enter with tenancy.enter_tenant_token(token) to learn its search_path.')
      INTO v_id, v_ok;
END
$$;
END
$fn$;

COMMENT ON FUNCTION tenancy.define_enter_token(boolean) IS
    'Create (or replace) the procedure tenancy.enter_token: its PL/pgSQL (p_c false) or the C '
    'accelerator''s procedure pgtenancy_enter_token (p_c true: a superuser, the library '
    'installed; raises 42501, 58P01 or 42883 otherwise). Grants and comment kept. Internal.';

REVOKE ALL ON FUNCTION tenancy.define_enter_token(boolean) FROM PUBLIC;

-- Install and upgrades leave the C procedure in place (apply_accelerator,
-- below, decides whether it stays).
SELECT tenancy.define_enter_token(false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
                     JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
                    WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
                      AND p.proname = 'enter_token' AND l.lanname = 'c');

COMMENT ON PROCEDURE tenancy.enter_token(text, text, text) IS
    'CALL tenancy.enter_token(token, slug, search_path) after BEGIN: enter_tenant_token(token, '
    'slug) without output, for a client that knows the tenant''s search_path from an earlier '
    'token entry (no row sent back). The refusals of enter_tenant_token, and PT023 when the '
    'tenant''s search_path is not search_path (NULL: not checked).';

INSERT INTO tenancy.entry_procedures (procedure, define) VALUES
    ('tenancy.enter_token(text, text, text)', 'tenancy.define_enter_token(boolean)')
ON CONFLICT (procedure) DO UPDATE SET define = EXCLUDED.define;

-- The C accelerator (011) takes over token entry too (not with Citus: it
-- enters through enter_tenant's PL/pgSQL there).
INSERT INTO tenancy.accelerated_functions (function, impl, strict_impl, args, with_citus) VALUES
    ('tenancy.enter_tenant_token(text, text)', 'enter_tenant_token', 'enter_tenant_token', '$1, $2', false)
ON CONFLICT (function) DO UPDATE
   SET impl = EXCLUDED.impl, strict_impl = EXCLUDED.strict_impl, args = EXCLUDED.args,
       with_citus = EXCLUDED.with_citus;

SELECT tenancy.apply_accelerator();

-- Tables tracked before: their generated change triggers took the tenant of
-- shared-table events from app.tenant_id, which the writing statement can
-- change (RETURNING set_config(...)). Generate them again. Inside the
-- extension's own update script a generated function would become a member
-- of the extension: there, say which tables need track_changes again.
DO $$
DECLARE
    v_table pg_catalog.regclass;
BEGIN
    FOR v_table IN SELECT DISTINCT t.tgrelid::pg_catalog.regclass FROM pg_catalog.pg_trigger AS t
                    WHERE t.tgname OPERATOR(pg_catalog.=) 'tenancy_changes_insert' LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e
                    WHERE e.extname OPERATOR(pg_catalog.=) 'pgtenancy') THEN
            RAISE WARNING 'pgtenancy: run SELECT tenancy.track_changes(%) again: its change trigger '
                          'attributes shared-table events by app.tenant_id',
                          pg_catalog.quote_literal(v_table::pg_catalog.text);
        ELSE
            PERFORM tenancy.track_changes(v_table);
        END IF;
    END LOOP;
END
$$;

-- The upgrade recreated active_tenant_id() and tenant_info() with their plain
-- bodies: put strict mode back where it was on. Keep this the last statement.
SELECT tenancy.apply_strict_entry() WHERE tenancy.strict_entry_enabled();
